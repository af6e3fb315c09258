"""generate(): tiny SDXL / SD3 / SD1.5 pipelines of the real diffusers classes, loaded through the real loader."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bestshot import generate
from bestshot.errors import BestshotError
from bestshot.store import parse_parameters, read_jsonl, read_png_info

SMALL = dict(steps_base=2, height=64, width=64, clip_min=-1.0, style_suffix=", 8k", negative_prompt="blurry")


def test_sdxl_best_seed_regenerates_bit_for_bit(tiny_sdxl, tiny_clip, out):
    r = generate(
        "a red circle above a blue square", model=tiny_sdxl, scorer=tiny_clip, n_images=3, seed_base=7, **SMALL, **out
    )
    assert r["ok"] is True and "reason" not in r
    assert [c["seed"] for c in r["candidates"]] == [7, 8, 9]
    assert r["best_seed"] == max(r["candidates"], key=lambda c: c["clip"])["seed"]
    assert {"load", "gen", "clip", "total"} <= set(r["timing_s"]) and all(v >= 0 for v in r["timing_s"].values())
    assert r["sd_prompt"] == "a red circle above a blue square, 8k"
    assert r["clip_prompt"] == "a red circle above a blue square"  # no style suffix
    assert r["model"] == tiny_sdxl and r["preset"] == "custom"
    path = Path(r["img_path"])
    assert path.name == f"{r['run_id']}_seed{r['best_seed']}_clip{r['best_clip']:.4f}.png"
    best = np.asarray(Image.open(path))

    alone = generate(
        "a red circle above a blue square",
        model=tiny_sdxl,
        scorer=tiny_clip,
        n_images=1,
        seed_base=r["best_seed"],
        **SMALL,
        **out,
    )
    assert np.array_equal(best, np.asarray(Image.open(alone["img_path"])))

    lines = read_jsonl(out["log_jsonl"])
    assert [ln["run_id"] for ln in lines] == [r["run_id"], alone["run_id"]]
    # the log stores image paths relative to its own folder, so they resolve from any working directory
    log_dir = Path(out["log_jsonl"]).parent
    assert [{**c, "path": c["path"] and str((log_dir / c["path"]).resolve())} for c in lines[0]["candidates"]] == [
        {**c, "path": c["path"] and str(Path(c["path"]).resolve())} for c in r["candidates"]
    ]


def test_seed_k_same_alone_or_in_batch(tiny_sd15, tiny_clip, out):
    """Each seed has its own generator, so a candidate is the same image alone or in a batch. CPU/GPU
    matmuls are not bitwise batch-invariant, so inside a batch pixels may differ by one level; the KEPT
    image is re-rendered alone (exact_best) and is bit-identical."""
    r = generate(
        "a cat",
        model=tiny_sd15,
        scorer=tiny_clip,
        n_images=3,
        seed_base=100,
        return_candidates_images=True,
        **SMALL,
        **out,
    )
    batch = [np.asarray(im).astype(int) for im in r["candidate_images"]]
    for k, seed in enumerate([100, 101, 102]):
        one = generate(
            "a cat",
            model=tiny_sd15,
            scorer=tiny_clip,
            n_images=1,
            seed_base=seed,
            return_candidates_images=True,
            **SMALL,
            **out,
        )
        solo = np.asarray(one["candidate_images"][0]).astype(int)
        assert np.abs(batch[k] - solo).max() <= 1, f"seed {seed} differs"
        if seed == r["best_seed"]:
            assert np.array_equal(batch[k], solo)
            assert np.array_equal(np.asarray(Image.open(r["img_path"])), np.asarray(Image.open(one["img_path"])))
    assert np.abs(batch[0] - batch[1]).mean() > 5  # different seeds really give different images


def test_batch_invariant_pipeline_keeps_the_batch_render(tiny_world, out):
    """The world pipeline renders each image the same in any batch on CPU, so best-of-N keeps the
    candidate as rendered (no solo re-render) and its seed alone still reproduces the file bit for bit."""
    kw = dict(model=tiny_world, steps_base=3, clip_min=-1.0, **out)
    r = generate(
        "a blue square above a green triangle",
        n_images=4,
        seed_base=20,
        save_candidates=True,
        return_candidates_images=True,
        **kw,
    )
    assert r["ok"] and "exact_best" not in r["timing_s"]
    alone = generate("a blue square above a green triangle", n_images=1, seed_base=r["best_seed"], **kw)
    assert np.array_equal(np.asarray(Image.open(r["img_path"])), np.asarray(Image.open(alone["img_path"])))
    assert alone["best_clip"] == r["best_clip"]
    k = [c["seed"] for c in r["candidates"]].index(r["best_seed"])
    other = (k + 1) % 4  # every candidate, not only the kept one, is its seed's solo render
    solo = generate(
        "a blue square above a green triangle", n_images=1, seed_base=20 + other, return_candidates_images=True, **kw
    )
    assert np.array_equal(np.asarray(r["candidate_images"][other]), np.asarray(solo["candidate_images"][0]))


def test_initial_noise_is_per_seed():
    from diffusers.utils.torch_utils import randn_tensor

    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    both = randn_tensor((2, 4, 8, 8), generator=gens)
    alone = randn_tensor((1, 4, 8, 8), generator=torch.Generator().manual_seed(4))
    assert torch.equal(both[1:], alone)


def test_png_parameters_parse_like_a1111(tiny_sd15, tiny_clip, out):
    r = generate(
        "a lighthouse at dusk",
        model=tiny_sd15,
        scorer=tiny_clip,
        n_images=2,
        seed_base=5,
        guidance=6.5,
        **{**SMALL, "steps_base": 3},
        **out,
    )
    info = read_png_info(r["img_path"])
    p = parse_parameters(info["parameters"])
    assert p["prompt"] == "a lighthouse at dusk, 8k"
    assert p["negative_prompt"] == "blurry"
    assert p["Seed"] == r["best_seed"] and p["Steps"] == 3 and p["CFG scale"] == 6.5
    assert (p["Size-1"], p["Size-2"]) == (64, 64)
    assert p["Model"] == tiny_sd15 and p["Sampler"] == "DDIM"
    assert info["bestshot"]["seed"] == r["best_seed"] and info["bestshot"]["run_id"] == r["run_id"]


def test_sd3_and_scheduler_switch(tiny_sd3, tiny_sd15, tiny_clip, out):
    r = generate("a boat", model=tiny_sd3, scorer=tiny_clip, n_images=2, **SMALL, **out)
    assert r["ok"] and r["settings"]["sampler"] == "Euler"
    with pytest.raises(BestshotError, match="does not fit this model"):
        generate("a boat", model=tiny_sd3, scorer=tiny_clip, n_images=1, scheduler="ddim", **SMALL, **out)
    r = generate("a boat", model=tiny_sd15, scorer=tiny_clip, n_images=1, scheduler="Euler a", **SMALL, **out)
    assert r["settings"]["sampler"] == "Euler a"


def test_sdxl_refiner_ensemble_of_experts(tiny_sdxl, tiny_refiner, tiny_clip, out, monkeypatch):
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    seen = {}
    base_call, ref_call = StableDiffusionXLPipeline.__call__, StableDiffusionXLImg2ImgPipeline.__call__

    def spy_base(self, *a, **k):
        seen.setdefault("base", (k.get("denoising_end"), k.get("output_type")))
        return base_call(self, *a, **k)

    def spy_ref(self, *a, **k):
        seen.setdefault("refiner", (k.get("denoising_start"), tuple(k["image"].shape)))
        return ref_call(self, *a, **k)

    monkeypatch.setattr(StableDiffusionXLPipeline, "__call__", spy_base)
    monkeypatch.setattr(StableDiffusionXLImg2ImgPipeline, "__call__", spy_ref)
    r = generate(
        "a fox",
        model=tiny_sdxl,
        refiner=True,
        refiner_model=tiny_refiner,
        scorer=tiny_clip,
        n_images=2,
        **{**SMALL, "steps_base": 5},
        **out,
    )
    assert r["ok"] and len(r["candidates"]) == 2
    assert seen["base"] == (0.8, "latent")
    assert seen["refiner"] == (0.8, (2, 4, 32, 32))  # latents, not images (tiny VAE: factor 2)
    assert "Refiner: " in read_png_info(r["img_path"])["parameters"]


def test_quality_gate_keeps_no_best_file(tiny_sd15, tiny_clip, out):
    r = generate("a cat", model=tiny_sd15, scorer=tiny_clip, n_images=2, **{**SMALL, "clip_min": 0.99}, **out)
    assert r["ok"] is False and r["reason"] == "low_clip_alignment"
    assert r["img_path"] is None and r["best_clip"] < 0.99
    assert len(r["candidates"]) == 2 and all(c["path"] is None for c in r["candidates"])
    assert not Path(out["out_dir"]).exists() or not list(Path(out["out_dir"]).glob("*.png"))
    assert read_jsonl(out["log_jsonl"])[0]["reason"] == "low_clip_alignment"


def test_save_candidates_writes_every_candidate(tiny_sd15, tiny_clip, out):
    r = generate("a cat", model=tiny_sd15, scorer=tiny_clip, n_images=3, save_candidates=True, **SMALL, **out)
    assert all(Path(c["path"]).exists() for c in r["candidates"])
    assert len(list(Path(out["out_dir"]).glob("*.png"))) == 3


def test_blocked_prompt_generates_nothing(tiny_sd15, out, monkeypatch):
    import bestshot.generation as g

    monkeypatch.setattr(g, "load_pipeline", lambda *a, **k: pytest.fail("a blocked prompt must not load a model"))
    r = generate("a NSFW picture", model=tiny_sd15, blocklist=("nsfw",), **out)
    assert r["ok"] is False and r["reason"] == "blocked_prompt" and r["candidates"] == []
    assert read_jsonl(out["log_jsonl"])[0]["reason"] == "blocked_prompt"
    # whole words only: "classic" must not trip "ass"
    from bestshot.prompts.build import blocked_terms

    assert blocked_terms("a classic car", ["ass"]) == []


def test_candidate_images_returned_but_never_logged(tiny_sd15, tiny_clip, out):
    r = generate("a cat", model=tiny_sd15, scorer=tiny_clip, n_images=2, return_candidates_images=True, **SMALL, **out)
    assert len(r["candidate_images"]) == 2 and isinstance(r["candidate_images"][0], Image.Image)
    logged = json.loads(Path(out["log_jsonl"]).read_text().splitlines()[0])
    assert "candidate_images" not in logged and logged["run_id"] == r["run_id"]


class _OOMPipe:
    """Fails like CUDA does when a batch is larger than ``limit``."""

    def __init__(self, limit):
        self.limit, self.calls = limit, []

    def __call__(self, prompt, num_images_per_prompt, generator, **kw):
        self.calls.append(num_images_per_prompt)
        if num_images_per_prompt > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        seeds = [g.initial_seed() for g in generator]
        return type("Out", (), {"images": [Image.new("RGB", (8, 8), (s % 256, 0, 0)) for s in seeds]})()


def test_oom_halves_batch_and_drops_nothing():
    from bestshot.config import ImgCfg
    from bestshot.generation import make_candidates

    pipe = _OOMPipe(limit=2)
    imgs = make_candidates(pipe, None, "p", "", list(range(10, 17)), ImgCfg(n_images=7))
    assert [im.getpixel((0, 0))[0] for im in imgs] == list(range(10, 17))
    assert pipe.calls[:3] == [7, 3, 1]  # halved until it fits, then the rest continue at that size
    with pytest.raises(BestshotError, match="out of GPU memory"):
        make_candidates(_OOMPipe(limit=0), None, "p", "", [1, 2], ImgCfg(n_images=2))


def test_family_switch_unloads_other_family(tiny_sd15, tiny_sd3):
    from bestshot.models.loader import ModelCache, load_pipeline

    cache = ModelCache()
    load_pipeline(tiny_sd15, cache=cache)
    assert [e.family for e in cache.pipelines.values()] == ["sd15"]
    load_pipeline(tiny_sd3, cache=cache)
    assert [e.family for e in cache.pipelines.values()] == ["sd3"]
    p1 = load_pipeline(tiny_sd3, cache=cache)
    assert p1 is load_pipeline(tiny_sd3, cache=cache)  # cached


def test_auto_prompt_mode_uses_llm_result(tiny_sd15, tiny_clip, out, monkeypatch):
    import bestshot.prompts.llm as llm

    monkeypatch.setattr(
        llm,
        "auto_prompt",
        lambda text, **k: llm.AutoPrompt(
            sd_prompt="polar bears on melting sea ice at dawn",
            clip_prompt="polar bears on sea ice",
            backend="stub",
            model=None,
            raw="PROMPT: ...",
        ),
    )
    r = generate(
        mode="auto_prompt",
        text="Arctic ice is changing fast. " * 20,
        model=tiny_sd15,
        scorer=tiny_clip,
        n_images=1,
        **SMALL,
        **out,
    )
    assert r["sd_prompt"] == "polar bears on melting sea ice at dawn, 8k"
    assert r["clip_prompt"] == "polar bears on sea ice" and r["auto_prompt"]["backend"] == "stub"
    with pytest.raises(BestshotError, match="auto_prompt mode needs"):
        generate(mode="auto_prompt", text="  ", model=tiny_sd15, **out)


def test_scheduler_choice_does_not_stick_to_the_cached_pipeline(tiny_sd15, tiny_clip, out):
    r = generate("a cat", model=tiny_sd15, scorer=tiny_clip, n_images=1, scheduler="euler_a", **SMALL, **out)
    assert r["settings"]["sampler"] == "Euler a"
    r = generate("a cat", model=tiny_sd15, scorer=tiny_clip, n_images=1, **SMALL, **out)
    assert r["settings"]["sampler"] == "DDIM"  # the model's own scheduler again


@pytest.mark.parametrize("stop_at, max_batch", [(2, None), (2, 2), (5, None)])
def test_a_stopped_run_is_recorded_as_stopped(tiny_sd15, tiny_clip, tmp_path, stop_at, max_batch):
    """``on_step`` asking to stop (here a timeout at step 2 of 5) gives a record that says so: not ok, why, the
    step reached (per candidate too), no reproduce claim, no kept image; only the candidates that got furthest
    are ranked. A stop at the last step is a finished run."""
    log = tmp_path / "log.jsonl"
    seen = []

    def on_step(step, total):  # as a job does: once past its timeout, every later step is told to stop
        seen.append(step)
        return "timeout" if step >= stop_at or len(seen) > stop_at else None

    r = generate(
        "a red circle",
        model=tiny_sd15,
        scorer=tiny_clip,
        n_images=4,
        steps_base=5,
        width=64,
        height=64,
        clip_min=-1.0,
        out_dir=str(tmp_path / "o"),
        log_jsonl=str(log),
        max_batch=max_batch,
        exact_best=True,
        on_step=on_step,
    )
    rec = read_jsonl(log)[0]
    if stop_at == 5:
        assert rec["ok"] is True and "stopped" not in rec and "bit-exact" in rec["reproduce"]
        return
    assert r["interrupted"] is True and r["img_path"] is None  # the returned record says the same
    assert rec["ok"] is False and rec["reason"] == "interrupted" and rec["interrupted"] is True
    assert rec["stopped"] == "timeout" and rec["steps_done"] == 2 and rec["reproduce"] is None
    assert rec["img_path"] is None and rec["settings"]["steps"] == 5
    done = [c["steps_done"] for c in rec["candidates"]]
    if max_batch == 2:  # the second batch stops after its first step: it is not ranked against the first
        assert done == [2, 2, 1, 1] and rec["best_seed"] in [c["seed"] for c in rec["candidates"][:2]]
    else:
        assert done == [2, 2, 2, 2]
    saved = [c for c in rec["candidates"] if c["path"]]
    assert [c["seed"] for c in saved] == [rec["best_seed"]]  # what an interrupted client gets back, marked
    assert max(seen) <= 2  # no solo re-render after the stop
