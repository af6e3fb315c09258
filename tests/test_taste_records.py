"""Damaged taste files: each is one clear error line (or a skipped row with one warning), never a traceback,
and a good head is never replaced by an invalid one (it stays byte-identical)."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bestshot.errors import BestshotError
from bestshot.scoring.taste import (
    EmbeddingCache,
    TasteHead,
    add_preference,
    dataset,
    train_head,
)
from helpers import run_cli


def _one_error_line(code, out, err, *needles):
    assert code == 2, (code, out, err)
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for needle in needles:
        assert needle in lines[0], err
    assert "Traceback" not in err + out


def _dim(tiny_clip) -> int:
    return json.loads((Path(tiny_clip) / "config.json").read_text())["projection_dim"]


@pytest.fixture
def trained(tmp_path, tiny_clip, capsys, monkeypatch):
    """An outputs folder with rows, a cache of the embedder's dimension and a good head trained on them."""
    out = tmp_path / "outputs"
    dim = _dim(tiny_clip)
    rng = np.random.default_rng(0)
    cache = EmbeddingCache(out, str(tiny_clip))
    for p in range(6):
        for k in range(4):
            v = rng.normal(size=dim).astype(np.float32)
            v[0] = (1.0 if k % 2 else -1.0) * (0.5 + rng.random())
            img = f"stage1/p{p}_{k}.png"
            cache.vectors[img] = v
            add_preference(out, f"prompt {p}", img, "delete" if v[0] > 0 else "keep", source="test")
    cache.save()
    args = ["taste", "train", "--outputs", str(out), "--scorer", str(tiny_clip), "--folds", "2"]
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    head = out / "taste" / "head.json"
    return out, cache.path, head, head.read_bytes(), args


def _rewrite_cache(path: Path, images, vectors) -> None:
    with open(path, "wb") as f:
        np.savez(f, images=np.asarray(images, dtype=str), vectors=np.asarray(vectors))


def _good(path):
    with np.load(path) as z:
        return z["images"], z["vectors"]


@pytest.mark.parametrize(
    "damage, needle",
    [
        ("nan", "NaN"),
        ("garbage", "damaged"),
        ("truncated", "damaged"),
        ("length", "image names but"),
        ("seven", "7-d"),
        ("folder", "folder"),
        ("strings", "not one row of numbers"),
    ],
)
def test_a_damaged_embedding_cache_is_one_line_and_the_good_head_stays(trained, capsys, monkeypatch, damage, needle):
    _out, cache, head, before, args = trained
    images, vectors = _good(cache)
    if damage == "nan":
        vectors = vectors.copy()
        vectors[3] = np.nan
        _rewrite_cache(cache, images, vectors)
    elif damage == "garbage":
        cache.write_bytes(b"\x00garbage" * 100)
    elif damage == "truncated":
        cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    elif damage == "length":
        _rewrite_cache(cache, images, vectors[:-1])
    elif damage == "seven":
        _rewrite_cache(cache, images, vectors[:, :7])
    elif damage == "folder":
        cache.unlink()
        cache.mkdir()
    else:
        _rewrite_cache(cache, images, np.asarray([["a"] * 3] * len(images)))
    code, stdout, err = run_cli(args, capsys, monkeypatch)
    _one_error_line(code, stdout, err, needle)
    assert head.read_bytes() == before


@pytest.mark.parametrize(
    "content, needle",
    [
        ({"w": [float("nan")] * 4}, "NaN"),
        ({"w": [1e308] * 4}, "overflowing"),
        ({"kind": "svm"}, "svm"),
        ({"b": None}, "not a number"),
        ({"w": "abc"}, "not a taste head"),
        ({"dim": 5}, "dim 5"),
        (None, "not a taste head"),
    ],
)
def test_an_invalid_head_is_refused_on_load(tmp_path, content, needle):
    path = tmp_path / "head.json"
    good = {
        "format": "bestshot-taste-head",
        "version": 1,
        "kind": "logistic",
        "embedder": "embedded",
        "dim": 4,
        "w": [0.1, 0.2, 0.3, 0.4],
        "b": 0.5,
    }
    text = "[1, 2" if content is None else json.dumps({**good, **content})
    path.write_text(text)
    with pytest.raises(BestshotError, match=needle):
        TasteHead.load(path)
    path.write_text(json.dumps(good))
    assert TasteHead.load(path).w.shape == (4,)


def test_an_invalid_head_is_never_written_over_a_good_one(tmp_path):
    path = tmp_path / "head.json"
    TasteHead("logistic", "embedded", np.ones(4, np.float32), 0.0).save(path)
    before = path.read_bytes()
    for bad in (
        TasteHead("logistic", "embedded", np.full(4, np.nan, np.float32), 0.0),
        TasteHead("logistic", "embedded", np.ones(4, np.float32), float("nan")),
        TasteHead("svm", "embedded", np.ones(4, np.float32), 0.0),
    ):
        with pytest.raises(BestshotError):
            bad.save(path)
        assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["head.json"]  # no temp file left beside it


def test_training_that_diverges_is_refused(tmp_path, monkeypatch):
    import bestshot.scoring.taste as T

    out = tmp_path / "o"
    cache = EmbeddingCache(out, "fake")
    for i in range(8):
        cache.vectors[f"i{i}.png"] = np.full(4, float(i), np.float32)
        add_preference(out, f"p{i % 2}", f"i{i}.png", "keep" if i % 2 else "delete", source="test")
    cache.save()
    monkeypatch.setattr(T, "_fit", lambda *a, **k: (np.full(4, np.nan, np.float32), 0.0))
    with pytest.raises(BestshotError, match="diverged"):
        train_head(dataset(out, "fake"), embedder="fake", folds=0)


def test_a_nan_head_makes_generate_fail_with_one_line(tiny_sd15, tiny_clip, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    head = tmp_path / "head.json"
    head.write_text(
        json.dumps({"kind": "logistic", "embedder": str(tiny_clip), "w": [float("nan")] * _dim(tiny_clip), "b": 0.0})
    )
    code, out, err = run_cli(
        [
            "generate",
            "a cat",
            "--model",
            tiny_sd15,
            "--scorer",
            f"taste@{head}",
            "-n",
            "2",
            "--steps",
            "1",
            "--size",
            "64x64",
        ],
        capsys,
        monkeypatch,
    )
    _one_error_line(code, out, err, "NaN")
    assert (
        not (tmp_path / "images_log.jsonl").exists()
        or "low_clip_alignment" not in (tmp_path / "images_log.jsonl").read_text()
    )


def test_taste_files_that_are_folders(trained, capsys, monkeypatch):
    out, _cache, head, before, args = trained
    prefs = out / "taste" / "preferences.jsonl"
    prefs.rename(out / "prefs.bak")
    prefs.mkdir()
    code, stdout, err = run_cli(args, capsys, monkeypatch)
    _one_error_line(code, stdout, err, "preferences.jsonl", "not a file")
    assert head.read_bytes() == before
    prefs.rmdir()
    (out / "prefs.bak").rename(prefs)
    head.unlink()
    head.mkdir()
    code, stdout, err = run_cli(args, capsys, monkeypatch)
    _one_error_line(code, stdout, err, "head.json", "folder")
    with pytest.raises(BestshotError, match="folder"):
        TasteHead.load(head)


def test_collect_skips_a_non_image_row_and_bad_metadata_in_one_warning_each(tmp_path, tiny_clip, capsys, monkeypatch):
    from bestshot.curate.layout import Layout

    lay = Layout(tmp_path / "outputs").make()
    p = lay.stage1("20261207_120000", 32, 32)
    Image.new("RGB", (32, 32), (255, 0, 0)).save(p)
    lay.write_metadata(
        "20261207_120000",
        {"tag": "20261207_120000", "prompt": "red", "stages": {"stage1": {"file": f"stage1/{p.name}"}}},
    )
    (lay.root / "stage1" / "notes.png").write_text("not an image")
    add_preference(lay.root, "x", "stage1/notes.png", "keep", source="test")
    meta = lay.root / "metadata"
    (meta / "list.json").write_text("[1, 2, 3]")
    (meta / "stages.json").write_text(json.dumps({"prompt": "p", "stages": ["stage1"]}))
    (meta / "file.json").write_text(json.dumps({"prompt": "p", "stages": {"stage1": {"file": 7}}}))
    (meta / "broken.json").write_text("{not json")
    code, out, err = run_cli(
        ["taste", "collect", "--outputs", str(lay.root), "--scorer", str(tiny_clip)], capsys, monkeypatch
    )
    assert code == 0, err
    assert "Traceback" not in err and json.loads(out)["embedded"] == 1
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert any("notes.png" in w and "not a readable image" in w for w in warnings), err
    assert any("list.json" in w for w in warnings) and any("broken.json" in w for w in warnings), err


def test_a_retrain_keeps_the_previous_head(trained, capsys, monkeypatch):
    """A good head is never lost to a retrain: it is copied to head.prev.json before the new one replaces it,
    with --fresh too; a first training (nothing to keep) writes no copy."""
    out, _cache, head, before, args = trained
    prev = head.with_name("head.prev.json")
    assert not prev.exists()
    code, _, err = run_cli([*args, "--fresh", "--l2", "10"], capsys, monkeypatch)
    assert code == 0, err
    assert prev.read_bytes() == before and head.read_bytes() != before
    assert "previous head is kept" in err
    TasteHead.load(prev)  # the copy is a usable head
