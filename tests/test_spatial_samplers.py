"""Spatial guidance under every sampler: a prompt that states a relation ("A above B") steers the embedded
model's samples with the relation's gradient, scaled by how much clean image the sample holds. Samplers of
the k-diffusion family (Euler, Euler a, LMS, Heun, DPM2, DPM2 a, Restart) sample in sigma space with float
timesteps; they must steer as well as the alpha-space ones (DDIM, DPM++, UniPC), over HTTP and the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("fastapi")

from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from bestshot.models.loader import load_pipeline  # noqa: E402
from bestshot.models.registry import EMBEDDED_DIR  # noqa: E402
from bestshot.schedulers import SAMPLERS  # noqa: E402
from bestshot.server import create_app  # noqa: E402

RELATION = "a red circle above a blue square"
NOISE_SAMPLERS = [s for s in SAMPLERS.values() if not s.flow]


@pytest.fixture(scope="module")
def embedded_client(tmp_path_factory):
    app = create_app(out_dir=str(tmp_path_factory.mktemp("spatial") / "o"))
    with TestClient(app, base_url="http://localhost") as c:
        yield c


@pytest.mark.parametrize("sampler", NOISE_SAMPLERS, ids=lambda s: s.key)
def test_every_sampler_with_a_relation_prompt_over_http(embedded_client, sampler):
    body = {
        "prompt": RELATION,
        "sampler_name": sampler.label,
        "steps": max(4, sampler.min_steps),
        "width": 32,
        "height": 32,
        "seed": 3,
        "save_images": False,
    }
    r = embedded_client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert len(r.json()["images"]) == 1 and info["sampler_name"].startswith(sampler.label)


def test_a_flow_sampler_is_refused_by_name_not_with_a_500(embedded_client):
    r = embedded_client.post("/sdapi/v1/txt2img", json={"prompt": RELATION, "sampler_name": "flow_euler", "steps": 4})
    assert r.status_code == 422 and "flow_euler" in r.json()["detail"]


def test_x0_weight_follows_each_schedulers_noise_level():
    pipe = load_pipeline(str(EMBEDDED_DIR), device="cpu")
    cfg = pipe.scheduler.config
    acp = DDIMScheduler.from_config(cfg).alphas_cumprod
    # alpha space, integer timesteps, Karras sigmas included: sqrt(alpha_bar) of the returned sample's timestep
    for sched in (
        DPMSolverMultistepScheduler.from_config(cfg),
        DPMSolverMultistepScheduler.from_config(cfg, use_karras_sigmas=True),
    ):
        pipe.scheduler = sched
        sched.set_timesteps(10)
        for k in range(1, 10):
            sched._step_index = k
            sigma = float(sched.sigmas[k])
            expect = 1 / math.sqrt(1 + sigma**2)
            assert pipe._x0_weight(sched.timesteps[k - 1]) == pytest.approx(expect, rel=1e-6)
            if not sched.config.use_karras_sigmas:  # on the training grid: the table's alpha_bar itself
                assert expect == pytest.approx(float(acp[int(sched.timesteps[k])]) ** 0.5, rel=1e-3)
    pipe.scheduler = DDIMScheduler.from_config(cfg)
    pipe.scheduler.set_timesteps(10)
    t0, t1 = pipe.scheduler.timesteps[:2]
    assert pipe._x0_weight(t0) == pytest.approx(float(acp[int(t1)]) ** 0.5)
    # sigma space, float timesteps: x = x0 + sigma * eps holds x0 with weight 1 at every step
    pipe.scheduler = EulerDiscreteScheduler.from_config(cfg)
    pipe.scheduler.set_timesteps(10)
    assert all(pipe._x0_weight(t) == 1.0 for t in pipe.scheduler.timesteps)


@pytest.mark.parametrize("key", ["euler_a", "heun"])
def test_spatial_guidance_steers_sigma_space_samplers(key):
    pipe = load_pipeline(str(EMBEDDED_DIR), device="cpu", scheduler=key)

    def run(scale):
        return pipe(
            RELATION,
            num_inference_steps=4,
            generator=torch.Generator().manual_seed(1),
            output_type="pt",
            spatial_guidance_scale=scale,
        ).images

    free, steered = run(0.0), run(5.0)
    assert torch.isfinite(steered).all()
    assert not torch.equal(free, steered)  # the guidance acted (it was skipped or crashed before)


@pytest.mark.parametrize("key", ["euler_a", "lms"])
def test_cli_sigma_sampler_with_a_relation_prompt(key, tmp_path, capsys, monkeypatch):
    from helpers import run_cli

    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(
        ["generate", RELATION, "--scheduler", key, "--steps", "4", "-n", "1", "--clip-min", "-1", "--json"],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    assert "Traceback" not in err and json.loads(out)["ok"]
