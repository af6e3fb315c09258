"""Early pruning: more candidates start, the best previews finish, each kept one keeps its own noise."""

import numpy as np
import pytest

from bestshot import generate
from bestshot.errors import BestshotError
from bestshot.pruning import cost_ratio, prune_step_index

SMALL = dict(steps_base=4, height=64, width=64, clip_min=-1.0, style_suffix="", negative_prompt="blurry")


@pytest.mark.parametrize("model", ["tiny_sd15", "tiny_sdxl"])
def test_pruned_candidates_are_the_best_previews(model, tiny_clip, out, request):
    path = request.getfixturevalue(model)
    r = generate(
        "a red circle",
        model=path,
        scorer=tiny_clip,
        n_images=2,
        prune_start=5,
        prune_at=0.5,
        save_candidates=True,
        return_candidates_images=True,
        **SMALL,
        **out,
    )
    pr = r["pruning"]
    assert pr["started"] == [42, 43, 44, 45, 46] and pr["prune_step"] == 1
    kept = [c["seed"] for c in r["candidates"]]
    order = sorted(range(5), key=lambda j: -pr["preview_clip"][j])[:2]
    assert kept == sorted(pr["started"][j] for j in order)
    assert pr["cost_ratio"] == pytest.approx(cost_ratio(4, 5, 2, 0.5))
    # a kept candidate is the same image as its seed generated alone, without pruning
    for c, im in list(zip(r["candidates"], r["candidate_images"]))[:1]:
        solo = generate(
            "a red circle",
            model=path,
            scorer=tiny_clip,
            n_images=1,
            seed_base=c["seed"],
            return_candidates_images=True,
            **SMALL,
            **out,
        )
        diff = np.abs(np.asarray(im, int) - np.asarray(solo["candidate_images"][0], int))
        assert diff.max() <= 1


def test_cost_ratio_and_step_index():
    assert prune_step_index(30, 0.3) == 8
    assert cost_ratio(30, 8, 4, 0.3) == pytest.approx((8 * 9 + 4 * 21) / (4 * 30))
    assert cost_ratio(30, 4, 4, 0.3) == pytest.approx(1.0)


def test_prune_config_errors(out):
    with pytest.raises(BestshotError, match="prune_start must be larger"):
        generate("a cat", model="embedded", n_images=4, prune_start=4, **out)
    with pytest.raises(BestshotError, match="prune_at"):
        generate("a cat", model="embedded", n_images=2, prune_start=4, prune_at=1.5, **out)


def test_a_pipeline_that_never_calls_back_is_refused():
    """Pruning happens in the step callback: a pipeline that ignores it would finish every started candidate
    (more than were asked for) with no preview scores, so it is refused, by name."""
    from PIL import Image

    from bestshot.pruning import run_pruned

    class Scheduler:
        def step(self, *args, **kwargs):
            return None

    class SilentPipeline:
        scheduler = Scheduler()

        def __call__(self, **kwargs):  # accepts callback_on_step_end and never calls it
            return type("Out", (), {"images": [Image.new("RGB", (8, 8))] * 4})()

    pipe = SilentPipeline()
    with pytest.raises(BestshotError, match="SilentPipeline did not call it at step 2"):
        run_pruned(
            pipe,
            {"num_inference_steps": 4, "generator": [None] * 4},
            seeds=[1, 2, 3, 4],
            keep=2,
            at=0.5,
            score_fn=lambda ims: [0.0] * len(ims),
            family="embedded",
        )
    assert "step" not in vars(pipe.scheduler)  # the scheduler's own step is back
