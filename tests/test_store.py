"""Tests for bestshot.store: file names, A1111 infotext, PNG chunks, atomic writes, JSONL, index, paths."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bestshot import store as st
from bestshot.errors import BestshotError
from bestshot.store import (
    RunIndex,
    Store,
    append_jsonl,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    candidate_filename,
    format_parameters,
    new_run_id,
    parse_parameters,
    read_jsonl,
    read_png_info,
    save_png,
)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ---------------------------------------------------------------- ids and names


def test_candidate_filename_layout():
    assert candidate_filename("20261123-094512-000001-3f9a1c", 42, 0.31234567) == (
        "20261123-094512-000001-3f9a1c_seed42_clip0.3123.png"
    )
    assert candidate_filename("r1", 7, -0.05) == "r1_seed7_clip-0.0500.png"
    for bad in ("../x", "a/b", "", ".hidden"):
        with pytest.raises(BestshotError):
            candidate_filename(bad, 1, 0.5)


def test_run_ids_unique_and_time_sorted():
    ids = [new_run_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert ids == sorted(ids)  # tight loop: same-microsecond calls still increase
    for rid in ids[:5]:
        assert Path(candidate_filename(rid, 0, 0.0)).name.startswith(rid)


def test_run_ids_strictly_increase_when_the_clock_stalls(monkeypatch):
    monkeypatch.setattr(st.time, "time_ns", lambda: 1_795_000_000_123_456_789)  # a frozen clock
    ids = [new_run_id() for _ in range(50)]
    assert ids == sorted(ids) and len(set(i[:22] for i in ids)) == 50  # time part itself increases


def test_run_ids_from_explicit_times():
    t0 = datetime(2026, 11, 23, 9, 45, 12, tzinfo=UTC)
    later = [new_run_id(t0 + timedelta(seconds=s)) for s in (0, 1, 59, 3600, 86400 * 40)]
    assert later == sorted(later)
    assert later[0].startswith("20261123-094512-")
    same = {new_run_id(t0) for _ in range(200)}  # explicit identical time: random part keeps them apart
    assert len(same) == 200
    # aware datetimes are converted to UTC so ids from different zones still sort by real time
    cet = timezone(timedelta(hours=1))
    assert new_run_id(datetime(2026, 11, 23, 10, 45, 12, tzinfo=cet)).startswith("20261123-094512-")


# ---------------------------------------------------------------- A1111 parameters


def test_format_parameters_layout():
    text = format_parameters(
        "a cat", "", steps=30, sampler="Euler a", cfg_scale=7.5, seed=42, width=1024, height=1024, model="sdxl"
    )
    assert text == "a cat\nSteps: 30, Sampler: Euler a, CFG scale: 7.5, Seed: 42, Size: 1024x1024, Model: sdxl"
    text = format_parameters(
        "a cat",
        "blurry",
        steps=2,
        sampler="DDIM",
        cfg_scale=7,
        seed=1,
        width=64,
        height=32,
        extra={"Scheduler": "karras", "Skipped": None},
    )
    assert text == (
        "a cat\nNegative prompt: blurry\n"
        "Steps: 2, Sampler: DDIM, CFG scale: 7.0, Seed: 1, Size: 64x32, Scheduler: karras"
    )
    with pytest.raises(ValueError):
        format_parameters("x", None, steps=1, sampler="s", cfg_scale=1, seed=1, width=8, height=8, extra={"bad:key": 1})


@pytest.mark.parametrize(
    "prompt,negative",
    [
        ("a cat", None),
        ("a cat, oil painting, by Alphonse Mucha", "blurry, low quality"),
        ("line one\nline two: with colon\nline three, with comma", "neg one\nneg two, more"),
        ("(masterpiece:1.2), 日本の猫", "ugly"),
    ],
)
def test_parameters_round_trip(prompt, negative):
    extra = {
        "Style": 'photo, "35mm"',
        "Refiner": "sdxl-refiner: 0.8",
        "Lines": "a\nb",
        "Clip skip": 2,
        "Quoted": '"already"',
    }
    text = format_parameters(
        prompt,
        negative,
        steps=25,
        sampler="DPM++ 2M Karras",
        cfg_scale=5.5,
        seed=2**32 + 5,
        width=832,
        height=1216,
        model="C:\\models\\sdxl, v1.safetensors",
        extra=extra,
    )
    p = parse_parameters(text)
    assert p["prompt"] == prompt
    assert p["negative_prompt"] == (negative or "")
    assert p["Steps"] == 25 and p["Sampler"] == "DPM++ 2M Karras"
    assert p["CFG scale"] == 5.5 and p["Seed"] == 2**32 + 5
    assert (p["Size-1"], p["Size-2"]) == (832, 1216)
    assert p["Model"] == "C:\\models\\sdxl, v1.safetensors"
    assert p["Style"] == 'photo, "35mm"' and p["Refiner"] == "sdxl-refiner: 0.8"
    assert p["Lines"] == "a\nb" and p["Clip skip"] == 2 and p["Quoted"] == '"already"'


def test_parse_hand_written_a1111_text():
    text = (
        "a cat\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 123, "
        "Size: 512x768, Model hash: abc, Model: v1-5"
    )
    p = parse_parameters(text)
    assert p == {
        "prompt": "a cat",
        "negative_prompt": "blurry",
        "Steps": 20,
        "Sampler": "Euler a",
        "CFG scale": 7.0,
        "Seed": 123,
        "Size-1": 512,
        "Size-2": 768,
        "Model hash": "abc",
        "Model": "v1-5",
    }
    # a multi-line negative prompt and a quoted value, as A1111 writes them
    text = (
        "girl, blue eyes\nby Mucha\nNegative prompt: ugly,\nbad hands\n"
        "Steps: 30, Sampler: DPM++ 2M, CFG scale: 4.5, Seed: 9, Size: 64x64, "
        'Lora hashes: "add_detail: 7c6bad76eb54, x: 1"'
    )
    p = parse_parameters(text)
    assert p["prompt"] == "girl, blue eyes\nby Mucha"
    assert p["negative_prompt"] == "ugly,\nbad hands"
    assert p["Lora hashes"] == "add_detail: 7c6bad76eb54, x: 1"
    # no parameter line at all: everything is prompt
    assert parse_parameters("just a prompt, nothing else") == {
        "prompt": "just a prompt, nothing else",
        "negative_prompt": "",
    }


# ---------------------------------------------------------------- PNG


def _image(mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(0)
    chans = {"RGB": 3, "RGBA": 4}[mode]
    return Image.fromarray(rng.integers(0, 256, (24, 16, chans), dtype=np.uint8), mode)


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_save_png_chunks_and_pixels(tmp_path, mode):
    img = _image(mode)
    params = format_parameters(
        "a cat\non a mat", "blurry", steps=4, sampler="Euler", cfg_scale=7.5, seed=42, width=16, height=24, model="tiny"
    )
    meta = {"run_id": "r1", "seed": 42, "clip": 0.3, "prompt": "a cat ✓"}
    out = save_png(tmp_path / "sub" / "x.png", img, params, meta)
    assert out == tmp_path / "sub" / "x.png"
    info = read_png_info(out)
    assert info["parameters"] == params
    assert info["bestshot"] == meta
    assert info["parsed"]["Seed"] == 42 and info["parsed"]["prompt"] == "a cat\non a mat"
    with Image.open(out) as back:
        assert back.mode == mode
        assert np.array_equal(np.asarray(back), np.asarray(img))
        assert read_png_info(back)["bestshot"] == meta  # also works on an open image
    assert _leftovers(out.parent) == []


def test_save_png_non_latin1_parameters_and_missing_chunks(tmp_path):
    params = format_parameters("一只猫", None, steps=1, sampler="Euler", cfg_scale=1, seed=0, width=8, height=8)
    out = save_png(tmp_path / "u.png", _image(), params)
    info = read_png_info(out)
    assert info["parameters"] == params and info["bestshot"] is None
    _image().save(tmp_path / "plain.png")
    assert read_png_info(tmp_path / "plain.png") == {"parameters": None, "bestshot": None, "parsed": None}
    with pytest.raises(BestshotError):
        read_png_info(tmp_path / "missing.png")


def test_save_png_bad_metadata_writes_nothing(tmp_path):
    with pytest.raises(TypeError):
        save_png(tmp_path / "x.png", _image(), "p", {"image": _image()})
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- atomic writes


def test_atomic_writes_create_parents(tmp_path):
    atomic_write_bytes(tmp_path / "a" / "b.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "a" / "c.txt", "héllo")
    atomic_write_json(tmp_path / "a" / "d.json", {"k": [1, 2]})
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "a" / "c.txt").read_text("utf-8") == "héllo"
    assert json.loads((tmp_path / "a" / "d.json").read_text()) == {"k": [1, 2]}
    assert _leftovers(tmp_path / "a") == []


def test_atomic_write_crash_in_replace_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")

    def boom(src, dst):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(st.os, "replace", boom)
    with pytest.raises(OSError, match="simulated"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_atomic_write_crash_mid_write_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "img.png"
    save_png(target, _image(), "old params")

    def boom(fd):
        raise OSError("simulated disk failure during fsync")

    monkeypatch.setattr(st.os, "fsync", boom)
    with pytest.raises(OSError, match="simulated"):
        save_png(target, _image("RGBA"), "new params")
    monkeypatch.undo()
    assert read_png_info(target)["parameters"] == "old params"
    assert _leftovers(tmp_path) == []

    class Exploding:  # the encoder dies half way through
        def save(self, f, **kw):
            f.write(b"\x89PNG partial")
            raise RuntimeError("encoder crashed")

    with pytest.raises(RuntimeError):
        save_png(target, Exploding(), "newer")  # type: ignore[arg-type]
    assert read_png_info(target)["parameters"] == "old params"
    assert _leftovers(tmp_path) == []


# ---------------------------------------------------------------- JSONL


BIG = "x" * 20_000  # far beyond PIPE_BUF and stdio buffers: interleaving would show


def _append_many(path: str, tag: str, n: int, start=None) -> None:
    if start is not None:  # all writers begin together so their appends really overlap
        start.wait(30)
    for i in range(n):
        append_jsonl(path, {"tag": tag, "i": i, "pad": BIG})


def test_append_jsonl_threads(tmp_path):
    log = tmp_path / "log.jsonl"
    threads = [threading.Thread(target=_append_many, args=(str(log), f"t{k}", 40)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = log.read_text("utf-8").split("\n")
    assert lines[-1] == ""
    recs = [json.loads(line) for line in lines[:-1]]
    assert len(recs) == 160
    assert {(r["tag"], r["i"]) for r in recs} == {(f"t{k}", i) for k in range(4) for i in range(40)}


def test_append_jsonl_processes(tmp_path):
    log = tmp_path / "log.jsonl"
    ctx = mp.get_context("spawn")  # fork is unsafe once torch threads exist in the test process
    start = ctx.Event()
    procs = [ctx.Process(target=_append_many, args=(str(log), f"p{k}", 60, start)) for k in range(2)]
    for p in procs:
        p.start()
    start.set()
    _append_many(str(log), "main", 60)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    recs = [json.loads(line) for line in log.read_text("utf-8").splitlines()]
    assert len(recs) == 180
    assert {(r["tag"], r["i"]) for r in recs} == {(t, i) for t in ("p0", "p1", "main") for i in range(60)}


def test_append_jsonl_rejects_image_and_writes_nothing(tmp_path):
    log = tmp_path / "log.jsonl"
    append_jsonl(log, {"run_id": "a", "prompt": "ünïcode"})
    before = log.read_bytes()
    with pytest.raises(TypeError, match="candidate_images"):
        append_jsonl(log, {"run_id": "b", "candidate_images": [_image()]})
    with pytest.raises(TypeError, match=r"candidates\[1\]\.image"):
        append_jsonl(log, {"run_id": "c", "candidates": [{"seed": 1}, {"seed": 2, "image": _image()}]})
    assert log.read_bytes() == before
    assert read_jsonl(log) == [{"run_id": "a", "prompt": "ünïcode"}]


def test_read_jsonl_skips_truncated_last_line_and_append_recovers(tmp_path):
    log = tmp_path / "log.jsonl"
    append_jsonl(log, {"n": 1})
    append_jsonl(log, {"n": 2})
    with open(log, "ab") as f:
        f.write(b'{"n": 3, "prompt": "a ca')  # another writer crashed mid-line
    with pytest.warns(UserWarning, match=":3:"):
        assert read_jsonl(log) == [{"n": 1}, {"n": 2}]
    append_jsonl(log, {"n": 4})  # our next line must not be glued onto the broken one
    with pytest.warns(UserWarning):
        assert read_jsonl(log) == [{"n": 1}, {"n": 2}, {"n": 4}]
    assert read_jsonl(tmp_path / "absent.jsonl") == []


# ---------------------------------------------------------------- index and store


def test_run_index_add_list_get(tmp_path):
    idx = RunIndex(tmp_path / "db" / "index.sqlite")
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    recs = []
    for k in range(5):
        rid = new_run_id(t0 + timedelta(minutes=k))
        rec = {
            "run_id": rid,
            "created": (t0 + timedelta(minutes=k)).isoformat(),
            "prompt": f"p{k}",
            "model": "tiny",
            "ok": k % 2 == 0,
            "img_path": f"images_out/{rid}.png",
        }
        recs.append(rec)
    for rec in (recs[2], recs[0], recs[4], recs[1], recs[3]):  # insertion order must not matter
        idx.add(rec)
    assert [r["prompt"] for r in idx.list()] == ["p4", "p3", "p2", "p1", "p0"]
    assert [r["prompt"] for r in idx.list(limit=2, offset=1)] == ["p3", "p2"]
    assert idx.get(recs[3]["run_id"]) == recs[3]
    assert idx.get("nope") is None
    idx.add({**recs[3], "ok": True})  # re-adding replaces
    assert idx.get(recs[3]["run_id"])["ok"] is True and len(idx.list()) == 5
    with pytest.raises(ValueError):
        idx.add({"prompt": "no id"})
    with pytest.raises(BestshotError):
        idx.list(limit=-1)
    assert RunIndex(tmp_path / "db" / "index.sqlite").get(recs[0]["run_id"]) == recs[0]  # persisted


def test_store_save_and_log(tmp_path):
    store = Store(root=tmp_path / "images_out", log_path=tmp_path / "images_log.jsonl")
    assert store.index_path == tmp_path / "images_out" / "index.sqlite"
    rid = new_run_id()
    path = store.image_path(rid, 3, 0.28765)
    assert path == tmp_path / "images_out" / f"{rid}_seed3_clip0.2877.png"
    rec = {"run_id": rid, "ok": True, "prompt": "a cat", "img_path": str(path)}
    store.save_run([(path, _image(), "a cat\nSteps: 1, Sampler: x, CFG scale: 1", {"run_id": rid})], rec)
    assert path.is_file()
    # the log keeps the path relative to its own folder (it travels with the log) and says so
    logged = {**rec, "img_path": f"images_out/{path.name}", "path_base": "log_dir"}
    assert read_jsonl(store.log_path) == [logged]
    assert store.index.get(rid) == logged
    assert store.resolve_path(logged["img_path"], logged) == path


def test_store_log_run_survives_index_failure(tmp_path, monkeypatch):
    store = Store(root=tmp_path / "out", log_path=tmp_path / "log.jsonl")

    def broken(self, *a, **k):
        raise st.sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(RunIndex, "catch_up", broken)
    with pytest.warns(UserWarning, match="not indexed"):
        store.log_run({"run_id": "r1", "ok": True})
    assert read_jsonl(store.log_path) == [{"run_id": "r1", "ok": True}]
    monkeypatch.undo()
    assert store.rebuild_index() == 1
    assert store.index.get("r1") == {"run_id": "r1", "ok": True}


def test_a_run_the_index_missed_is_indexed_by_the_next_run_from_another_process(tmp_path, monkeypatch):
    """A full disk at the index write (the log line made it): the next run's log_run, even from a new Store
    (another process), indexes the missed line too; the index never stays behind the log."""
    import errno

    store = Store(root=tmp_path / "out", log_path=tmp_path / "log.jsonl")
    store.log_run({"run_id": "r1", "ok": True})
    real = RunIndex.catch_up

    def full(self, *a, **k):
        raise st.sqlite3.OperationalError(os.strerror(errno.ENOSPC))

    monkeypatch.setattr(RunIndex, "catch_up", full)
    with pytest.warns(UserWarning, match="not indexed yet"):
        store.log_run({"run_id": "r2", "ok": True})
    monkeypatch.setattr(RunIndex, "catch_up", real)
    assert [r["run_id"] for r in store.index.list()] == ["r1"]
    later = Store(root=tmp_path / "out", log_path=tmp_path / "log.jsonl")
    later.log_run({"run_id": "r3", "ok": True})
    assert sorted(r["run_id"] for r in later.index.list()) == ["r1", "r2", "r3"]
    assert later.sync_index() == 0  # nothing left to read


def test_an_unwritable_log_is_one_storage_error_naming_it(tmp_path, monkeypatch):
    import errno

    from bestshot.errors import StorageError

    store = Store(root=tmp_path / "out", log_path=tmp_path / "logs" / "log.jsonl")

    def ro(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(st, "append_jsonl", ro)
    with pytest.raises(StorageError, match=r"read-only.*|logs") as e:
        store.log_run({"run_id": "r1", "ok": True})
    assert "log.jsonl" in str(e.value) and "read-only" in str(e.value)


def test_keep_images_false_logs_no_path_and_leaves_only_temp_files(tmp_path):
    from PIL import Image

    store = Store(root=tmp_path / "out", log_path=tmp_path / "log.jsonl", keep_images=False)
    target = store.image_path("20261207-000000-000000-abcdef", 3, 0.5)
    record = {
        "run_id": "20261207-000000-000000-abcdef",
        "ok": True,
        "img_path": str(target),
        "candidates": [{"seed": 3, "path": str(target)}],
    }
    store.save_run([(target, Image.new("RGB", (4, 4)), "a cat", {"seed": 3})], record)
    logged = read_jsonl(store.log_path)[0]
    assert logged["img_path"] is None and logged["candidates"][0]["path"] is None and logged["saved"] is False
    assert store.index.get(record["run_id"])["saved"] is False
    tmp = Path(record["img_path"])  # the caller reads the image from its temp file, then deletes it
    assert tmp.is_file() and tmp.name.startswith(".") and tmp.name.endswith(".tmp")
    assert record["candidates"][0]["path"] == str(tmp) and not target.exists()
    assert list((tmp_path / "out").glob("*.png")) == []


def test_safe_path(tmp_path):
    root = tmp_path / "images_out"
    (root / "sub").mkdir(parents=True)
    (root / "a.png").write_bytes(b"x")
    (tmp_path / "secret.txt").write_text("s")
    os.symlink(tmp_path / "secret.txt", root / "escape.png")
    os.symlink(tmp_path, root / "updir")
    os.symlink(root / "a.png", root / "inside.png")
    store = Store(root=root, log_path=tmp_path / "log.jsonl")

    assert store.safe_path("a.png") == (root / "a.png").resolve()
    assert store.safe_path("sub/new.png") == (root / "sub" / "new.png").resolve()
    assert store.safe_path("inside.png") == (root / "a.png").resolve()
    for bad in (
        "../secret.txt",
        "sub/../../secret.txt",
        str(tmp_path / "secret.txt"),
        "/etc/passwd",
        "escape.png",
        "updir/secret.txt",
        "",
        ".",
        "a\x00.png",
    ):
        with pytest.raises(BestshotError):
            store.safe_path(bad)


def test_append_jsonl_takes_back_a_partial_line_when_the_disk_fills(tmp_path, monkeypatch):
    """ENOSPC after part of the line was written (what a full tmpfs does): the file is as it was before."""
    import errno

    path = tmp_path / "log.jsonl"
    append_jsonl(path, {"run_id": "r1"})
    before = path.read_bytes()
    real_write = os.write

    def short_then_full(fd, data):
        if len(data) > 10:
            return real_write(fd, bytes(data[:10]))  # a partial write, then no space for the rest
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", short_then_full)
    with pytest.raises(OSError):
        append_jsonl(path, {"run_id": "r2", "prompt": "a long enough line"})
    monkeypatch.undo()
    assert path.read_bytes() == before
    append_jsonl(path, {"run_id": "r3"})
    assert [r["run_id"] for r in read_jsonl(path)] == ["r1", "r3"]
