"""One sampler table, schedulers always built from the model's own config: the same seed and settings give
the same pixels whatever ran before (issue 25's reproducibility bug)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from bestshot.models.loader import load_pipeline  # noqa: E402
from bestshot.schedulers import SAMPLERS, SCHEDULE_TYPES, scheduler_spec  # noqa: E402
from bestshot.server import create_app  # noqa: E402
from bestshot.store import parse_parameters  # noqa: E402

A1111_SAMPLERS = [
    "Euler",
    "Euler a",
    "DPM++ 2M",
    "DPM++ 2M SDE",
    "DPM++ SDE",
    "DPM++ 3M SDE",
    "DPM++ 2S a",
    "DPM2",
    "DPM2 a",
    "Heun",
    "LMS",
    "DDIM",
    "PLMS",
    "UniPC",
    "LCM",
    "Restart",
]
A1111_TYPES = [
    "Automatic",
    "Uniform",
    "Karras",
    "Exponential",
    "Polyexponential",
    "SGM Uniform",
    "KL Optimal",
    "Align Your Steps",
    "Simple",
    "Normal",
    "DDIM",
    "Beta",
]


def test_every_a1111_sampler_and_schedule_type_is_in_the_table():
    for name in A1111_SAMPLERS:
        for st in A1111_TYPES:
            spec = scheduler_spec(name, st)
            assert spec.sampler.label == name
    assert scheduler_spec("DPM++ 2M Karras").key == "dpmpp_2m:karras"  # old-style names with the type inside
    assert scheduler_spec("dpmpp_2m_karras").kwargs()["use_karras_sigmas"] is True
    assert scheduler_spec("Restart").notes()  # an approximation says so
    assert len({s.key for s in SAMPLERS.values()}) == len(SAMPLERS) and "karras" in SCHEDULE_TYPES


def test_loader_builds_from_the_models_original_config(tiny_sd15):
    pipe = load_pipeline(tiny_sd15, device="cpu", scheduler="DPM++ 2M Karras")
    assert pipe.scheduler.config.use_karras_sigmas is True
    pipe = load_pipeline(tiny_sd15, device="cpu", scheduler="unipc")
    assert type(pipe.scheduler).__name__ == "UniPCMultistepScheduler"
    assert not pipe.scheduler.config.get("use_karras_sigmas")  # was inherited from the previous call's scheduler


@pytest.mark.parametrize("name", A1111_SAMPLERS)
def test_every_sampler_builds_on_a_real_scheduler(tiny_sd15, name):
    pipe = load_pipeline(tiny_sd15, device="cpu", scheduler=name)
    assert pipe.scheduler._bestshot_label == name


def _pixels(r) -> tuple[np.ndarray, dict]:
    assert r.status_code == 200, r.text
    b64 = r.json()["images"][0]
    im = Image.open(io.BytesIO(base64.b64decode(b64)))
    return np.asarray(im.convert("RGB")), parse_parameters(im.info["parameters"])


def test_interleaved_requests_give_the_same_pixels(tiny_sd15, tiny_clip, tmp_path):
    app = create_app(model=tiny_sd15, scorer=tiny_clip, out_dir=str(tmp_path / "o"))
    body = {"prompt": "a red circle", "seed": 42, "steps": 4, "width": 32, "height": 32, "cfg_scale": 5.0}
    with TestClient(app, base_url="http://localhost") as c:
        alone, p_alone = _pixels(c.post("/sdapi/v1/txt2img", json={**body, "sampler_name": "UniPC"}))
        karras, p_karras = _pixels(
            c.post("/sdapi/v1/txt2img", json={**body, "sampler_name": "DPM++ 2M", "scheduler": "Karras"})
        )
        after, p_after = _pixels(c.post("/sdapi/v1/txt2img", json={**body, "sampler_name": "UniPC"}))
        plain, _ = _pixels(c.post("/sdapi/v1/txt2img", json={**body, "sampler_name": "DPM++ 2M Karras"}))
        samplers = [s["name"] for s in c.get("/sdapi/v1/samplers").json()]
        types = [s["label"] for s in c.get("/sdapi/v1/schedulers").json()]
    assert np.array_equal(alone, after)  # UniPC after DPM++ 2M Karras is UniPC
    assert np.array_equal(karras, plain)  # both spellings of the same sampler
    assert p_alone["Sampler"] == p_after["Sampler"] == "UniPC"
    assert p_karras["Sampler"] == "DPM++ 2M Karras"
    assert set(A1111_SAMPLERS) <= set(samplers) and set(A1111_TYPES) <= set(types)
