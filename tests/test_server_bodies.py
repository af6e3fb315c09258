"""Hostile bodies against bestshot serve: the body cap acts before the body is read, oversized lists and
unknown keys are one error (not millions), the extras batch is bounded as a whole, memory is handed back
after a large request, and img2img does not echo its images. (Memory figures: bench/server_load.py --hostile.)"""

from __future__ import annotations

import asyncio
import base64
import io
import json

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient
from PIL import Image

from bestshot.server import (
    bodies,
    create_app,
)
from bestshot.server.a1111 import Img2ImgRequest, Limits, request_parameters
from bestshot.server.app import ServerSettings

BASE = "http://localhost"
SHAPE = {"error", "detail", "body", "errors"}


def _b64(size=(8, 8), color="red") -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def c(tmp_path_factory):
    root = tmp_path_factory.mktemp("bodies")
    settings = ServerSettings(
        out_dir=str(root / "images_out"),
        curate_dir=str(root / "outputs"),
        limits=Limits(max_body_mb=1, max_side=32, max_steps=4),
    )
    with TestClient(create_app(settings), base_url=BASE) as client:
        yield client


# ---------------------------------------------------------------------------------- 1. the body cap
def test_a_body_over_the_cap_is_413_in_a1111_shape(c):
    big = "A" * (2 << 20)
    r = c.post("/sdapi/v1/png-info", content=json.dumps({"image": big}), headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert set(r.json()) >= SHAPE and "--max-body-mb" in r.json()["detail"]
    assert c.post("/sdapi/v1/png-info", json={"image": _b64()}).status_code == 200  # under the cap: served


def test_a_chunked_body_over_the_cap_is_413_too(c):
    def chunks():  # no Content-Length: the server must count as it reads
        yield b'{"image": "'
        for _ in range(40):
            yield b"A" * 65536
        yield b'"}'

    r = c.post("/sdapi/v1/png-info", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and set(r.json()) >= SHAPE


def _drive(middleware, messages, declared=None):
    """Run ``middleware`` over an app that reads the whole body as FastAPI does; returns (status, reads)."""
    reads, sent = [0], {}

    async def app(scope, receive, send):
        while True:
            m = await receive()
            if not m.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive():
        reads[0] += 1
        return next(messages)

    async def send(m):
        if m["type"] == "http.response.start":
            sent["status"] = m["status"]

    headers = [(b"content-length", str(declared).encode())] if declared is not None else []
    asyncio.run(middleware(app)({"type": "http", "headers": headers}, receive, send))
    return sent["status"], reads[0]


def test_the_cap_stops_reading_at_the_limit_not_at_the_end():
    def stream(n):
        for i in range(n):
            yield {"type": "http.request", "body": b"x" * 1000, "more_body": i < n - 1}

    def limit(app):
        return bodies.BodyLimit(app, max_bytes=10_000)

    assert _drive(limit, stream(1000)) == (413, 11)  # refused on the 11th kB of a 1 MB body
    assert _drive(limit, stream(1000), declared=1_000_000) == (413, 0)  # Content-Length: not a byte read
    assert _drive(limit, stream(5)) == (200, 5)
    assert _drive(lambda app: bodies.BodyLimit(app, max_bytes=None), stream(50)) == (200, 50)


def test_memory_is_handed_back_after_a_large_request(monkeypatch):
    calls = []
    monkeypatch.setattr(bodies, "release_memory", lambda: calls.append(1))
    small = iter([{"type": "http.request", "body": b"x" * 1000, "more_body": False}])
    big = iter([{"type": "http.request", "body": b"x" * 200_000, "more_body": False}])
    _drive(lambda app: bodies.BodyLimit(app, None, trim_after=100_000), small)
    assert calls == []
    _drive(lambda app: bodies.BodyLimit(app, None, trim_after=100_000), big)
    assert calls == [1]


def test_release_memory_runs():
    import platform

    assert bodies.release_memory() is (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")


# ---------------------------------------------------------------------------------- 2. oversized containers
@pytest.mark.parametrize("n", [17, 200_000])
def test_a_long_list_is_one_error(c, n):
    r = c.post("/sdapi/v1/img2img", json={"prompt": "a", "init_images": [0] * n})
    assert r.status_code == 422
    body = r.json()
    assert len(body["detail"]) == 1 and "init_images" in body["errors"], body["errors"]


def test_many_unknown_keys_are_one_error(c):
    r = c.post("/v1/generate", json={"prompt": "a", **{f"k{i}": 0 for i in range(50_000)}})
    assert r.status_code == 422 and len(r.json()["detail"]) == 1 and "1000 items" in r.json()["errors"]
    r = c.post("/v1/generate", json={"prompt": "a", **{f"k{i}": 0 for i in range(8)}})
    assert r.status_code == 422 and len(r.json()["detail"]) == 1
    assert "unknown field(s) 'k0'" in r.json()["errors"] and "3 more" in r.json()["errors"]


def test_options_with_a_million_keys_is_one_422(c):
    r = c.post("/sdapi/v1/options", json={f"k{i}": 0 for i in range(5000)})
    assert r.status_code == 422 and "1000 items" in r.json()["errors"]


# ---------------------------------------------------------------------------------- 3. the extras batch
def test_the_extras_batch_is_bounded_as_a_whole(c):
    item = {"data": _b64((32, 32)), "name": "a"}
    body = {"upscaling_resize": 4, "upscaler_1": "Lanczos"}
    one = c.post("/sdapi/v1/extra-batch-images", json={"imageList": [item], **body})
    assert one.status_code == 200 and len(one.json()["images"]) == 1  # one 128² result: the largest single one
    r = c.post("/sdapi/v1/extra-batch-images", json={"imageList": [item] * 2, **body})
    assert r.status_code == 422 and "per batch" in r.json()["errors"]
    two = c.post("/sdapi/v1/extra-batch-images", json={"imageList": [item] * 2, **body, "upscaling_resize": 2})
    assert two.status_code == 200
    assert [Image.open(io.BytesIO(base64.b64decode(x))).size for x in two.json()["images"]] == [(64, 64)] * 2


# ---------------------------------------------------------------------------------- 5. img2img's parameters
def test_img2img_parameters_do_not_echo_the_images():
    req = Img2ImgRequest(prompt="a", init_images=["QUJD" * 1000], mask="TUFTSw==")
    p = request_parameters(req)
    assert p["init_images"] is None and p["mask"] is None and p["prompt"] == "a"
    req.include_init_images = True
    assert request_parameters(req)["init_images"] == ["QUJD" * 1000]


@pytest.mark.slow  # loads the embedded model (the unit test above is the fast check)
def test_img2img_route_answers_null_images_in_parameters(c):
    r = c.post(
        "/sdapi/v1/img2img",
        json={
            "prompt": "a red circle",
            "init_images": [_b64((32, 32))],
            "steps": 2,
            "width": 32,
            "height": 32,
            "denoising_strength": 0.5,
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["parameters"]["init_images"] is None and r.json()["parameters"]["mask"] is None
