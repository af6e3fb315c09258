"""CLIP trainer: hard-negative captions, a few steps of learning, and a loadable CLIP folder."""

import dataclasses
import json
import random

import pytest
import torch
from transformers import CLIPModel, CLIPTokenizer

from bestshot import world as W
from bestshot.errors import BestshotError
from bestshot.train.clip_train import (
    ClipTrainConfig,
    TokenizingCollate,
    WorldHardNegatives,
    _collate,
    build_clip,
    clip_loss,
    hard_negative_captions,
    learning_rate,
    train_clip,
)

TINY = dict(
    img_size=16,
    patch_size=4,
    vision_hidden=32,
    vision_layers=1,
    vision_heads=2,
    text_hidden=32,
    text_layers=1,
    text_heads=2,
    projection_dim=16,
    max_length=32,
)


def test_hard_negatives_are_one_edit_away_and_never_the_positive():
    for i in range(200):
        scene, rng = W.scene_for(0, i)
        state = rng.getstate()
        pos, negs = hard_negative_captions(scene, rng, 3)
        again = random.Random()
        again.setstate(state)
        assert pos == W.caption(scene, again)  # the positive is the dataset's own caption
        assert len(negs) == 3 and pos not in negs and len(set(negs)) == 3
    scene = W.Scene(
        (W.Obj("circle", "red", "small", 0.3, 0.2), W.Obj("square", "blue", "small", 0.3, 0.7)), "white", "above"
    )
    negs = hard_negative_captions(scene, random.Random(0), 8)[1]
    flipped = [n for n in negs if ("below" in n or "under" in n or "beneath" in n) and "red circle" in n]
    swapped = [n for n in negs if "blue circle" in n and "red square" in n]
    assert flipped or swapped  # the edits best-of-N ranking needs come first


def test_shape_negatives_add_distinct_shape_edits():
    scene = W.Scene((W.Obj("circle", "red", "small", 0.5, 0.5),), "white", None)
    for seed in range(20):
        negs = hard_negative_captions(scene, random.Random(seed), 6, n_shape=4)[1]
        shapes = {s for n in negs for s in W.SHAPES if s in n.split() and "red" in n and "and" not in n}
        assert shapes >= {"square", "triangle", "diamond", "cross"}, negs


def test_every_object_gets_its_shape_edits():
    scene = W.Scene(
        (W.Obj("circle", "red", "small", 0.3, 0.5), W.Obj("square", "blue", "small", 0.7, 0.5)), "white", "left of"
    )
    negs = hard_negative_captions(scene, random.Random(0), 14, n_shape=4, every_object=True)[1]
    red = {s for n in negs for s in W.SHAPES if f"red {s}" in n and "blue square" in n}
    blue = {s for n in negs for s in W.SHAPES if f"blue {s}" in n and "red circle" in n}
    assert red >= {"square", "triangle", "diamond", "cross"} and blue >= {"circle", "triangle", "diamond", "cross"}, (
        negs
    )
    # off (the default): one object's shape is edited, as the shipped stages were trained
    negs = hard_negative_captions(scene, random.Random(0), 14, n_shape=4)[1]
    red = {s for n in negs for s in W.SHAPES if f"red {s}" in n and "blue square" in n} - {"circle"}
    blue = {s for n in negs for s in W.SHAPES if f"blue {s}" in n and "red circle" in n} - {"square"}
    assert min(len(red), len(blue)) <= 1, negs


def test_object_weights_set_the_mix_of_object_counts(tmp_path):
    ds = WorldHardNegatives(300, 16, 0, 2, object_weights={1: 0.0, 2: 1.0, 3: 0.0})
    assert all(len(W.scene_for(0, i, object_weights=ds.object_weights)[0].objects) == 2 for i in range(300))
    counts = [len(W.scene_for(0, i, object_weights={1: 0.2, 2: 0.6, 3: 0.2})[0].objects) for i in range(600)]
    assert 0.5 < counts.count(2) / 600 < 0.7 and counts.count(1) > 60 and counts.count(3) > 60
    # no weights: the world's own mix, item for item
    assert all(W.scene_for(0, i)[0] == W.scene_for(0, i, object_weights=None)[0] for i in range(50))
    with pytest.raises(BestshotError, match="object_weights"):
        train_clip(ClipTrainConfig(**TINY, object_weights=(1.0, 2.0), hard_negatives=2, out_dir=str(tmp_path)))


def test_a_few_steps_lower_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    cfg = ClipTrainConfig(**TINY)
    model = build_clip(cfg)
    from bestshot.models.clip_tokenizer import build_clip_tokenizer

    tok = build_clip_tokenizer(32)
    ds = WorldHardNegatives(16, 16, 0, 2)
    imgs, caps, negs = _collate([ds[i] for i in range(16)])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(12):
        loss, _, _ = clip_loss(model, tok, imgs, caps, negs, 2)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * first


def test_train_clip_writes_a_loadable_folder_with_metrics(tmp_path):
    cfg = ClipTrainConfig(**TINY, batch_size=8, steps=3, hard_negatives=2, eval_size=16, out_dir=str(tmp_path / "c"))
    m = train_clip(cfg)
    assert m["steps"] == 3 and 0 <= m["image_to_text_top1"] <= 1 and 0 <= m["vs_hard_negatives"] <= 1
    d = tmp_path / "c"
    assert json.loads((d / "metrics.json").read_text())["steps"] == 3
    clip = CLIPModel.from_pretrained(d)
    tok = CLIPTokenizer.from_pretrained(d)
    assert clip.config.vision_config.image_size == 16 and len(tok) == 49408
    proc = json.loads((d / "preprocessor_config.json").read_text())
    assert proc["do_center_crop"] is True and proc["size"]["shortest_edge"] == 16
    # continue with the text tower frozen: text weights unchanged, vision weights changed
    cfg2 = ClipTrainConfig(
        **TINY,
        batch_size=8,
        steps=2,
        hard_negatives=2,
        eval_size=16,
        init_from=str(d),
        freeze_text=True,
        out_dir=str(tmp_path / "c2"),
    )
    train_clip(cfg2)
    clip2 = CLIPModel.from_pretrained(tmp_path / "c2")
    assert torch.equal(
        clip.text_model.embeddings.token_embedding.weight, clip2.text_model.embeddings.token_embedding.weight
    )
    assert torch.equal(clip.text_projection.weight, clip2.text_projection.weight)
    assert not torch.equal(clip.visual_projection.weight, clip2.visual_projection.weight)


def test_bad_patch_size_is_a_user_error(tmp_path):
    with pytest.raises(BestshotError, match="patch_size"):
        train_clip(ClipTrainConfig(**{**TINY, "patch_size": 5}, out_dir=str(tmp_path)))


def test_degrade_blurs_and_grains_only_when_asked():
    from bestshot.train.clip_train import degrade

    g = torch.Generator().manual_seed(0)
    x = torch.full((4, 3, 16, 16), -1.0)
    x[:, :, 4:12, 4:12] = 1.0  # a hard-edged square
    assert torch.equal(degrade(x, 0.0, 0.0, 1.0, g), x)
    blurred = degrade(x, 1.5, 0.0, 1.0, g)
    assert blurred.shape == x.shape and blurred.min() >= -1 and blurred.max() <= 1
    edge = blurred[:, 0, 8, 3:5]  # across the left edge: no longer a step from -1 to 1
    assert (edge > -1).any() and (edge < 1).any()
    torch.testing.assert_close(blurred.mean(), x.mean(), atol=0.05, rtol=0)  # blur keeps the mass
    noisy = degrade(x, 0.0, 0.2, 1.0, g)
    assert (noisy[:, :, 0, :] != -1).any()  # grain in flat areas
    assert torch.equal(degrade(x, 1.5, 0.2, 0.0, g), x)  # prob 0: untouched


def test_degrade_settings_are_checked(tmp_path):
    with pytest.raises(BestshotError, match="blur_max"):
        train_clip(ClipTrainConfig(**TINY, blur_max=-1.0, out_dir=str(tmp_path)))


def test_init_text_from_joins_a_new_image_tower_to_a_trained_text_tower(tmp_path):
    d = tmp_path / "c"
    train_clip(ClipTrainConfig(**TINY, batch_size=8, steps=1, hard_negatives=2, eval_size=8, out_dir=str(d)))
    src = CLIPModel.from_pretrained(d)
    # a finer patch grid and a deeper, wider image tower; the text side is the trained one, frozen
    cfg = ClipTrainConfig(
        **{**TINY, "patch_size": 2, "vision_hidden": 48, "vision_layers": 2, "vision_heads": 4},
        batch_size=8,
        steps=2,
        hard_negatives=2,
        eval_size=8,
        init_text_from=str(d),
        freeze_text=True,
        out_dir=str(tmp_path / "big"),
    )
    train_clip(cfg)
    big = CLIPModel.from_pretrained(tmp_path / "big")
    v = big.config.vision_config
    assert (v.patch_size, v.hidden_size, v.num_hidden_layers) == (2, 48, 2)
    for a, b in zip(src.text_model.parameters(), big.text_model.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(src.text_projection.weight, big.text_projection.weight)
    assert len(CLIPTokenizer.from_pretrained(tmp_path / "big")) == 49408
    with pytest.raises(BestshotError, match="exclude each other"):
        train_clip(dataclasses.replace(cfg, init_from=str(d)))
    with pytest.raises(BestshotError, match="not a CLIP folder"):
        train_clip(dataclasses.replace(cfg, init_text_from=str(tmp_path / "missing")))
    with pytest.raises(BestshotError, match="vision_heads"):
        train_clip(dataclasses.replace(cfg, vision_heads=5))


def test_time_schedule_anneals_by_the_wall_clock_budget():
    cfg = ClipTrainConfig(lr=1e-3, warmup_steps=10, steps=100_000, max_minutes=1.0, schedule_by_time=True)
    assert learning_rate(cfg, 4, 0.0) == pytest.approx(5e-4)  # warm-up still counts steps
    assert learning_rate(cfg, 20, 0.0) == pytest.approx(1e-3)
    assert learning_rate(cfg, 20, 30.0) == pytest.approx(0.55e-3, rel=1e-3)  # half the budget: half-way down the cosine
    assert learning_rate(cfg, 20, 60.0) == pytest.approx(1e-4)  # spent: the floor (0.1 of the peak)
    by_steps = dataclasses.replace(cfg, schedule_by_time=False, steps=100)
    assert learning_rate(by_steps, 55, 999.0) == pytest.approx(0.55e-3, rel=1e-3)  # time ignored
    with pytest.raises(BestshotError, match="schedule_by_time needs max_minutes"):
        train_clip(dataclasses.replace(cfg, max_minutes=0.0, **TINY))


def test_tokenizing_collate_matches_tokenizing_in_the_loss():
    torch.manual_seed(0)
    model = build_clip(ClipTrainConfig(**TINY))
    from bestshot.models.clip_tokenizer import build_clip_tokenizer

    tok = build_clip_tokenizer(32)
    ds = WorldHardNegatives(6, 16, 0, 2)
    items = [ds[i] for i in range(6)]
    imgs, caps, negs, enc = TokenizingCollate(tok)(items)
    assert enc.input_ids.shape[0] == 6 * 3
    a = clip_loss(model, tok, imgs, caps, negs, 2)[0]
    b = clip_loss(model, None, imgs, caps, negs, 2, enc)[0]
    assert torch.allclose(a, b)
