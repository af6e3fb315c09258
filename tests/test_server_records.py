"""The server's records stay true: an interrupted or shut-down run is logged as stopped (never as a finished,
reproducible one), a full or read-only output folder is a 507 naming it on every generation route (and the
server serves again once space returns), and ``save_images: false`` leaves no reference to a deleted file."""

from __future__ import annotations

import base64
import errno
import io
import json
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from bestshot.server import create_app  # noqa: E402
from bestshot.store import Store, read_jsonl  # noqa: E402

BASE = "http://localhost"
LONG = {"prompt": "a red circle", "steps": 150, "width": 32, "height": 32, "n_iter": 6, "best_of": 4, "seed": 1}
SHORT = {"prompt": "a red circle", "steps": 2, "width": 32, "height": 32, "best_of": 2, "seed": 1}


def _b64(im: Image.Image) -> str:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


I2I = dict(SHORT, init_images=[_b64(Image.new("RGB", (32, 32), (200, 30, 30)))], denoising_strength=0.5, steps=4)


@pytest.fixture
def srv(tiny_sd15, tiny_clip, tmp_path):
    out = tmp_path / "images_out"
    app = create_app(model=tiny_sd15, scorer=tiny_clip, out_dir=str(out), max_queue=4)
    with TestClient(app, base_url=BASE) as client:
        yield SimpleNamespace(
            app=app,
            c=client,
            out=out,
            log=tmp_path / "images_log.jsonl",
            store=Store(root=out, log_path=tmp_path / "images_log.jsonl"),
        )


def _start(c, body):
    res = {}
    th = threading.Thread(target=lambda: res.setdefault("r", c.post("/sdapi/v1/txt2img", json=body)))
    th.start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if c.get("/sdapi/v1/progress").json()["state"]["sampling_step"] >= 1:
            return th, res
        time.sleep(0.02)
    raise AssertionError("the job never started")


def _consistent(s) -> list[dict]:
    """Every logged run is indexed, and every image path the log or the index names exists."""
    runs = read_jsonl(s.log)
    indexed = {r["run_id"]: r for r in s.store.index.list(limit=1000)}
    assert set(indexed) == {r["run_id"] for r in runs}
    for rec in runs + list(indexed.values()):
        for path in [rec.get("img_path")] + [c.get("path") for c in rec.get("candidates") or []]:
            if path:
                assert s.store.resolve_path(path, rec).is_file(), (path, rec["run_id"])
    return runs


@pytest.mark.parametrize("how", ["interrupt", "shutdown"])
def test_a_stopped_run_is_logged_as_stopped_not_as_finished(srv, how):
    th, res = _start(srv.c, LONG)
    if how == "interrupt":
        assert srv.c.post("/sdapi/v1/interrupt").status_code == 200
    else:  # what SIGTERM does (the app's lifespan): queued jobs refused, the running one stopped at its next step
        srv.app.state.jobs.shutdown()
    th.join(300)
    r = res["r"]
    assert r.status_code == 200, r.text
    bs = json.loads(r.json()["info"])["bestshot"]
    assert bs["interrupted"] is True and len(r.json()["images"]) >= 1  # the client still gets its image, marked
    runs = {rec["run_id"]: rec for rec in _consistent(srv)}
    stopped = [runs[x["run_id"]] for x in bs["runs"] if runs[x["run_id"]].get("interrupted")]
    assert len(stopped) == 1, bs["runs"]
    rec = stopped[0]
    assert rec["ok"] is False and rec["reason"] == "interrupted" and rec["stopped"] == how
    assert 1 <= rec["steps_done"] < 150 and rec["settings"]["steps"] == 150
    assert rec.get("reproduce") is None and rec["img_path"] is None  # no bit-exact claim, no kept best
    assert all(c["steps_done"] == rec["steps_done"] for c in rec["candidates"])
    for x in bs["runs"]:  # the runs that finished before it are finished ones
        if x["run_id"] != rec["run_id"]:
            assert runs[x["run_id"]]["ok"] is True and "interrupted" not in runs[x["run_id"]]
            assert "bit-exact" in runs[x["run_id"]]["reproduce"]
    listed = srv.c.get(f"/v1/runs/{rec['run_id']}").json()
    assert listed["interrupted"] is True and listed["ok"] is False and listed["img_file"] is None


def test_skip_records_the_skipped_run(srv):
    th, res = _start(srv.c, dict(LONG, n_iter=2, steps=60))
    assert srv.c.post("/sdapi/v1/skip").status_code == 200
    th.join(300)
    bs = json.loads(res["r"].json()["info"])["bestshot"]
    runs = {rec["run_id"]: rec for rec in _consistent(srv)}
    first, second = (runs[x["run_id"]] for x in bs["runs"])
    assert first["stopped"] == "skip" and first["ok"] is False and first["steps_done"] < 60
    assert second["ok"] is True and "stopped" not in second


# ------------------------------------------------------------------------------ full / read-only folder


def _fail_png_renames(monkeypatch, eno):
    real = os.replace

    def replace(src, dst, *a, **k):
        if str(dst).endswith(".png"):
            raise OSError(eno, os.strerror(eno))
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)


def _block_folder(monkeypatch, folder: Path, eno):
    real = os.open

    def fake_open(path, flags, *a, **k):
        if os.path.abspath(path).startswith(str(folder)) and flags & os.O_CREAT:
            raise OSError(eno, os.strerror(eno), str(path))
        return real(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", fake_open)


@pytest.mark.parametrize("route, body", [("txt2img", SHORT), ("img2img", I2I)])
@pytest.mark.parametrize(
    "where, eno, needle", [("rename", errno.ENOSPC, "disk space"), ("folder", errno.EROFS, "read-only")]
)
def test_storage_failure_is_a_507_naming_the_folder_and_the_server_serves_again(
    srv, monkeypatch, route, body, where, eno, needle
):
    body = dict(body, save_images=True)  # the images are to be kept (A1111's API default keeps none)
    if where == "rename":
        _fail_png_renames(monkeypatch, eno)
    else:
        _block_folder(monkeypatch, srv.out, eno)
    r = srv.c.post(f"/sdapi/v1/{route}", json=body)
    assert r.status_code == 507, r.text
    err = r.json()
    assert set(err) >= {"error", "detail", "body", "errors"} and err["error"] == "StorageError"
    assert needle in err["detail"] and str(srv.out) in err["detail"] and "Traceback" not in r.text
    assert [p.name for p in srv.out.iterdir() if p.suffix in (".png", ".tmp")] == []  # nothing half-written
    assert read_jsonl(srv.log) == []  # and no log line without its images
    monkeypatch.undo()  # space is back
    r = srv.c.post(f"/sdapi/v1/{route}", json=body)
    assert r.status_code == 200, r.text
    assert len(_consistent(srv)) == 1


# ------------------------------------------------------------------------------ save_images: false


@pytest.mark.parametrize(
    "route, body",
    [
        ("txt2img", dict(SHORT, n_iter=2)),
        ("img2img", I2I),
        ("txt2img", dict(SHORT, enable_hr=True, hr_scale=1.5, steps=3)),
    ],
)
def test_save_images_false_records_that_nothing_was_kept(srv, route, body):
    r = srv.c.post(f"/sdapi/v1/{route}", json=dict(body, save_images=False))
    assert r.status_code == 200, r.text
    assert r.json()["images"] and json.loads(r.json()["info"])["bestshot"]["saved"] is False
    assert [p.name for p in srv.out.iterdir() if p.suffix in (".png", ".tmp")] == []
    runs = _consistent(srv)  # no dangling reference: the log and /v1/runs name no file
    assert runs and all(rec["saved"] is False and rec["img_path"] is None for rec in runs)
    assert all(c["path"] is None for rec in runs for c in rec["candidates"])
    for run in srv.c.get("/v1/runs").json()["runs"]:
        assert run["img_file"] is None and all(c["file"] is None for c in run["candidates"])


@pytest.mark.parametrize("action", ["keep", "delete"])
def test_a_curation_write_on_a_read_only_folder_is_a_507(tiny_sd15, tiny_clip, tmp_path, monkeypatch, action):
    """Every route: a gallery verdict whose preference row (keep) or file move (delete) cannot be written."""
    import bestshot.scoring.taste as T

    curate = tmp_path / "outputs"
    (curate / "stage1").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(curate / "stage1" / "a.png")
    app = create_app(model=tiny_sd15, scorer=tiny_clip, out_dir=str(tmp_path / "images_out"), curate_dir=str(curate))

    def ro(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(curate / "stage1"))

    monkeypatch.setattr(T, "append_jsonl", ro)
    if action == "delete":
        monkeypatch.setattr(os, "replace", ro)
    with TestClient(app, base_url=BASE) as c:
        r = c.post(f"/v1/curate/{action}", json={"name": "a.png"})
    assert r.status_code == 507, r.text
    body = r.json()
    assert set(body) >= {"error", "detail", "body", "errors"} and body["error"] == "StorageError"
    assert "read-only" in body["detail"] and str(curate) in body["detail"]
