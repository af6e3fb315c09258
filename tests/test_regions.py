"""Regions: the objects of a plain-background image found and cut out one by one (scoring.regions)."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from bestshot.scoring.regions import background_colour, find_regions
from helpers import ColourCLIP
from bestshot.train import world as W


def _nearest(region, scene):
    return min(scene.objects, key=lambda o: (o.cx - region.cx) ** 2 + (o.cy - region.cy) ** 2)


@pytest.mark.parametrize("size", [64, 32])
def test_every_rendered_object_is_one_region(size):
    scenes = [sc for sc, _ in W.heldout_scenes(60, seed=7)]
    for sc in scenes:
        im = W.render(sc, size)
        regions, isolated = find_regions(im)
        assert len(regions) == len(isolated) == len(sc.objects), sc
        assert [r.area for r in regions] == sorted((r.area for r in regions), reverse=True)
        matched = {id(_nearest(r, sc)) for r in regions}
        assert len(matched) == len(sc.objects)  # one region per object, none shared
        for r in regions:  # the box is the object's (a triangle's centroid is not its box centre)
            o = _nearest(r, sc)
            x0, y0, x1, y1 = r.box
            assert abs((x0 + x1) / 2 - o.cx) < 1.5 / size and abs((y0 + y1) / 2 - o.cy) < 1.5 / size, (r, o)
            assert x0 <= r.cx <= x1 and y0 <= r.cy <= y1


def test_isolated_images_keep_one_object_in_place():
    for sc, _ in W.heldout_scenes(20, seed=8, n_objects=3):
        im = W.render(sc, 64)
        regions, isolated = find_regions(im)
        bg = np.asarray(W.BACKGROUNDS[sc.background], np.float32)
        for r, iso in zip(regions, isolated):
            again, _ = find_regions(iso)
            assert len(again) == 1
            assert abs(again[0].cx - r.cx) < 0.02 and abs(again[0].cy - r.cy) < 0.02
            assert abs(again[0].area - r.area) < 0.2 * r.area
            # what is left is that object's colour on the background, nothing of the others
            arr = np.asarray(iso, np.float32)
            fg = np.linalg.norm(arr - bg, axis=-1) > 40
            colour = np.asarray(W.COLOURS[_nearest(r, sc).colour], np.float32)
            assert np.median(np.linalg.norm(arr[fg] - colour, axis=-1)) < 10


def test_noisy_and_blurred_images():
    rng = np.random.default_rng(0)
    ok = 0
    scenes = [sc for sc, _ in W.heldout_scenes(40, seed=9)]
    for sc in scenes:
        im = W.render(sc, 32).filter(ImageFilter.GaussianBlur(0.7))
        arr = np.asarray(im, np.float32) + rng.normal(0, 8, (32, 32, 3))
        noisy = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
        ok += len(find_regions(noisy)[0]) == len(sc.objects)
    assert ok / len(scenes) >= 0.9


def test_background_colour_and_empty_images():
    im = Image.new("RGB", (32, 32), (235, 222, 195))
    bg, noise = background_colour(np.asarray(im, np.float32))
    assert bg.tolist() == [235, 222, 195] and noise == 0
    assert find_regions(im) == ([], [])
    # specks below min_area are not objects
    arr = np.asarray(im).copy()
    arr[10, 10] = (0, 0, 0)
    assert find_regions(Image.fromarray(arr)) == ([], [])


def test_parse_objects():
    from bestshot.scoring.regions import ObjectPrompt, parse_objects

    assert parse_objects("a red circle, a blue square and a green cross on a black background") == ObjectPrompt(
        ("a red circle", "a blue square", "a green cross"), None, "on a black background")
    assert parse_objects("A picture of a small pink triangle to the left of a cyan diamond on white.") == ObjectPrompt(
        ("a small pink triangle", "a cyan diamond"), "left of", "on white")
    assert parse_objects("a fish") == ObjectPrompt(("a fish",), None, "")
    assert parse_objects("a castle at dusk, highly detailed matte painting by a famous old master") is None
    assert parse_objects("a, b, c, d") is None


def test_region_scorer_prefers_the_stated_relation_and_count():
    from bestshot.scoring.regions import RegionScorer

    scorer = RegionScorer(ColourCLIP())
    assert scorer.name == "colour+regions"
    left = W.Scene((W.Obj("circle", "red", "medium", 0.25, 0.5), W.Obj("square", "blue", "medium", 0.75, 0.5)),
                   "white", "left of")
    right = W.Scene(tuple(W.Obj(o.shape, o.colour, o.size, 1 - o.cx, o.cy) for o in left.objects), "white", "right of")
    extra = W.Scene(left.objects + (W.Obj("cross", "green", "small", 0.5, 0.15),), "white", None)
    images = [W.render(s, 64) for s in (left, right, extra)]
    prompt = "a red circle left of a blue square on a white background"
    s_left, s_right, s_extra = scorer.score(images, prompt)
    # the pooled stand-in is blind to the relation (and nearly to the extra object): the regions are not
    base = ColourCLIP().score(images, prompt)
    assert abs(base[0] - base[1]) < 1e-6
    assert s_left > s_right and s_left > s_extra
    # a prompt that is not a list of objects scores as the wrapped scorer does
    art = "a castle at dusk, highly detailed matte painting by a famous old master"
    assert scorer.score(images, art) == pytest.approx(ColourCLIP().score(images, art))
    with pytest.raises(Exception, match="one per image"):
        scorer.score(images, [prompt])
