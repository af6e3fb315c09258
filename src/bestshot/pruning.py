"""Early pruning: start more candidates than are kept, drop the unpromising ones after a few steps.

The machinery is shared with :mod:`bestshot.search`: :func:`run_regrouped` is one pipeline call whose batch
is regrouped after a given step (rows dropped, repeated or given new samples), :func:`preview_images` the
cheap previews of the predicted clean images.

After ``k`` of the denoising steps every candidate's *predicted clean image* (the scheduler's
``pred_original_sample``) already shows the composition. We preview it cheaply (pixels for pixel-space
models, a linear latent→RGB map for SD/SDXL latents, the VAE otherwise), score the previews with the
same scorer that ranks the finished images, and continue only with the best ``keep``. Every tensor the
pipeline exposes to ``callback_on_step_end`` is sliced to the kept rows (both CFG halves), and the
per-seed generators are remapped, so a kept candidate keeps its own noise stream.

Cost per kept image, with S steps, ``start`` candidates, ``keep`` kept and pruning after k steps:
``(start·k + keep·(S−k)) / (keep·S)`` of plain best-of-keep's denoiser work.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from .errors import BestshotError

# Linear latent → RGB maps (least-squares fits used for live previews by ComfyUI / A1111's "Approx cheap").
_LATENT_RGB = {
    "sdxl": (
        [[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362], [-0.3165, -0.2492, -0.2188]],
        [0.1084, -0.0175, -0.0011],
    ),
    "sd15": (
        [[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721], [-0.2120, -0.2616, -0.7177]],
        [0.0, 0.0, 0.0],
    ),
}


@dataclass(frozen=True)
class PruneResult:
    kept: list[int]  # indices into the started seeds, in seed order
    images: list[Image.Image]  # finished images of the kept candidates
    preview_scores: list[float]  # one per started candidate
    prune_step: int


def prune_step_index(steps: int, at: float) -> int:
    """The 0-based step after which pruning happens (at least after the first step)."""
    return min(steps - 1, max(0, round(at * steps) - 1))


def cost_ratio(steps: int, start: int, keep: int, at: float) -> float:
    """Denoiser work relative to plain best-of-``keep`` (same steps)."""
    k = prune_step_index(steps, at) + 1
    return (start * k + keep * (steps - k)) / (keep * steps)


def preview_images(pipe: Any, x0: torch.Tensor, family: str) -> list[Image.Image]:
    """Cheap RGB previews of predicted clean samples."""
    x0 = x0.detach().float()
    if getattr(pipe, "vae", None) is None:  # pixel space: x0 is already the image in [-1, 1]
        rgb = x0
    elif family in _LATENT_RGB and x0.shape[1] == 4:
        w, b = (torch.tensor(v, dtype=x0.dtype, device=x0.device) for v in _LATENT_RGB[family])
        rgb = torch.einsum("bchw,cr->brhw", x0, w) + b[None, :, None, None]
    else:
        vae = pipe.vae
        lat = x0 / vae.config.scaling_factor + (getattr(vae.config, "shift_factor", None) or 0.0)
        with torch.no_grad():
            rgb = vae.decode(lat.to(vae.dtype)).sample.float()
    arr = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


def _gather(t: Any, idx: torch.Tensor, batch: int) -> Any:
    """Rows ``idx`` (repeats allowed) of a per-candidate tensor; both halves of a classifier-free guidance
    batch ``[uncond; cond]``; anything else as it is."""
    if not isinstance(t, torch.Tensor) or t.dim() == 0:
        return t
    if t.shape[0] == batch:
        return t[idx.to(t.device)]
    if t.shape[0] == 2 * batch:  # classifier-free guidance: [uncond; cond]
        i = idx.to(t.device)
        return torch.cat([t[i], t[batch + i]])
    return t


# per-sample state a scheduler keeps between steps (multistep solvers' history): regrouped with the batch
_SCHEDULER_STATE = ("model_outputs", "last_sample", "sample", "ets", "cur_sample", "derivatives")


def _gather_scheduler(sched: Any, idx: torch.Tensor, batch: int) -> None:
    for name in _SCHEDULER_STATE:
        v = vars(sched).get(name)
        if isinstance(v, torch.Tensor):
            setattr(sched, name, _gather(v, idx, batch))
        elif isinstance(v, list) and any(isinstance(x, torch.Tensor) for x in v):
            setattr(sched, name, [_gather(x, idx, batch) for x in v])


@dataclass(frozen=True)
class Preview:
    """What a regroup decision sees after step ``step`` (0-based) of a batch of ``len(latents)`` rows."""

    step: int
    timestep: Any
    latents: torch.Tensor  # the samples the next step starts from
    x0: torch.Tensor | None  # the predicted clean samples (None: the scheduler's step does not report them)


@dataclass(frozen=True)
class Regroup:
    """A new batch made from the old one: new row j continues old row ``rows[j]`` (repeats allowed, so a
    row may go on more than once); ``latents`` replace the gathered rows' samples (None: kept as they
    are); ``generators``: each new row's generator for the remaining steps (None: the old rows')."""

    rows: list[int]
    latents: torch.Tensor | None = None
    generators: list[Any] | None = None


def run_regrouped(
    pipe: Any,
    call_kwargs: dict[str, Any],
    *,
    step: int,
    regroup: Callable[[Preview], Regroup],
    feature: str,
) -> list[Image.Image]:
    """One pipeline call whose batch is regrouped after step ``step`` (0-based): ``regroup`` sees the
    :class:`Preview` and says which rows go on (and with which samples). Every tensor the pipeline hands
    to ``callback_on_step_end`` (both CFG halves), the scheduler's per-sample history and the per-seed
    generators follow the new rows. ``feature`` names the setting to drop when the pipeline cannot. A run
    stopped before that step (the caller's interrupt) returns every row, never regrouped."""
    batch = len(call_kwargs["generator"])
    gens = call_kwargs["generator"]
    state: dict[str, Any] = {"x0": None, "gens": None, "done": False}
    sched = pipe.scheduler
    orig_step = sched.step

    @functools.wraps(orig_step)  # its signature too: pipelines pass `generator` only to a step that names it
    def wrapped_step(*args, **kw):
        if state["gens"] is not None and isinstance(kw.get("generator"), list):
            kw["generator"] = state["gens"]
        out = orig_step(*args, **kw)
        x0 = getattr(out, "pred_original_sample", None)
        if x0 is None and isinstance(out, tuple) and len(out) > 1 and isinstance(out[1], torch.Tensor):
            x0 = out[1]  # return_dict=False (diffusers' pipelines): (prev_sample, pred_original_sample)
        if x0 is not None:
            state["x0"] = x0
        return out

    user_cb = call_kwargs.get("callback_on_step_end")
    tensor_inputs = list(getattr(pipe, "_callback_tensor_inputs", ["latents"]))

    def cb(p, i, t, kw):
        if i == step and not state["done"]:
            x0 = state["x0"] if state["x0"] is not None else kw.get("pred_original_sample")
            plan = regroup(Preview(step, t, kw["latents"], x0))
            idx = torch.tensor(plan.rows, dtype=torch.long)
            kw = {name: _gather(v, idx, batch) for name, v in kw.items()}
            if plan.latents is not None:
                kw["latents"] = plan.latents.to(kw["latents"].device, kw["latents"].dtype)
            _gather_scheduler(sched, idx, batch)
            state["gens"] = plan.generators if plan.generators is not None else [gens[j] for j in plan.rows]
            state["done"] = True
        return user_cb(p, i, t, kw) if user_cb else kw

    kwargs = dict(call_kwargs, callback_on_step_end=cb, callback_on_step_end_tensor_inputs=tensor_inputs)
    sched.step = wrapped_step
    try:
        images = list(pipe(**kwargs).images)
    finally:
        del sched.step  # back to the class method
    if not state["done"] and not getattr(pipe, "_interrupt", False):  # step < steps: it never called back there
        raise BestshotError(
            f"{feature} needs a pipeline that calls callback_on_step_end at every step; "
            f"{type(pipe).__name__} did not call it at step {step + 1} — drop {feature}"
        )
    return images


def score_previews(
    pipe: Any, pv: Preview, family: str, score_fn: Callable[[list[Image.Image]], list[float]]
) -> list[float]:
    """The run's scorer on cheap previews of the predicted clean images (the samples themselves where the
    scheduler reports none)."""
    previews = preview_images(pipe, pv.x0 if pv.x0 is not None else pv.latents, family)
    return [float(s) for s in score_fn(previews)]


def top(scores: Sequence[float], k: int) -> list[int]:
    """Indices of the ``k`` best scores, best first (ties: the earlier index)."""
    return sorted(range(len(scores)), key=lambda j: (-scores[j], j))[:k]


def run_pruned(
    pipe: Any,
    call_kwargs: dict[str, Any],
    *,
    seeds: Sequence[int],
    keep: int,
    at: float,
    score_fn: Callable[[list[Image.Image]], list[float]],
    family: str,
) -> PruneResult:
    """One pipeline call that starts ``len(seeds)`` candidates and finishes the best ``keep``."""
    k = prune_step_index(int(call_kwargs["num_inference_steps"]), at)
    state: dict[str, Any] = {}

    def regroup(pv: Preview) -> Regroup:
        state["scores"] = score_previews(pipe, pv, family, score_fn)
        state["kept"] = sorted(top(state["scores"], keep))
        return Regroup(state["kept"])

    images = run_regrouped(pipe, call_kwargs, step=k, regroup=regroup, feature="--prune-start")
    if "kept" not in state:  # stopped before the prune step: every started candidate, as far as it got
        return PruneResult(list(range(len(seeds))), images, [], k)
    return PruneResult(state["kept"], images, state["scores"], k)
