"""AUTOMATIC1111's work routes: txt2img, img2img (and inpainting), the extras upscalers, png-info and
interrogate. The request → config mapping lives in ``server/a1111.py``; the model work in ``server/jobs.py``;
each handler here checks, plans, queues one job and answers in A1111's shape."""

from __future__ import annotations

import asyncio
import html
from dataclasses import replace
from typing import Any

from fastapi import APIRouter

from ...config import EMBEDDED
from ...errors import BestshotError
from ...store import Store, read_png_info
from .. import a1111 as A
from ..context import Ctx, ServerContext
from ..jobs import (
    INTERROGATE_MODES,
    prepare_mask,
    run_hires,
    run_img2img,
    run_interrogate,
    run_plan,
    run_upscale,
    upscale_geometry,
)
from ..queue import Job

router = APIRouter(prefix="/sdapi/v1", tags=["AUTOMATIC1111"])
PREVIEW_EVERY = 4  # progress.current_image: keep the latents every this many steps


def plan(ctx: ServerContext, req: A.Txt2ImgRequest) -> A.Plan:
    return A.plan_request(
        req,
        model=ctx.choices.model,
        scorers=ctx.scorers,
        default_scorer=ctx.settings.scorer,
        limits=ctx.limits,
        base=ctx.base_cfg(),
        default_best_of=ctx.choices.best_of,
    )


def store_for(ctx: ServerContext, req: A.Txt2ImgRequest) -> Store:
    """The store of one A1111 request: ``save_images: false`` keeps no image, and its log line says so."""
    return replace(ctx.store, keep_images=False) if req.save_images is False else ctx.store


def result_sampler(results: list[dict[str, Any]]) -> str:
    return (results[0].get("settings", {}).get("sampler") or "") if results else ""


def stopped_info(ctx: ServerContext, stopped: str | None) -> dict[str, Any]:
    if stopped is None:
        return {}
    why = {
        "interrupt": "interrupted",
        "timeout": f"stopped after the {ctx.limits.job_timeout:g}s job timeout",
        "shutdown": "stopped: the server is shutting down",
    }.get(stopped, stopped)
    return {
        "interrupted": True,
        "stopped": stopped,
        "note": f"{why}: the images returned are those finished (the last one at the step it had reached)",
    }


def describe(kind: str, req: A.Txt2ImgRequest, p: A.Plan) -> str:
    return f"{kind}: {p.n_images} image(s), best of {p.best_of}, {req.prompt[:60]!r}"


async def respond(ctx: ServerContext, req: A.Txt2ImgRequest, p: A.Plan, results: list, stopped: str | None) -> dict:
    """The A1111 response body of finished results (encoded off the event loop)."""
    return await asyncio.to_thread(
        A.build_response,
        req,
        p,
        results,
        ctx.rel,
        ctx.choices.model,
        result_sampler(results),
        stopped_info(ctx, stopped),
    )


def family(model: str) -> str | None:
    from ...models.registry import resolve_model

    try:
        return resolve_model(model).family.name
    except BestshotError:
        return None


@router.post("/txt2img", response_model=A.TextToImageResponse)
async def txt2img(req: A.Txt2ImgRequest, ctx: Ctx) -> dict[str, Any]:
    p = plan(ctx, req)
    hr = A.hires_plan(req, p, ctx.limits)
    if hr is not None:
        from ...models.registry import resolve_model

        fam = resolve_model(p.cfg.model).family
        if fam.img2img_class is None and fam.pipeline_class != "BestshotWorldPipeline":
            p.notes["hires"] = "enable_hr ignored: this model has no image-to-image pipeline"
            hr = None
        else:
            if req.hr_upscaler and not req.hr_upscaler.strip().lower().startswith("latent"):
                A.upscaler_backend(req.hr_upscaler)  # 422 for an unknown upscaler, before queueing
            p.notes.update(hr.notes)

    st = store_for(ctx, req)
    device = ctx.settings.device

    def work(job: Job) -> tuple[list[dict[str, Any]], str | None, bool]:
        job.preview_every = PREVIEW_EVERY
        results = run_plan(job, p, req.prompt, st)
        if hr is None or job.should_stop:
            return results, job.stopped, False
        try:
            return run_hires(job, p, hr, results, req.prompt, st, req.hr_upscaler, device), job.stopped, True
        finally:
            A.discard_unsaved(results)  # save_images false: the first pass's temp files

    parts = len(p.calls) + (p.n_images if hr is not None else 0)
    results, stopped, hired = await ctx.run_job("txt2img", work, describe("txt2img", req, p), parts=parts)
    if hired:  # the returned images are the hires pass's (one per first-pass image)
        p = A.Plan(
            cfg=hr.cfg,
            seed=p.seed,
            n_images=p.n_images,
            best_of=p.best_of,
            calls=p.calls,
            scorer=p.scorer,
            notes=p.notes,
            cost=p.cost + hr.cost,
        )
    return await respond(ctx, req, p, results, stopped)


@router.post("/img2img", response_model=A.ImageToImageResponse)
async def img2img(req: A.Img2ImgRequest, ctx: Ctx) -> dict[str, Any]:
    p = plan(ctx, req)
    max_pixels = ctx.limits.max_side**2 * 4
    init = await asyncio.to_thread(A.decode_image, req.init_images[0], "init_images", max_pixels)
    inpaint = None
    if req.mask:
        raw = await asyncio.to_thread(A.decode_image, req.mask, "mask", max_pixels)
        mask = prepare_mask(raw, (p.cfg.width, p.cfg.height), req.mask_blur, bool(req.inpainting_mask_invert))
        if mask.getextrema()[1] == 0:
            raise A.FieldError(
                "mask",
                "is all black: nothing to repaint — white marks what to repaint (or set inpainting_mask_invert)",
            )
        inpaint = A.Inpaint(
            mask=mask,
            fill=req.inpainting_fill,
            only_masked=req.inpaint_full_res,
            padding=req.inpaint_full_res_padding,
            blur=req.mask_blur,
        )
        p.notes["inpaint"] = {
            "mask_blur": req.mask_blur,
            "inpainting_fill": req.inpainting_fill,
            "only_masked": req.inpaint_full_res,
        }
        if raw.size != init.size:  # A1111 resizes it too; say so (a mask drawn for another image is a common slip)
            p.notes["inpaint"]["mask_resized"] = (
                f"mask {raw.size[0]}x{raw.size[1]} resized to {p.cfg.width}x{p.cfg.height} "
                f"(the init image is {init.size[0]}x{init.size[1]})"
            )

    st = store_for(ctx, req)

    def work(job: Job) -> tuple[list[dict[str, Any]], str | None]:
        job.preview_every = PREVIEW_EVERY
        return run_img2img(job, p, req.prompt, init, req.denoising_strength, st, inpaint), job.stopped

    results, stopped = await ctx.run_job("img2img", work, describe("img2img", req, p), parts=len(p.calls))
    out = await respond(ctx, req, p, results, stopped)
    if req.include_init_images:
        out["images"] = out["images"] + list(req.init_images)
    return out


@router.post("/extra-single-image", response_model=A.ExtrasSingleImageResponse)
async def extra_single_image(req: A.ExtrasSingleImageRequest, ctx: Ctx) -> dict[str, Any]:
    A.upscaler_backend(req.upscaler_1)  # 422 before queueing
    image = await asyncio.to_thread(A.decode_image, req.image, "image", ctx.limits.max_side**2)
    top, device = ctx.limits.max_side * 4, ctx.settings.device

    def work(job: Job):
        return run_upscale(job, image, req, top, device), getattr(job, "upscaler_name", "")

    big, upscaler = await ctx.run_job("extras", work, f"upscale x{req.upscaling_resize} ({req.upscaler_1})")
    info = f"Postprocess upscale by: {req.upscaling_resize}, Postprocess upscaler: {req.upscaler_1} ({upscaler})"
    return {"html_info": f"<p>{html.escape(info)}</p>", "image": await asyncio.to_thread(A.encode_image, big)}


@router.post("/extra-batch-images", response_model=A.ExtrasBatchImagesResponse)
async def extra_batch_images(req: A.ExtrasBatchImagesRequest, ctx: Ctx) -> dict[str, Any]:
    A.upscaler_backend(req.upscaler_1)
    limits = ctx.limits
    if len(req.imageList) > limits.max_images:
        raise A.FieldError("imageList", f"{len(req.imageList)} images is more than this server's {limits.max_images}")
    images = [
        await asyncio.to_thread(A.decode_image, item.data, f"imageList[{i}]", limits.max_side**2)
        for i, item in enumerate(req.imageList)
    ]
    # refuse a too-large result before any work: each image, and the batch as a whole (sixteen 8192²
    # results were gigabytes): at most the pixels of one largest single-image result
    outputs = [upscale_geometry(im.size, req, limits.max_side * 4)[1] for im in images]
    budget = (limits.max_side * 4) ** 2
    if sum(w * h for w, h in outputs) > budget:
        raise A.FieldError(
            "imageList",
            f"the {len(images)} results would hold {sum(w * h for w, h in outputs):,} "
            f"pixels, more than this server's {budget:,} per batch (one {limits.max_side * 4}² "
            "image) — send fewer images or a smaller upscaling_resize",
        )
    top, device = limits.max_side * 4, ctx.settings.device

    def work(job: Job) -> list[str]:
        encoded = []
        for i in range(len(images)):  # encode each result and drop it (and its source) before the next
            big = run_upscale(job, images[i], req, top, device)
            images[i] = None
            encoded.append(A.encode_image(big))
            del big
        return encoded

    encoded = await ctx.run_job("extras", work, f"upscale {len(images)} image(s) ({req.upscaler_1})")
    info = f"Postprocess upscale by: {req.upscaling_resize}, Postprocess upscaler: {req.upscaler_1}"
    return {"html_info": f"<p>{html.escape(info)}</p>", "images": encoded}


@router.post("/png-info", response_model=A.PNGInfoResponse)
def png_info(req: A.PNGInfoRequest, ctx: Ctx) -> dict[str, Any]:
    image = A.decode_image(req.image, "image", ctx.limits.max_side**2 * 4)
    info = read_png_info(image)
    items = {k: v for k, v in image.info.items() if isinstance(v, str) and k != "parameters"}
    text = info.get("parameters") or ""
    return {"info": text, "items": items, "parameters": A.a1111_parameters(text)}


@router.post("/interrogate", response_model=A.InterrogateResponse)
async def interrogate(req: A.InterrogateRequest, ctx: Ctx) -> dict[str, Any]:
    if req.model.strip().lower() not in INTERROGATE_MODES:
        raise A.FieldError(
            "model", f"interrogator {req.model!r} is not available — use one of: " + ", ".join(INTERROGATE_MODES)
        )
    image = await asyncio.to_thread(A.decode_image, req.image, "image", ctx.limits.max_side**2 * 4)
    s = ctx.settings
    clip = s.scorer if s.scorer is not None else EMBEDDED
    domain = "world" if family(ctx.choices.model) == "embedded" else "auto"
    caption = await ctx.run_job(
        "interrogate",
        lambda job: run_interrogate(job, image, req.model, clip, ctx.interrogators, s.interrogate_cache, domain),
        "interrogate",
    )
    return {"caption": caption}


__all__ = ["PREVIEW_EVERY", "router"]
