"""Cached candidate sets (eval world --cache, the CLIP ranking set) and learning to rank from oracle verdicts."""

import json

import pytest
import torch
from safetensors import safe_open

from bestshot.errors import BestshotError
from bestshot.evaluate.world_eval import WorldEvalConfig, evaluate_world
from bestshot.generation import make_candidates
from bestshot.models.loader import load_pipeline
from bestshot.models.settings import resolve_config
from bestshot.train import candidates as C
from bestshot.train.clip_train import ClipTrainConfig, ranked_loss, ranked_top1, train_clip
from bestshot.world import heldout_prompts

PROMPTS = ["a red circle", "a blue square above a green triangle", "a small yellow cross"]


def _setup(tiny_world, n=4):
    cfg = resolve_config(None, model=tiny_world, n_images=n, steps_base=3, clip_min=-1.0)
    pipe = load_pipeline(tiny_world, dtype="float32", device="cpu", scheduler=cfg.scheduler)
    return pipe, cfg


def test_candidates_are_the_generate_images_with_oracle_verdicts(tiny_world):
    pipe, cfg = _setup(tiny_world)
    cs = C.build_candidates(pipe, PROMPTS[:2], [0, 1, 2, 3], cfg, prompts_per_call=1, progress=False)
    assert cs.images.shape == (2, 4, 3, cfg.height, cfg.width) and cs.images.dtype == torch.uint8
    assert cs.verdicts.shape == (2, 4, len(C.ATTRS)) and cs.verdicts.dtype == torch.bool
    same = make_candidates(pipe, None, PROMPTS[1], "", [0, 1, 2, 3], cfg)
    assert [list(im.getdata()) for im in same] == [list(im.getdata()) for im in cs.pil(1)]
    from bestshot.world.oracle import oracle

    r = oracle(same[2], PROMPTS[1])
    assert cs.verdict(1, 2) == {a: bool(getattr(r, a)) for a in C.ATTRS}


def test_cache_is_reused_extended_and_dropped_for_another_generator(tiny_world, tmp_path, monkeypatch):
    pipe, cfg = _setup(tiny_world, n=2)
    cache = tmp_path / "c.safetensors"
    first = C.build_candidates(pipe, PROMPTS[:2], [0, 1], cfg, cache=cache, progress=False)
    calls = []
    real = type(pipe).__call__
    monkeypatch.setattr(type(pipe), "__call__", lambda self, **kw: calls.append(kw["prompt"]) or real(self, **kw))
    again = C.build_candidates(pipe, PROMPTS[:2], [0, 1], cfg, cache=cache, progress=False)
    assert calls == [] and torch.equal(again.images, first.images)  # nothing generated
    more = C.build_candidates(pipe, PROMPTS, [0, 1], cfg, cache=cache, prompts_per_call=1, progress=False)
    assert len(calls) == 1 and calls[0] == [PROMPTS[2]] * 2  # only the new prompt
    assert torch.equal(more.images[:2], first.images) and len(more) == 3
    with safe_open(str(cache), "pt") as f:
        assert json.loads(f.metadata()["bestshot"])["prompts"] == PROMPTS
    loaded = C.load_candidates(cache)  # whatever made it (bench/spatial_scorer.py reads sets this way)
    assert loaded.prompts == PROMPTS and torch.equal(loaded.images, more.images) and loaded.meta == more.meta
    with pytest.raises(BestshotError, match="eval world --cache"):
        C.load_candidates(tmp_path / "none.safetensors")
    calls.clear()
    with torch.no_grad():  # another generator: the cache no longer describes it
        pipe.unet.conv_out.bias.add_(0.5)  # (the pipeline is shared through the model cache: undone below)
    try:
        C.build_candidates(pipe, PROMPTS[:1], [0, 1], cfg, cache=cache, progress=False)
    finally:
        with torch.no_grad():
            pipe.unet.conv_out.bias.sub_(0.5)
    assert len(calls) == 1


def test_fingerprint_follows_the_spatial_guidance_settings(tiny_world):
    """Guidance changes the images, so each of its settings enters the cache fingerprint; a setting left at
    its default does not (caches drawn before the option existed stay valid)."""
    pipe, _ = _setup(tiny_world)
    keys = ("spatial_guidance_scale", "spatial_guidance_end", "spatial_guidance_every")
    saved = {k: pipe.config[k] for k in keys}
    try:
        plain = C.generator_fingerprint(pipe)
        pipe.register_to_config(spatial_guidance_scale=5.0)
        guided = C.generator_fingerprint(pipe)
        pipe.register_to_config(spatial_guidance_every=1, spatial_guidance_end=1.0)
        assert C.generator_fingerprint(pipe) == guided != plain
        pipe.register_to_config(spatial_guidance_every=2)
        every2 = C.generator_fingerprint(pipe)
        pipe.register_to_config(spatial_guidance_end=0.5)
        assert len({plain, guided, every2, C.generator_fingerprint(pipe)}) == 4
    finally:
        pipe.register_to_config(**saved)
    assert C.generator_fingerprint(pipe) == plain


def test_training_prompts_are_distinct_seeded_and_never_held_out():
    held = heldout_prompts(200, n_objects=1) + heldout_prompts(200, n_objects=2)
    a = C.training_prompts(300, seed=0, exclude=held)
    assert len(set(a)) == 300 and not set(a) & set(held)
    assert a == C.training_prompts(300, seed=0, exclude=held) and a != C.training_prompts(300, seed=1, exclude=held)
    two = sum(" of " in p or " above " in p or " below " in p for p in a)
    assert 150 < two < 270  # about 70 % two-object prompts, each with its relation


def _fake_set(n=6, k=4, size=16):
    """Accepted candidates are red squares, rejected ones blue: a signal a tiny CLIP can learn."""
    g = torch.Generator().manual_seed(0)
    verdicts = torch.zeros(n, k, len(C.ATTRS), dtype=torch.bool)
    images = torch.zeros(n, k, 3, size, size, dtype=torch.uint8)
    for p in range(n):
        for j in range(k):
            ok = (j + p) % 2 == 0
            verdicts[p, j, 0] = ok
            images[p, j, 0 if ok else 2] = 200
            images[p, j] += torch.randint(0, 40, (3, size, size), generator=g, dtype=torch.uint8)
    return C.CandidateSet([f"a red square number {p}" for p in range(n)], images, verdicts, {})


def test_ranked_loss_teaches_the_scorer_to_put_accepted_candidates_first(tiny_world):
    from transformers import CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(f"{tiny_world}/clip")
    tok = CLIPTokenizer.from_pretrained(f"{tiny_world}/tokenizer")
    cs = _fake_set()
    assert C.mixed_groups(cs) == list(range(6))
    groups = list(range(6))
    opt = torch.optim.Adam(model.vision_model.parameters(), lr=3e-3)
    before = ranked_loss(model, tok, cs, groups)[0].item()
    for _ in range(30):
        loss = ranked_loss(model, tok, cs, groups)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert ranked_loss(model, tok, cs, groups)[0].item() < before * 0.7
    assert ranked_top1(model, tok, cs, groups) == 1.0


def test_train_clip_with_a_ranking_set(tiny_world, tmp_path):
    cfg = ClipTrainConfig(
        img_size=16,
        patch_size=4,
        vision_hidden=32,
        vision_layers=1,
        vision_heads=2,
        text_hidden=32,
        text_layers=1,
        text_heads=2,
        projection_dim=16,
        max_length=16,
        batch_size=4,
        steps=2,
        hard_negatives=2,
        eval_size=8,
        out_dir=str(tmp_path / "c"),
        ranked_model=tiny_world,
        ranked_prompts=4,
        ranked_candidates=2,
        ranked_groups=2,
        ranked_holdout=0.25,
    )
    cache = tmp_path / "c" / "ranked_pool.safetensors"
    cs = C.training_set(tiny_world, 4, 0, 2, cache=cache, progress=False)  # what train_clip will find
    assert cache.exists() and len(cs) == 4
    cs.verdicts[:, 0, 0], cs.verdicts[:, 1, 0] = (
        True,
        False,
    )  # a random tiny model draws nothing right: fake mixed verdicts
    C._save(cache, cs)
    m = train_clip(cfg)
    assert m["ranked_train_groups"] == 3 and m["ranked_heldout_groups"] == 1
    assert m["ranked_top1"] in (0.0, 1.0) and m["ranked_top1_before"] in (0.0, 1.0)
    cs.verdicts[:, :, 0] = False
    C._save(cache, cs)
    with pytest.raises(BestshotError, match="none of the 4 ranking prompts"):
        train_clip(ClipTrainConfig(**{**cfg.__dict__, "out_dir": str(tmp_path / "c")}))


def test_eval_world_from_a_cache_scores_again_without_generating(tiny_world, tmp_path, monkeypatch):
    cfg = WorldEvalConfig(model=tiny_world, n_prompts=2, ns=(1, 2), steps=2, cache=str(tmp_path / "cache"))
    first = evaluate_world(cfg, progress=False)
    assert (tmp_path / "cache" / "candidates_2_object.safetensors").exists()
    from bestshot.models.world_pipeline import BestshotWorldPipeline

    monkeypatch.setattr(BestshotWorldPipeline, "__call__", lambda *a, **k: pytest.fail("regenerated"))
    again = evaluate_world(cfg, progress=False)
    assert again["groups"] == first["groups"] and again["ceiling"] == first["ceiling"]


def test_eval_world_cli_cache_option(tiny_world, tmp_path, capsys, monkeypatch):
    from helpers import run_cli

    argv = [
        "eval",
        "world",
        "--model",
        tiny_world,
        "--prompts",
        "1",
        "--objects",
        "1",
        "--n",
        "1,2",
        "--steps",
        "2",
        "--cache",
        str(tmp_path / "cache"),
        "--out",
        str(tmp_path / "out"),
        "--json",
    ]
    code, out, err = run_cli(argv, capsys, monkeypatch)
    assert code == 0, err
    assert (tmp_path / "cache" / "candidates_1_object.safetensors").exists()
    assert json.loads(out)["groups"]["1_object"]["best_of_2"]["match"] in (0.0, 100.0)
