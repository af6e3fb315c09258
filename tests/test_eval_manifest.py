"""Manifests: COCO captions JSON and captioned folders → CSV; reading skips bad rows, rejects bad CSVs."""

import csv
import json

import pytest
from PIL import Image

from bestshot.errors import BestshotError
from bestshot.evaluate.manifest import build_coco_manifest, build_folder_manifest, read_manifest

LONG = [
    "a dog runs on the beach today",
    "two people ride bikes down a street",
    "a plate of food on a table",
    "a red car parked near a tree",
    "a cat sleeping on a sofa in the sun",
    "a man holding an umbrella in rain",
]


def _png(path, color=(200, 10, 10)):
    Image.new("RGB", (8, 6), color).save(path)
    return path


@pytest.fixture
def coco(tmp_path):
    """Six images on disk + one listed but missing; each has a short caption and a long one or two."""
    root = tmp_path / "train2017"
    root.mkdir()
    images, anns = [], []
    for i in range(7):
        name = f"{i:012d}.jpg"
        images.append({"id": 100 + i, "file_name": name})
        if i < 6:
            _png(root / name, (30 * i, 0, 0))
        anns.append({"image_id": 100 + i, "id": 3 * i, "caption": "too short"})
        anns.append({"image_id": 100 + i, "id": 3 * i + 1, "caption": LONG[i % len(LONG)]})
        anns.append({"image_id": 100 + i, "id": 3 * i + 2, "caption": LONG[(i + 1) % len(LONG)] + " \n"})
    images.append({"id": 999, "file_name": "only_short.jpg"})  # no caption long enough: never chosen
    _png(root / "only_short.jpg")
    anns.append({"image_id": 999, "id": 999, "caption": "tiny"})
    ann_path = tmp_path / "captions_train2017.json"
    ann_path.write_text(json.dumps({"images": images, "annotations": anns}))
    return ann_path, root


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_coco_manifest_is_seeded_filtered_and_one_caption_per_image(coco, tmp_path):
    ann, root = coco
    out = build_coco_manifest(ann, root, tmp_path / "m" / "a.csv", k=3, min_len=5, seed=42)
    rows = _read_csv(out)
    assert list(rows[0]) == ["image_path", "caption", "image_id"]
    assert len(rows) == 3 and len({r["image_id"] for r in rows}) == 3
    assert all(len(r["caption"].split()) >= 5 and "\n" not in r["caption"] for r in rows)
    assert all(r["image_id"] != "999" for r in rows)
    again = build_coco_manifest(ann, root, tmp_path / "b.csv", k=3, min_len=5, seed=42)
    assert _read_csv(again) == rows
    seeds = {
        tuple(
            (r["image_id"], r["caption"])
            for r in _read_csv(build_coco_manifest(ann, root, tmp_path / "c.csv", k=3, seed=s))
        )
        for s in range(6)
    }
    assert len(seeds) > 1  # the seed really changes the subset / caption choice
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


def test_coco_missing_images_are_reported_and_skipped(coco, tmp_path):
    ann, root = coco
    with pytest.warns(UserWarning, match="000000000006.jpg"):
        out = build_coco_manifest(ann, root, tmp_path / "all.csv", k=100, min_len=5, seed=1)
    rows = _read_csv(out)
    assert sorted(int(r["image_id"]) for r in rows) == list(range(100, 106))


def test_coco_bad_json_is_a_user_error(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(BestshotError, match="COCO captions"):
        build_coco_manifest(bad, tmp_path, tmp_path / "o.csv")
    with pytest.raises(BestshotError, match="not found"):
        build_coco_manifest(tmp_path / "nope.json", tmp_path, tmp_path / "o.csv")


def test_folder_manifest(tmp_path):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    _png(folder / "a.png")
    (folder / "a.txt").write_text("a red square\n")
    _png(folder / "sub" / "b.png")
    (folder / "sub" / "b.txt").write_text("another  red square")
    _png(folder / "c.png")  # no caption
    with pytest.warns(UserWarning, match="c.png"):
        out = build_folder_manifest(folder, tmp_path / "f.csv")
    rows = read_manifest(out)
    assert [(r.image_id, r.caption) for r in rows] == [("a", "a red square"), ("sub/b", "another red square")]


def test_read_manifest_skips_missing_and_corrupt_rows(tmp_path):
    _png(tmp_path / "ok.png")
    _png(tmp_path / "ok2.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    m = tmp_path / "m.csv"
    m.write_text(
        "image_path,caption,image_id\n"
        "ok.png,a fine picture,1\n"
        "missing.png,gone,2\n"
        "corrupt.png,broken,3\n"
        f"{tmp_path / 'ok2.png'},absolute path,4\n"
    )
    with pytest.warns(UserWarning) as rec:
        rows = read_manifest(m)
    msg = " ".join(str(w.message) for w in rec)
    assert "missing.png: missing" in msg and "corrupt.png: corrupt" in msg
    assert [(r.row_id, r.image_id) for r in rows] == [(0, "1"), (3, "4")]
    assert rows[0].image_path == tmp_path / "ok.png"


def test_truncated_png_counts_as_corrupt(tmp_path):
    _png(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    m = tmp_path / "m.csv"
    m.write_text("image_path,caption,image_id\nfull.png,x y,1\ncut.png,x y,2\n")
    with pytest.warns(UserWarning, match="cut.png"):
        assert [r.image_id for r in read_manifest(m)] == ["1"]


def test_malformed_manifest_is_a_user_error(tmp_path):
    m = tmp_path / "bad.csv"
    m.write_text("path,text\nx.png,hello\n")
    with pytest.raises(BestshotError, match="missing column"):
        read_manifest(m)
    with pytest.raises(BestshotError, match="not found"):
        read_manifest(tmp_path / "none.csv")
