"""The A1111 routes with ControlNet units (sd-webui-controlnet's request shape and routes), variation seeds,
override_settings.sd_vae and the image safety check, on tiny random SD 1.5 models."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from bestshot.server import create_app  # noqa: E402
from test_control import _controlnet, _ip_adapter, _safety_checker  # noqa: E402
from test_server_clients import FIXTURES, replay  # noqa: E402

SMALL = {"steps": 2, "width": 32, "height": 32, "seed": 9}


def _b64_image(seed: int = 0) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _pixels(b64: str) -> np.ndarray:
    """An answer's image as pixels (its PNG text chunks hold the run id, which differs per request)."""
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"), dtype=np.int16)


def _fill(obj, values):
    if isinstance(obj, str):
        for k, v in values.items():
            obj = obj.replace(k, v)
        return obj
    if isinstance(obj, dict):
        return {k: _fill(v, values) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_fill(v, values) for v in obj]
    return obj


@pytest.fixture(scope="module")
def server(tiny_sd15, tiny_clip, tmp_path_factory):
    from diffusers import AutoencoderKL

    from bestshot.models.loader import load_pipeline

    root = tmp_path_factory.mktemp("srv")
    pipe = load_pipeline(tiny_sd15, device="cpu")
    _controlnet(pipe.unet, root / "models" / "ControlNet" / "tiny_canny")
    _ip_adapter(pipe.unet, root / "models" / "ControlNet")  # ip-adapter_tiny.safetensors + image_encoder/
    AutoencoderKL.from_config(pipe.vae.config).save_pretrained(root / "models" / "VAE" / "alt-vae")
    app = create_app(model=tiny_sd15, scorer=tiny_clip, out_dir=str(root / "images_out"))
    with TestClient(app, base_url="http://127.0.0.1:7860") as c:
        yield c


def test_controlnet_extension_client_sequence(server, tiny_sd15):
    fixture = _fill(
        json.loads((FIXTURES / "controlnet_extension.json").read_text()),
        {"$CONTROLNET": "tiny_canny", "$CONTROL_IMAGE": _b64_image()},
    )
    assert server.get("/controlnet/model_list").json() == {"model_list": ["tiny_canny", "ip-adapter_tiny.safetensors"]}
    modules = server.get("/controlnet/module_list").json()
    assert "canny" in modules["module_list"] and modules["module_detail"]["canny"]["sliders"]
    assert server.get("/controlnet/version").json() == {"version": 2}
    done = replay(server, fixture, tiny_sd15)
    r = done["gen"]
    assert r.status_code == 200, r.text
    assert r.json()["images"][0]
    info = json.loads(r.json()["info"])
    cn = info["bestshot"]["controlnet"]
    assert cn["units"] == 2 and cn["modules"] == ["canny:64:64", "invert"]
    assert "alwayson_scripts" not in info["bestshot"].get("ignored", {})
    assert "ControlNet 1: " in info["infotexts"][0]


def test_controlnet_weight_changes_the_image(server):
    def unit(weight):
        return {"image": _b64_image(), "module": "none", "model": "tiny_canny", "weight": weight}

    def draw(units):
        body = {"prompt": "a house", **SMALL, "alwayson_scripts": {"controlnet": {"args": units}}}
        r = server.post("/sdapi/v1/txt2img", json=body)
        assert r.status_code == 200, r.text
        return _pixels(r.json()["images"][0])

    plain, zero, full = draw([]), draw([unit(0.0)]), draw([unit(1.0)])
    assert np.array_equal(plain, zero) and np.abs(plain - full).max() > 0


def test_ip_adapter_unit(server):
    def draw(units):
        body = {"prompt": "a house", **SMALL, "alwayson_scripts": {"controlnet": {"args": units}}}
        r = server.post("/sdapi/v1/txt2img", json=body)
        assert r.status_code == 200, r.text
        return _pixels(r.json()["images"][0]), json.loads(r.json()["info"])["bestshot"]

    def unit(weight):
        return {
            "module": "ip-adapter_clip_sd15",
            "model": "ip-adapter_tiny [0a1b2c3d]",
            "weight": weight,
            "image": _b64_image(2),
        }

    plain, _ = draw([])
    zero, _ = draw([unit(0.0)])
    full, info = draw([unit(1.0)])
    assert np.array_equal(plain, zero) and np.abs(plain - full).max() > 0
    assert info["ip_adapter"] == {"model": "ip-adapter_tiny.safetensors", "scale": 1.0}
    bad = {**unit(1.0), "model": "ip-adapter_plus"}
    r = server.post(
        "/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, "alwayson_scripts": {"controlnet": {"args": [bad]}}}
    )
    assert r.status_code == 422 and "args[0].model" in r.text


@pytest.mark.parametrize(
    ("unit", "field"),
    [
        ({"image": "bm90IGFuIGltYWdl", "model": "tiny_canny"}, "alwayson_scripts.controlnet.args[0].image"),
        ({"model": "tiny_canny"}, "alwayson_scripts.controlnet.args[0].image"),
        ({"image": "$IMG", "model": "control_v11p_sd15_depth [cafebabe]"}, "alwayson_scripts.controlnet.args[0].model"),
        ({"image": "$IMG", "model": "tiny_canny", "module": "openpose"}, "alwayson_scripts.controlnet.args[0].module"),
        ({"image": "$IMG", "model": "tiny_canny", "weight": "lots"}, "alwayson_scripts.controlnet.args[0].weight"),
        ({"image": "$IMG", "model": "tiny_canny", "resize_mode": 7}, "alwayson_scripts.controlnet.args[0].resize_mode"),
    ],
)
def test_bad_controlnet_units_get_422_naming_the_field(server, unit, field):
    unit = _fill(unit, {"$IMG": _b64_image()})
    r = server.post(
        "/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, "alwayson_scripts": {"controlnet": {"args": [unit]}}}
    )
    assert r.status_code == 422, r.text
    assert field in r.text and "Traceback" not in r.text
    body = r.json()
    assert {"error", "detail"} <= set(body)


def test_variation_seeds_on_txt2img(server):
    body = {"prompt": "a boat", **SMALL, "batch_size": 2, "subseed": 5, "subseed_strength": 0.5}
    r = server.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["subseed"] == 5 and info["all_subseeds"] == [5, 6] and info["subseed_strength"] == 0.5
    assert "Variation seed: 6, Variation seed strength: 0.5" in info["infotexts"][1]
    assert "subseed_strength" not in info["bestshot"].get("ignored", {})
    plain = server.post("/sdapi/v1/txt2img", json={**body, "subseed_strength": 0}).json()
    assert np.abs(_pixels(plain["images"][0]) - _pixels(r.json()["images"][0])).max() > 0
    assert json.loads(plain["info"])["subseed"] == -1


def test_sd_vae_list_and_override(server):
    vaes = server.get("/sdapi/v1/sd-vae").json()
    assert [v["model_name"] for v in vaes] == ["alt-vae"] and all(set(v) == {"model_name", "filename"} for v in vaes)
    own = server.post("/sdapi/v1/txt2img", json={"prompt": "a tree", **SMALL}).json()
    auto = server.post(
        "/sdapi/v1/txt2img", json={"prompt": "a tree", **SMALL, "override_settings": {"sd_vae": "Automatic"}}
    ).json()
    alt = server.post(
        "/sdapi/v1/txt2img", json={"prompt": "a tree", **SMALL, "override_settings": {"sd_vae": "alt-vae"}}
    ).json()
    assert np.array_equal(_pixels(own["images"][0]), _pixels(auto["images"][0]))
    assert np.abs(_pixels(own["images"][0]) - _pixels(alt["images"][0])).max() > 0
    assert json.loads(alt["info"])["sd_vae_name"] == "alt-vae"
    r = server.post("/sdapi/v1/txt2img", json={"prompt": "a tree", **SMALL, "override_settings": {"sd_vae": "nope"}})
    assert r.status_code == 422 and "sd_vae" in r.text


def test_safety_checker_on_the_server(tiny_sd15, tiny_clip, tmp_path):
    checker = _safety_checker(tmp_path / "checker", None, -5.0)  # flags everything
    app = create_app(model=tiny_sd15, scorer=tiny_clip, out_dir=str(tmp_path / "o"), safety_checker=checker)
    with TestClient(app, base_url="http://127.0.0.1:7860") as c:
        r = c.post("/sdapi/v1/txt2img", json={"prompt": "a cat", **SMALL, "batch_size": 2})
        assert r.status_code == 200, r.text
        data = r.json()
        info = json.loads(data["info"])
        assert info["bestshot"]["nsfw_flagged"] == 2 and info["bestshot"]["returned_images"] == 0
        assert len(data["images"]) == 2 and not _pixels(data["images"][0]).any()  # black, as diffusers answers
        assert not list(Path(tmp_path / "o").rglob("*.png"))  # a flagged image is never written
