"""--repair: keep the objects the scorer reads as right in the kept image, repaint the rest (bestshot.repair)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bestshot import generate
from bestshot import world as W
from bestshot.config import ImgCfg
from bestshot.errors import BestshotError
from bestshot.repair import locator, plan
from bestshot.scoring.regions import RegionScorer
from helpers import ColourCLIP, run_cli
from test_regions import ShapeColourCLIP

PROMPT = "a red circle left of a blue square on a white background"
RIGHT = W.Scene(
    (W.Obj("circle", "red", "medium", 0.25, 0.5), W.Obj("square", "blue", "medium", 0.75, 0.5)), "white", "left of"
)
EMB = dict(model="embedded", steps_base=4, gate=False, n_images=2, seed_base=11, style_suffix="", negative_prompt="")


def _scene(*objs):
    return W.Scene(tuple(W.Obj(*o) for o in objs), "white", None)


@pytest.fixture(scope="module")
def scorer():
    return RegionScorer(ShapeColourCLIP(), nouns=W.SHAPES, colours=tuple(W.COLOURS))


def test_nothing_to_repair_when_every_object_reads_right(scorer):
    located = scorer.locate(W.render(RIGHT, 64), PROMPT)
    assert [o.phrase for o in located.objects] == ["a red circle", "a blue square"]
    assert all(o.region is not None and o.noun > 0.99 for o in located.objects) and located.agreement > 0
    p, why = plan(located, (64, 64))
    assert p is None and why == "every object reads right"
    art = "a castle at dusk, highly detailed matte painting by a famous old master"
    assert scorer.locate(W.render(RIGHT, 64), art) is None
    assert plan(None, (64, 64))[0] is None


def test_a_wrong_object_is_repainted_and_the_right_one_kept(scorer):
    wrong = W.Scene((W.Obj("triangle", "red", "medium", 0.25, 0.5), RIGHT.objects[1]), "white", "left of")
    located = scorer.locate(W.render(wrong, 64), PROMPT)
    assert located.objects[0].noun < 0.5 and located.objects[1].noun > 0.99
    p, why = plan(located, (64, 64))
    assert p.keep == ("a blue square",) and p.redraw == ("a red circle",)
    assert "'a red circle' reads as another kind" in why
    m = np.asarray(p.mask)
    assert m[32, 16] == 255  # the wrong object's place is repainted
    assert m[32, 48] == 0 and m[0, 0] == 0 and m[63, 32] == 0  # the kept square and the border ring are kept
    x0, y0, x1, y1 = located.objects[1].region.box  # the kept box, grown a little
    assert (m[round(y0 * 64) : round(y1 * 64), round(x0 * 64) : round(x1 * 64)] == 0).all()
    assert (m == 255).mean() > 0.4


def test_an_object_of_the_wrong_colour_is_repainted(scorer):
    wrong = W.Scene((W.Obj("circle", "green", "medium", 0.25, 0.5), RIGHT.objects[1]), "white", "left of")
    located = scorer.locate(W.render(wrong, 64), PROMPT)
    red, blue = located.objects
    assert red.noun_top and blue.noun_top and blue.colour_top and red.colour_top is False and red.colour < 0.5
    p, why = plan(located, (64, 64))
    assert p.redraw == ("a red circle",) and "'a red circle' reads as another colour" in why
    # a scorer without a colour vocabulary cannot tell: nothing to repair
    blind = RegionScorer(ShapeColourCLIP(), nouns=W.SHAPES).locate(W.render(wrong, 64), PROMPT)
    assert blind.objects[0].colour is None and plan(blind, (64, 64))[0] is None


def test_a_relation_that_does_not_hold_repaints_the_weakest(scorer):
    swapped = W.Scene(tuple(W.Obj(o.shape, o.colour, o.size, 1 - o.cx, o.cy) for o in RIGHT.objects), "white", None)
    located = scorer.locate(W.render(swapped, 64), PROMPT)
    assert located.agreement < 0
    p, why = plan(located, (64, 64))
    assert len(p.redraw) == len(p.keep) == 1
    assert "the relation 'left of' does not hold" in why and f"moved: {p.redraw[0]!r}" in why
    # the square sits at the left edge and the circle at the right: keeping the square leaves the circle no room on
    # its left, keeping the circle leaves the square room on its right — the square moves
    assert p.redraw == ("a blue square",)
    shifted = W.Scene(
        (W.Obj("circle", "red", "small", 0.5, 0.5), W.Obj("square", "blue", "small", 0.2, 0.5)), "white", None
    )
    p, _ = plan(scorer.locate(W.render(shifted, 64), PROMPT), (64, 64))
    assert p.redraw == ("a blue square",)  # the kept circle leaves 0.39 on its right, the square 0.09
    shifted = W.Scene(
        (W.Obj("circle", "red", "small", 0.8, 0.5), W.Obj("square", "blue", "small", 0.5, 0.5)), "white", None
    )
    p, _ = plan(scorer.locate(W.render(shifted, 64), PROMPT), (64, 64))
    assert p.redraw == ("a red circle",)  # the kept square leaves the circle 0.39 on its left


def test_a_missing_object_and_a_stray_region_are_repainted(scorer):
    one = _scene(("circle", "red", "medium", 0.25, 0.5))
    located = scorer.locate(W.render(one, 64), PROMPT)
    assert located.objects[1].region is None and located.objects[1].quality == float("-inf")
    p, why = plan(located, (64, 64))
    assert p.redraw == ("a blue square",) and p.keep == ("a red circle",) and "no region for 'a blue square'" in why
    three = _scene(("circle", "red", "medium", 0.2, 0.5), ("square", "blue", "medium", 0.75, 0.5),
                   ("cross", "green", "small", 0.5, 0.15))  # fmt: skip
    located = scorer.locate(W.render(three, 64), PROMPT)
    assert len(located.unmatched) == 1
    p, why = plan(located, (64, 64))
    assert "1 region(s) no phrase took" in why
    stray = located.unmatched[0]
    assert np.asarray(p.mask)[round(stray.cy * 64), round(stray.cx * 64)] == 255
    assert stray.box[1] < 0.1  # it reaches into the border ring: that part is repainted too, no fragment stays
    x0, y0, x1, y1 = stray.box
    assert (np.asarray(p.mask)[round(y0 * 64) : round(y1 * 64), round(x0 * 64) : round(x1 * 64)] == 255).all()


def test_repair_needs_a_scorer_that_locates_objects():
    assert locator(RegionScorer(ColourCLIP())).__self__.name == "colour+regions"
    with pytest.raises(BestshotError, match=r"\+regions' scorer") as e:
        locator(ColourCLIP())
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "bad, needle",
    [
        (dict(repair_tries=0), "repair_tries must be a whole number >= 1"),
        (dict(repair_rounds=1.5), "repair_rounds must be a whole number >= 1"),
        (dict(repair="yes"), "repair is on or off"),
        (dict(init_image="x.png"), "drop --init-image or --repair"),
        (dict(hires_scale=2.0), "drop --hires-scale or --repair"),
        (dict(refiner=True), "drop --refiner or --repair"),
    ],
)
def test_bad_repair_settings_are_one_line(bad, needle):
    with pytest.raises(BestshotError, match=needle) as e:
        ImgCfg(**{"repair": True, **bad}).validate()
    assert "\n" not in str(e.value)


def test_repair_flags_on_the_command_line(tmp_path, capsys, monkeypatch):
    code, out, err = run_cli(
        ["generate", "a red circle", "--repair", "--repair-tries", "0", "--out", str(tmp_path / "o")],
        capsys,
        monkeypatch,
    )
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "--repair-tries" in lines[0], err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A repair on the embedded model (4 steps: most draws are wrong somewhere), the same call again, and plain
    best-of-2 with the same seeds."""
    root = tmp_path_factory.mktemp("repair")
    kw = dict(out_dir=str(root / "o"), log_jsonl=str(root / "log.jsonl"), return_candidates_images=True)
    prompt = "a red circle above a blue square, a green cross"  # three objects: something is nearly always off
    rep = dict(repair=True, repair_tries=2, repair_rounds=2)
    first = generate(prompt, **rep, **EMB, **kw)
    again = generate(prompt, **rep, **EMB, **kw)
    plain = generate(prompt, **EMB, **kw)
    return {"first": first, "again": again, "plain": plain, "log": root / "log.jsonl", "prompt": prompt}


def test_the_record_says_what_each_round_kept_and_repainted(runs):
    r, plain = runs["first"], runs["plain"]
    rounds = r["repair"]["rounds"]
    assert rounds and all("why" in x and "from_seed" in x for x in rounds)
    done = [x for x in rounds if "tries" in x]
    assert done, rounds  # at 4 steps the scorer finds something to repair
    seeds = [c["seed"] for c in r["candidates"]]
    tries = [t["seed"] for x in done for t in x["tries"]]
    assert seeds[:2] == [c["seed"] for c in plain["candidates"]] == [11, 12]
    assert seeds[2:] == tries == list(range(13, 13 + len(tries)))  # the seeds after the draw's, in order
    assert r["repair"]["repaints"] == len(tries) == 2 * len(done)
    assert [c["score"] for c in r["candidates"][2:]] == pytest.approx([t["score"] for x in done for t in x["tries"]])
    assert done[0]["from_seed"] == plain["best_seed"]  # the first round repairs the best of the draw
    assert r["best_score"] == pytest.approx(max(c["score"] for c in r["candidates"]))
    assert r["best_score"] >= plain["best_score"]  # a repair never replaces a better image
    kept = r["repair"]["kept"]  # here a repaint of a repaint (round 2 repairs round 1's winner) is kept
    assert kept is not None and kept["seed"] == r["best_seed"] and "a repaint of the image of seed" in r["reproduce"]
    (src,) = [x["from_seed"] for x in done if kept["seed"] in [t["seed"] for t in x["tries"]]]
    assert kept["repaint_of"] == src
    logged = [json.loads(line) for line in runs["log"].read_text().splitlines()]
    assert next(x for x in logged if x["run_id"] == r["run_id"])["repair"] == r["repair"]
    assert "repair" not in plain


def test_a_repaint_keeps_the_kept_boxes_pixel_for_pixel(runs):
    r = runs["first"]
    images = dict(zip([c["seed"] for c in r["candidates"]], r["candidate_images"]))
    scorer_locate = None
    for x in (x for x in r["repair"]["rounds"] if "tries" in x):
        src = np.asarray(images[x["from_seed"]], dtype=np.int16)
        if scorer_locate is None:
            from bestshot.models.registry import resolve_model
            from bestshot.scoring import get_scorer

            scorer_locate = locator(get_scorer(resolve_model("embedded").family.default_scorer))
        p, _ = plan(scorer_locate(images[x["from_seed"]], runs["prompt"]), images[x["from_seed"]].size)
        assert list(p.keep) == x["keep"] and list(p.redraw) == x["redraw"]
        kept = np.asarray(p.mask) == 0
        for t in x["tries"]:
            out = np.asarray(images[t["seed"]], dtype=np.int16)
            assert (out[kept] == src[kept]).all()  # outside the mask: the repaired image exactly
            assert (out[~kept] != src[~kept]).any()  # inside: repainted


def test_a_repair_reproduces_from_its_seeds(runs):
    a, b = runs["first"], runs["again"]
    assert a["repair"] == b["repair"] and a["best_seed"] == b["best_seed"]
    for x, y in zip(a["candidate_images"], b["candidate_images"]):
        assert np.array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("model", ["tiny_sd15", "tiny_sdxl"])
def test_repair_on_sd_models_repaints_through_their_inpainting_pipeline(model, tiny_clip, tmp_path, request):
    """SD 1.5 and SDXL: the repaint is diffusers' inpainting pipeline (from_pipe, same weights) composited over the
    repaired image, so what the plan keeps (at least the border ring) is that image's pixels exactly."""
    kw = dict(out_dir=str(tmp_path / "o"), log_jsonl=str(tmp_path / "l.jsonl"), return_candidates_images=True)
    small = dict(steps_base=2, height=64, width=64, style_suffix="", negative_prompt="", n_images=2, gate=False,
                 exact_best=False)  # fmt: skip
    path = request.getfixturevalue(model)
    r = generate("a red circle", model=path, scorer=f"{tiny_clip}+regions", repair=True, repair_tries=2,
                 repair_rounds=1, **small, **kw)  # fmt: skip
    (x,) = r["repair"]["rounds"]
    assert [t["seed"] for t in x["tries"]] == [c["seed"] for c in r["candidates"][2:]] == [44, 45]
    images = dict(zip([c["seed"] for c in r["candidates"]], r["candidate_images"]))
    src = np.asarray(images[x["from_seed"]], dtype=np.int16)
    ring = np.ones((64, 64), bool)
    ring[6:-6, 6:-6] = False  # repair.RING of 64 pixels
    for t in x["tries"]:
        out = np.asarray(images[t["seed"]], dtype=np.int16)
        assert (out[ring] == src[ring]).all() and (out[~ring] != src[~ring]).any()


def test_repair_over_http(tiny_sd15, tiny_clip, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from bestshot.server import create_app

    app = create_app(
        model=tiny_sd15, scorer=f"{tiny_clip}+regions", out_dir=str(tmp_path / "o"), curate_dir=str(tmp_path / "c")
    )
    size = {"width": 32, "height": 32}
    with TestClient(app, base_url="http://localhost") as c:
        body = {"prompt": PROMPT, "n_images": 2, "steps_base": 2, "clip_min": -9, "seed_base": 5, **size}
        r = c.post("/v1/generate", json={**body, "repair": True, "repair_tries": 2, "repair_rounds": 1})
        assert r.status_code == 200, r.text
        rec = r.json()
        assert rec["repair"]["rounds"][0]["from_seed"] == rec["candidates"][0]["seed"] or rec["repair"]["rounds"]
        assert rec["settings"]["repair"] is True and rec["settings"]["repair_tries"] == 2
        assert c.post("/v1/generate", json={**body, "repair": True, "repair_tries": 0}).status_code == 422
        txt = {"prompt": PROMPT, "seed": 10, "best_of": 2, "steps": 2, "bestshot_repair": True, **size}
        r = c.post("/sdapi/v1/txt2img", json=txt)
        assert r.status_code == 200, r.text
        (run,) = json.loads(r.json()["info"])["bestshot"]["runs"]
        assert run["repair"]["rounds"] and [c["seed"] for c in run["candidates"]][:2] == [10, 11]
        for bad in ({"best_of": 1}, {"enable_hr": True}):
            r = c.post("/sdapi/v1/txt2img", json={**txt, **bad})
            assert r.status_code == 422 and "bestshot_repair" in r.text, r.text


def test_repair_with_a_scorer_that_cannot_locate_is_refused_over_http(tiny_sd15, tiny_clip, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from bestshot.server import create_app

    app = create_app(model=tiny_sd15, scorer=tiny_clip, out_dir=str(tmp_path / "o"), curate_dir=str(tmp_path / "c"))
    with TestClient(app, base_url="http://localhost") as c:
        body = {"prompt": "a red circle", "n_images": 2, "steps_base": 2, "width": 32, "height": 32, "repair": True}
        r = c.post("/v1/generate", json=body)
        assert r.status_code == 422 and "+regions" in r.text, r.text


def test_the_a1111_cost_counts_a_search_pool_and_the_repaints(tiny_sd15, tiny_clip, tmp_path):
    """A server's --max-cost budget sees what a request may draw: best_of candidates, a search's whole pool, a
    repair's repaints (2 rounds x 4 by default)."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from bestshot.server import create_app
    from bestshot.server.a1111 import Limits

    # 32x32 on a 512-native family with 2 steps: 1/256 * 2 per candidate; a budget of 0.05 fits 6 candidates
    app = create_app(
        model=tiny_sd15,
        scorer=f"{tiny_clip}+regions",
        out_dir=str(tmp_path / "o"),
        curate_dir=str(tmp_path / "c"),
        limits=Limits(max_cost=0.05),
    )
    txt = {"prompt": PROMPT, "seed": 10, "best_of": 4, "steps": 2, "width": 32, "height": 32}
    with TestClient(app, base_url="http://localhost") as c:
        assert c.post("/sdapi/v1/txt2img", json=txt).status_code == 200
        for extra in ({"bestshot_search": True}, {"bestshot_repair": True}):  # 8 and 12 candidates
            r = c.post("/sdapi/v1/txt2img", json={**txt, **extra})
            assert r.status_code == 422 and "budget" in r.text, r.text


def test_a_stop_during_a_repair_keeps_the_best_so_far(tmp_path):
    """A stop asked while repaints are drawn ends the repair: that round is dropped and the run is a finished one
    (the draw was complete), its best candidate kept. A caller's step callback that takes the latents gets them."""
    seen: list[int] = []

    def on_step(step, total, latents):
        seen.append(step)
        return len(seen) > 4 + 1  # let the draw's 4 steps pass, stop in the first repaint round

    kw = dict(out_dir=str(tmp_path / "o"), log_jsonl=str(tmp_path / "l.jsonl"))
    r = generate("a red circle above a blue square, a green cross", repair=True, on_step=on_step, **EMB, **kw)
    (x,) = r["repair"]["rounds"]
    assert x["stopped"] == "interrupt" and "tries" not in x and r["repair"]["kept"] is None
    assert not r.get("interrupted") and [c["seed"] for c in r["candidates"]] == [11, 12]
