"""Gallery verdicts (keep / delete / star / undo) become preference rows, and `taste collect` reads the trash."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from bestshot.curate.preferences import collect_stage1, record_verdict  # noqa: E402
from bestshot.errors import BestshotError  # noqa: E402
from bestshot.scoring.taste import EmbeddingCache, latest_verdicts, read_preferences  # noqa: E402
from bestshot.server import create_app  # noqa: E402
from helpers import run_cli  # noqa: E402


def _stage1(root, n=3):
    (root / "stage1").mkdir(parents=True)
    (root / "metadata").mkdir()
    for i in range(n):
        Image.new("RGB", (16, 16), (40 * i, 0, 200)).save(root / "stage1" / f"img{i}.png")
        (root / "metadata" / f"img{i}.json").write_text(
            json.dumps({"tag": f"t{i}", "prompt": f"prompt {i}", "stages": {"stage1": {"file": f"stage1/img{i}.png"}}})
        )


def _latest(root):
    return {k: v["verdict"] for k, v in latest_verdicts(read_preferences(root)).items()}


@pytest.fixture
def client(tmp_path):
    root = tmp_path / "outputs"
    _stage1(root)
    app = create_app(out_dir=str(tmp_path / "images_out"), curate_dir=str(root))
    with TestClient(app, base_url="http://localhost") as c:
        yield c, root


def test_keep_star_delete_undo_are_preference_rows(client):
    c, root = client
    assert c.post("/v1/curate/keep", json={"name": "img0.png"}).status_code == 200
    r = c.post("/v1/curate/star", json={"name": "img1.png"})
    assert r.status_code == 200 and r.json() == {"name": "img1.png", "kept": True, "starred": True}
    assert c.post("/v1/curate/delete", json={"name": "img2.png"}).status_code == 200
    rows = read_preferences(root)
    assert [(x["image"], x["verdict"], x["prompt"], x["tag"], x["source"]) for x in rows] == [
        ("stage1/img0.png", "keep", "prompt 0", "t0", "gallery"),
        ("stage1/img1.png", "star", "prompt 1", "t1", "gallery"),
        ("stage1/img2.png", "delete", "prompt 2", "t2", "gallery"),
    ]  # its metadata is in trash/ by then
    items = {x["name"]: x for x in c.get("/v1/curate").json()["stage1"]}
    assert items["img1.png"]["starred"] and items["img1.png"]["kept"] and not items["img0.png"]["starred"]
    assert json.loads((root / "curation.json").read_text()) == {
        "kept": ["img0.png", "img1.png"],
        "starred": ["img1.png"],
    }
    # unstar keeps it kept; unkeep forgets the verdict; undo brings a deletion back and forgets it
    assert c.post("/v1/curate/star", json={"name": "img1.png", "star": False}).json()["kept"] is True
    assert c.post("/v1/curate/keep", json={"name": "img0.png", "keep": False}).status_code == 200
    assert c.post("/v1/curate/undo", json={"name": "img2.png"}).status_code == 200
    assert _latest(root) == {"stage1/img1.png": "keep"}
    assert [x["verdict"] for x in read_preferences(root)][3:] == ["keep", "undo", "undo"]
    # unkeeping a starred image drops the star too
    c.post("/v1/curate/star", json={"name": "img2.png"})
    c.post("/v1/curate/keep", json={"name": "img2.png", "keep": False})
    assert not {x["name"]: x for x in c.get("/v1/curate").json()["stage1"]}["img2.png"]["starred"]


@pytest.mark.parametrize(
    "body, status",
    [
        ({"name": "nope.png"}, 404),
        ({"name": "../img0.png"}, 422),
        ({"name": "img0.txt"}, 422),
        ({"name": "img0.png", "star": "maybe"}, 422),
        ({"name": "img0.png", "extra": 1}, 422),
        ({}, 422),
    ],
)
def test_star_bad_input_is_a_clear_4xx(client, body, status):
    c, root = client
    r = c.post("/v1/curate/star", json=body)
    assert r.status_code == status, r.text
    assert read_preferences(root) == []  # nothing recorded


def test_star_needs_the_token_when_the_server_has_one(tmp_path):
    root = tmp_path / "outputs"
    _stage1(root, 1)
    app = create_app(out_dir=str(tmp_path / "o"), curate_dir=str(root), token="tok")
    with TestClient(app, base_url="http://localhost") as c:
        assert c.post("/v1/curate/star", json={"name": "img0.png"}).status_code == 401
        ok = c.post("/v1/curate/star", json={"name": "img0.png"}, headers={"Authorization": "Bearer tok"})
        assert ok.status_code == 200


def test_record_verdict_rejects_unknown_verdicts_and_tolerates_missing_metadata(tmp_path):
    with pytest.raises(BestshotError, match="verdict"):
        record_verdict(tmp_path, "a.png", "maybe")
    row = record_verdict(tmp_path, "a.png", "star")
    assert row["prompt"] == "" and row["tag"] == "a" and row["image"] == "stage1/a.png"


def test_collect_reads_the_gallery_trash_and_embeds_trashed_images(client, tiny_clip, capsys, monkeypatch):
    c, root = client
    assert c.post("/v1/curate/delete", json={"name": "img1.png"}).status_code == 200
    (root / "taste" / "preferences.jsonl").unlink()  # as if the gallery had not logged: collect alone finds it
    added = {x["image"]: x["verdict"] for x in collect_stage1(root)}
    assert added == {"stage1/img0.png": "keep", "stage1/img1.png": "delete", "stage1/img2.png": "keep"}
    code, out, err = run_cli(
        ["taste", "collect", "--outputs", str(root), "--scorer", str(tiny_clip)], capsys, monkeypatch
    )
    assert code == 0, err
    assert json.loads(out)["embedded"] == 3  # the trashed PNG too, under its stage-1 name
    assert "stage1/img1.png" in EmbeddingCache(root, str(tiny_clip)).vectors
