"""`bestshot eval manifest / generate / metrics` through the real CLI entry point, on tiny models."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from helpers import CAPTIONS, run_cli


def _png(path, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def coco(tmp_path):
    root = tmp_path / "train2017"
    root.mkdir()
    images, anns = [], []
    for i, cap in enumerate(CAPTIONS):
        name = f"{i:012d}.jpg"
        _png(root / name, i)
        images.append({"id": i + 1, "file_name": name})
        anns += [
            {"image_id": i + 1, "id": 10 * i, "caption": cap},
            {"image_id": i + 1, "id": 10 * i + 1, "caption": "short"},
        ]
    ann = tmp_path / "captions_train2017.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns}))
    return ann, root


@pytest.fixture
def captioned(tmp_path):
    """A folder manifest of 4 captioned images; row 1's image is then corrupted (truncated file)."""
    folder = tmp_path / "real"
    folder.mkdir()
    for i, cap in enumerate(CAPTIONS[:4]):
        _png(folder / f"im{i}.png", 10 + i)
        (folder / f"im{i}.txt").write_text(cap)
    return folder


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_manifest_cli_coco_and_folder(coco, captioned, tmp_path, capsys, monkeypatch):
    ann, root = coco
    code, out, err = run_cli(
        [
            "eval",
            "manifest",
            "--annotations",
            str(ann),
            "--images-root",
            str(root),
            "--out",
            str(tmp_path / "m.csv"),
            "--k",
            "3",
            "--min-len",
            "5",
            "--seed",
            "42",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    rows = _rows(tmp_path / "m.csv")
    assert len(rows) == 3 and list(rows[0]) == ["image_path", "caption", "image_id"]
    assert all(r["caption"] in CAPTIONS for r in rows)  # "short" (1 word) never chosen
    code, _, err = run_cli(
        ["eval", "manifest", "--folder", str(captioned), "--out", str(tmp_path / "f.csv")], capsys, monkeypatch
    )
    assert code == 0, err
    assert sorted(r["caption"] for r in _rows(tmp_path / "f.csv")) == sorted(CAPTIONS[:4])
    # exactly one source
    code, _, err = run_cli(
        [
            "eval",
            "manifest",
            "--folder",
            str(captioned),
            "--annotations",
            str(ann),
            "--images-root",
            str(root),
            "--out",
            str(tmp_path / "x.csv"),
        ],
        capsys,
        monkeypatch,
    )
    assert code == 2 and "exactly one" in err and not (tmp_path / "x.csv").exists()


def _gen_args(manifest, out, tiny_sd15, tiny_clip, *extra):
    return [
        "eval",
        "generate",
        str(manifest),
        "--out",
        str(out),
        "--model",
        tiny_sd15,
        "--scorer",
        tiny_clip,
        "--steps",
        "2",
        "--guidance",
        "3",
        "--size",
        "32x32",
        "--seed",
        "7",
        *extra,
    ]


@pytest.fixture
def counted(monkeypatch):
    """Count pipeline calls made by eval generate (the shared make_candidates, which the best-of-N core calls)."""
    import bestshot.generation as B

    calls = []
    real = B.make_candidates

    def spy(pipe, refiner, prompt, negative, seeds, cfg, *a, **k):
        calls.append((prompt, list(seeds)))
        return real(pipe, refiner, prompt, negative, seeds, cfg, *a, **k)

    monkeypatch.setattr(B, "make_candidates", spy)
    return calls


def test_generate_resumes_and_skips_bad_rows(captioned, tmp_path, tiny_sd15, tiny_clip, counted, capsys, monkeypatch):
    from bestshot.evaluate.manifest import build_folder_manifest

    manifest = build_folder_manifest(captioned, tmp_path / "m.csv")
    (captioned / "im1.png").write_bytes((captioned / "im1.png").read_bytes()[:40])  # corrupt row 1
    out = tmp_path / "gen"
    code, _, err = run_cli(_gen_args(manifest, out, tiny_sd15, tiny_clip, "--num", "3"), capsys, monkeypatch)
    assert code == 0, err
    assert "bad manifest rows" in err and "im1.png: corrupt" in err  # reported ...
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["000000.png", "000002.png", "000003.png"]  # ... and skipped; names are row ids
    assert len(counted) == 3
    meta = json.loads((out / "000002.json").read_text())
    assert meta["caption"] == CAPTIONS[2] and meta["steps"] == 2 and meta["guidance"] == 3.0
    assert meta["seed"] == 7 + 2 and meta["model"] == tiny_sd15 and len(meta["candidates"]) == 1
    assert meta["scorer"] == tiny_clip and meta["clip"] == meta["candidates"][0]["clip"]
    assert [c for c in counted if c[0] == CAPTIONS[2]][0][1] == [9]
    before = {p: (out / p).stat().st_mtime_ns for p in pngs}
    first = np.asarray(Image.open(out / "000002.png"))

    (out / "000002.png").unlink()
    counted.clear()
    code, stdout, err = run_cli(_gen_args(manifest, out, tiny_sd15, tiny_clip, "--num", "3"), capsys, monkeypatch)
    assert code == 0, err
    assert [c[0] for c in counted] == [CAPTIONS[2]]  # only the deleted row was regenerated
    assert (out / "000000.png").stat().st_mtime_ns == before["000000.png"]
    assert np.array_equal(np.asarray(Image.open(out / "000002.png")), first)  # same seed, same image
    assert not list(out.glob(".*.tmp"))

    # other settings into the same folder would mix two runs: refused
    code, _, err = run_cli(
        _gen_args(manifest, out, tiny_sd15, tiny_clip, "--num", "3", "--steps", "3"), capsys, monkeypatch
    )
    assert code == 2 and "other settings" in err


def test_generate_best_of_records_candidates(captioned, tmp_path, tiny_sd15, tiny_clip, counted, capsys, monkeypatch):
    from bestshot.evaluate.manifest import build_folder_manifest

    manifest = build_folder_manifest(captioned, tmp_path / "m.csv")
    out = tmp_path / "gen"
    code, _, err = run_cli(
        _gen_args(manifest, out, tiny_sd15, tiny_clip, "--num", "1", "--best-of", "3"), capsys, monkeypatch
    )
    assert code == 0, err
    meta = json.loads((out / "000000.json").read_text())
    assert [c["seed"] for c in meta["candidates"]] == [7, 8, 9] and meta["best_of"] == 3
    assert (
        meta["clip"] == max(c["clip"] for c in meta["candidates"])
        or abs(meta["clip"] - max(c["clip"] for c in meta["candidates"])) < 1e-3
    )  # kept one re-rendered alone
    assert meta["seed"] == max(meta["candidates"], key=lambda c: c["clip"])["seed"]


def test_metrics_cli_fields_and_cache(captioned, tmp_path, tiny_sd15, tiny_clip, capsys, monkeypatch):
    from bestshot.evaluate.manifest import build_folder_manifest

    manifest = build_folder_manifest(captioned, tmp_path / "m.csv")
    out = tmp_path / "gen"
    assert run_cli(_gen_args(manifest, out, tiny_sd15, tiny_clip), capsys, monkeypatch)[0] == 0
    cache = tmp_path / "cache"
    args = [
        "eval",
        "metrics",
        "--real",
        str(manifest),
        "--fake",
        str(out),
        "--clip",
        tiny_clip,
        "--cache-dir",
        str(cache),
        "--out",
        str(tmp_path / "metrics.json"),
    ]
    code, stdout, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    res = json.loads((tmp_path / "metrics.json").read_text())
    assert "NOT comparable" in res["extractor"] and "crop" in res["resize"]
    assert res["n_real"] == 4 and res["n_fake"] == 4
    for k in ("fid", "kid_mean", "cmmd", "clip_score", "clip_cosine"):
        assert isinstance(res[k], float), k
    assert res["is_mean"] is None and any("inception score" in n for n in res["notes"])
    assert "FID" in stdout and "CMMD" in stdout and "extractor" in stdout
    cached = sorted(cache.glob("*.npz"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    code, stdout, err = run_cli(args[:-2] + ["--json"], capsys, monkeypatch)
    assert code == 0 and json.loads(stdout)["fid"] == pytest.approx(res["fid"], rel=1e-9)
    assert cached[0].stat().st_mtime_ns == stamp  # real features came from the cache
    # captions by row id from a manifest give the same CLIP score as the JSON beside each image
    code, stdout, err = run_cli(args[:-2] + ["--json", "--captions", str(manifest)], capsys, monkeypatch)
    assert code == 0 and json.loads(stdout)["clip_score"] == pytest.approx(res["clip_score"], rel=1e-6)

    code, _, err = run_cli(
        ["eval", "metrics", "--real", str(manifest), "--fake", str(out), "--extractor", "inception"],
        capsys,
        monkeypatch,
    )
    assert code == 2 and "Inception weights" in err

    # the reference as FID statistics: saved once, then used instead of the images (same FID)
    stats = tmp_path / "ref_stats.npz"
    code, stdout, err = run_cli(args[:-2] + ["--save-real-stats", str(stats)], capsys, monkeypatch)
    assert code == 0 and stats.is_file(), err
    code, stdout, err = run_cli(
        ["eval", "metrics", "--real-stats", str(stats), "--fake", str(out), "--clip", tiny_clip, "--json"],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    got = json.loads(stdout)
    assert got["fid"] == pytest.approx(res["fid"], rel=1e-6) and got["kid_mean"] is None
    assert got["resize"].startswith("clean:")
    for bad, msg in (
        (["--fake", str(out)], "--real-stats"),
        (["--real", str(manifest), "--real-stats", str(stats), "--fake", str(out)], "one of them"),
        (["--real-stats", str(stats), "--fake", str(out), "--clip", tiny_clip, "--resize", "legacy"], "resize"),
        (["--real", str(manifest), "--fake", str(out), "--resize", "bilinear"], "clean"),
    ):
        code, _, err = run_cli(["eval", "metrics", *bad], capsys, monkeypatch)
        assert code == 2 and msg in err and "Traceback" not in err, (bad, err)
