"""The world oracle: exact on renders, rejects wrong prompts per attribute, robust to noise and blur."""

import dataclasses
import random

import numpy as np
import pytest
from PIL import Image, ImageFilter

from bestshot import world as W
from bestshot.errors import BestshotError
from bestshot.world.oracle import analyse, match_rate, oracle


def _degrade(img: Image.Image, noise: float, blur: float, rng: np.random.Generator) -> Image.Image:
    if blur:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    a = np.asarray(img, np.float64) / 255 + rng.normal(0, noise, (img.height, img.width, 3))
    return Image.fromarray((np.clip(a, 0, 1) * 255).round().astype(np.uint8))


def test_exact_on_1000_rendered_pairs_at_32_and_64():
    rng = random.Random(2024)
    misses = []
    for i in range(1000):
        scene = W.sample_scene(rng)
        prompt = W.caption(scene, rng)
        r = oracle(W.render(scene, 32 if i % 2 else 64), prompt)
        if not r.match:
            misses.append((prompt, r.detail))
    assert not misses, misses[:5]


def test_fully_specified_prompts_and_found_geometry_are_exact():
    rng = random.Random(11)
    for i in range(150):
        scene = W.sample_scene(rng)
        size = 32 if i % 2 else 64
        r = oracle(W.render(scene, size), W.prompt_for(W.spec_of(scene)))
        assert r.match and r.size and r.background, r.detail
        an = analyse(W.render(scene, size))
        assert an.background == scene.background
        for o in scene.objects:
            b = next(b for b in an.blobs if (b.shape, b.colour) == (o.shape, o.colour))
            assert abs(b.cx - o.cx) < 0.5 / size and abs(b.cy - o.cy) < 0.5 / size
            assert abs(b.side - W.SIZE_FRACTION[o.size]) < 0.5 / size


def _other(options, *avoid):
    return next(x for x in options if x not in avoid)


def _mutations(scene: W.Scene):
    """(attribute that must fail, wrong spec) pairs for a scene."""
    spec = W.spec_of(scene)
    objs = list(spec.objects)
    kinds = {(o.shape, o.colour) for o in objs}
    o0 = objs[0]
    colour = next(c for c in W.COLOURS if c != o0.colour and (o0.shape, c) not in kinds)
    shape = next(s for s in W.SHAPES if s != o0.shape and (s, o0.colour) not in kinds)
    yield "colour", dataclasses.replace(spec, objects=(dataclasses.replace(o0, colour=colour), *objs[1:]))
    yield "shape", dataclasses.replace(spec, objects=(dataclasses.replace(o0, shape=shape), *objs[1:]))
    yield "size", dataclasses.replace(spec, objects=(dataclasses.replace(o0, size=_other(W.SIZES, o0.size)), *objs[1:]))
    yield "background", dataclasses.replace(spec, background=_other(W.BACKGROUNDS, spec.background))
    if spec.relation:
        yield "position", dataclasses.replace(spec, relation=W.INVERSE[spec.relation])
        yield "count", W.PromptSpec((objs[0],), spec.background, None)
    if len(objs) < 3:
        extra = next(W.ObjSpec(s, c) for s in W.SHAPES for c in W.COLOURS if (s, c) not in kinds)
        yield "count", W.PromptSpec((*objs, extra), spec.background, None)


def test_rejects_mismatched_prompts_on_the_right_attribute():
    rng = random.Random(99)
    seen = set()
    for i in range(120):
        scene = W.sample_scene(rng)
        img = W.render(scene, 32 if i % 2 else 64)
        for attr, wrong in _mutations(scene):
            r = oracle(img, W.prompt_for(wrong))
            assert not r.match, (attr, W.prompt_for(wrong), r.detail)
            assert getattr(r, attr) is False, (attr, W.prompt_for(wrong), r.detail)
            seen.add(attr)
    assert seen == {"colour", "shape", "size", "background", "position", "count"}


def test_swapped_objects_in_relation_fail_position_only():
    scene = W.Scene(
        (W.Obj("circle", "red", "small", 0.5, 0.2), W.Obj("square", "blue", "large", 0.5, 0.7)), "white", "above"
    )
    img = W.render(scene, 64)
    assert oracle(img, "a red circle above a blue square").match
    assert oracle(img, "a blue square below a red circle").match
    r = oracle(img, "a blue square above a red circle")
    assert not r.match and not r.position and r.shape and r.colour and r.count
    r = oracle(img, "a red circle left of a blue square")
    assert not r.position


# the last three: soft edges without grain (what the embedded denoiser draws: about a pixel of blur at 32 px)
@pytest.mark.parametrize(
    "size,noise,blur",
    [(64, 0.08, 0.7), (64, 0.05, 0.7), (32, 0.03, 0.0), (32, 0.0, 0.8), (32, 0.0, 1.0), (64, 0.0, 2.0)],
)
def test_robust_to_noise_and_blur(size, noise, blur):
    rng, nrng = random.Random(size * 1000 + int(noise * 100)), np.random.default_rng(0)
    ok = 0
    n = 200
    for _ in range(n):
        scene = W.sample_scene(rng)
        ok += oracle(_degrade(W.render(scene, size), noise, blur, nrng), W.caption(scene, rng)).match
    assert ok / n >= 0.95


def test_blank_and_garbage_images():
    blank = Image.new("RGB", (64, 64), W.BACKGROUNDS["white"])
    r = oracle(blank, "a red circle")
    assert not r.match and not r.count and not r.colour
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    assert not oracle(noise, "a red circle on a white background").match  # must not crash either


def test_accepts_dataset_tensors_and_arrays():
    ds = W.WorldDataset(20, size=32, seed=3)
    for i in range(20):
        x, cap = ds[i]
        assert oracle(x, cap).match  # CHW in [-1, 1]
        arr = np.asarray(W.render(ds.scene(i), 32))
        assert oracle(arr, cap).match and oracle(arr / 255.0, cap).match


def test_match_rate_summary_and_bad_prompt():
    rng = random.Random(4)
    scenes = [W.sample_scene(rng, n_objects=2) for _ in range(10)]
    imgs = [W.render(s, 32) for s in scenes]
    prompts = [W.prompt_for(W.spec_of(s)) for s in scenes]
    prompts[0] = W.prompt_for(dataclasses.replace(W.spec_of(scenes[0]), relation=W.INVERSE[scenes[0].relation]))
    out = match_rate(imgs, prompts)
    assert out["n"] == 10 and out["match"] == pytest.approx(0.9) and out["position"] == pytest.approx(0.9)
    assert out["shape"] == out["colour"] == out["count"] == out["size"] == 1.0
    assert len(out["results"]) == 10 and out["n_background"] == 10
    with pytest.raises(BestshotError):
        oracle(imgs[0], "a photo of a cat")
    with pytest.raises(BestshotError):
        match_rate(imgs, prompts[:3])
