"""Region-steered sampling (bestshot.prompts.regions): tiny random SD 1.5 / SDXL, the embedded model's torch-only
LitePipeline and its diffusers BestshotWorldPipeline; settings, records, the CLI and the HTTP fields."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from bestshot.config import ImgCfg
from bestshot.errors import BestshotError
from bestshot.prompts import regions

PROMPT = "a red circle above a blue square"
TWO = {"objects": [{"phrase": "a red circle", "box": [0.25, 0.0, 0.75, 0.45]},
                   {"phrase": "a blue square", "box": [0.25, 0.55, 0.75, 1.0]}]}  # fmt: skip
WHOLE = {"objects": [{"phrase": PROMPT, "box": [0, 0, 1, 1]}]}
KINDS = ("sd15", "sdxl", "world_lite", "world_diffusers")


@pytest.fixture(scope="module")
def pipes(tiny_sd15, tiny_sdxl, tiny_world):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from bestshot.models.lite.pipeline import load_lite
    from bestshot.models.world_pipeline import BestshotWorldPipeline

    out = {
        "sd15": StableDiffusionPipeline.from_pretrained(tiny_sd15, safety_checker=None),
        "sdxl": StableDiffusionXLPipeline.from_pretrained(tiny_sdxl),
        "world_lite": load_lite(tiny_world),
        "world_diffusers": BestshotWorldPipeline.from_pretrained(tiny_world),
    }
    for p in out.values():
        p.set_progress_bar_config(disable=True)
    assert type(out["world_lite"].unet).__name__ == "LiteUNet"
    return out


def _draw(pipe, cfg, seeds=(3, 4)):
    world = hasattr(pipe, "clip")
    size = 16 if world else 64
    kw = dict(
        prompt=PROMPT,
        num_inference_steps=2,
        guidance_scale=cfg.guidance,
        height=size,
        width=size,
        num_images_per_prompt=len(seeds),
        generator=[torch.Generator().manual_seed(s) for s in seeds],
        output_type="np",
    )
    with regions.prepared(pipe, cfg, PROMPT, "", seeds) as extra:
        return np.asarray(pipe(**kw, **extra).images)


def _hooks(pipe):
    unet = pipe.unet
    if hasattr(unet, "attn_processors"):
        return dict(unet.attn_processors), len(unet._forward_pre_hooks)
    return [m.attn2 for m in unet.modules() if hasattr(m, "attn2")], len(unet._forward_pre_hooks)


@pytest.mark.parametrize("kind, guidance", [(k, 4.0) for k in KINDS] + [("sd15", 1.0), ("world_lite", 1.0)])
def test_whole_image_region_equals_plain_two_regions_change_and_all_is_restored(pipes, kind, guidance):
    """One box over the whole image holding the full prompt computes the same attention as no layout (weight 1
    on its phrase, whose tokens are the pipeline's own): pixel-equal, no tolerance. Two boxes change the image;
    afterwards every processor / module / hook is the one from before and a plain draw is the first one."""
    pipe = pipes[kind]
    cfg = ImgCfg(guidance=guidance)
    before = _hooks(pipe)
    plain = _draw(pipe, cfg)
    assert np.array_equal(_draw(pipe, replace(cfg, regions=WHOLE)), plain)
    two = _draw(pipe, replace(cfg, regions=TWO))
    assert np.abs(two - plain).max() > 1e-3
    after = _hooks(pipe)
    assert after[1] == before[1]
    if isinstance(before[0], dict):
        assert all(after[0][k] is v for k, v in before[0].items())
    else:
        assert all(a is b for a, b in zip(after[0], before[0])) and len(after[0]) == len(before[0])
    assert np.array_equal(_draw(pipe, cfg), plain)


def test_an_error_inside_the_draw_restores_the_pipe(pipes):
    pipe = pipes["world_lite"]
    before = _hooks(pipe)
    with pytest.raises(RuntimeError, match="boom"):
        with regions.prepared(pipe, ImgCfg(regions=TWO), PROMPT, "", [0]):
            assert type(next(m for m in pipe.unet.modules() if hasattr(m, "attn2")).attn2).__name__.startswith("Lite")
            raise RuntimeError("boom")
    after = _hooks(pipe)
    assert all(a is b for a, b in zip(after[0], before[0])) and after[1] == before[1]


def test_weights_cover_each_cell_once():
    bg, reg = regions.weights([(0, 0, 1, 1)], 4, 4)
    assert torch.equal(reg, torch.ones(1, 16, dtype=torch.float64)) and torch.equal(bg, torch.zeros(16, dtype=bg.dtype))
    bg, reg = regions.weights([(0.0, 0.0, 0.5, 0.5), (0.25, 0.25, 0.75, 0.75)], 4, 4)
    assert torch.allclose(bg + reg.sum(0), torch.ones(16, dtype=bg.dtype))
    assert reg[0].reshape(4, 4)[0, 0] == 1 and reg[0].reshape(4, 4)[1, 1] == 0.5 == reg[1].reshape(4, 4)[1, 1]
    bg, reg = regions.weights([(0.0, 0.0, 0.125, 1.0)], 2, 4)  # half of the first column's cells
    assert reg[0].tolist() == [0.5, 0, 0, 0, 0.5, 0, 0, 0] and bg[0] == 0.5
    assert regions.grid((32, 32), 64) == (8, 8) and regions.grid((5, 7), 12) == (3, 4)
    assert regions.grid((8, 8), 5) is None


def test_settings_and_one_line_errors(tmp_path):
    assert ImgCfg().regions == "off"
    for ok in ("auto", "off", WHOLE):
        ImgCfg(regions=ok).validate()
    good = tmp_path / "layout.json"
    good.write_text(json.dumps(TWO))
    ImgCfg(regions=str(good)).validate()
    bad = tmp_path / "bad.json"
    for text, needle in (
        ("{not json", "not valid JSON"),
        ('{"objects": [{"phrase": "a dog", "box": [0.5, 0, 0.2, 1]}]}', "is empty"),
        ('{"objects": [{"phrase": "", "box": [0, 0, 1, 1]}]}', "non-empty 'phrase'"),
    ):
        bad.write_text(text)
        with pytest.raises(BestshotError, match=needle) as e:
            ImgCfg(regions=str(bad)).validate()
        assert "\n" not in str(e.value)
    with pytest.raises(BestshotError, match="does not exist"):
        ImgCfg(regions=str(tmp_path / "missing.json")).validate()
    for extra, name in (({"init_image": str(good)}, "init_image"), ({"prune_start": 8, "n_images": 4}, "prune_start")):
        with pytest.raises(BestshotError, match=f"cannot be combined with {name}"):
            ImgCfg(regions="auto", **extra).validate()


def test_record_says_which_layout_or_why_none():
    assert regions.record(ImgCfg(), PROMPT) == {}
    used = regions.record(ImgCfg(regions="auto"), PROMPT)["regions"]
    assert (
        used["used"]
        and used["source"] == "world"
        and [o["phrase"] for o in used["objects"]]
        == [
            "a red circle",
            "a blue square",
        ]
    )
    none = regions.record(ImgCfg(regions={"objects": [], "reason": "nothing to place"}), PROMPT)["regions"]
    assert not none["used"] and "plain sampling: nothing to place" in none["note"]
    styled = ImgCfg(regions="auto", style_suffix="high quality")  # the suffix is not planned
    assert regions.record(styled, PROMPT + ", high quality")["regions"]["source"] == "world"


def test_generate_records_the_layout_and_no_layout_is_plain(tiny_world, out):
    from bestshot import generate

    kw = dict(model=tiny_world, n_images=2, steps_base=2, style_suffix="", negative_prompt="", **out)
    plain = generate(PROMPT, return_candidates_images=True, **kw)
    assert "regions" not in plain
    steered = generate(PROMPT, regions="auto", return_candidates_images=True, **kw)
    assert steered["regions"]["used"] and len(steered["regions"]["objects"]) == 2
    assert any(
        not np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(plain["candidate_images"], steered["candidate_images"])
    )
    none = generate(PROMPT, regions={"objects": []}, return_candidates_images=True, **kw)
    assert not none["regions"]["used"]
    pairs = zip(plain["candidate_images"], none["candidate_images"])
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in pairs)


def test_a_search_draws_with_the_regions_too(tiny_world, out):
    """--search runs its own pipeline call: the region hook must steer it as it steers a plain draw."""
    from bestshot import generate

    kw = dict(model=tiny_world, n_images=2, steps_base=4, style_suffix="", negative_prompt="", search=True, **out)
    plain = generate(PROMPT, return_candidates_images=True, **kw)
    steered = generate(PROMPT, regions="auto", return_candidates_images=True, **kw)
    assert steered["regions"]["used"] and steered["search"]["pool"] == plain["search"]["pool"]
    assert any(
        not np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(plain["candidate_images"], steered["candidate_images"])
    )
    whole = {"objects": [{"phrase": PROMPT, "box": [0, 0, 1, 1]}]}  # one region over the image: a plain search
    same = generate(PROMPT, regions=whole, return_candidates_images=True, **kw)
    assert same["regions"]["used"]
    pairs = zip(plain["candidate_images"], same["candidate_images"])
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in pairs)


def test_cli_regions_auto_on_the_embedded_model(capsys, monkeypatch, tmp_path):
    from helpers import run_cli

    monkeypatch.chdir(tmp_path)
    code, stdout, err = run_cli(
        ["generate", PROMPT, "--regions", "auto", "-n", "2", "--steps", "4", "--out", "o", "--log", "log.jsonl"],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    rec = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert rec["regions"]["used"] and rec["regions"]["source"] == "world"
    code, _, err = run_cli(["generate", PROMPT, "--regions", "nope.json"], capsys, monkeypatch)
    assert code == 2 and "nope.json" in err and "Traceback" not in err
    assert len([ln for ln in err.strip().splitlines() if ln.strip()]) == 1


# ---------------------------------------------------------------------------------------------------- HTTP
@pytest.fixture(scope="module")
def client(tiny_world, tmp_path_factory):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from bestshot.server import create_app

    root = tmp_path_factory.mktemp("serve_regions")
    app = create_app(model=tiny_world, out_dir=str(root / "images_out"), curate_dir=str(root / "outputs"))
    with TestClient(app, base_url="http://localhost") as c:
        yield c


def _error(r, field):
    assert r.status_code == 422, r.text
    body = r.json()
    assert {"error", "detail", "body", "errors"} <= set(body) and field in json.dumps(body)
    return body


def test_native_generate_regions(client):
    base = {"prompt": PROMPT, "n_images": 2, "steps_base": 2}
    r = client.post("/v1/generate", json={**base, "regions": "auto"})
    assert r.status_code == 200, r.text
    assert r.json()["regions"]["used"] and r.json()["regions"]["source"] == "world"
    r = client.post("/v1/generate", json={**base, "regions": TWO})
    assert r.status_code == 200 and r.json()["regions"]["source"] == "file"
    outside = {"objects": [{"phrase": "x", "box": [0, 0, 2, 1]}]}
    _error(client.post("/v1/generate", json={**base, "regions": outside}), "regions")
    _error(client.post("/v1/generate", json={**base, "regions": "/etc/layout.json"}), "regions")


def test_a1111_bestshot_regions(client):
    body = {"prompt": PROMPT, "steps": 2, "batch_size": 1, "best_of": 2}
    r = client.post("/sdapi/v1/txt2img", json={**body, "bestshot_regions": "auto"})
    assert r.status_code == 200, r.text
    assert json.loads(r.json()["info"])["bestshot"]["regions"]["used"]
    _error(client.post("/sdapi/v1/txt2img", json={**body, "bestshot_regions": {"objects": "none"}}), "bestshot_regions")
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), "white").save(buf, "PNG")
    init = base64.b64encode(buf.getvalue()).decode()
    r = client.post("/sdapi/v1/img2img", json={**body, "init_images": [init], "bestshot_regions": "auto"})
    assert r.status_code == 200, r.text
    assert "bestshot_regions" in json.loads(r.json()["info"])["bestshot"]["ignored"]


def test_hires_pass_is_steered_on_the_shared_unet(tiny_sd15, tiny_clip, out, monkeypatch):
    """The hires pass runs inside the hook on the same UNet at twice the size: each level's grid follows."""
    from bestshot import generate

    sizes, blend = set(), regions.Regions.blend

    def watched(self, attend, x, context):
        sizes.add(self.size)
        return blend(self, attend, x, context)

    monkeypatch.setattr(regions.Regions, "blend", watched)

    kw = dict(model=tiny_sd15, scorer=tiny_clip, n_images=1, steps_base=2, width=32, height=32, hires_scale=2.0)
    kw.update(style_suffix="", negative_prompt="", clip_min=-1.0, **out)
    plain = generate(PROMPT, return_candidates_images=True, **kw)
    steered = generate(PROMPT, regions=TWO, return_candidates_images=True, **kw)
    a, b = (np.asarray(r["candidate_images"][0]) for r in (plain, steered))
    assert a.shape == b.shape == (64, 64, 3) and not np.array_equal(a, b) and steered["regions"]["used"]
    (small, big) = sorted(sizes)
    assert big == (2 * small[0], 2 * small[1])  # the first pass and the hires pass were both steered
