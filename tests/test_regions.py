"""Regions: the objects of a plain-background image found and cut out one by one (scoring.regions)."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from bestshot import world as W
from bestshot.scoring.regions import background_colour, find_regions
from helpers import ColourCLIP


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
        ("a red circle", "a blue square", "a green cross"), None, "on a black background"
    )
    assert parse_objects("A picture of a small pink triangle to the left of a cyan diamond on white.") == ObjectPrompt(
        ("a small pink triangle", "a cyan diamond"), "left of", "on white"
    )
    assert parse_objects("a fish") == ObjectPrompt(("a fish",), None, "")
    assert parse_objects("a castle at dusk, highly detailed matte painting by a famous old master") is None
    assert parse_objects("a, b, c, d") is None


def test_region_scorer_prefers_the_stated_relation_and_count():
    from bestshot.scoring.regions import RegionScorer

    scorer = RegionScorer(ColourCLIP())
    assert scorer.name == "colour+regions"
    left = W.Scene(
        (W.Obj("circle", "red", "medium", 0.25, 0.5), W.Obj("square", "blue", "medium", 0.75, 0.5)), "white", "left of"
    )
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


class ShapeColourCLIP(ColourCLIP):
    """ColourCLIP plus a weak shape feature: texts by the shape word they name, images by the shape the
    oracle reads in their largest object (exact on renders)."""

    name = "shape-colour"

    def _shape(self, names):
        v = torch.zeros(len(W.SHAPES))
        for n in names:
            v[W.SHAPES.index(n)] = 0.3
        return v

    def embed_texts(self, texts):
        col = super().embed_texts(texts)
        shp = torch.stack([self._shape([w for w in t.split() if w in W.SHAPES]) for t in texts])
        return torch.nn.functional.normalize(torch.cat([col, shp], 1), dim=1)

    def embed_images(self, images):
        from bestshot.world.oracle import analyse

        col = super().embed_images(images)
        shapes = []
        for im in images:
            blobs = sorted(analyse(im).blobs, key=lambda b: -b.area_px)
            shapes.append(self._shape([blobs[0].shape] if blobs else []))
        return torch.nn.functional.normalize(torch.cat([col, torch.stack(shapes)], 1), dim=1)


def test_region_scorer_noun_term_asks_what_kind_each_object_is():
    """With a closed vocabulary, each matched region's log-probability of its phrase's noun against the
    other nouns is added (``w_nouns``): it separates a wrong shape far more than the raw cosine does; a
    phrase whose noun is not in the vocabulary adds nothing, and without a vocabulary nothing changes."""
    from bestshot.scoring.regions import RegionScorer, parse_objects

    right = W.Scene(
        (W.Obj("circle", "red", "medium", 0.25, 0.5), W.Obj("square", "blue", "medium", 0.75, 0.5)), "white", "left of"
    )
    wrong = W.Scene((W.Obj("triangle", "red", "medium", 0.25, 0.5),) + right.objects[1:], "white", "left of")
    images = [W.render(s, 64) for s in (right, wrong)]
    prompt = "a red circle left of a blue square on a white background"
    plain = RegionScorer(ShapeColourCLIP())
    nouns = RegionScorer(ShapeColourCLIP(), nouns=W.SHAPES, w_nouns=0.05, temperature=100.0)
    reads = nouns.read(images, prompt, parse_objects(prompt))
    (c0, sims0, regs0, logp0), (c1, sims1, regs1, logp1) = reads
    assert logp0.shape == (2, 2) and len(regs0) == 2
    # the regions are found left to right; region 0 holds the red object in both images
    red0 = min(range(2), key=lambda i: regs0[i].cx)
    red1 = min(range(2), key=lambda i: regs1[i].cx)
    assert float(logp0[red0, 0]) > -0.1  # a circle read as a circle
    assert float(logp1[red1, 0]) < -5.0  # a triangle where a circle was asked for
    s_plain, s_nouns = plain.score(images, prompt), nouns.score(images, prompt)
    assert s_plain[0] > s_plain[1]
    assert s_nouns[0] - s_nouns[1] > 5 * (s_plain[0] - s_plain[1])
    assert s_nouns[0] == pytest.approx(s_plain[0] + 0.05 * float(logp0[red0, 0] + logp0[1 - red0, 1]) / 2, abs=1e-5)
    # a noun outside the vocabulary: that phrase has no term, the other keeps its own
    fish = "a red fish left of a blue square on a white background"
    (_, _, regs, logp), _ = nouns.read(images, fish, parse_objects(fish))
    assert torch.isnan(logp[:, 0]).all() and not torch.isnan(logp[:, 1]).any()
    assert nouns.score(images[:1], fish)[0] == pytest.approx(
        plain.score(images[:1], fish)[0] + 0.05 * float(logp[1 - red0, 1]), abs=1e-5
    )
    # no vocabulary: read gives no log-probabilities and the score is the plain one
    assert plain.read(images, prompt, parse_objects(prompt))[0][3] is None


def test_mask_operations_match_scipy_ndimage():
    """find_regions' numpy label / dilation / median are scipy.ndimage's, element for element."""
    from scipy import ndimage

    from bestshot.scoring.masks import dilate, label8, median3x3

    rng = np.random.default_rng(0)
    for trial in range(300):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        mask = rng.random((h, w)) < rng.uniform(0.05, 0.9)
        if trial % 3 == 0:  # blobs, the shapes find_regions meets
            mask = ndimage.binary_dilation(rng.random((h, w)) < 0.05, iterations=int(rng.integers(1, 4)))
        want, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
        got, m = label8(mask)
        assert m == n and np.array_equal(got, want), trial
        for k in (0, 1, 2):
            assert np.array_equal(dilate(mask, k), ndimage.binary_dilation(mask, iterations=k)), (trial, k)
        arr = (rng.random((h, w, 3)) * 255).astype(np.float32)
        assert np.array_equal(median3x3(arr), ndimage.median_filter(arr, size=(3, 3, 1))), trial
