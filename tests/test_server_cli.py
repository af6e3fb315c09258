"""`bestshot serve` as a command, auth, path safety, and curation (keep/delete/undo, upscale through
bestshot.curate)."""

from __future__ import annotations

import http.client
import json
import os
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from bestshot.server import create_app  # noqa: E402
from bestshot.server.background import BackgroundServer  # noqa: E402


def test_serve_command_runs_uvicorn(tiny_sd15, tiny_clip, tmp_path):
    import subprocess
    import sys
    import urllib.request

    from bestshot.server.background import free_port

    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bestshot.cli",
            "serve",
            "--port",
            str(port),
            "--model",
            tiny_sd15,
            "--scorer",
            tiny_clip,
            "--out-dir",
            str(tmp_path / "o"),
            "--token",
            "tok",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/sdapi/v1/sd-models", headers={"Authorization": "Bearer tok"}
        )
        for _ in range(600):
            try:
                with urllib.request.urlopen(req, timeout=2) as r:
                    assert json.loads(r.read())[0]["title"] == tiny_sd15
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()
                time.sleep(0.1)
        else:
            pytest.fail("bestshot serve did not answer")
    finally:
        proc.terminate()
        proc.wait(20)


def test_serve_command_refuses_bad_options():
    from typer.testing import CliRunner

    from bestshot.cli import app
    from bestshot.errors import BestshotError

    for args, msg in (
        (["--api-auth", "nopassword"], "--api-auth expects user:password"),
        (["--max-queue", "0"], "--max-queue must be >= 1"),
        (["--token", " "], "--token is empty"),
    ):
        res = CliRunner().invoke(app, ["serve", *args])
        assert isinstance(res.exception, BestshotError) and msg in str(res.exception), (args, res.output)


def _raw_get(url: str, path: str, headers: dict | None = None) -> tuple[int, bytes]:
    host, port = url.rsplit("//", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("GET", path, skip_host=False, skip_accept_encoding=True)
    for k, v in (headers or {}).items():
        conn.putheader(k, v)
    conn.endheaders()
    resp = conn.getresponse()
    out = resp.status, resp.read()
    conn.close()
    return out


def test_image_routes_cannot_escape_the_output_folder(tmp_path):
    out = tmp_path / "images_out"
    out.mkdir()
    secret = tmp_path / "secret.png"
    Image.new("RGB", (4, 4), (1, 2, 3)).save(secret)
    Image.new("RGB", (4, 4), (9, 9, 9)).save(out / "fine.png")
    os.symlink(secret, out / "link.png")
    (tmp_path / "outputs" / "stage1").mkdir(parents=True)
    secret_bytes = secret.read_bytes()
    app = create_app(model="embedded", out_dir=str(out), curate_dir=str(tmp_path / "outputs"))
    with BackgroundServer(app) as url:
        assert _raw_get(url, "/v1/images/fine.png")[0] == 200
        for path in [
            "/v1/images/../secret.png",
            "/v1/images/%2e%2e%2fsecret.png",
            "/v1/images/..%2fsecret.png",
            "/v1/images/%2e%2e/secret.png",
            f"/v1/images/{secret}",
            f"/v1/images/%2F{str(secret)[1:]}",
            "/v1/images/link.png",
            "/v1/images/index.sqlite",
            "/v1/images/..%5csecret.png",
            "/v1/curate/images/stage1/..%2f..%2fsecret.png",
            "/v1/curate/images/..%2fsecret.png/x.png",
        ]:
            status, body = _raw_get(url, path)
            assert status in (400, 404, 422), (path, status)
            assert secret_bytes not in body


def test_auth_token_and_basic(tmp_path):
    app = create_app(model="embedded", out_dir=str(tmp_path / "o"), token="s3cret")
    with TestClient(app, base_url="http://localhost") as c:
        assert c.get("/sdapi/v1/samplers").status_code == 401
        assert c.get("/sdapi/v1/samplers", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.get("/sdapi/v1/samplers", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/v1/runs").status_code == 401
        assert c.get("/").status_code == 200  # the gallery page itself holds no data
    app = create_app(model="embedded", out_dir=str(tmp_path / "o"), api_auth="alice:pw1,bob:pw2")
    with TestClient(app, base_url="http://localhost") as c:
        r = c.get("/sdapi/v1/options")
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic")
        assert c.get("/sdapi/v1/options", auth=("bob", "pw2")).status_code == 200
        assert c.get("/sdapi/v1/options", auth=("bob", "pw1")).status_code == 401


def test_curation_keep_delete_undo(tmp_path):
    root = tmp_path / "outputs"
    (root / "stage1").mkdir(parents=True)
    (root / "metadata").mkdir()
    for i in range(2):
        Image.new("RGB", (8, 8), (i * 100, 0, 0)).save(root / "stage1" / f"img{i}.png")
        (root / "metadata" / f"img{i}.json").write_text(json.dumps({"seed": i, "clip": 0.3}))
    app = create_app(model="embedded", out_dir=str(tmp_path / "o"), curate_dir=str(root))
    with TestClient(app, base_url="http://localhost") as c:
        listing = c.get("/v1/curate").json()
        assert sorted(x["name"] for x in listing["stage1"]) == ["img0.png", "img1.png"]
        assert c.post("/v1/curate/keep", json={"name": "img0.png"}).status_code == 200
        assert json.loads((root / "curation.json").read_text())["kept"] == ["img0.png"]
        assert c.post("/v1/curate/delete", json={"name": "img1.png"}).status_code == 200
        assert (root / "trash" / "img1.png").is_file() and (root / "trash" / "img1.json").is_file()
        assert not (root / "stage1" / "img1.png").exists() and not (root / "metadata" / "img1.json").exists()
        assert c.get("/v1/curate").json()["trash"] == ["img1.png"]
        assert c.post("/v1/curate/undo", json={"name": "img1.png"}).status_code == 200
        assert (root / "stage1" / "img1.png").is_file() and (root / "metadata" / "img1.json").is_file()
        assert c.get("/v1/curate/images/stage1/img1.png").status_code == 200
        for bad in ("../img0.png", "/etc/passwd", "img9.png", "stage1/img0.png"):
            assert c.post("/v1/curate/delete", json={"name": bad}).status_code in (404, 422), bad
        r = c.post("/v1/curate/upscale")  # no --curate-config: unavailable, and it says how to fix it
        assert r.status_code == 503 and "--curate-config" in r.json()["detail"]
        assert c.get("/v1/curate").json()["upscale_available"] is False


def test_upscale_kept_runs_the_curate_workflow(tiny_sd15, tmp_path):
    pytest.importorskip("bestshot.curate.workflow")
    import yaml

    cfg = {
        "model": {"base": tiny_sd15, "scheduler": None},
        "generation": {
            "base_width": 32,
            "base_height": 32,
            "stage2": {"enabled": False},
            "stage3": {"enabled": False, "scale": 2},
        },
        "upscaler": {"backend": "lanczos"},
        "lora": {"enabled": False},
        "paths": {"outputs": "outputs"},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    root = tmp_path / "outputs"
    (root / "stage1").mkdir(parents=True)
    (root / "metadata").mkdir()
    for tag in ("20261123_101010", "20261123_101011"):
        Image.new("RGB", (32, 32), (200, 10, 10)).save(root / "stage1" / f"{tag}_stage1_32x32.png")
        (root / "metadata" / f"{tag}.json").write_text(
            json.dumps({"tag": tag, "prompt": "a red circle", "seed": 5, "negative": ""})
        )
    app = create_app(
        model=tiny_sd15,
        out_dir=str(tmp_path / "o"),
        curate_config=str(tmp_path / "config.yaml"),
        curate_dir=str(tmp_path / "elsewhere"),
    )
    with TestClient(app, base_url="http://localhost") as c:
        listing = c.get("/v1/curate").json()
        assert listing["upscale_available"] and len(listing["stage1"]) == 2  # the config's outputs folder wins
        assert c.post("/v1/curate/upscale").status_code == 422  # nothing kept yet
        assert c.post("/v1/curate/keep", json={"name": "20261123_101011_stage1_32x32.png"}).status_code == 200
        r = c.post("/v1/curate/upscale")
        assert r.status_code == 202, r.text
        job_id = r.json()["job"]
        for _ in range(600):
            job = c.get(f"/v1/jobs/{job_id}").json()
            if job["state"] == "done":
                break
            time.sleep(0.05)
        assert job["error"] is None, job
        assert [Path(p).name for p in job["result"]["final"]] == ["20261123_101011_final_64x64.png"]
        assert (root / "final" / "20261123_101011_final_64x64.png").is_file()
        assert not list((root / "final").glob("20261123_101010_*"))  # only the kept one
