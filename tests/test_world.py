"""The procedural world: determinism, geometry invariants, caption <-> parse round trip."""

import random

import numpy as np
import pytest
import torch

from bestshot import world as W


def test_palette_is_well_separated():
    cols, bgs = list(W.COLOURS.values()), list(W.BACKGROUNDS.values())
    assert min(np.linalg.norm(np.subtract(a, b)) for i, a in enumerate(cols) for b in cols[:i]) > 80
    assert min(np.linalg.norm(np.subtract(a, b)) for a in cols for b in bgs) > 90
    assert len(W.COLOURS) >= 8 and len(W.SHAPES) >= 5
    assert not set(W.COLOURS.values()) & set(W.BACKGROUNDS.values())


def test_dataset_is_deterministic_and_in_range():
    a, b = W.WorldDataset(50, size=32, seed=7), W.WorldDataset(50, size=32, seed=7)
    for i in (0, 13, 49):
        (xa, ca), (xb, cb) = a[i], b[i]
        assert ca == cb and torch.equal(xa, xb)
        assert xa.shape == (3, 32, 32) and xa.dtype == torch.float32
        assert -1.0 <= float(xa.min()) and float(xa.max()) <= 1.0
    # a different seed gives a different world; item i does not depend on the dataset length
    assert [W.WorldDataset(50, 32, seed=8)[i][1] for i in range(10)] != [a[i][1] for i in range(10)]
    assert torch.equal(W.WorldDataset(1000, 32, seed=7)[13][0], a[13][0])
    with pytest.raises(IndexError):
        a[50]


def test_render_is_deterministic_bytes():
    scene = W.sample_scene(random.Random(3), n_objects=2)
    assert W.render(scene, 64).tobytes() == W.render(scene, 64).tobytes()
    assert W.render(scene, 16).size == (16, 16)


@pytest.mark.parametrize("size", [32, 64])
def test_scenes_fit_do_not_overlap_and_respect_relation(size):
    rng = random.Random(size)
    for _ in range(300):
        s = W.sample_scene(rng)
        boxes = [(o.cx, o.cy, W.SIZE_FRACTION[o.size]) for o in s.objects]
        for x, y, side in boxes:
            assert W.MARGIN - 1e-3 <= x - side / 2 and x + side / 2 <= 1 - W.MARGIN + 1e-3
            assert W.MARGIN - 1e-3 <= y - side / 2 and y + side / 2 <= 1 - W.MARGIN + 1e-3
        for i in range(len(boxes)):
            for j in range(i):
                (ax, ay, sa), (bx, by, sb) = boxes[i], boxes[j]
                need = (sa + sb) / 2 + W.GAP - 1e-3  # centres are rounded to 4 decimals
                assert abs(ax - bx) >= need or abs(ay - by) >= need
        assert (s.relation is not None) == (len(s.objects) == 2)
        if s.relation:
            a, b = s.objects
            dx, dy = b.cx - a.cx, b.cy - a.cy
            want = {"left of": dx, "right of": -dx, "above": dy, "below": -dy}[s.relation]
            other = abs(dy) if s.relation in ("left of", "right of") else abs(dx)
            assert want > 0 and other <= W.RELATION_SLOPE * want + 1e-6
        kinds = [(o.shape, o.colour) for o in s.objects]
        assert len(set(kinds)) == len(kinds)


def test_object_count_mix():
    rng = random.Random(0)
    counts = [len(W.sample_scene(rng).objects) for _ in range(600)]
    frac = [counts.count(n) / len(counts) for n in (1, 2, 3)]
    assert frac[0] > 0.3 and frac[1] > 0.3 and 0.05 < frac[2] < frac[1]
    ds = W.WorldDataset(40, 32, min_objects=2, max_objects=2)
    assert all(len(ds.scene(i).objects) == 2 for i in range(40))


def test_sizes_are_distinguishable_at_32px():
    rng = random.Random(1)
    areas = {}
    for size in W.SIZES:
        s = W.Scene((W.Obj("square", "red", size, 0.5, 0.5),), "white", None)
        img = np.asarray(W.render(s, 32)).astype(float)
        areas[size] = float((np.abs(img - 255).sum(-1) > 100).sum())
    assert areas["small"] < 0.75 * areas["medium"] and areas["medium"] < 0.75 * areas["large"]
    del rng


def test_caption_parse_round_trip():
    rng = random.Random(5)
    seen_inverse = seen_terse = False
    for _ in range(800):
        scene = W.sample_scene(rng)
        cap = W.caption(scene, rng)
        assert cap == cap.lower()
        spec = W.parse_prompt(cap)
        assert spec is not None, cap
        assert len(spec.objects) == len(scene.objects)
        truth = {(o.shape, o.colour): o for o in scene.objects}
        for o in spec.objects:
            t = truth[(o.shape, o.colour)]
            assert o.size in (None, t.size)
        assert spec.background in (None, scene.background)
        if spec.relation:
            a, b = (truth[(o.shape, o.colour)] for o in spec.objects)
            if (a, b) == scene.objects:
                assert spec.relation == scene.relation
            else:
                seen_inverse = True
                assert spec.relation == W.INVERSE[scene.relation]
        seen_terse |= not cap.startswith(("a ", "an "))
    assert seen_inverse and seen_terse


def test_parse_examples_and_rejections():
    s = W.parse_prompt("A small red circle above a blue square on a white background.")
    assert s == W.PromptSpec((W.ObjSpec("circle", "red", "small"), W.ObjSpec("square", "blue")), "white", "above")
    s = W.parse_prompt("a blue square below a small red circle")
    assert s.relation == "below" and s.objects[0].shape == "square"
    s = W.parse_prompt("a red circle, a blue square and a green cross on a grey background")
    assert len(s.objects) == 3 and s.background == "gray" and s.relation is None
    assert W.parse_prompt("red circle") == W.PromptSpec((W.ObjSpec("circle", "red"),), None, None)
    assert W.parse_prompt("a big orange cross to the right of a pink diamond").objects[0].size == "large"
    for bad in ("a fish", "a photo of a cat on a sofa", "a red circle above", "", "a magenta circle"):
        assert W.parse_prompt(bad) is None, bad


def test_heldout_prompts_fixed_parseable_and_not_training_stream():
    p = W.heldout_prompts(200)
    assert p == W.heldout_prompts(200) and len(p) == 200
    specs = [W.parse_prompt(x) for x in p]
    assert all(specs)
    assert all(s.relation for s in specs if len(s.objects) == 2)
    one = W.heldout_prompts(50, n_objects=1)
    assert all(len(W.parse_prompt(x).objects) == 1 for x in one)
    train = [W.WorldDataset(200, 32, seed=12345)[i][1] for i in range(30)]
    assert train != p[:30]


def test_log_prior_is_the_worlds_distribution():
    """Over every distinct fully specified scene (kinds, sizes, background, relation) the prior sums to 1;
    leaving sizes or the background out sums over them; "A left of B" is the same scene as "B right of A"."""
    import itertools
    import math

    kinds = [W.ObjSpec(s, c) for s in W.SHAPES for c in W.COLOURS]

    def sized(objs, sizes):
        return tuple(W.ObjSpec(o.shape, o.colour, z) for o, z in zip(objs, sizes))

    total = 0.0
    for n, groups, relations in (
        (1, itertools.combinations(kinds, 1), [None]),
        (2, itertools.permutations(kinds, 2), ["left of", "above"]),
        (3, itertools.combinations(kinds, 3), [None]),
    ):
        objs_list = list(groups)
        spec = W.PromptSpec(sized(objs_list[0], ["small"] * n), "white", relations[0])
        # every scene of a count has the same prior: sum it as count * exp(prior)
        count = len(objs_list) * len(relations) * len(W.SIZES) ** n * len(W.BACKGROUNDS)
        total += count * math.exp(W.log_prior(spec))
    assert total == pytest.approx(1.0, rel=1e-9)

    a, b = W.ObjSpec("circle", "red", "small"), W.ObjSpec("square", "blue", "large")
    assert W.log_prior(W.PromptSpec((a, b), "gray", "left of")) == W.log_prior(W.PromptSpec((b, a), "gray", "right of"))
    full = [W.log_prior(W.PromptSpec(sized((a,), [z]), bg, None)) for z in W.SIZES for bg in W.BACKGROUNDS]
    bare = W.log_prior(W.PromptSpec((W.ObjSpec("circle", "red"),), None, None))
    assert math.log(sum(math.exp(v) for v in full)) == pytest.approx(bare)
    pair = W.log_prior(W.PromptSpec((a, b), None, None))
    assert math.log(sum(math.exp(W.log_prior(W.PromptSpec((a, b), None, r))) for r in W.RELATIONS)) == pytest.approx(
        pair
    )
    with pytest.raises(ValueError, match="1-3 objects"):
        W.log_prior(W.PromptSpec((), None, None))
