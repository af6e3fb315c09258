"""What the GPU worker runs: thin wrappers over bestshot's own generate / upscale / interrogate.

Each function takes the :class:`~bestshot.server.queue.Job` it runs in (for progress) and returns plain
data. Nothing here loads a model its own way: pipelines come from ``models.loader``, scorers from
``scoring``, files go through ``store``.
"""

from __future__ import annotations

import math
import time
import warnings
from datetime import UTC, datetime
from typing import Any

import torch
from PIL import Image

from .. import __version__
from ..errors import BestshotError
from ..generation import generate
from ..prompts import extra_networks, hooks  # prompting
from ..prompts.attention import plain  # prompting
from ..store import Store, format_parameters, new_run_id
from .a1111 import Plan, upscaler_backend
from .queue import Job


def run_plan(job: Job, plan: Plan, prompt: str, store: Store) -> list[dict[str, Any]]:
    """The generate() calls of a txt2img plan, one after the other, on the worker thread."""
    results = []
    for cfg in plan.calls:
        if job.should_stop:  # interrupted (or timed out) between images: the finished ones are returned
            break
        results.append(
            generate(prompt, cfg=cfg, scorer=plan.scorer, store=store, on_step=job.on_step, allow_empty_prompt=True)
        )  # A1111 draws an empty prompt unconditioned
        job.next_part()
    return results


def run_hires(
    job: Job,
    plan: Plan,
    hr: Plan,
    results: list[dict[str, Any]],
    prompt: str,
    store: Store,
    hr_upscaler: str | None,
    device: str | None,
) -> list[dict[str, Any]]:
    """A1111's hires fix on the images a txt2img plan returns: each is upscaled (the named upscaler, or
    Lanczos for the Latent modes) and repainted by img2img at ``denoising_strength`` with its own seed."""
    from dataclasses import replace as _replace

    from ..upscale.esrgan import get_upscaler
    from .a1111 import chosen

    name = (hr_upscaler or "Latent").strip()
    backend, model = ("lanczos", "") if name.lower().startswith("latent") else upscaler_backend(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        up = get_upscaler(
            backend=backend, model=model or "realesrgan-x4plus", device=device if backend == "torch" else None
        )
    strength = hr.notes["hires"]["denoising_strength"]
    out = []
    for r in results:
        for c in chosen(r, plan):
            if job.should_stop:
                return out
            with Image.open(c["path"]) as im:
                small = im.convert("RGB")
            factor = max(hr.cfg.width / small.width, hr.cfg.height / small.height)
            big = up.upscale(small, max(1, min(4, math.ceil(factor)))) if factor > 1 else small
            big = big.resize((hr.cfg.width, hr.cfg.height), Image.Resampling.LANCZOS)
            one = Plan(
                cfg=hr.cfg,
                seed=c["seed"],
                n_images=1,
                best_of=1,
                scorer=plan.scorer,
                calls=[_replace(hr.cfg, n_images=1, seed_base=c["seed"], save_candidates=True, exact_best=False)],
            )
            out += run_img2img(job, one, prompt, big, strength, store)
    return out


# ------------------------------------------------------------------------------------------ img2img


def prepare_mask(mask: Image.Image, size: tuple[int, int], blur: int, invert: bool) -> Image.Image:
    """A1111's mask handling: grey levels as given, optionally inverted, resized to the image, edge blurred."""
    from PIL import ImageFilter, ImageOps

    m = mask.convert("L") if mask.mode != "RGBA" else mask.getchannel("A")
    if mask.mode == "RGBA" and m.getextrema() == (255, 255):  # opaque RGBA: use its luminance
        m = mask.convert("L")
    if invert:
        m = ImageOps.invert(m)
    if m.size != size:
        m = m.resize(size, Image.Resampling.LANCZOS)
    return m.filter(ImageFilter.GaussianBlur(blur)) if blur else m


def _masked_fill(image: Image.Image, mask: Image.Image, fill: int, seed: int) -> Image.Image:
    """A1111's "masked content" done in pixels: 0 fill (the unmasked mean colour), 1 original,
    2 noise, 3 nothing (mid grey)."""
    import numpy as np

    if fill == 1:
        return image
    arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    m = np.asarray(mask, dtype=np.float32)[..., None] / 255.0
    if fill == 0:
        keep = m[..., 0] < 0.5
        colour = arr[keep].mean(axis=0) if keep.any() else arr.reshape(-1, 3).mean(axis=0)
        other = np.broadcast_to(colour, arr.shape)
    elif fill == 2:
        other = np.random.default_rng(seed).uniform(0, 255, arr.shape).astype(np.float32)
    else:
        other = np.full(arr.shape, 127.5, np.float32)
    out = arr * (1 - m) + other * m
    return Image.fromarray(out.clip(0, 255).round().astype(np.uint8), "RGB")


def _crop_region(mask: Image.Image, padding: int, aspect: float) -> tuple[int, int, int, int]:
    """The mask's bounding box plus padding, widened to the generation's aspect (A1111's "only masked")."""
    w, h = mask.size
    box = mask.point(lambda v: 255 if v > 0 else 0).getbbox() or (0, 0, w, h)
    x0, y0, x1, y1 = (
        max(0, box[0] - padding),
        max(0, box[1] - padding),
        min(w, box[2] + padding),
        min(h, box[3] + padding),
    )
    cw, ch = x1 - x0, y1 - y0
    if cw / ch < aspect:  # too tall: widen
        grow = min(w, round(ch * aspect)) - cw
        x0 = max(0, min(x0 - grow // 2, w - (cw + grow)))
        x1 = x0 + cw + grow
    else:
        grow = min(h, round(cw / aspect)) - ch
        y0 = max(0, min(y0 - grow // 2, h - (ch + grow)))
        y1 = y0 + ch + grow
    return x0, y0, x1, y1


def run_img2img(
    job: Job, plan: Plan, prompt: str, init: Image.Image, strength: float, store: Store, inpaint: Any = None
) -> list[dict[str, Any]]:
    """Best-of-N image-to-image: ``AutoPipelineForImage2Image.from_pipe`` on the loaded text-to-image
    pipeline (same weights, no second load), candidates scored and stored like generate()'s.

    With ``inpaint`` (an :class:`~bestshot.server.a1111.Inpaint`) it repaints the masked part only:
    ``AutoPipelineForInpainting.from_pipe`` where the family has one, the masked content prepared as
    A1111's ``inpainting_fill`` says, optionally only the masked region at full resolution, and every
    candidate composited over the original outside the mask before it is scored.
    """
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

    from ..generation import StepTracker, furthest, mark_stopped, pick_scorer, supported_kwargs
    from ..models.loader import load_pipeline
    from ..models.registry import resolve_model
    from ..schedulers import sampler_label
    from ..scoring import clip_score_100, cosine_like, resolve_gate

    cfg = plan.cfg
    prompt, cfg, triggers = extra_networks.apply(prompt, cfg)  # prompting: <lora:...> tags → cfg.loras
    sd_text = ", ".join([*triggers, prompt]) if triggers else prompt
    ref = resolve_model(cfg.model)
    world = ref.family.pipeline_class == "BestshotWorldPipeline"  # its own masked SDEdit, no diffusers class
    if ref.family.img2img_class is None and not world:
        raise BestshotError(
            f"img2img is not available for model {cfg.model!r} (family {ref.family.name}): it has no "
            "image-to-image pipeline — use /sdapi/v1/txt2img, or serve an SD 1.5 / SDXL / SD3 model"
        )
    if int(cfg.steps_base * strength) < 1:
        raise BestshotError(
            f"denoising_strength: {strength} x {cfg.steps_base} steps leaves no denoising step — raise "
            "denoising_strength or steps"
        )
    store.check_writable()  # a read-only or full output folder: one clear error before any model loads
    pipe = load_pipeline(cfg.model, dtype=cfg.dtype, device=cfg.device, memory=cfg.memory, scheduler=cfg.scheduler)
    try:
        if world:
            i2i = pipe
        elif inpaint is not None:
            if not ref.family.inpaint:
                raise BestshotError(
                    f"inpainting is not available for model {cfg.model!r} (family {ref.family.name}) "
                    "— send img2img without a mask, or serve an SD 1.5 / SDXL / SD3 model"
                )
            i2i = AutoPipelineForInpainting.from_pipe(pipe)
        else:
            i2i = AutoPipelineForImage2Image.from_pipe(pipe)
        i2i.set_progress_bar_config(disable=True)
    except (ValueError, KeyError) as e:
        raise BestshotError(f"img2img is not available for model {cfg.model!r}: {e}") from None
    scorer = pick_scorer(plan.scorer, cfg, ref, pipe)
    size = (cfg.width, cfg.height)
    full = init.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    image, mask, region = full, None, None
    if inpaint is not None:
        mask = inpaint.mask.resize(size, Image.Resampling.LANCZOS) if inpaint.mask.size != size else inpaint.mask
        image = _masked_fill(full, mask, inpaint.fill, plan.seed)
        if inpaint.only_masked:
            region = _crop_region(mask, inpaint.padding, cfg.width / cfg.height)
            image = image.crop(region).resize(size, Image.Resampling.LANCZOS)

    def composite(out: Image.Image) -> Image.Image:
        if mask is None:
            return out
        if region is not None:
            patch = out.resize((region[2] - region[0], region[3] - region[1]), Image.Resampling.LANCZOS)
            out = full.copy()
            out.paste(patch, region[:2])
        return Image.composite(out.convert("RGB"), full, mask)

    sampler = sampler_label(pipe.scheduler)
    results = []
    for call in plan.calls:
        if job.should_stop:
            break
        t0 = time.perf_counter()
        seeds = [call.seed_base + i for i in range(call.n_images)]

        total = max(1, int(cfg.steps_base * strength))
        tracker = StepTracker(job.on_step)

        def cb(p, step, timestep, kw, _total=total, tracker=tracker):
            if tracker(min(step + 1, _total), _total, kw.get("latents")):
                p._interrupt = True
            return kw

        # keywords a pipeline's __call__ does not take are dropped (the world pipeline's image is init_image)
        extra: dict[str, Any] = dict(height=cfg.height, width=cfg.width, init_image=image)
        if mask is not None:
            m = mask.crop(region).resize(size, Image.Resampling.LANCZOS) if region is not None else mask
            extra["mask_image"] = m
        kwargs = supported_kwargs(
            i2i.__call__,
            dict(
                prompt=sd_text,
                negative_prompt=cfg.negative_prompt or None,
                image=image,
                strength=strength,
                num_inference_steps=cfg.steps_base,
                guidance_scale=cfg.guidance,
                num_images_per_prompt=len(seeds),
                generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
                callback_on_step_end=cb,
                **extra,
            ),
        )
        with hooks.prepared(i2i, cfg, sd_text, cfg.negative_prompt, seeds) as hook_kwargs:  # prompting
            kwargs.update(hook_kwargs)
            images = [composite(im) for im in i2i(**kwargs).images]
        clip_prompt, _ = scorer.truncate(plain(prompt) if cfg.prompt_weighting else prompt)
        scores = [float(s) for s in scorer.score(images, clip_prompt)]
        stop = tracker.stopped if tracker.reached < total else None  # a stop at the last step: finished
        steps_done = [tracker.reached or total] * len(seeds) if stop else None  # one call: all at one step
        gate = resolve_gate(scorer, call.score_min, enabled=call.gate)  # A1111 routes: off, info reports it
        best = gate.pick(images, scores, clip_prompt, eligible=furthest(steps_done))
        gate_value = gate.value(images[best], scores[best], clip_prompt)
        ok = gate.passes(gate_value)
        cosine = cosine_like(scorer)
        run_id = new_run_id()
        record: dict[str, Any] = {
            "run_id": run_id,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "kind": "img2img",
            "ok": ok,
            "mode": "img2img",
            "model": cfg.model,
            "preset": cfg.preset,
            "sd_prompt": prompt,
            "clip_prompt": clip_prompt,
            "negative_prompt": cfg.negative_prompt,
            "scorer": scorer.name,
            "best_seed": seeds[best],
            "best_score": round(scores[best], 6),
            "best_clip": round(scores[best], 6),
            "best_clip_score": round(clip_score_100(scores[best]), 4) if cosine else None,
            "img_path": None,
            "score_min": gate.minimum,
            "gate": gate.record(gate_value),
            "settings": {
                "n_images": len(seeds),
                "seed_base": call.seed_base,
                "steps": cfg.steps_base,
                "guidance": cfg.guidance,
                "width": cfg.width,
                "height": cfg.height,
                "denoising_strength": strength,
                "sampler": sampler,
                "score_min": cfg.score_min,
                "clip_min": cfg.score_min,
            },
            "version": __version__,
        }
        if not ok:
            record["reason"] = "low_clip_alignment"
        if stop:
            ok = False
            mark_stopped(record, stop, steps_done[best])
        cands, files = [], []
        meta = {key: record[key] for key in ("run_id", "created", "mode", "model", "sd_prompt", "settings", "scorer")}
        for k, (seed, score) in enumerate(zip(seeds, scores)):
            path = None
            if call.save_candidates or (k == best and (ok or stop)):
                extra = {
                    "Denoising strength": strength,
                    "CLIP score": f"{score:.4f}",
                    "Scorer": scorer.name,
                    "bestshot run": run_id,
                    **extra_networks.infotext(cfg),  # prompting: Lora hashes, Clip skip
                }
                if inpaint is not None:
                    extra.update(
                        {
                            "Mask blur": inpaint.blur,
                            "Masked content": ("fill", "original", "latent noise", "latent nothing")[inpaint.fill],
                            "Inpaint area": "Only masked" if inpaint.only_masked else "Whole picture",
                        }
                    )
                params = format_parameters(
                    prompt,
                    cfg.negative_prompt,
                    steps=cfg.steps_base,
                    sampler=sampler,
                    cfg_scale=cfg.guidance,
                    seed=seed,
                    width=cfg.width,
                    height=cfg.height,
                    model=cfg.model,
                    extra=extra,
                )
                png_meta = {**meta, "seed": seed, "score": round(score, 6), "clip": round(score, 6)}
                target = store.image_path(run_id, seed, score)
                files.append((target, images[k], params, png_meta))
                path = str(target)
            cands.append(
                {
                    "seed": seed,
                    "score": round(score, 6),
                    "clip": round(score, 6),
                    "clip_score": round(clip_score_100(score), 4) if cosine else None,
                    "path": path,
                    **({"steps_done": steps_done[k]} if stop else {}),
                }
            )
        record["candidates"] = cands
        record["img_path"] = cands[best]["path"] if ok else None
        record["timing_s"] = {"total": round(time.perf_counter() - t0, 4)}
        store.save_run(files, record)  # images and log line as one unit, as generate() stores them
        results.append(record)
        job.next_part()
    return results


# ------------------------------------------------------------------------------------------ extras


def upscale_geometry(
    size: tuple[int, int], req: Any, max_side: int
) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    """(crop box in the source, output size) of an A1111 extras upscale, checked BEFORE any pixel is made.

    ``resize_mode`` 1 with ``upscaling_crop`` is A1111's "scale to cover, then centre-crop"; cropping the
    source to the target's aspect first gives the same picture without ever building the uncropped
    (possibly giant) intermediate: a 1x512 image to 2048x1 is a 1x1 crop scaled to 2048x1.
    """
    w, h = size
    box = (0, 0, w, h)
    if req.resize_mode == 1:
        target = (int(req.upscaling_resize_w), int(req.upscaling_resize_h))
        if req.upscaling_crop:
            ratio = target[0] / target[1]
            if w / h > ratio:
                cw, ch = max(1, min(w, round(h * ratio))), h
            else:
                cw, ch = w, max(1, min(h, round(w / ratio)))
            left, top = (w - cw) // 2, (h - ch) // 2
            box = (left, top, left + cw, top + ch)
    else:
        factor = float(req.upscaling_resize)
        target = (max(1, round(w * factor)), max(1, round(h * factor)))
    if max(target) > max_side:
        raise BestshotError(
            f"upscaling_resize: the result would be {target[0]}x{target[1]}, larger than this "
            f"server's {max_side} pixels a side — ask for a smaller size"
        )
    return box, target


def run_upscale(job: Job, image: Image.Image, req: Any, max_side: int, device: str | None) -> Image.Image:
    """A1111's extras upscale through bestshot.upscale (Real-ESRGAN, or Lanczos when none is installed).

    Memory is bounded by the output: the model upscales the (cropped) source by at most its native 4x and
    never past twice the output's sides; Lanczos makes the exact size.
    """
    from ..upscale.esrgan import get_upscaler

    backend, model = upscaler_backend(req.upscaler_1)
    box, target = upscale_geometry(image.size, req, max_side)
    src = image.crop(box) if box != (0, 0, *image.size) else image
    factor = max(target[0] / src.width, target[1] / src.height)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "falling back to Lanczos" is reported in html_info instead
        up = get_upscaler(backend=backend, model=model, device=device if backend == "torch" else None)
    job.on_step(0, 1)
    big = src
    if factor > 1:
        scale = min(math.ceil(factor), getattr(up, "native_scale", 4) or 4)
        if scale > 1:
            big = up.upscale(src, scale)
    if big.size != target:
        big = big.resize(target, Image.Resampling.LANCZOS)
    job.on_step(1, 1)
    job.upscaler_name = up.name  # type: ignore[attr-defined]
    return big


# ------------------------------------------------------------------------------------------ interrogate


INTERROGATE_MODES = {"clip": "classic", "classic": "classic", "fast": "fast", "best": "best"}


def interrogator_for(clip: Any, cache: dict[Any, Any], cache_dir: str | None = None, domain: str = "auto") -> Any:
    """bestshot.interrogate's ``Interrogator`` for ``clip`` (built once per server; its text embeddings are
    the expensive part), or None when that package is not installed.
    """
    try:
        from ..interrogate.interrogator import InterrogateConfig, Interrogator
    except ImportError:
        return None
    key = (clip if isinstance(clip, str) else id(clip), domain)
    if key not in cache:
        from ..config import EMBEDDED
        from ..scoring import get_scorer

        spec = clip if isinstance(clip, str) else getattr(clip, "name", EMBEDDED)
        scorer = get_scorer(clip) if isinstance(clip, str) else clip
        cache[key] = Interrogator(InterrogateConfig(clip=spec, cache_dir=cache_dir, domain=domain), scorer=scorer)
    return cache[key]


def run_interrogate(
    job: Job,
    image: Image.Image,
    model: str,
    clip: Any,
    cache: dict[Any, Any],
    cache_dir: str | None = None,
    domain: str = "auto",
) -> str:
    """A caption for ``image``: bestshot's CLIP interrogator when installed, else a tiny CLIP ranking over
    the procedural world's vocabulary (shapes, colours, backgrounds). ``domain`` "world" describes images
    of the procedural world (the embedded model family), "art" anything else, "auto" decides by the CLIP.
    """
    job.on_step(0, 1)
    interrogator = interrogator_for(clip, cache, cache_dir, domain)
    if interrogator is not None:
        caption = interrogator.interrogate([image], mode=INTERROGATE_MODES[model.strip().lower()])[0].prompt
    else:
        caption = _world_caption(image, clip)
    job.on_step(1, 1)
    return str(caption)


def _world_caption(image: Image.Image, clip: Any) -> str:
    from ..scoring import get_scorer
    from ..world import BACKGROUNDS, COLOURS, SHAPES

    scorer = get_scorer(clip) if clip is None or isinstance(clip, str) else clip
    img = scorer.embed_images([image.convert("RGB")])[0]

    def best(texts: list[str]) -> str:
        return texts[int((scorer.embed_texts(texts) @ img).argmax())]

    obj = best([f"a {c} {s}" for c in COLOURS for s in SHAPES])
    return best([f"{obj} on a {b} background" for b in BACKGROUNDS])


__all__ = ["run_plan", "run_img2img", "run_upscale", "run_interrogate"]
