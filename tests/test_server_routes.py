"""Every A1111 route the clients call answers with A1111's shape (never 404), png-info in A1111's format,
save_images honoured, best_of reachable from serve / options / override_settings."""

from __future__ import annotations

import base64
import io
import json

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from bestshot.server import create_app  # noqa: E402
from bestshot.server.app import ServerSettings  # noqa: E402

SMALL = {"steps": 2, "width": 32, "height": 32, "cfg_scale": 5.0}

GET_ROUTES = {
    "/sdapi/v1/schedulers": list,
    "/sdapi/v1/latent-upscale-modes": list,
    "/sdapi/v1/sd-vae": list,
    "/sdapi/v1/sd-modules": list,
    "/sdapi/v1/loras": list,
    "/sdapi/v1/embeddings": dict,
    "/sdapi/v1/prompt-styles": list,
    "/sdapi/v1/memory": dict,
    "/sdapi/v1/cmd-flags": dict,
    "/sdapi/v1/face-restorers": list,
    "/sdapi/v1/hypernetworks": list,
    "/sdapi/v1/realesrgan-models": list,
    "/sdapi/v1/scripts": dict,
    "/sdapi/v1/script-info": list,
    "/sdapi/v1/extensions": list,
    "/sdapi/v1/samplers": list,
    "/sdapi/v1/upscalers": list,
    "/sdapi/v1/sd-models": list,
    "/sdapi/v1/options": dict,
    "/sdapi/v1/progress": dict,
}
POST_ROUTES = [
    "/sdapi/v1/refresh-loras",
    "/sdapi/v1/refresh-checkpoints",
    "/sdapi/v1/refresh-vae",
    "/sdapi/v1/refresh-embeddings",
]  # A1111 answers null
EMPTY_POST_ROUTES = [
    "/sdapi/v1/unload-checkpoint",
    "/sdapi/v1/reload-checkpoint",
    "/sdapi/v1/interrupt",
    "/sdapi/v1/skip",
]  # A1111 answers {}


@pytest.fixture(scope="module")
def env(tiny_sd15, tiny_clip, tmp_path_factory):
    root = tmp_path_factory.mktemp("routes")
    settings = ServerSettings(model=tiny_sd15, scorer=tiny_clip, out_dir=str(root / "images_out"), best_of=2)
    with TestClient(create_app(settings), base_url="http://localhost") as c:
        yield c, root


def test_every_a1111_route_answers(env):
    c, _ = env
    for path, kind in GET_ROUTES.items():
        r = c.get(path)
        assert r.status_code == 200 and isinstance(r.json(), kind), (path, r.text)
    for path in POST_ROUTES:
        r = c.post(path)
        assert r.status_code == 200 and r.json() is None, (path, r.text)
    for path in EMPTY_POST_ROUTES:
        r = c.post(path)
        assert r.status_code == 200 and r.json() == {}, (path, r.text)
    assert c.get("/sdapi/v1/embeddings").json() == {"loaded": {}, "skipped": {}}
    assert {"ram", "cuda"} <= set(c.get("/sdapi/v1/memory").json())
    assert {m["name"] for m in c.get("/sdapi/v1/latent-upscale-modes").json()} >= {"Latent"}


def test_error_bodies_have_a1111_shape(env):
    c, _ = env
    r = c.post("/sdapi/v1/txt2img", json={"prompt": "a", "steps": 0})
    assert r.status_code == 422 and set(r.json()) >= {"error", "detail", "body", "errors"}
    r = c.get("/v1/runs/nope")
    assert r.status_code == 404 and r.json()["error"] == "HTTPException"


def test_png_info_in_a1111_format(env):
    c, _ = env
    img = c.post(
        "/sdapi/v1/txt2img",
        json={
            "prompt": "a green cross",
            "negative_prompt": "blur",
            "seed": 3,
            "best_of": 1,
            "sampler_name": "DPM++ 2M",
            "scheduler": "Karras",
            **SMALL,
        },
    ).json()["images"][0]
    p = c.post("/sdapi/v1/png-info", json={"image": img}).json()
    params = p["parameters"]
    assert params["Prompt"] == "a green cross" and params["Negative prompt"] == "blur"
    assert params["Steps"] == "2" and params["Seed"] == "3" and params["Size-1"] == "32"
    assert params["Sampler"] == "DPM++ 2M" and params["Schedule type"] == "Karras"
    assert params["Clip skip"] == "1" and p["info"].startswith("a green cross")


def test_extra_batch_images(env):
    c, _ = env
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, format="PNG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    r = c.post(
        "/sdapi/v1/extra-batch-images",
        json={
            "imageList": [{"data": b64, "name": "a"}, {"data": b64, "name": "b"}],
            "upscaling_resize": 2,
            "upscaler_1": "Lanczos",
        },
    )
    assert r.status_code == 200, r.text
    ims = [Image.open(io.BytesIO(base64.b64decode(x))) for x in r.json()["images"]]
    assert [im.size for im in ims] == [(16, 16), (16, 16)]


def test_save_images_false_keeps_nothing(env):
    c, root = env
    before = set((root / "images_out").rglob("*.png"))
    r = c.post("/sdapi/v1/txt2img", json={"prompt": "a red circle", "seed": 9, "save_images": False, **SMALL})
    assert r.status_code == 200 and len(r.json()["images"]) == 1
    assert set((root / "images_out").rglob("*.png")) == before
    assert json.loads(r.json()["info"])["bestshot"]["images"][0]["file"] is None


def test_best_of_reachable_from_serve_options_and_override(env):
    c, _ = env
    body = {"prompt": "a blue square", "seed": 20, **SMALL}
    info = json.loads(c.post("/sdapi/v1/txt2img", json=body).json()["info"])
    assert info["bestshot"]["best_of"] == 2  # serve --best-of 2
    assert c.get("/sdapi/v1/options").json()["bestshot_best_of"] == 2
    assert c.post("/sdapi/v1/options", json={"bestshot_best_of": 3}).status_code == 200
    info = json.loads(c.post("/sdapi/v1/txt2img", json=body).json()["info"])
    assert info["bestshot"]["best_of"] == 3 and len(info["bestshot"]["runs"][0]["candidates"]) == 3
    info = json.loads(
        c.post("/sdapi/v1/txt2img", json={**body, "override_settings": {"bestshot_best_of": 1}}).json()["info"]
    )
    assert info["bestshot"]["best_of"] == 1
    info = json.loads(c.post("/sdapi/v1/txt2img", json={**body, "best_of": 4}).json()["info"])
    assert info["bestshot"]["best_of"] == 4  # the request's own value wins
    assert c.post("/sdapi/v1/options", json={"bestshot_best_of": 0}).status_code == 422
    assert c.post("/sdapi/v1/options", json={"bestshot_best_of": 2}).status_code == 200
