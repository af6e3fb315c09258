"""img2img with a mask (inpainting): only the masked part changes; A1111's mask options are honoured."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from bestshot.server import create_app  # noqa: E402
from bestshot.server.jobs import _crop_region, prepare_mask  # noqa: E402


def _b64(im: Image.Image) -> str:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _img(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")).astype(int)


@pytest.fixture(scope="module")
def c(tiny_sd15, tiny_clip, tmp_path_factory):
    app = create_app(model=tiny_sd15, scorer=tiny_clip, out_dir=str(tmp_path_factory.mktemp("inpaint") / "o"))
    with TestClient(app, base_url="http://localhost") as client:
        yield client


INIT = Image.new("RGB", (32, 32), (200, 30, 30))
MASK = Image.new("L", (32, 32), 0)
ImageDraw.Draw(MASK).rectangle((8, 8, 23, 23), fill=255)


@pytest.mark.parametrize("only_masked", [False, True])
@pytest.mark.parametrize("fill", [0, 1, 2, 3])
def test_mask_repaints_only_the_masked_part(c, only_masked, fill):
    body = {
        "prompt": "a blue square",
        "init_images": [_b64(INIT)],
        "mask": _b64(MASK),
        "mask_blur": 0,
        "inpainting_fill": fill,
        "inpaint_full_res": only_masked,
        "inpaint_full_res_padding": 4,
        "denoising_strength": 1.0,
        "steps": 4,
        "width": 32,
        "height": 32,
        "seed": 3,
    }
    r = c.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 200, r.text
    out = _img(r.json()["images"][0])
    init = np.asarray(INIT).astype(int)
    outside = np.asarray(MASK) == 0
    assert np.abs(out[outside] - init[outside]).max() <= 2  # untouched outside the mask
    assert np.abs(out[~outside] - init[~outside]).mean() > 5  # repainted inside
    info = json.loads(r.json()["info"])
    assert info["bestshot"]["inpaint"]["inpainting_fill"] == fill


def test_inverted_and_empty_masks(c):
    body = {
        "prompt": "a blue square",
        "init_images": [_b64(INIT)],
        "mask": _b64(Image.new("L", (32, 32), 0)),
        "steps": 4,
        "width": 32,
        "height": 32,
    }
    r = c.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 422 and "mask" in r.text
    r = c.post(
        "/sdapi/v1/img2img", json={**body, "inpainting_mask_invert": 1, "mask_blur": 0, "denoising_strength": 1.0}
    )
    assert r.status_code == 200, r.text


def test_a_mask_of_another_size_is_resized_and_info_says_so(c):
    big = MASK.resize((64, 64))
    body = {"prompt": "a blue square", "init_images": [_b64(INIT)], "steps": 4, "width": 32, "height": 32}
    r = c.post("/sdapi/v1/img2img", json={**body, "mask": _b64(big), "mask_blur": 0, "denoising_strength": 1.0})
    assert r.status_code == 200, r.text
    note = json.loads(r.json()["info"])["bestshot"]["inpaint"]["mask_resized"]
    assert "64x64 resized to 32x32" in note
    r = c.post("/sdapi/v1/img2img", json={**body, "mask": _b64(MASK), "mask_blur": 0, "denoising_strength": 1.0})
    assert "mask_resized" not in json.loads(r.json()["info"])["bestshot"]["inpaint"]


def test_mask_helpers():
    m = prepare_mask(MASK, (64, 64), blur=4, invert=False)
    assert m.size == (64, 64) and 0 < np.asarray(m)[16, 15] < 255  # blurred edge
    assert _crop_region(MASK, 4, 1.0) == (4, 4, 28, 28)
    x0, y0, x1, y1 = _crop_region(MASK, 0, 2.0)  # widened to the aspect asked
    assert (x1 - x0) == 2 * (y1 - y0)


def test_embedded_model_masked_sdedit(tmp_path):
    """The embedded pixel-space model has no diffusers img2img: its own pipeline does SDEdit, masked."""
    with TestClient(create_app(out_dir=str(tmp_path / "o")), base_url="http://localhost") as c:
        body = {
            "prompt": "a blue square",
            "init_images": [_b64(INIT)],
            "mask": _b64(MASK),
            "mask_blur": 0,
            "inpaint_full_res": False,
            "denoising_strength": 1.0,
            "steps": 8,
            "seed": 2,
        }
        r = c.post("/sdapi/v1/img2img", json=body)
        assert r.status_code == 200, r.text
        out = _img(r.json()["images"][0])
        init = np.asarray(INIT).astype(int)
        outside = np.asarray(MASK) == 0
        assert np.abs(out[outside] - init[outside]).max() <= 2
        assert np.abs(out[~outside] - init[~outside]).mean() > 5
        plain = c.post(
            "/sdapi/v1/img2img",
            json={
                "prompt": "a blue square",
                "init_images": [_b64(INIT)],
                "denoising_strength": 0.5,
                "steps": 8,
                "seed": 2,
            },
        )
        assert plain.status_code == 200, plain.text  # unmasked SDEdit too


def test_enable_hr_upscales_and_repaints(c):
    body = {
        "prompt": "a red circle",
        "seed": 11,
        "steps": 4,
        "width": 32,
        "height": 32,
        "enable_hr": True,
        "hr_scale": 2,
        "hr_upscaler": "Latent",
        "denoising_strength": 0.5,
        "batch_size": 2,
    }
    r = c.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    ims = [Image.open(io.BytesIO(base64.b64decode(b))) for b in r.json()["images"]]
    assert [im.size for im in ims] == [(64, 64), (64, 64)]
    info = json.loads(r.json()["info"])
    assert (info["width"], info["height"]) == (64, 64) and info["all_seeds"] == [11, 12]
    assert info["bestshot"]["hires"]["size"] == "64x64"
    assert "Denoising strength: 0.5" in info["infotexts"][0]
    r = c.post("/sdapi/v1/txt2img", json={**body, "hr_resize_x": 48, "hr_resize_y": 40, "hr_upscaler": "Lanczos"})
    assert r.status_code == 200 and Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).size == (48, 40)
    assert c.post("/sdapi/v1/txt2img", json={**body, "hr_upscaler": "Nope"}).status_code == 422
    r = c.post("/sdapi/v1/txt2img", json={**body, "batch_size": 1, "best_of": 2})  # hires on the best of 2
    info = json.loads(r.json()["info"])
    assert r.status_code == 200 and len(r.json()["images"]) == 1 and info["bestshot"]["best_of"] == 2
    assert Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).size == (64, 64)


def test_enable_hr_on_the_embedded_model(tmp_path):
    with TestClient(create_app(out_dir=str(tmp_path / "o")), base_url="http://localhost") as c:
        r = c.post(
            "/sdapi/v1/txt2img",
            json={"prompt": "a red circle", "steps": 4, "enable_hr": True, "denoising_strength": 0.5},
        )
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["bestshot"]["hires"]["size"] == "64x64"
    assert Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).size == (64, 64)
