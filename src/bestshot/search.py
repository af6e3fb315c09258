"""Search over noises: spend the candidate budget on a search with the run's scorer as verifier.

Best-of-N can only keep what N independent draws made. ``--search`` starts a larger *pool* of noises in one
pipeline call, and after a few steps (``search_at`` of them) scores a cheap preview of every candidate's
predicted clean image with the same scorer that ranks the finished images (:mod:`bestshot.pruning`'s
previews and regrouping). The composition is already there at that point, the details are not. So it

1. keeps the best ``m`` noises of the pool (the *survivors*; they go on unchanged, each with its own
   noise stream, so a survivor is the very image its seed renders alone), and
2. gives each survivor up to ``search_branches`` *branches*: a new candidate whose sample at that step
   is the survivor's predicted clean image re-noised to the step's noise level, with noise
   ``rho·eps_parent + sqrt(1 - rho²)·xi``: ``eps_parent`` the noise that the survivor's own sample
   carries, ``xi`` fresh noise from the branch's own seed, ``rho`` = ``search_keep_noise``. The branch
   keeps the survivor's composition and re-draws its details (``rho`` 1 would be the survivor itself).

``m + branches = n_images`` candidates finish (``m = ceil(n_images / (1 + search_branches))``; the best
survivors get their branches first), and the best-of-N core ranks and gates them as always. Why branching
and not plain pruning: an early preview misranks, so pruning alone throws away good noises; a branch
spends the saved steps near noises the preview liked instead of on noises it disliked, while the
survivors themselves still finish, so the search never has fewer of the pool's best than pruning.

Seeds: the pool is ``seed_base … seed_base + pool − 1`` and the branches take the seeds after it, in
order of their parent's preview rank, so everything follows from ``seed_base`` and the settings. Cost, in
candidate-steps: ``pool·(k+1) + n_images·(S−k−1)`` against plain best-of-``n_images``' ``n_images·S``
(:func:`cost_ratio`), plus scoring ``pool`` previews. Defaults (pool 2·n_images, a quarter of the steps,
one branch) cost 1.25× the denoiser work of plain best-of-N at the same steps.

The scheduler must report the predicted clean image from its step (DDIM, Euler, Euler a, DDPM, LMS…) and
re-noise with ``add_noise``; a multistep solver (DPM++, UniPC) or a two-stage one (Heun, DPM2) is
refused in one line. Early pruning (``prune_start``) is the same machinery with no branches.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from .errors import BestshotError
from .pruning import Preview, Regroup, prune_step_index, run_regrouped, score_previews, top


@dataclass(frozen=True)
class SearchPlan:
    """A search's settings: ``pool`` seeds start, ``finish`` candidates finish, branching after ``at`` of the
    steps. ``branches`` 0 is early pruning (recorded under ``pruning``, as ``prune_start`` always was)."""

    pool: list[int]
    finish: int
    branches: int
    at: float
    keep_noise: float
    key: str = "search"

    @classmethod
    def of(cls, cfg: Any) -> SearchPlan:
        """The plan of ``cfg``'s search (``search``) or early pruning (``prune_start``)."""
        if cfg.prune_start:
            return cls(_seeds(cfg.seed_base, cfg.prune_start), cfg.n_images, 0, cfg.prune_at, 0.0, "pruning")
        pool = cfg.search_pool or 2 * cfg.n_images
        return cls(_seeds(cfg.seed_base, pool), cfg.n_images, cfg.search_branches, cfg.search_at, cfg.search_keep_noise)

    def step(self, steps: int) -> int:
        """The 0-based step after which the pool is scored (a search leaves at least one step after it)."""
        k = prune_step_index(steps, self.at)
        return k if self.branches == 0 else min(k, max(0, steps - 2))

    def survivors(self) -> int:
        return min(len(self.pool), math.ceil(self.finish / (1 + self.branches)))


@dataclass(frozen=True)
class Found:
    """A search's finished candidates in seed order (survivors, then branches) and what it did."""

    seeds: list[int]
    images: list[Image.Image]
    parents: list[int | None]  # per finished candidate: the pool seed it branched from (None: a survivor)
    preview_scores: list[float]  # one per pool seed
    step: int


def _seeds(base: int, n: int) -> list[int]:
    return [base + i for i in range(n)]


def cost_ratio(steps: int, pool: int, finish: int, k: int) -> float:
    """Denoiser work (candidate-steps) relative to plain best-of-``finish`` at the same steps, scoring
    after the 0-based step ``k``."""
    return (pool * (k + 1) + finish * (steps - k - 1)) / (finish * steps)


def allot(survivors: int, finish: int, branches: int) -> list[int]:
    """Branches of each survivor (best first): round-robin over the survivors until ``finish`` in all."""
    counts = [0] * survivors
    left = finish - survivors
    while left > 0 and any(c < branches for c in counts):
        for r in range(survivors):
            if left and counts[r] < branches:
                counts[r] += 1
                left -= 1
    return counts


def _noise_coefficients(sched: Any, timestep: Any, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, b)`` with ``x = a·x0 + b·eps`` at the noise level of the sample after ``timestep``'s step."""
    ts = sched.timesteps
    at = (ts == timestep.to(ts.device) if isinstance(timestep, torch.Tensor) else ts == timestep).nonzero()
    nxt = ts[int(at[0]) + 1].reshape(1)
    one = torch.ones((1,) * like.dim(), dtype=torch.float32, device=like.device)
    return sched.add_noise(one, one * 0, nxt), sched.add_noise(one * 0, one, nxt)


def check_sampler(pipe: Any) -> None:
    """Refuse a scheduler a search cannot branch with (one line naming the fix)."""
    sched = pipe.scheduler
    name = type(sched).__name__
    multistep = "Multistep" in name or "UniPC" in name or "DEIS" in name or "PNDM" in name
    if getattr(sched, "order", 1) != 1 or multistep or not hasattr(sched, "add_noise"):
        raise BestshotError(
            f"--search branches from the predicted clean image, which the {name} sampler does not give step by "
            "step — use --scheduler ddim or euler (or drop --search)"
        )


def run_search(
    pipe: Any,
    call_kwargs: dict[str, Any],
    plan: SearchPlan,
    *,
    score_fn: Callable[[list[Image.Image]], list[float]],
    family: str,
) -> Found:
    """One pipeline call: the pool starts, is scored after :meth:`SearchPlan.step`, and the survivors and
    their branches finish (module doc)."""
    steps = int(call_kwargs["num_inference_steps"])
    if plan.branches:
        if steps < 2:
            raise BestshotError("--search needs at least 2 steps (it branches between two steps) — raise --steps")
        check_sampler(pipe)
    k = plan.step(steps)
    next_seed = plan.pool[-1] + 1
    out: dict[str, Any] = {}

    def regroup(pv: Preview) -> Regroup:
        scores = score_previews(pipe, pv, family, score_fn)
        best = top(scores, plan.survivors())
        counts = allot(len(best), plan.finish, plan.branches)
        kept = sorted(best)
        out.update(scores=scores, kept=kept)
        parents = [r for r, c in zip(best, counts) for _ in range(c)]
        out["parents"] = parents
        if not parents:
            return Regroup(kept)
        if pv.x0 is None:
            raise BestshotError(
                f"--search needs the predicted clean image from the sampler's step; {type(pipe.scheduler).__name__} "
                "gives none — use --scheduler ddim or euler (or drop --search)"
            )
        lat, x0 = pv.latents, pv.x0.to(pv.latents.device)
        a, b = _noise_coefficients(pipe.scheduler, pv.timestep, lat)
        rho = float(plan.keep_noise)
        gens = list(call_kwargs["generator"])
        rows, new_gens = [lat[j].float() for j in kept], [gens[j] for j in kept]
        for i, j in enumerate(parents):
            g = torch.Generator("cpu").manual_seed(next_seed + i)
            xi = torch.randn(lat.shape[1:], generator=g, dtype=torch.float32).to(lat.device)
            eps = (lat[j].float() - a[0] * x0[j].float()) / b[0]
            rows.append(a[0] * x0[j].float() + b[0] * (rho * eps + math.sqrt(max(0.0, 1 - rho * rho)) * xi))
            new_gens.append(g)  # the branch's own noise stream (stochastic samplers) goes on from its seed
        return Regroup(kept + parents, torch.stack(rows).to(lat.dtype), new_gens)

    images = run_regrouped(
        pipe, call_kwargs, step=k, regroup=regroup, feature="--search" if plan.branches else "--prune-start"
    )
    if "kept" not in out:  # stopped before the preview step: every pool candidate, as far as it got
        return Found(list(plan.pool), images, [None] * len(images), [], k)
    kept, parents = out["kept"], out["parents"]
    seeds = [plan.pool[j] for j in kept] + [next_seed + i for i in range(len(parents))]
    lineage: list[int | None] = [None] * len(kept) + [plan.pool[j] for j in parents]
    if len(images) != len(seeds):
        raise BestshotError(f"the pipeline returned {len(images)} images for {len(seeds)} search candidates")
    return Found(seeds, images, lineage, out["scores"], k)


def record(plan: SearchPlan, found: Found, steps: int) -> dict[str, Any]:
    """The run record's ``search`` (or ``pruning``) entry: what started, what the previews scored, what
    finished and from which parent, and the cost."""
    ratio = round(cost_ratio(steps, len(plan.pool), plan.finish, found.step), 4)
    scores = [round(x, 6) for x in found.preview_scores]
    if plan.key == "pruning":
        return {"started": plan.pool, "preview_clip": scores, "prune_step": found.step, "cost_ratio": ratio}
    if not scores:  # stopped before the preview: nothing was scored, kept or branched
        return {"pool": plan.pool, "preview_scores": [], "preview_step": found.step, "survivors": [], "branches": []}
    return {
        "pool": plan.pool,
        "preview_scores": scores,
        "preview_step": found.step,
        "survivors": [s for s, p in zip(found.seeds, found.parents) if p is None],
        "branches": [{"seed": s, "parent": p} for s, p in zip(found.seeds, found.parents) if p is not None],
        "keep_noise": plan.keep_noise,
        "finished": len(found.seeds),
        "candidate_steps": len(plan.pool) * (found.step + 1) + len(found.seeds) * (steps - found.step - 1),
        "cost_ratio": ratio,
    }


__all__ = ["Found", "SearchPlan", "allot", "check_sampler", "cost_ratio", "record", "run_search"]
