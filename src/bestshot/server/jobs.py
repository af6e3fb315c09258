"""What the GPU worker runs: thin wrappers over bestshot's own generate / upscale / interrogate.

Each function takes the :class:`~bestshot.server.queue.Job` it runs in (for progress) and returns plain
data. Nothing here loads a model its own way: pipelines come from ``models.loader``, scorers from
``scoring``, files go through ``store``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import replace
from typing import Any

from PIL import Image

from ..errors import BestshotError
from ..generation import generate
from ..modes import crop_region as _crop_region  # noqa: F401 - the server's tests import it from here
from ..modes import prepare_mask, source_from
from ..store import Store
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
                calls=[replace(hr.cfg, n_images=1, seed_base=c["seed"], save_candidates=True, exact_best=False)],
            )
            out += run_img2img(job, one, prompt, big, strength, store)
    return out


# ------------------------------------------------------------------------------------------ img2img


def run_img2img(
    job: Job, plan: Plan, prompt: str, init: Image.Image, strength: float, store: Store, inpaint: Any = None
) -> list[dict[str, Any]]:
    """Best-of-N image-to-image: one :func:`~bestshot.generation.generate` run per call of the plan, in its
    img2img mode (or inpaint with ``inpaint``, an :class:`~bestshot.server.a1111.Inpaint`), the decoded
    request's images given in memory."""
    results = []
    for call in plan.calls:
        if job.should_stop:
            break
        cfg = replace(call, strength=strength)
        if inpaint is not None:
            cfg = replace(
                cfg,
                mask_blur=inpaint.blur,
                inpainting_fill=inpaint.fill,
                inpaint_full_res=inpaint.only_masked,
                inpaint_full_res_padding=inpaint.padding,
            )
        source = source_from(init, inpaint.mask if inpaint is not None else None, cfg)
        result = generate(
            prompt,
            cfg=cfg,
            scorer=plan.scorer,
            store=store,
            on_step=job.on_step,
            allow_empty_prompt=True,
            source=source,
        )
        if inpaint is not None:  # the infotext and record name the request's blur, not the pre-blurred 0
            result["settings"]["mask_blur"] = inpaint.blur
        results.append(result)
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


__all__ = ["prepare_mask", "run_plan", "run_img2img", "run_hires", "run_upscale", "run_interrogate"]
