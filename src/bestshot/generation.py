"""Best-of-N generation: N candidates with reproducible seeds → scorer ranking → quality gate → store.

The best-of-N flow (generate N, score each against the prompt, keep the best if it passes the gate), with
bestshot's rules on top:

* seeds are ``base, base+1, ...``; each candidate gets its own ``torch.Generator``, so candidate k is
  the same image whether it is made alone or inside a batch;
* all candidates come from ONE batched pipeline call (split only when the GPU runs out of memory:
  the batch is halved and retried, no candidate is dropped);
* the best candidate is kept only if it passes the quality gate, ``score_min`` in the scorer's own units
  (unset: the scorer's default; :mod:`bestshot.scoring.gate`: an ensemble keeps its best-scored candidate
  among those its alignment term passes); otherwise the run reports
  ``ok: False, reason: "low_clip_alignment"`` and no best file is claimed;
* a blocked prompt generates nothing (``reason: "blocked_prompt"``);
* every run is one line of the JSONL log (never the images themselves).
"""

from __future__ import annotations

import inspect
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from . import __version__
from .config import ImgCfg
from .errors import BestshotError
from .models import conditioning, controlnet, ip_adapter, vae, variation
from .models.loader import free_memory, load_pipeline, load_refiner
from .models.registry import default_scorer, resolve_model
from .models.settings import resolve_config
from .modes import Mode, Source, denoise_steps, read_source, upscale_all
from .modes import check as check_mode
from .prompts import extra_networks, hooks, regions  # <lora:...> tags; LoRA, embeddings, weighting; layouts
from .prompts.build import blocked_terms, build_prompt
from .record import Candidate, RunRecord, png_metadata
from .schedulers import sampler_label
from .scoring import cosine_like, pipeline_scorer, resolve_gate, safety_checker
from .store import Store, format_parameters, new_run_id

log = logging.getLogger(__name__)

StepCallback = Callable[[int, int], None]  # (step done, total steps)

MODES = ("user_prompt", "auto_prompt")


def seeds_for(base: int, n: int) -> list[int]:
    return [base + i for i in range(n)]


def supported_kwargs(fn: Callable, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Drop keyword arguments a third-party pipeline's ``__call__`` does not accept."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


class StepTracker:
    """A caller's ``on_step``, watched: the step each pipeline call reached, and whether (and why) the caller
    asked to stop. ``on_step`` returns something true to stop: ``True`` (an interrupt) or the reason as a
    string (``"interrupt"``, ``"skip"``, ``"timeout"``, ``"shutdown"``)."""

    def __init__(self, on_step: Callable) -> None:
        self.on_step = on_step
        try:
            self.wants_latents = len(inspect.signature(on_step).parameters) >= 3
        except (TypeError, ValueError):
            self.wants_latents = False
        self.stopped: str | None = None
        self.reached = 0  # the last step the current pipeline call reported
        self.calls: list[tuple[int, int]] = []  # (candidates, step reached) of each finished pipeline call

    def __call__(self, step: int, total: int, latents: Any = None) -> Any:
        self.reached = step
        stop = self.on_step(step, total, latents) if self.wants_latents else self.on_step(step, total)
        if stop and self.stopped is None:
            self.stopped = stop if isinstance(stop, str) else "interrupt"
        return stop

    def steps_done(self, n: int) -> list[int]:
        """Denoising steps each of the ``n`` candidates got (seed order)."""
        per = [s for count, s in self.calls for _ in range(count)]
        return per if len(per) == n else [self.reached] * n


def load_for(cfg: ImgCfg) -> Any:
    """The pipeline ``cfg`` generates with (cached by the loader: the same settings load once)."""
    return load_pipeline(
        cfg.model,
        dtype=cfg.dtype,
        device=cfg.device,
        memory=cfg.memory,
        scheduler=cfg.scheduler,
        compile=cfg.compile,
        vae_tiling=cfg.vae_tiling,
        vae_slicing=cfg.vae_slicing,
        vae_fp16=cfg.vae_fp16,
    )


def furthest(steps_done: Sequence[int] | None) -> list[int] | None:
    """The candidates that may be kept. After a stop (``steps_done`` given) only those that got furthest
    compete: a partly denoised image is never ranked against a finished one. None: all of them."""
    if not steps_done:
        return None
    top = max(steps_done)
    return [k for k, done in enumerate(steps_done) if done == top]


def _step_callback(on_step: StepCallback | None, total: int) -> Callable | None:
    if on_step is None:
        return None

    try:
        wants_latents = len(inspect.signature(on_step).parameters) >= 3
    except (TypeError, ValueError):
        wants_latents = False

    def cb(pipe, step, timestep, callback_kwargs):
        done = min(step + 1, total)
        stop = on_step(done, total, callback_kwargs.get("latents")) if wants_latents else on_step(done, total)
        if stop:  # the caller asked to stop: diffusers skips the remaining steps and decodes what it has
            pipe._interrupt = True
        return callback_kwargs

    return cb


def pipeline_kwargs(
    pipe: Any,
    prompt: str,
    negative: str,
    seeds: Sequence[int],
    cfg: ImgCfg,
    on_step: StepCallback | None,
    image: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Keyword arguments of one batched call: one CPU generator per seed; ``image``: a mode's image keywords
    (:meth:`bestshot.modes.Mode.image_kwargs`), whose denoising steps the step callback counts."""
    total = denoise_steps(cfg.steps_base, image["strength"]) if image else cfg.steps_base
    kwargs: dict[str, Any] = dict(
        prompt=prompt,
        negative_prompt=negative or None,
        num_inference_steps=cfg.steps_base,
        guidance_scale=cfg.guidance,
        height=cfg.height,
        width=cfg.width,
        num_images_per_prompt=len(seeds),
        generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
        callback_on_step_end=_step_callback(on_step, total),
        **(image or {}),
    )
    return supported_kwargs(pipe.__call__, kwargs)


# what changes a text-to-image draw besides the prompt: each a context manager that undoes itself. Apart from
# prompts/hooks.py (LoRA, embeddings, weighting), which every call of a draw takes (img2img and the hires pass
# too): these hand over latents or another pipeline, so they wrap the text-to-image call only
CONDITIONING = (vae.prepared, ip_adapter.prepared, controlnet.prepared, variation.prepared, regions.prepared)


def _call_pipeline(
    pipe: Any,
    refiner: Any,
    prompt: str,
    negative: str,
    seeds: Sequence[int],
    cfg: ImgCfg,
    on_step: StepCallback | None,
    mode: Mode | None = None,
) -> list[Image.Image]:
    """THE one place where a batch of candidates is drawn, for every mode and caller: one batched pipeline
    call for ``seeds`` (text-to-image, plus the refiner's call when enabled; or the mode's image-to-image /
    inpainting call, composited over the original), then the hires pass when on. Features that change a
    pipeline call hook in here."""
    n = len(seeds)
    if mode is not None and mode.source is not None and cfg.strength == 0:  # nothing repainted: the init image
        return [mode.composite(mode.source.init.copy()) for _ in seeds]
    with hooks.prepared(pipe, cfg, prompt, negative, seeds) as extra, ExitStack() as stack:  # undone after the draw
        if mode is not None and mode.source is not None:  # img2img / inpaint
            kwargs = pipeline_kwargs(mode.pipe, prompt, negative, seeds, cfg, on_step, mode.image_kwargs(cfg))
            kwargs.update(extra)
            return [mode.composite(im) for im in mode.pipe(**kwargs).images]
        kwargs = {**pipeline_kwargs(pipe, prompt, negative, seeds, cfg, on_step), **extra}
        for hook in CONDITIONING:  # a hook may hand back another "pipe" (ControlNet's, built from_pipe)
            kwargs.update(stack.enter_context(hook(pipe, cfg, prompt, negative, seeds)))
        draw = kwargs.pop("pipe", pipe)
        if refiner is None:
            images = list(draw(**kwargs).images)
        else:  # ensemble of experts: the base denoises the high-noise part and hands over latents
            latents = draw(**kwargs, denoising_end=cfg.refiner_split, output_type="latent").images
            gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
            out = refiner(
                prompt=[prompt] * n,
                negative_prompt=[negative] * n if negative else None,
                image=latents,
                num_inference_steps=cfg.steps_base,
                denoising_start=cfg.refiner_split,
                guidance_scale=cfg.guidance,
                generator=gens,
            )
            images = list(out.images)
        if mode is None or mode.hires is None or (isinstance(on_step, StepTracker) and on_step.stopped):
            return images
        hr = mode.hires  # hires fix: each candidate upscaled, then repainted with its own seed
        big = upscale_all(images, (hr.width, hr.height))
        kwargs = pipeline_kwargs(mode.pipe, prompt, negative, seeds, hr, on_step, mode.image_kwargs(hr, big))
        kwargs.update(extra)
        return list(mode.pipe(**kwargs).images)


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def make_candidates(
    pipe: Any,
    refiner: Any,
    prompt: str,
    negative: str,
    seeds: Sequence[int],
    cfg: ImgCfg,
    on_step: StepCallback | None = None,
    mode: Mode | None = None,
) -> list[Image.Image]:
    """All candidates, in seed order (:func:`_call_pipeline` per batch). On CUDA out-of-memory the batch is
    halved and retried."""
    total = mode.steps(cfg) if mode is not None else cfg.steps_base
    batch = min(cfg.max_batch or len(seeds), len(seeds))
    images: list[Image.Image] = []
    i = 0
    while i < len(seeds):
        chunk = seeds[i : i + batch]
        try:
            if isinstance(on_step, StepTracker):
                on_step.reached = 0
            images += _call_pipeline(pipe, refiner, prompt, negative, chunk, cfg, on_step, mode)
            if isinstance(on_step, StepTracker):
                on_step.calls.append((len(chunk), on_step.reached or total))
            i += len(chunk)
        except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
            if not _is_oom(e):
                raise
            free_memory()
            if batch == 1:
                raise BestshotError(
                    f"out of GPU memory even for one {cfg.width}x{cfg.height} image — lower --size, or use "
                    "--memory model_offload / sequential_offload"
                ) from None
            batch = max(1, batch // 2)
            warnings.warn(f"CUDA out of memory; retrying with batches of {batch}")
    if len(images) != len(seeds):  # a pipeline that silently returned fewer images must not pass unnoticed
        raise BestshotError(f"the pipeline returned {len(images)} images for {len(seeds)} seeds")
    return images


def needs_solo_render(pipe: Any, cfg: ImgCfg, n: int) -> bool:
    """Whether the kept image must be re-rendered alone for its seed to reproduce it bit for bit
    (``exact_best``): not after a batch of one, nor on a pipeline whose images do not depend on the batch
    (``batch_invariant``: the embedded model on CPU); with ``exact_best=None`` (auto) not on CUDA, where
    the re-render would cost a second generation (see :func:`reproduce_note`)."""
    if cfg.exact_best is False or min(cfg.max_batch or n, n) < 2:
        return False
    if getattr(pipe, "batch_invariant", False):
        return False
    return cfg.exact_best is True or _pipe_device(pipe).type != "cuda"


def _pipe_device(pipe: Any) -> torch.device:
    dev = getattr(pipe, "device", None)
    return dev if isinstance(dev, torch.device) else torch.device("cpu")


def reproduce_note(
    pipe: Any, batch: int, solo_rendered: bool, branch_of: int | None = None, repair: bool = False
) -> str:
    """What regenerating the kept image reproduces, for the record (``branch_of``: the kept image is a
    search's branch of that pool seed, which only the whole search renders; with ``repair``, a repaint of
    that seed's image, which only the whole run renders)."""
    if branch_of is not None:
        exact = "" if getattr(pipe, "batch_invariant", False) else ", batch, device and versions"
        what, of = ("repair", "a repaint of the image of seed") if repair else ("search", "a branch of seed")
        return (
            f"bit-exact by repeating this call (same seed_base and {what} settings{exact}); {of} "
            f"{branch_of}: --seed BEST_SEED -n 1 renders a different image"
        )
    if batch < 2 or solo_rendered or getattr(pipe, "batch_invariant", False):
        return "bit-exact with --seed BEST_SEED -n 1"
    return (
        "bit-exact by repeating this call (same seeds, batch, device and versions); --seed BEST_SEED -n 1 "
        "renders it alone, equal up to the device's batch rounding"
    )


def _resolve_prompt(
    mode: str,
    prompt: str | None,
    text: str | None,
    seed: int,
    llm_backend: str,
    llm_model: str | None,
    allow_empty: bool = False,
) -> tuple[str, str | None, dict[str, Any] | None]:
    """(user-level prompt, clip prompt or None, auto-prompt record or None)."""
    if mode not in MODES:
        raise BestshotError(f"unknown mode {mode!r} — use user_prompt or auto_prompt")
    if mode == "user_prompt":
        if allow_empty and prompt is not None:
            return str(prompt), None, None
        if prompt is None or not str(prompt).strip():
            raise BestshotError('the prompt is empty — give a text prompt, e.g. bestshot generate "a red circle"')
        return str(prompt), None, None
    if text is None or not str(text).strip():
        raise BestshotError("auto_prompt mode needs a non-empty text (an article) — pass text=... or --text-file FILE")
    from .prompts.llm import auto_prompt

    ap = auto_prompt(str(text), backend=llm_backend, model=llm_model, seed=seed)
    info = {
        "backend": ap.backend,
        "model": ap.model,
        "raw": ap.raw,
        "sd_prompt": ap.sd_prompt,
        "clip_prompt": ap.clip_prompt,
    }
    return ap.sd_prompt, ap.clip_prompt, info


def best_of_n(
    pipe: Any,
    cfg: ImgCfg,
    built: Any,
    scorer: Any,
    record: RunRecord,
    *,
    refiner: Any = None,
    mode: Mode | None = None,
    on_step: StepCallback | None = None,
    family: str = "",
) -> list[Image.Image]:
    """THE best-of-N core of every run (``generate()``, the server's routes, ``eval generate``, curate's stage 1).

    Draws ``cfg.n_images`` candidates (:func:`make_candidates`: batched, OOM halving, step callbacks and
    stops; or early pruning / search, :mod:`bestshot.search`), scores them against ``record.clip_prompt``,
    ranks and gates them (:meth:`bestshot.scoring.gate.Gate.pick`; ``scorer`` None: one candidate, nothing
    ranked), re-renders the kept one alone where its seed must reproduce it (``exact_best``) and fills
    ``record``. Returns the candidate images in seed order; :func:`save_run` writes the kept ones and the
    log line as one unit.
    """
    mode = mode or Mode("txt2img")
    tracker = on_step if isinstance(on_step, StepTracker) or on_step is None else StepTracker(on_step)
    seeds = seeds_for(cfg.seed_base, cfg.n_images)
    text = record.clip_prompt
    gate = resolve_gate(scorer, cfg.score_min, enabled=cfg.gate) if scorer is not None else None
    record.extra.update(regions.record(cfg, built.sd_prompt))  # the layout the draws are steered by, or why none
    t = time.perf_counter()
    plan, found = None, None
    if cfg.prune_start or cfg.search:  # more noises start than finish: early pruning, or a search that branches
        from . import search

        if mode.source is not None or cfg.hires or scorer is None:
            raise BestshotError("early pruning and --search rank text-to-image previews with a scorer — drop them")
        plan = search.SearchPlan.of(cfg)
        with ExitStack() as stack:  # the same draw hooks as a text-to-image call (regions included)
            kwargs = pipeline_kwargs(pipe, built.sd_prompt, built.negative_prompt, plan.pool, cfg, tracker)
            for hook in (hooks.prepared, *CONDITIONING):
                kwargs.update(stack.enter_context(hook(pipe, cfg, built.sd_prompt, built.negative_prompt, plan.pool)))
            if "pipe" in kwargs:  # ControlNet's pipeline: ImgCfg.validate refuses it with a search
                raise BestshotError("early pruning and --search cannot be combined with ControlNet — drop one")
            found = search.run_search(pipe, kwargs, plan, family=family, score_fn=lambda ims: scorer.score(ims, text))
        seeds, images = found.seeds, found.images
        record.extra[plan.key] = search.record(plan, found, cfg.steps_base)
    else:
        images = make_candidates(pipe, refiner, built.sd_prompt, built.negative_prompt, seeds, cfg, tracker, mode)
    record.timing_s["gen"] = _since(t)

    t = time.perf_counter()
    scores: list[Any] = [float(s) for s in scorer.score(images, text)] if scorer is not None else [None] * len(seeds)
    flagged = safety_checker.check(cfg.safety_checker, images, cfg.device)  # all False without a checker
    record.timing_s["clip"] = _since(t)

    total = mode.steps(cfg)
    stop = tracker.stopped if tracker is not None else None
    steps_done = tracker.steps_done(len(seeds)) if stop else None
    if steps_done and min(steps_done) >= total:  # the stop came at the last step: a finished run
        stop, steps_done = None, None
    best, value, ok = 0, None, True
    if gate is not None:
        best = gate.pick(images, scores, text, eligible=safety_checker.eligible(furthest(steps_done), flagged))
    batch = len(plan.pool) if plan else len(seeds)  # the largest batch the kept image was rendered in
    repaired: dict[int, int] = {}  # a repaint's index → the index of the image it repaints
    if cfg.repair and gate is not None and not stop:
        t = time.perf_counter()
        best = _repair(
            pipe, refiner, cfg, built, scorer, gate, record, images, seeds, scores, flagged, best, repaired, on_step
        )
        record.timing_s["repair"] = _since(t)
    if gate is not None:
        value = gate.value(images[best], scores[best], text)
        ok = gate.passes(value)
    parent = found.parents[best] if found and best < len(found.parents) else None  # a search's branch: not its seed
    if best in repaired:
        parent = seeds[repaired[best]]
    solo = needs_solo_render(pipe, cfg, batch) and ok and not stop and parent is None
    if solo:
        t = time.perf_counter()
        one = make_candidates(pipe, refiner, built.sd_prompt, built.negative_prompt, [seeds[best]], cfg, None, mode)
        images[best] = one[0]
        if scorer is not None:
            scores[best] = float(scorer.score([images[best]], text)[0])
            value = gate.value(images[best], scores[best], text)
            ok = gate.passes(value)
        record.timing_s["exact_best"] = _since(t)
    record.candidates = [Candidate(s, sc) for s, sc in zip(seeds, scores)]
    for c, done in zip(record.candidates, steps_done or ()):
        c.steps_done = done
    if cfg.safety_checker:  # flagged candidates are never kept nor saved; all flagged: the run keeps none
        record.extra["nsfw_flagged"] = sum(flagged)
        for c, f in zip(record.candidates, flagged):
            c.nsfw = f
        if all(flagged):
            ok = False
            record.reason = "nsfw_flagged"
    record.best, record.ok = best, ok
    if gate is not None:
        record.scorer, record.cosine, record.score_min = scorer.name, cosine_like(scorer), gate.minimum
        record.gate = gate.record(value)
    record.reproduce = reproduce_note(
        pipe, min(cfg.max_batch or batch, batch), solo, branch_of=parent, repair=best in repaired
    )
    if not ok and record.reason is None:
        record.reason = "low_clip_alignment"
    if stop:  # interrupted, skipped or timed out: never recorded (nor ranked) as a finished run
        mark_stopped(record, stop, steps_done[best])
    return images


def _repair(
    pipe: Any,
    refiner: Any,
    cfg: ImgCfg,
    built: Any,
    scorer: Any,
    gate: Any,
    record: RunRecord,
    images: list[Image.Image],
    seeds: list[int],
    scores: list[Any],
    flagged: list[bool],
    best: int,
    repaired: dict[int, int],
    on_step: StepCallback | None,
) -> int:
    """``cfg.repair`` (:mod:`bestshot.repair`): rounds that keep the objects the scorer reads as right in the best
    image so far and repaint the rest, the repaints appended to ``images`` / ``seeds`` / ``scores`` / ``flagged``
    (``repaired``: repaint index → the index it repaints) and ranked with them. Returns the new best. A stop asked
    during a round ends the repair: that round's repaints are dropped and the best so far is kept. Repaints start
    from the images as drawn: where a kept original is then re-rendered alone (``exact_best``), they started from
    its batch render, equal up to the device's batch rounding."""
    from . import repair

    locate = repair.locator(scorer)
    text = record.clip_prompt
    family = resolve_model(cfg.model).family
    rcfg = replace(cfg, strength=1.0, mask_blur=0, inpainting_fill=1, inpaint_full_res=False)
    # the caller's stop, watched by a tracker of the repaints' own (their steps are not the run's)
    raw = on_step.on_step if isinstance(on_step, StepTracker) else on_step
    watch = StepTracker(raw) if raw is not None else None

    next_seed = max(seeds) + 1
    rounds: list[dict[str, Any]] = []
    tried: set[int] = set()
    for _ in range(cfg.repair_rounds):
        # the best image not repaired yet (a round that found no better repaint moves on to the next best)
        pool = safety_checker.eligible(None, flagged)
        order = sorted(pool if pool is not None else range(len(images)), key=lambda k: -scores[k])
        src = best if best not in tried else next((k for k in order if k not in tried), None)
        if src is None:
            break
        tried.add(src)
        p, why = repair.plan(locate(images[src], text), images[src].size)
        if p is None:
            rounds.append({"from_seed": seeds[src], "why": why})
            if src == best:
                break
            continue
        rseeds = list(range(next_seed, next_seed + cfg.repair_tries))
        next_seed += cfg.repair_tries
        mode = Mode.build(pipe, family, rcfg, Source(images[src].convert("RGB"), p.mask))
        new = make_candidates(pipe, refiner, built.sd_prompt, built.negative_prompt, rseeds, rcfg, watch, mode)
        if watch is not None and watch.stopped:
            rounds.append({"from_seed": seeds[src], "why": why, "stopped": watch.stopped})
            break
        new_scores = [float(v) for v in scorer.score(new, text)]
        rounds.append(repair.round_record(seeds[src], p, why, rseeds, new_scores))
        start = len(images)
        repaired.update({start + i: src for i in range(len(new))})
        images += new
        seeds += rseeds
        scores += new_scores
        flagged += safety_checker.check(cfg.safety_checker, new, cfg.device)
        best = gate.pick(images, scores, text, eligible=safety_checker.eligible(None, flagged))
    kept = {"seed": seeds[best], "repaint_of": seeds[repaired[best]]} if best in repaired else None
    draws = sum(len(r.get("tries", ())) for r in rounds)
    record.extra["repair"] = {"rounds": rounds, "kept": kept, "repaints": draws}
    return best


def save_run(
    store: Store, record: RunRecord, images: Sequence[Image.Image], cfg: ImgCfg, mode: Mode | None, t0: float
) -> dict[str, Any]:
    """Write a run's kept images (the best, or every candidate with ``save_candidates``) and its log line as
    one unit (:meth:`Store.save_run`); returns the record as logged. A stopped run's best image is saved
    (what an interrupted client gets back) but no ``img_path`` is claimed."""
    mode = mode or Mode("txt2img")
    stopped = bool(record.extra.get("interrupted"))
    keep = [
        k
        for k in range(len(record.candidates))
        if (cfg.save_candidates or (k == record.best and (record.ok or stopped))) and not record.candidates[k].nsfw
    ]
    for k in keep:
        c = record.candidates[k]
        c.path = str(store.image_path(record.run_id, c.seed, c.score if c.score is not None else 0.0))
    if record.ok and record.best is not None:
        record.img_path = record.candidates[record.best].path
    record.timing_s["total"] = _since(t0)
    d = record.to_dict()
    files = [
        (
            Path(record.candidates[k].path),
            images[k],
            parameters(record, cfg, mode, k),
            png_metadata(d, record.candidates[k].seed, record.candidates[k].score),
        )
        for k in keep
    ]
    store.save_run(files, d)  # images and log line as one unit: a failure keeps none of them
    return d


def parameters(record: RunRecord, cfg: ImgCfg, mode: Mode | None, k: int) -> str:
    """A1111's ``parameters`` infotext of candidate ``k`` (the mode's keys as A1111 writes them)."""
    c = record.candidates[k]
    extra: dict[str, Any] = {}
    if mode is not None:
        extra.update(mode.infotext(cfg))
    extra.update(extra_networks.infotext(cfg))  # Lora hashes, Clip skip
    extra.update(conditioning.infotext(cfg, c.seed))  # Variation seed, VAE, ControlNet N
    if c.score is not None:
        extra.update({"Score": f"{c.score:.4f}", "CLIP score": f"{c.score:.4f}", "Scorer": record.scorer})
    extra["bestshot run"] = record.run_id
    if cfg.refiner:
        extra["Refiner"] = cfg.refiner_model
        extra["Refiner switch at"] = cfg.refiner_split
    return format_parameters(
        record.sd_prompt,
        record.negative_prompt,
        steps=cfg.steps_base,
        sampler=record.settings.get("sampler", ""),
        cfg_scale=cfg.guidance,
        seed=c.seed,
        width=cfg.width,  # A1111 writes the first pass's size (and Hires upscale) for a hires image
        height=cfg.height,
        model=cfg.model,
        extra=extra,
    )


def generate(
    prompt: str | None = None,
    *,
    mode: str = "user_prompt",
    text: str | None = None,
    cfg: ImgCfg | None = None,
    preset: str | None = None,
    base_seed: int | None = None,
    show: bool = False,
    return_candidates_images: bool = False,
    model: str | None = None,
    scorer: Any = None,
    store: Store | None = None,
    llm_backend: str = "auto",
    llm_model: str | None = None,
    on_step: StepCallback | None = None,
    extra_record: dict[str, Any] | None = None,
    allow_empty_prompt: bool = False,
    source: Source | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Generate ``cfg.n_images`` candidates, rank them with CLIP, keep the best if it passes the gate.

    Returns the result dict (``ok``, ``reason``, ``best_seed``, ``best_score``,
    ``img_path``, ``timing_s``, ``candidates``, ``sd_prompt``, ``clip_prompt``) plus ``model``,
    ``preset``, ``run_id``, ``scorer``, ``score_min`` (the gate applied, in the scorer's units; ``gate``
    says what it compared) and the settings used. ``best_clip`` / ``best_clip_score`` are the old names
    (``best_clip`` = ``best_score``; ``best_clip_score`` is ``100·max(score, 0)`` for a cosine scorer,
    None otherwise), kept for one release. ``candidate_images`` (PIL images, seed order) is
    added only when asked and never written to the log.
    ``extra_record`` is merged into the record (e.g. the batch row a run belongs to).

    Modes (:mod:`bestshot.modes`) are settings: ``init_image=`` / ``strength=`` (img2img), ``mask=``
    (inpaint), ``hires_scale=`` (hires fix); ``source`` gives the init image and mask in memory instead
    (the server's decoded request). The record's ``kind`` says which mode ran.

    When ``on_step`` asks to stop (an interrupt, skip or timeout) the run is recorded as stopped: ``ok``
    false, ``reason: "interrupted"``, ``interrupted``, ``stopped`` (why), ``steps_done`` (the step the kept
    candidate reached, also per candidate) and no ``reproduce`` claim; its best candidate is still saved
    (what an interrupted client gets back) but no ``img_path`` is claimed.
    ``allow_empty_prompt``: an empty prompt draws unconditioned images (A1111 allows it) instead of being
    refused.
    """
    t0 = time.perf_counter()
    cfg = resolve_config(cfg, preset=preset, model=model, **overrides)
    if base_seed is not None:
        cfg = replace(cfg, seed_base=int(base_seed)).validate()
    store = store or Store(root=Path(cfg.out_dir), log_path=Path(cfg.log_jsonl))
    store.check_writable()  # a read-only or full output folder: one clear error before any model loads
    source = source if source is not None else read_source(cfg)  # a bad init image / mask: before any load
    check_mode(cfg, source)
    user_prompt, llm_clip, auto_info = _resolve_prompt(
        mode, prompt, text, cfg.seed_base, llm_backend, llm_model, allow_empty_prompt
    )
    user_prompt, cfg, triggers = extra_networks.apply(user_prompt, cfg)  # <lora:...> tags → cfg.loras
    built = build_prompt(
        user_prompt,
        style_suffix=cfg.style_suffix,
        negative_prompt=cfg.negative_prompt,
        clip_prompt=llm_clip,
        allow_empty=allow_empty_prompt,
        trigger_words=triggers,  # LoRA trigger words
        attention=cfg.prompt_weighting,  # the scorer reads the words without weight syntax
    )
    record = RunRecord.of(cfg, built, new_run_id(), mode)
    record.version = __version__
    if auto_info:
        record.extra["auto_prompt"] = auto_info
    if source is not None and source.notes:
        record.extra["inputs"] = list(source.notes)
    if cfg.loras:
        record.extra["loras"] = extra_networks.record(cfg)
    record.extra.update(extra_record or {})
    hits = blocked_terms(user_prompt, cfg.blocklist)
    if hits:
        record.reason = "blocked_prompt"
        record.extra["blocked_terms"] = hits
        record.timing_s = {"load": 0.0, "gen": 0.0, "clip": 0.0, "total": _since(t0)}
        d = record.to_dict()
        store.log_run(d)
        return d

    # ---- load
    t = time.perf_counter()
    ref = resolve_model(cfg.model)
    if scorer is None or isinstance(scorer, str):  # an uncached hub scorer fails before the pipeline loads
        from .models.hub import require_model, require_scorer

        require_model(ref)
        require_scorer(scorer or cfg.scorer or default_scorer(ref))
    pipe = load_for(cfg)
    refiner = None
    if cfg.refiner:
        if ref.family.name != "sdxl":
            raise BestshotError(f"the refiner works with SDXL base models only, not {cfg.model!r} — drop --refiner")
        refiner = load_refiner(pipe, cfg.refiner_model, dtype=cfg.dtype, device=cfg.device, memory=cfg.memory)
    run_mode = Mode.build(pipe, ref.family, cfg, source)
    record.kind = run_mode.kind
    scorer = pick_scorer(scorer, cfg, ref, pipe)
    resolve_gate(scorer, cfg.score_min, enabled=cfg.gate)  # a value outside the scorer's range fails here
    record.clip_prompt, record.clip_prompt_truncated = scorer.truncate(built.clip_prompt)
    if record.clip_prompt_truncated:
        warnings.warn(f"clip_prompt is longer than the scorer's 77 tokens; scoring with: {record.clip_prompt!r}")
    record.settings["sampler"] = sampler_label(pipe.scheduler)
    record.settings.update(run_mode.settings(cfg))
    record.timing_s["load"] = _since(t)

    images = best_of_n(
        pipe, cfg, built, scorer, record, refiner=refiner, mode=run_mode, on_step=on_step, family=ref.family.name
    )
    result = save_run(store, record, images, cfg, run_mode, t0)
    if show and record.ok:
        images[record.best].show()
    if return_candidates_images:
        return {**result, "candidate_images": images}
    return result


def mark_stopped(record: RunRecord, stop: str, steps_done: int) -> None:
    """Record a run that was stopped before its last denoising step: not ``ok``, why, the step reached, and
    no claim that its seed reproduces the image (a full render of that seed is a different picture)."""
    record.ok, record.reason, record.reproduce = False, "interrupted", None
    record.extra.update(interrupted=True, stopped=stop, steps_done=int(steps_done))


def pick_scorer(scorer: Any, cfg: ImgCfg, ref: Any, pipe: Any):
    """The scorer of a run: an object as given, else a spec (argument, cfg, the family's default); the
    embedded model's own CLIP is reused instead of loading a second copy."""
    if scorer is not None and not isinstance(scorer, str):
        return scorer
    return pipeline_scorer(scorer or cfg.scorer or default_scorer(ref), pipe, ref.family, cfg.device, model=cfg.model)


def _since(t: float) -> float:
    return round(time.perf_counter() - t, 4)


def prompt_row_maker(cfg: ImgCfg, output: Any = None) -> Callable[[dict[str, Any]], Any]:
    """The per-row function of ``bestshot generate --prompts-file --ray`` in a Ray worker (the factory is
    ``functools.partial(prompt_row_maker, cfg)``): :func:`generate` itself, so a row's seeds, images, log
    line and result are the single-process ones. The pipeline loads once per worker (the loader's cache)."""
    from .scale.batch import RowOutput

    store = Store(root=Path(cfg.out_dir), log_path=Path(cfg.log_jsonl))
    load_for(cfg)  # once per worker: generate() below finds it in the loader's cache

    def make(row: dict[str, Any]) -> Any:
        result = generate(row["prompt"], cfg=cfg, store=store)
        return RowOutput({"line": row["line"], "prompt": row["prompt"], **result})

    return make
