"""--search: a pool of noises starts, the best early previews finish with branches around them (bestshot.search)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bestshot import generate
from bestshot.config import ImgCfg
from bestshot.errors import BestshotError
from bestshot.search import allot, cost_ratio
from helpers import run_cli

PROMPT = "a red circle above a blue square"
EMB = dict(model="embedded", steps_base=4, gate=False, n_images=4, seed_base=3, style_suffix="", negative_prompt="")
SMALL = dict(steps_base=4, height=64, width=64, clip_min=-1.0, style_suffix="", negative_prompt="blurry", n_images=4)


def _px(im) -> np.ndarray:
    return np.asarray(im, dtype=np.int16)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A search on the embedded model, the same search again, and plain best-of-4 with the same seed_base."""
    root = tmp_path_factory.mktemp("search")
    kw = dict(out_dir=str(root / "o"), log_jsonl=str(root / "log.jsonl"), return_candidates_images=True)
    found = generate(PROMPT, search=True, search_pool=6, save_candidates=True, **EMB, **kw)
    again = generate(PROMPT, search=True, search_pool=6, **EMB, **kw)
    plain = generate(PROMPT, **EMB, **kw)
    return {"found": found, "again": again, "plain": plain, "log": root / "log.jsonl", "kw": kw}


def test_the_record_says_what_the_search_did(runs):
    r = runs["found"]
    s = r["search"]
    assert s["pool"] == [3, 4, 5, 6, 7, 8] and len(s["preview_scores"]) == 6
    best_previews = sorted(range(6), key=lambda j: -s["preview_scores"][j])[:2]  # ceil(4 / (1 + 1)) survivors
    assert s["survivors"] == sorted(s["pool"][j] for j in best_previews)
    assert [b["seed"] for b in s["branches"]] == [9, 10]  # the seeds after the pool, best parent first
    assert [b["parent"] for b in s["branches"]] == [s["pool"][j] for j in best_previews]
    seeds = [c["seed"] for c in r["candidates"]]
    assert seeds == s["survivors"] + [9, 10] and s["finished"] == len(seeds) == 4
    k = s["preview_step"]
    assert s["candidate_steps"] == 6 * (k + 1) + 4 * (4 - k - 1)
    assert s["cost_ratio"] == pytest.approx(s["candidate_steps"] / (4 * 4), abs=1e-4)
    assert s["cost_ratio"] == pytest.approx(cost_ratio(4, 6, 4, k), abs=1e-4)
    assert r["settings"]["search_pool"] == 6 and r["settings"]["search_branches"] == 1
    logged = [json.loads(line) for line in runs["log"].read_text().splitlines()]
    assert next(x for x in logged if x["run_id"] == r["run_id"])["search"] == s
    assert "search" not in runs["plain"] and "search" not in runs["plain"]["settings"]


def test_search_finishes_other_images_than_plain_best_of_n(runs):
    r, plain = runs["found"], runs["plain"]
    assert [c["seed"] for c in plain["candidates"]] == [3, 4, 5, 6]
    assert [c["seed"] for c in r["candidates"]] != [3, 4, 5, 6]
    plain_px = [_px(im) for im in plain["candidate_images"]]
    for c, im in zip(r["candidates"], r["candidate_images"]):
        if c["seed"] >= 9:  # a branch is none of plain best-of-N's images
            assert not any(np.array_equal(_px(im), p) for p in plain_px)


def test_a_survivor_is_its_seed_alone_and_the_search_reproduces(runs):
    r, again = runs["found"], runs["again"]
    assert again["search"] == r["search"] and again["best_seed"] == r["best_seed"]
    for a, b in zip(r["candidate_images"], again["candidate_images"]):
        assert np.array_equal(_px(a), _px(b))
    seed = r["search"]["survivors"][0]
    alone = generate(PROMPT, **{**EMB, "n_images": 1, "seed_base": seed}, **runs["kw"])  # plain, no search
    assert np.array_equal(_px(alone["candidate_images"][0]), _px(r["candidate_images"][0]))
    branch = r["best_seed"] in [b["seed"] for b in r["search"]["branches"]]
    assert ("branch of seed" in r["reproduce"]) == branch
    assert ("--seed BEST_SEED -n 1" in r["reproduce"] and "different image" not in r["reproduce"]) == (not branch)


def test_a_branch_keeps_its_parents_composition(runs):
    r = runs["found"]
    px = {c["seed"]: _px(im).astype(float) for c, im in zip(r["candidates"], r["candidate_images"])}
    survivors = r["search"]["survivors"]
    for b in r["search"]["branches"]:
        to_parent = np.abs(px[b["seed"]] - px[b["parent"]]).mean()
        other = next(s for s in survivors if s != b["parent"])
        assert to_parent < np.abs(px[b["seed"]] - px[other]).mean(), b


@pytest.mark.parametrize("model", ["tiny_sd15", "tiny_sdxl"])
def test_branches_are_their_parent_renoised_on_sd_latents(model, tiny_clip, out, request):
    """DDIM (SD 1.5, alpha space) and Euler (SDXL, sigma space): a branch that keeps almost all of its parent's
    noise is almost its parent; one with fresh noise is further away (the re-noising is at the right level)."""
    path = request.getfixturevalue(model)
    kw = dict(model=path, scorer=tiny_clip, search=True, search_pool=4, search_at=0.5, return_candidates_images=True)
    near = generate("a red circle", search_keep_noise=0.999, **kw, **SMALL, **out)
    far = generate("a red circle", search_keep_noise=0.0, **kw, **SMALL, **out)
    assert near["search"]["branches"] == far["search"]["branches"] and len(near["search"]["branches"]) == 2
    for run in (near, far):
        assert [c["seed"] for c in run["candidates"]] == run["search"]["survivors"] + [46, 47]

    def gap(run, b):
        px = {c["seed"]: _px(im).astype(float) for c, im in zip(run["candidates"], run["candidate_images"])}
        return np.abs(px[b["seed"]] - px[b["parent"]]).mean()

    for b in near["search"]["branches"]:
        assert gap(near, b) < 2.0 and gap(near, b) < gap(far, b)


def test_a_sampler_without_a_clean_image_preview_is_refused(tiny_sd15, tiny_clip, out):
    with pytest.raises(BestshotError, match="use --scheduler ddim or euler") as e:
        generate("a red circle", model=tiny_sd15, scorer=tiny_clip, search=True, scheduler="dpmpp_2m", **SMALL, **out)
    assert "\n" not in str(e.value)


def test_branches_are_allotted_best_first():
    assert allot(4, 8, 1) == [1, 1, 1, 1]
    assert allot(3, 5, 1) == [1, 1, 0]
    assert allot(2, 8, 3) == [3, 3]
    assert allot(4, 4, 0) == [0, 0, 0, 0]


@pytest.mark.parametrize(
    "bad,needle",
    [
        (dict(search_pool=2), "search_pool 2 is smaller than n_images=4"),
        (dict(search_at=0.0), "search_at must be a number above 0"),
        (dict(search_at=1.0), "search_at must be a number above 0"),
        (dict(search_keep_noise=1.0), "search_keep_noise must be"),
        (dict(search_branches=-1), "search_branches must be a whole number >= 0"),
        (dict(prune_start=8), "drop --prune-start or --search"),
        (dict(refiner=True), "drop --refiner or --search"),
        (dict(init_image="x.png"), "drop --init-image or --search"),
        (dict(hires_scale=2.0), "drop --hires-scale or --search"),
        (dict(subseed=1, subseed_strength=0.5), "drop --subseed-strength or --search"),
    ],
)
def test_bad_search_settings_are_one_line(bad, needle):
    with pytest.raises(BestshotError, match=needle) as e:
        ImgCfg(**{"n_images": 4, "search": True, **bad}).validate()
    assert "\n" not in str(e.value)


def test_search_flags_on_the_command_line(tmp_path, capsys, monkeypatch):
    code, out, err = run_cli(
        ["generate", PROMPT, "-n", "4", "--search", "--search-pool", "3", "--out", str(tmp_path / "o")],
        capsys,
        monkeypatch,
    )
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "search_pool 3 is smaller than n_images=4" in lines[0], err


def test_search_over_http(tiny_sd15, tiny_clip, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from bestshot.server import create_app

    app = create_app(model=tiny_sd15, scorer=tiny_clip, out_dir=str(tmp_path / "o"), curate_dir=str(tmp_path / "c"))
    size = {"width": 32, "height": 32}
    with TestClient(app, base_url="http://localhost") as c:
        body = {"prompt": "a red circle", "n_images": 2, "steps_base": 2, "clip_min": -1, "seed_base": 5, **size}
        r = c.post("/v1/generate", json={**body, "search": True, "search_pool": 3})
        assert r.status_code == 200, r.text
        s = r.json()["search"]
        assert s["pool"] == [5, 6, 7] and [b["seed"] for b in s["branches"]] == [8]
        assert c.post("/v1/generate", json={**body, "search": True, "search_pool": 1}).status_code == 422
        r = c.post(
            "/sdapi/v1/txt2img",
            json={"prompt": "a red circle", "seed": 10, "best_of": 2, "steps": 2, "bestshot_search": True, **size},
        )
        assert r.status_code == 200, r.text
        (run,) = json.loads(r.json()["info"])["bestshot"]["runs"]
        assert run["search"]["pool"] == [10, 11, 12, 13] and [c["seed"] for c in run["candidates"]][-1] == 14
        assert c.get(f"/v1/runs/{run['run_id']}").json()["settings"]["search"] is True
        r = c.post(
            "/sdapi/v1/txt2img", json={"prompt": "a", "steps": 2, "bestshot_search": True, "enable_hr": True, **size}
        )
        assert r.status_code == 422 and "bestshot_search" in r.text


def test_a_search_stopped_before_its_preview_is_an_interrupted_run(tmp_path):
    """A stop before the preview step: no preview was scored, nothing was branched, every pool candidate comes
    back as far as it got and the run is recorded as interrupted (never as a search that ran)."""
    r = generate(
        PROMPT,
        search=True,
        search_pool=6,
        search_at=0.75,
        on_step=lambda step, total: step >= 1,
        out_dir=str(tmp_path / "o"),
        log_jsonl=str(tmp_path / "l.jsonl"),
        **EMB,
    )
    assert r["interrupted"] is True and r["ok"] is False and r["reproduce"] is None
    assert [c["seed"] for c in r["candidates"]] == [3, 4, 5, 6, 7, 8]
    assert r["search"]["preview_scores"] == [] and r["search"]["branches"] == []


@pytest.mark.parametrize("scheduler", ["euler_a", "lms"])
def test_a_search_with_a_noisy_or_history_keeping_sampler_reproduces(scheduler, tiny_sd15, tiny_clip, out):
    """Euler a draws noise at every step (each branch from its own seed's stream), LMS keeps a per-sample
    history (regrouped with the batch): the same search twice is the same pixels."""
    kw = dict(model=tiny_sd15, scorer=tiny_clip, search=True, scheduler=scheduler, return_candidates_images=True)
    a, b = (generate("a red circle", **kw, **SMALL, **out) for _ in range(2))
    assert a["search"] == b["search"] and len(a["search"]["branches"]) == 2
    for x, y in zip(a["candidate_images"], b["candidate_images"]):
        assert np.array_equal(_px(x), _px(y))
