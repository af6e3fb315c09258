"""BestshotWorldPipeline: save/load round trip, per-image seeds, CFG with negative prompts."""

import json

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from bestshot.models.loader import dtype_kwargs
from bestshot.models.world_pipeline import BestshotWorldPipeline
from bestshot.train.clip_train import ClipTrainConfig, build_clip, build_clip_tokenizer
from bestshot.train.ddpm import DDPMConfig, build_unet, sampling_scheduler


def tiny_pipeline(cond: str = "text_tokens", class_embed: bool = True) -> BestshotWorldPipeline:
    torch.manual_seed(0)
    cc = ClipTrainConfig(
        img_size=16,
        patch_size=4,
        vision_hidden=32,
        vision_layers=1,
        vision_heads=2,
        text_hidden=32,
        text_layers=1,
        text_heads=2,
        projection_dim=16,
    )
    clip = build_clip(cc).eval()
    cfg = DDPMConfig(
        img_size=16, block_out_channels=(32, 32), attention_levels=(False, True), cond=cond, class_embed=class_embed
    )
    unet = build_unet(cfg, clip.config).eval()
    return BestshotWorldPipeline(
        unet=unet, scheduler=sampling_scheduler(cfg), clip=clip, tokenizer=build_clip_tokenizer(16), conditioning=cond
    )


@pytest.fixture(scope="module")
def pipe():
    p = tiny_pipeline()
    p.set_progress_bar_config(disable=True)
    return p


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_save_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["conditioning"] == "text_tokens"
    again = BestshotWorldPipeline.from_pretrained(tmp_path, **dtype_kwargs(torch.float32))
    again.set_progress_bar_config(disable=True)
    a = pipe("a red circle", num_inference_steps=3, generator=gens(1), output_type="np").images
    b = again("a red circle", num_inference_steps=3, generator=gens(1), output_type="np").images
    np.testing.assert_allclose(a, b, atol=2e-4)  # same weights; kernels may reassociate
    assert a.shape == (1, 16, 16, 3) and a.min() >= 0 and a.max() <= 1


@pytest.mark.parametrize("sg", [0.0, 5.0])
def test_image_k_same_alone_and_in_batch_bit_for_bit(pipe, sg):
    """On CPU the pipeline is batch-invariant (models.batch_invariance): image k is the same to the last
    bit alone, in a batch of other prompts and seeds, or in batches of other sizes, with the relation
    guidance on or off. Without the row-wise products the 1-row and 5-row time embeddings round apart."""
    assert pipe.batch_invariant
    prompts = [
        "a red circle",
        "a blue square above a green cross",
        "a pink diamond",
        "a grey star left of a cross",
        "a red circle",
    ]
    kw = dict(num_inference_steps=3, output_type="pt", spatial_guidance_scale=sg)
    batch = pipe(prompts, generator=gens(5, 6, 7, 8, 9), **kw).images
    for k in (1, 3):
        alone = pipe(prompts[k], generator=gens(5 + k), **kw).images
        assert torch.equal(batch[k], alone[0]), (k, (batch[k] - alone[0]).abs().max())
    pair = pipe(prompts[1], num_images_per_prompt=2, generator=gens(6, 40), **kw).images
    assert torch.equal(pair[0], batch[1])
    assert (batch[0] - batch[2]).abs().max() > 1e-3  # different seeds and prompts really differ


def test_generator_count_must_match(pipe):
    with pytest.raises(ValueError, match="one per image"):
        pipe(["a", "b"], num_inference_steps=2, generator=gens(1))


def test_negative_prompt_is_the_unconditional_branch(pipe):
    kw = dict(num_inference_steps=3, output_type="np")
    base = pipe("a red circle", generator=gens(3), guidance_scale=4.0, **kw).images
    neg = pipe("a red circle", negative_prompt="a blue square", generator=gens(3), guidance_scale=4.0, **kw).images
    assert np.abs(base - neg).max() > 1e-4
    # without guidance the negative prompt is unused
    a = pipe("a red circle", generator=gens(3), guidance_scale=1.0, **kw).images
    b = pipe("a red circle", negative_prompt="a blue square", generator=gens(3), guidance_scale=1.0, **kw).images
    np.testing.assert_array_equal(a, b)


def test_num_images_per_prompt_output_types_and_ddpm(pipe):
    out = pipe(["x", "y"], num_images_per_prompt=2, num_inference_steps=2, output_type="pt").images
    assert out.shape == (4, 3, 16, 16)
    pil = pipe("x", num_inference_steps=2).images
    assert pil[0].size == (16, 16)
    old = pipe.scheduler
    pipe.scheduler = DDPMScheduler.from_config(old.config)
    try:
        a = pipe(["x", "y"], num_inference_steps=3, generator=gens(1, 2), output_type="np").images
        b = pipe("y", num_inference_steps=3, generator=gens(2), output_type="np").images
        np.testing.assert_allclose(a[1], b[0], atol=1e-4)  # ancestral noise is per image too
    finally:
        pipe.scheduler = old


def test_embedding_conditioning_path(tmp_path):
    p = tiny_pipeline(cond="image_embed")
    p.set_progress_bar_config(disable=True)
    hidden, cls = p.encode_prompt(["a red circle"])
    assert hidden.shape == (1, 1, 16) and cls.shape == (1, 16)
    assert torch.allclose(cls.norm(dim=-1), torch.ones(1), atol=1e-4)
    p.save_pretrained(tmp_path)
    again = BestshotWorldPipeline.from_pretrained(tmp_path, **dtype_kwargs(torch.float32))
    assert again.config.conditioning == "image_embed"
    assert again("a red circle", num_inference_steps=2, output_type="np").images.shape == (1, 16, 16, 3)


def test_pruning_slices_conditioning_and_keeps_each_seed(pipe):
    from bestshot.pruning import run_pruned

    def brightness(images):
        return [float(np.asarray(im, float).mean()) for im in images]

    prompts = ["a red circle", "a blue square", "a pink diamond", "a green cross"]
    kw = dict(
        prompt=prompts,
        negative_prompt="blurry",
        num_inference_steps=4,
        guidance_scale=3.0,
        generator=gens(10, 11, 12, 13),
    )
    res = run_pruned(pipe, kw, seeds=[10, 11, 12, 13], keep=2, at=0.5, score_fn=brightness, family="embedded")
    assert res.prune_step == 1 and len(res.images) == 2
    assert res.kept == sorted(sorted(range(4), key=lambda j: -res.preview_scores[j])[:2])
    for j, im in zip(res.kept, res.images):  # each kept row kept its own prompt and noise: its solo render,
        solo = pipe(
            prompts[j], negative_prompt="blurry", num_inference_steps=4, guidance_scale=3.0, generator=gens(10 + j)
        ).images[0]  # bit for bit (the batch shrank mid-run)
        assert np.array_equal(np.asarray(im), np.asarray(solo))


def test_unknown_callback_tensor_is_an_error(pipe):
    with pytest.raises(ValueError, match="not in"):
        pipe(
            "a red circle",
            num_inference_steps=2,
            generator=gens(1),
            callback_on_step_end=lambda p, i, t, kw: kw,
            callback_on_step_end_tensor_inputs=["noise"],
        )


def _agreement(pipe, images, prompt):
    from bestshot.scoring import spatial as S
    from bestshot.scoring.clip import CLIPScorer, _image_processor

    base = CLIPScorer(
        pipe.clip, pipe.tokenizer, _image_processor(None, pipe.clip.config.vision_config.image_size), name="tiny"
    )
    sp = S.SpatialScorer(base)
    _, dense = sp.dense_images(images)
    return sp.relation_scores(dense, S.parse_relation(prompt))


def test_spatial_guidance_steers_relation_prompts_only(pipe, tmp_path):
    """Off by default; with a scale, prompts that state a relation are pushed towards it (the CLIP's own
    reading of the finished images agrees more), prompts without one are drawn exactly as before."""
    assert pipe.config.spatial_guidance_scale == 0.0
    rel, plain, seeds = "a red circle left of a blue square", "a red circle and a blue square", list(range(6))
    kw = dict(num_inference_steps=6, output_type="pil")
    off = pipe([rel] * 6, generator=gens(*seeds), **kw).images
    on = pipe([rel] * 6, generator=gens(*seeds), spatial_guidance_scale=40.0, **kw).images
    again = pipe([rel] * 6, generator=gens(*seeds), spatial_guidance_scale=40.0, **kw).images
    assert [np.asarray(a).tolist() for a in on] == [np.asarray(a).tolist() for a in again]  # seeded
    assert any(np.abs(np.asarray(a, int) - np.asarray(b, int)).max() > 0 for a, b in zip(on, off))
    assert _agreement(pipe, on, rel).mean() > _agreement(pipe, off, rel).mean()
    p_off = pipe(plain, generator=gens(3), **kw).images[0]
    p_on = pipe(plain, generator=gens(3), spatial_guidance_scale=40.0, **kw).images[0]
    assert np.array_equal(np.asarray(p_off), np.asarray(p_on))
    with pytest.raises(ValueError, match="spatial_guidance_scale"):
        pipe(rel, generator=gens(1), spatial_guidance_scale=-1.0, num_inference_steps=2)
    # the scale is part of the saved pipeline, and the pipeline's own scale is the default of a call
    guided = BestshotWorldPipeline(
        unet=pipe.unet, scheduler=pipe.scheduler, clip=pipe.clip, tokenizer=pipe.tokenizer, spatial_guidance_scale=40.0
    )
    guided.save_pretrained(tmp_path)
    again = BestshotWorldPipeline.from_pretrained(tmp_path, **dtype_kwargs(torch.float32))
    again.set_progress_bar_config(disable=True)
    assert again.config.spatial_guidance_scale == 40.0
    first = again(rel, generator=gens(0), **kw).images[0]
    assert np.abs(np.asarray(first, int) - np.asarray(on[0], int)).max() <= 1


def _refused_then_saved(pipe, folder, name, bad_values, value):
    """A guidance setting ``name``: each of ``bad_values`` is refused by a call (ValueError naming it), and
    ``value`` given to the constructor survives save_pretrained / from_pretrained."""
    for bad in bad_values:
        with pytest.raises(ValueError, match=name):
            pipe(
                "a red circle left of a blue square",
                generator=gens(1),
                spatial_guidance_scale=5.0,
                num_inference_steps=2,
                **{name: bad},
            )
    guided = BestshotWorldPipeline(
        unet=pipe.unet,
        scheduler=pipe.scheduler,
        clip=pipe.clip,
        tokenizer=pipe.tokenizer,
        spatial_guidance_scale=40.0,
        **{name: value},
    )
    guided.save_pretrained(folder)
    again = BestshotWorldPipeline.from_pretrained(folder, **dtype_kwargs(torch.float32))
    assert again.config[name] == value


def test_spatial_guidance_end_steers_only_the_first_steps(pipe, tmp_path):
    """``spatial_guidance_end`` stops the guidance after that fraction of the steps: a run whose guidance
    ends at step k follows the guided run exactly up to k and then differs from it; 1.0 is the old
    behaviour (every step but the last), and values outside (0, 1] are refused."""
    rel, seeds = "a red circle left of a blue square", [0, 1, 2]
    kw = dict(num_inference_steps=6, output_type="pt", spatial_guidance_scale=40.0)

    def trace(end):
        xs = []

        def keep(p, i, t, tensors):
            xs.append(tensors["latents"].clone())
            return {}

        pipe([rel] * 3, generator=gens(*seeds), spatial_guidance_end=end, callback_on_step_end=keep, **kw)
        return xs

    full, half, off = trace(1.0), trace(0.5), trace(1.0 / 6)
    assert all(torch.equal(a, b) for a, b in zip(full[:3], half[:3]))  # steps 0-2 guided in both
    assert not torch.equal(full[3], half[3])  # step 3 guided only in the full run
    assert torch.equal(full[0], off[0]) and not torch.equal(full[1], off[1])
    _refused_then_saved(pipe, tmp_path, "spatial_guidance_end", (0.0, 1.5, -0.2), 0.5)


def test_spatial_guidance_every_steers_every_kth_step(pipe, tmp_path):
    """``spatial_guidance_every`` = 2 steers steps 0, 2, 4 of the guided ones: step 0 matches the run guided
    at every step, step 1 matches the unguided continuation of it (the same latents, no nudge), step 2 is
    steered again; bad values are refused and the setting is saved with the pipeline."""
    rel, seeds = "a red circle left of a blue square", [0, 1, 2]
    kw = dict(num_inference_steps=6, output_type="pt", spatial_guidance_scale=40.0)

    def trace(**extra):
        xs = []

        def keep(p, i, t, tensors):
            xs.append(tensors["latents"].clone())
            return {}

        pipe([rel] * 3, generator=gens(*seeds), callback_on_step_end=keep, **kw, **extra)
        return xs

    each, every2, once = trace(), trace(spatial_guidance_every=2), trace(spatial_guidance_end=1.0 / 6)
    assert torch.equal(each[0], every2[0]) and torch.equal(once[1], every2[1])  # step 0 steered, step 1 not
    assert not torch.equal(each[1], every2[1]) and not torch.equal(once[2], every2[2])  # step 2 steered again
    _refused_then_saved(pipe, tmp_path, "spatial_guidance_every", (0, -1, 1.5, True), 2)


def test_spatial_guidance_works_with_multistep_solvers(pipe):
    """DPM-Solver++ and UniPC do not report the predicted clean image; the pipeline computes it from the
    model's prediction (the same tensor DDIM reports), so guidance steers their runs too. UniPC's step
    takes no generator: the pipeline passes one only to schedulers that take it."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

    ddim = DDIMScheduler.from_config(pipe.scheduler.config)
    ddim.set_timesteps(4)
    clean, eps, t = torch.rand(2, 3, 16, 16) * 1.8 - 0.9, torch.randn(2, 3, 16, 16), ddim.timesteps[1]
    a = ddim.alphas_cumprod[t]
    x = a.sqrt() * clean + (1 - a).sqrt() * eps
    reported = ddim.step(eps, t, x).pred_original_sample
    with_ddim = BestshotWorldPipeline(unet=pipe.unet, scheduler=ddim, clip=pipe.clip, tokenizer=pipe.tokenizer)
    ours = with_ddim._predicted_x0(x, eps, t)
    assert torch.allclose(ours, reported, atol=1e-4) and torch.allclose(ours, clean, atol=1e-4)

    dpm = BestshotWorldPipeline(
        unet=pipe.unet,
        scheduler=DPMSolverMultistepScheduler.from_config(pipe.scheduler.config),
        clip=pipe.clip,
        tokenizer=pipe.tokenizer,
    )
    dpm.set_progress_bar_config(disable=True)
    rel, kw = "a red circle left of a blue square", dict(num_inference_steps=4, output_type="pt")
    off = dpm([rel] * 6, generator=gens(*range(6)), num_inference_steps=4).images
    on = dpm([rel] * 6, generator=gens(*range(6)), spatial_guidance_scale=40.0, num_inference_steps=4).images
    assert _agreement(dpm, on, rel).mean() > _agreement(dpm, off, rel).mean()  # steered towards the relation
    unipc = BestshotWorldPipeline(
        unet=pipe.unet,
        scheduler=UniPCMultistepScheduler.from_config(pipe.scheduler.config),
        clip=pipe.clip,
        tokenizer=pipe.tokenizer,
    )
    unipc.set_progress_bar_config(disable=True)
    a = unipc([rel] * 2, generator=gens(0, 1), spatial_guidance_scale=40.0, **kw).images
    assert torch.equal(a, unipc([rel] * 2, generator=gens(0, 1), spatial_guidance_scale=40.0, **kw).images)
    assert not torch.equal(a, unipc([rel] * 2, generator=gens(0, 1), **kw).images)


def test_spatial_guidance_survives_pruning(pipe):
    from bestshot.pruning import run_pruned

    def brightness(images):
        return [float(np.asarray(im, float).mean()) for im in images]

    kw = dict(
        prompt="a red circle above a blue square",
        num_inference_steps=4,
        generator=gens(10, 11, 12, 13),
        spatial_guidance_scale=40.0,
        num_images_per_prompt=4,
    )
    res = run_pruned(pipe, kw, seeds=[10, 11, 12, 13], keep=2, at=0.5, score_fn=brightness, family="embedded")
    assert len(res.images) == 2
    for j, im in zip(res.kept, res.images):  # a kept row goes on exactly as it would alone
        solo = pipe(
            "a red circle above a blue square",
            num_inference_steps=4,
            generator=gens(10 + j),
            spatial_guidance_scale=40.0,
        ).images[0]
        assert np.array_equal(np.asarray(im), np.asarray(solo))


def test_rowwise_linears_is_installed_once_and_changes_only_rounding():
    from torch import nn

    from bestshot.models.batch_invariance import rowwise_linears

    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(64, 96), nn.SiLU(), nn.Linear(96, 32))
    x = torch.randn(16, 64)
    plain = mlp(x)
    handles = rowwise_linears(mlp, mlp)
    assert len(handles) == 2 and rowwise_linears(mlp) == []  # one hook per layer, however often asked
    rows = mlp(x)
    torch.testing.assert_close(rows, plain)  # the same products, summed in another order at most
    assert all(torch.equal(rows[i : i + 1], mlp(x[i : i + 1])) for i in (0, 7, 15))  # a row is its solo self
    seq = torch.randn(3, 5, 64)  # token sequences pass through untouched
    assert torch.equal(mlp(seq), mlp[2](mlp[1](torch.nn.functional.linear(seq, mlp[0].weight, mlp[0].bias))))
    for h in handles:
        h.remove()
    assert torch.equal(mlp(x), plain)
