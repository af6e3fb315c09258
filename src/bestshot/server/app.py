"""``create_app(settings)``: the FastAPI app behind ``bestshot serve``.

Three faces on one app:

* ``/sdapi/v1/*`` — AUTOMATIC1111's routes and shapes, so A1111 clients (webuiapi, plugins, chat front
  ends) get best-of-N generation unchanged;
* ``/v1/*`` — bestshot's own API: generate, runs, images, jobs, curation;
* ``/`` — the gallery (plain HTML + JS from ``gallery/``).

Every model call goes through one :class:`~bestshot.server.queue.JobQueue` (one GPU job at a time).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..config import EMBEDDED, PRESETS
from ..errors import BestshotError, StorageError
from ..models.settings import resolve_config
from ..store import Store, read_png_info
from . import a1111 as A
from . import a1111_conditioning as AC
from .auth import Auth
from .bodies import BodyLimit, JSONBodies
from .cors import add_cors
from .curation import IMAGE_SUFFIXES, CurateUpscaler, Curation
from .internal import add_internal_routes
from .jobs import (
    INTERROGATE_MODES,
    prepare_mask,
    run_hires,
    run_img2img,
    run_interrogate,
    run_plan,
    run_upscale,
    upscale_geometry,
)
from .queue import Job, JobCancelled, JobQueue, QueueFull, ShuttingDown
from .safety import (
    MAX_ITEMS,
    HostCheck,
    allowed_hosts,
    check_writable,
    json_safe,
    json_size,
    oversized_path,
    surrogate_path,
)

GALLERY_DIR = Path(__file__).parent / "gallery"
PREVIEW_EVERY = 4  # progress.current_image: keep the latents every this many steps


@dataclass
class ServerSettings:
    """Everything ``bestshot serve`` decides; the HTTP client decides only per-request values."""

    model: str = EMBEDDED
    scorer: Any = None  # a spec string (folder, hub id, "embedded") or a Scorer object; None: the model's default
    out_dir: str = "images_out"
    log_jsonl: str | None = None  # default: images_log.jsonl beside out_dir (where `bestshot generate` logs)
    curate_dir: str = "outputs"
    curate_config: str | None = None  # bestshot.curate's config.yaml; its outputs folder replaces curate_dir
    interrogate_cache: str | None = None  # text-embedding cache of the interrogator (None: ~/.cache/bestshot)
    max_queue: int = 8
    token: str | None = None
    api_auth: str | None = None  # A1111 style "user:pass[,user2:pass2]"
    device: str | None = None
    dtype: str = "auto"
    memory: str = "gpu"
    max_batch: int | None = None
    save_candidates: bool = False
    extra_models: tuple[str, ...] = ()  # other models clients may switch to (POST /sdapi/v1/options)
    limits: A.Limits = field(default_factory=A.Limits)
    best_of: int = 1  # default candidates per image on the A1111 routes (`serve --best-of`)
    host: str = "127.0.0.1"  # the interface served (its name is accepted in the Host header)
    allowed_hosts: tuple[str, ...] | None = None  # Host header names accepted; None: localhost names + host
    cors_allow_origins: str | None = None  # A1111's --cors-allow-origins (comma-separated); see server/cors.py
    cors_allow_origins_regex: str | None = None  # both None: loopback origins only
    # ControlNet / VAE folders (None: models/ControlNet, models/VAE beside out_dir) and the image safety check
    controlnet_dir: str | None = None
    vae_dir: str | None = None
    safety_checker: str | None = None  # a safety-checker folder or hub id; None: off


class _Body(A._A1111):
    """The native API's bodies: A1111's checks (no NaN/∞, no lone surrogates), unknown fields refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class GenerateRequest(_Body):
    """POST /v1/generate: a prompt and ImgCfg fields (the server keeps model, device and output paths)."""

    prompt: str = Field(..., description="capped by the server's --max-prompt-chars")
    preset: str | None = Field(None, description=f"one of {', '.join(PRESETS)} (the server's model is kept)")
    n_images: int | None = Field(None, ge=1, le=256)
    seed_base: int | None = Field(None, ge=0, le=A.MAX_SEED)
    steps_base: int | None = Field(None, ge=1, le=1000)
    guidance: float | None = Field(None, ge=0, le=100)
    score_min: float | None = Field(None, description="quality gate in the scorer's units (unset: its default)")
    clip_min: float | None = Field(None, description="old name of score_min")
    width: int | None = Field(None, ge=8, le=16384)
    height: int | None = Field(None, ge=8, le=16384)
    style_suffix: str | None = Field(None, max_length=2000)
    negative_prompt: str | None = None
    scheduler: str | None = Field(None, max_length=100)
    scorer: str | None = Field(None, max_length=500)
    save_candidates: bool | None = None
    exact_best: bool | None = None


class KeepRequest(_Body):
    name: str = Field(..., max_length=500)
    keep: bool = True


class NameRequest(_Body):
    name: str = Field(..., max_length=500)


class StarRequest(_Body):
    name: str = Field(..., max_length=500)
    star: bool = True


def create_app(settings: ServerSettings | None = None, **overrides: Any) -> FastAPI:
    """Build the app. ``create_app(model=..., scorer=..., out_dir=...)`` is shorthand for the settings."""
    settings = settings or ServerSettings(**overrides)
    auth = Auth.from_options(settings.token, settings.api_auth)
    out_dir = check_writable(settings.out_dir)
    log_path = Path(settings.log_jsonl) if settings.log_jsonl else out_dir.parent / "images_log.jsonl"
    store = Store(root=out_dir, log_path=log_path)
    store.sync_index()  # runs a CLI logged but could not index (a full disk) show in /v1/runs
    upscaler = CurateUpscaler(settings.curate_config)
    curation = Curation(upscaler.outputs() or settings.curate_dir)
    interrogators: dict[Any, Any] = {}
    jobs = JobQueue(settings.max_queue, job_timeout=settings.limits.job_timeout)
    limits = settings.limits
    state: dict[str, Any] = {"model": settings.model, "options": {}, "best_of": settings.best_of}

    scorers: dict[str, Any] = {}
    if isinstance(settings.scorer, str):
        scorers[settings.scorer] = settings.scorer
    elif settings.scorer is not None:
        scorers[getattr(settings.scorer, "name", "default")] = settings.scorer
    from ..models.registry import EMBEDDED_DIR

    if (EMBEDDED_DIR / "clip").is_dir():
        scorers.setdefault(EMBEDDED, EMBEDDED)
    models = list(dict.fromkeys([settings.model, *settings.extra_models]))

    def family(model: str) -> str | None:
        from ..models.registry import resolve_model

        try:
            return resolve_model(model).family.name
        except BestshotError:
            return None

    def base_cfg() -> dict[str, Any]:
        return dict(
            out_dir=str(out_dir),
            log_jsonl=str(log_path),
            device=settings.device,
            dtype=settings.dtype,
            memory=settings.memory,
            max_batch=settings.max_batch,
            save_candidates=settings.save_candidates,
            controlnet_dir=settings.controlnet_dir,
            vae_dir=settings.vae_dir,
            safety_checker=settings.safety_checker,
        )

    def rel(path: str | None, record: dict[str, Any] | None = None) -> str | None:
        """The name GET /v1/images/{name} serves for a stored path (None when outside the output folder).

        Logged paths are relative to the log's folder (older logs: to the run's working directory), so
        runs of ``bestshot generate`` started anywhere are found (Store.resolve_path)."""
        found = store.resolve_path(path, record)
        if found is None:
            return None
        try:
            return found.resolve().relative_to(out_dir.resolve()).as_posix()
        except ValueError:
            return None

    async def run_job(kind: str, fn: Callable[[Job], Any], description: str, parts: int = 1) -> Any:
        try:
            job = jobs.submit(kind, fn, description, parts)
        except QueueFull as e:
            raise HTTPException(429, str(e), headers={"Retry-After": str(e.retry_after)}) from None
        except ShuttingDown as e:
            raise HTTPException(503, str(e)) from None
        try:
            return await job.wait()
        except JobCancelled as e:
            raise HTTPException(503 if e.why == "shutdown" else 409, str(e)) from None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        jobs.start()
        yield
        jobs.shutdown()  # queued jobs are answered 503, the running one stops at its next step
        await asyncio.to_thread(jobs.close, 8)

    app = FastAPI(
        title="bestshot",
        version=__version__,
        lifespan=lifespan,
        description="Best-of-N text-to-image with an AUTOMATIC1111-compatible API (/sdapi/v1), "
        "bestshot's own API (/v1) and a curation gallery (/).",
    )
    app.state.settings, app.state.store, app.state.jobs, app.state.curation = settings, store, jobs, curation
    app.add_middleware(HostCheck, allowed=allowed_hosts(settings.host, settings.allowed_hosts))
    app.add_middleware(JSONBodies)  # bodies without Content-Type (or text/plain) are JSON, as A1111 reads them
    app.add_middleware(BodyLimit, max_bytes=None if limits.max_body_mb is None else int(limits.max_body_mb * 2**20))
    add_cors(app, settings.cors_allow_origins, settings.cors_allow_origins_regex)  # outermost: errors carry it too

    # error bodies in A1111's shape ({"error", "detail", "body", "errors"}), always valid JSON: a refused
    # NaN, Infinity or lone surrogate is echoed as text, never re-raised while rendering the error
    def error_response(
        status: int,
        error: str,
        detail: Any,
        errors: Any = None,
        body: Any = "",
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> JSONResponse:
        content = {
            "error": error,
            "detail": detail,
            "body": body,
            "errors": errors if errors is not None else (detail if isinstance(detail, str) else ""),
            **extra,
        }
        return JSONResponse(json_safe(content), status_code=status, headers=headers)

    @app.exception_handler(BestshotError)
    async def _bestshot_error(request: Request, exc: BestshotError) -> JSONResponse:
        if isinstance(exc, StorageError):  # the server's folder, not the request: 507 Insufficient Storage
            return error_response(507, type(exc).__name__, str(exc))
        return error_response(422, type(exc).__name__, str(exc), field=getattr(exc, "field", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = [{k: v for k, v in e.items() if k != "ctx" and k != "url"} for e in exc.errors()[:10]]
        lines = "; ".join(
            f"{'.'.join(str(x) for x in e.get('loc', ()) if x != 'body') or 'body'}: {e.get('msg')}" for e in errs[:10]
        )
        return error_response(422, "RequestValidationError", errs, errors=lines)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, "HTTPException", exc.detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(OSError)
    async def _os_error(request: Request, exc: OSError) -> JSONResponse:
        import errno

        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
            from ..store import disk_error  # a write no route wrapped: still a 507 naming the file

            err = disk_error(exc, repr(exc.filename) if exc.filename else f"to {str(out_dir)!r}")
            return error_response(507, "StorageError", str(err))
        return await _unexpected(request, exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        import logging

        logging.getLogger(__name__).exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(
            500, type(exc).__name__, "internal error — the server log has the details", errors=str(exc)[:500]
        )

    sd = APIRouter(prefix="/sdapi/v1", tags=["AUTOMATIC1111"], dependencies=[Depends(auth.check)])
    v1 = APIRouter(prefix="/v1", tags=["bestshot"], dependencies=[Depends(auth.check)])

    # ------------------------------------------------------------------------------ A1111: generation
    def plan(req: A.Txt2ImgRequest) -> A.Plan:
        return A.plan_request(
            req,
            model=state["model"],
            scorers=scorers,
            default_scorer=settings.scorer,
            limits=limits,
            base=base_cfg(),
            default_best_of=state["best_of"],
        )

    def store_for(req: A.Txt2ImgRequest) -> Store:
        """The store of one A1111 request: ``save_images: false`` keeps no image, and its log line says so."""
        if req.save_images is False:
            from dataclasses import replace

            return replace(store, keep_images=False)
        return store

    def sampler_of(results: list[dict[str, Any]]) -> str:
        return (results[0].get("settings", {}).get("sampler") or "") if results else ""

    def stopped_info(stopped: str | None) -> dict[str, Any]:
        if stopped is None:
            return {}
        why = {
            "interrupt": "interrupted",
            "timeout": f"stopped after the {limits.job_timeout:g}s job timeout",
            "shutdown": "stopped: the server is shutting down",
        }.get(stopped, stopped)
        return {
            "interrupted": True,
            "stopped": stopped,
            "note": f"{why}: the images returned are those finished (the last one at the step it had reached)",
        }

    def describe(kind: str, req: A.Txt2ImgRequest, p: A.Plan) -> str:
        return f"{kind}: {p.n_images} image(s), best of {p.best_of}, {req.prompt[:60]!r}"

    @sd.post("/txt2img", response_model=A.TextToImageResponse)
    async def txt2img(req: A.Txt2ImgRequest) -> dict[str, Any]:
        p = plan(req)
        hr = A.hires_plan(req, p, limits)
        if hr is not None:
            from ..models.registry import resolve_model

            fam = resolve_model(p.cfg.model).family
            if fam.img2img_class is None and fam.pipeline_class != "BestshotWorldPipeline":
                p.notes["hires"] = "enable_hr ignored: this model has no image-to-image pipeline"
                hr = None
            else:
                if req.hr_upscaler and not req.hr_upscaler.strip().lower().startswith("latent"):
                    A.upscaler_backend(req.hr_upscaler)  # 422 for an unknown upscaler, before queueing
                p.notes.update(hr.notes)

        st = store_for(req)

        def work(job: Job) -> tuple[list[dict[str, Any]], str | None, bool]:
            job.preview_every = PREVIEW_EVERY
            results = run_plan(job, p, req.prompt, st)
            if hr is None or job.should_stop:
                return results, job.stopped, False
            try:
                return (
                    run_hires(job, p, hr, results, req.prompt, st, req.hr_upscaler, settings.device),
                    job.stopped,
                    True,
                )
            finally:
                A.discard_unsaved(results)  # save_images false: the first pass's temp files

        parts = len(p.calls) + (p.n_images if hr is not None else 0)
        results, stopped, hired = await run_job("txt2img", work, describe("txt2img", req, p), parts=parts)
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
        return await asyncio.to_thread(
            A.build_response, req, p, results, rel, state["model"], sampler_of(results), stopped_info(stopped)
        )

    @sd.post("/img2img", response_model=A.ImageToImageResponse)
    async def img2img(req: A.Img2ImgRequest) -> dict[str, Any]:
        p = plan(req)
        init = await asyncio.to_thread(A.decode_image, req.init_images[0], "init_images", limits.max_side**2 * 4)
        inpaint = None
        if req.mask:
            raw = await asyncio.to_thread(A.decode_image, req.mask, "mask", limits.max_side**2 * 4)
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

        st = store_for(req)

        def work(job: Job) -> tuple[list[dict[str, Any]], str | None]:
            job.preview_every = PREVIEW_EVERY
            return run_img2img(job, p, req.prompt, init, req.denoising_strength, st, inpaint), job.stopped

        results, stopped = await run_job("img2img", work, describe("img2img", req, p), parts=len(p.calls))
        out = await asyncio.to_thread(
            A.build_response, req, p, results, rel, state["model"], sampler_of(results), stopped_info(stopped)
        )
        if req.include_init_images:
            out["images"] = out["images"] + list(req.init_images)
        return out

    @sd.post("/extra-single-image", response_model=A.ExtrasSingleImageResponse)
    async def extra_single_image(req: A.ExtrasSingleImageRequest) -> dict[str, Any]:
        A.upscaler_backend(req.upscaler_1)  # 422 before queueing
        image = await asyncio.to_thread(A.decode_image, req.image, "image", limits.max_side**2)
        holder: dict[str, Any] = {}

        def work(job: Job):
            big = run_upscale(job, image, req, limits.max_side * 4, settings.device)
            holder["upscaler"] = getattr(job, "upscaler_name", "")
            return big

        big = await run_job("extras", work, f"upscale x{req.upscaling_resize} ({req.upscaler_1})")
        info = (
            f"Postprocess upscale by: {req.upscaling_resize}, Postprocess upscaler: {req.upscaler_1} "
            f"({holder.get('upscaler')})"
        )
        return {"html_info": f"<p>{html.escape(info)}</p>", "image": await asyncio.to_thread(A.encode_image, big)}

    @sd.post("/png-info", response_model=A.PNGInfoResponse)
    def png_info(req: A.PNGInfoRequest) -> dict[str, Any]:
        image = A.decode_image(req.image, "image", limits.max_side**2 * 4)
        info = read_png_info(image)
        items = {k: v for k, v in image.info.items() if isinstance(v, str) and k != "parameters"}
        text = info.get("parameters") or ""
        return {"info": text, "items": items, "parameters": A.a1111_parameters(text)}

    @sd.post("/interrogate", response_model=A.InterrogateResponse)
    async def interrogate(req: A.InterrogateRequest) -> dict[str, Any]:
        if req.model.strip().lower() not in INTERROGATE_MODES:
            raise A.FieldError(
                "model", f"interrogator {req.model!r} is not available — use one of: " + ", ".join(INTERROGATE_MODES)
            )
        image = await asyncio.to_thread(A.decode_image, req.image, "image", limits.max_side**2 * 4)
        clip = settings.scorer if settings.scorer is not None else EMBEDDED
        domain = "world" if family(state["model"]) == "embedded" else "auto"
        caption = await run_job(
            "interrogate",
            lambda job: run_interrogate(job, image, req.model, clip, interrogators, settings.interrogate_cache, domain),
            "interrogate",
        )
        return {"caption": caption}

    # ------------------------------------------------------------------------------ A1111: state
    @sd.get("/progress", response_model=A.ProgressResponse)
    def progress(skip_current_image: bool = False) -> dict[str, Any]:
        snap = jobs.snapshot()
        cur = jobs.current
        prog, eta = 0.0, 0.0
        if cur is not None and cur.started:
            prog = cur.progress
            elapsed = time.time() - cur.started
            eta = elapsed / prog - elapsed if prog > 0 else 0.0
        state_ = {
            "skipped": bool(cur and cur.skipped),
            "interrupted": bool(cur and cur.stopped),
            "stopping_generation": bool(cur and cur.stopped),
            "job": cur.id if cur else "",
            "job_count": cur.parts if cur else 0,  # A1111: n_iter of the job
            "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(cur.created)) if cur else "0",
            "job_no": cur.part if cur else 0,
            "sampling_step": cur.step if cur else 0,
            "sampling_steps": cur.total if cur else 0,
            "bestshot": snap,
        }
        return {
            "progress": round(prog, 4),
            "eta_relative": round(max(0.0, eta), 3),
            "state": state_,
            "current_image": None if skip_current_image or cur is None else A.preview_image(cur.preview),
            "textinfo": cur.description if cur else None,
        }

    @sd.post("/interrupt")
    def interrupt() -> dict[str, Any]:
        """Stop the running job at its next step; its finished images are returned, marked interrupted."""
        jobs.interrupt()
        return {}

    @sd.post("/skip")
    def skip() -> dict[str, Any]:
        """Stop the running job's current batch (one n_iter) at its next step and go on with the next one."""
        jobs.interrupt(skip=True)
        return {}

    def model_items() -> list[dict[str, Any]]:
        return [A.model_item(m) for m in models]

    @sd.get("/sd-models", response_model=list[A.SDModelItem])
    def sd_models() -> list[dict[str, Any]]:
        return model_items()

    @sd.get("/samplers", response_model=list[A.SamplerItem])
    def samplers() -> list[dict[str, Any]]:
        return A.samplers()

    @sd.get("/upscalers", response_model=list[A.UpscalerItem])
    def upscalers() -> list[dict[str, Any]]:
        return A.upscalers()

    @sd.get("/scripts")
    def scripts() -> dict[str, list[str]]:
        return {"txt2img": [], "img2img": []}

    def options() -> dict[str, Any]:
        return {
            **A.option_defaults(out_dir),
            **state["options"],
            "sd_model_checkpoint": state["model"],
            "bestshot_best_of": state["best_of"],
            "bestshot_version": __version__,
        }

    @sd.get("/options")
    def get_options() -> dict[str, Any]:
        return options()

    @sd.post("/options")
    def set_options(opts: dict[str, Any] = Body(...)) -> dict[str, Any]:
        big = oversized_path(opts)
        if big is not None:
            raise A.FieldError(big, f"holds more than {MAX_ITEMS} items — send only the options you set")
        bad = surrogate_path(opts)
        if bad is not None:
            raise A.FieldError(bad, "holds a lone UTF-16 surrogate — send valid UTF-8 text")
        ckpt = opts.get("sd_model_checkpoint")
        if ckpt is not None:  # by title, model_name or filename, as A1111 matches it
            found = A.find_checkpoint(ckpt, models)
            if found is None:
                raise A.FieldError(
                    "sd_model_checkpoint", f"unknown model {ckpt!r} — GET /sdapi/v1/sd-models lists them"
                )
            ckpt = found
        best = opts.get("bestshot_best_of")
        if best is not None:
            A.check_best_of("bestshot_best_of", best, limits)
        known = A.option_defaults(out_dir)
        updates: dict[str, Any] = {}
        for k, v in opts.items():
            if k in ("sd_model_checkpoint", "bestshot_best_of", "bestshot_version"):
                continue
            if json_size(v) > limits.max_option_bytes:
                raise A.FieldError(
                    k,
                    f"value of {json_size(v)} bytes is more than this server's "
                    f"{limits.max_option_bytes} per option (or not finite)",
                )
            updates[k] = v
        unknown = {k for k in {*state["options"], *updates} if k not in known}
        if len(unknown) > limits.max_options:
            raise A.FieldError(
                "options",
                f"{len(unknown)} options unknown to bestshot is more than this server keeps "
                f"({limits.max_options}) — send only the options you use",
            )
        if ckpt is not None:
            state["model"] = ckpt
        if best is not None:
            state["best_of"] = int(best)
        state["options"].update(updates)
        return {}

    # ------------------------------------------------------------------------------ A1111: the rest
    # Features bestshot does not have answer what A1111 answers without them (empty lists, null), never 404.
    @sd.get("/schedulers", response_model=list[A.SchedulerItem])
    def schedulers_() -> list[dict[str, Any]]:
        return A.schedulers()

    @sd.get("/latent-upscale-modes", response_model=list[A.LatentUpscalerModeItem])
    def latent_upscale_modes() -> list[dict[str, Any]]:
        return [{"name": n} for n in A.LATENT_UPSCALE_MODES]

    @sd.get("/realesrgan-models", response_model=list[A.RealesrganItem])
    def realesrgan_models() -> list[dict[str, Any]]:
        return [
            {"name": u["name"], "path": None, "scale": int(u["scale"])} for u in A.upscalers() if u.get("model_name")
        ]

    sd.add_api_route(
        "/sd-vae",
        lambda: AC.vae_list(base_cfg()),
        methods=["GET"],
        summary="VAEs in vae_dir (override_settings.sd_vae picks one)",
    )
    for path_ in (
        "/sd-modules",
        "/loras",
        "/prompt-styles",
        "/face-restorers",
        "/hypernetworks",
        "/script-info",
        "/extensions",
    ):
        sd.add_api_route(
            path_,
            A.empty_list,
            methods=["GET"],
            response_model=list[dict[str, Any]],
            summary=f"GET {path_}: an empty list (bestshot has none)",
        )
    for path_ in ("/refresh-loras", "/refresh-checkpoints", "/refresh-vae", "/refresh-embeddings"):
        sd.add_api_route(path_, A.nothing, methods=["POST"], summary=f"POST {path_}: nothing to refresh")

    @sd.get("/embeddings")
    def embeddings() -> dict[str, Any]:
        return {"loaded": {}, "skipped": {}}

    @sd.get("/memory")
    def memory() -> dict[str, Any]:
        return A.memory_info()

    @sd.get("/cmd-flags")
    def cmd_flags() -> dict[str, Any]:
        return {
            "api": True,
            "nowebui": True,
            "listen": settings.host not in ("127.0.0.1", "localhost", "::1"),
            "server_name": settings.host,
            "port": None,
            "api_auth": None,
            "ckpt": state["model"],
            "ckpt_dir": None,
            "vae_dir": None,
            "lora_dir": None,
            "embeddings_dir": None,
            "hypernetwork_dir": None,
            "data_dir": str(out_dir.parent),
            "outdir_samples": str(out_dir),
            "device_id": settings.device,
            "precision": settings.dtype,
            "medvram": settings.memory == "model_offload",
            "lowvram": settings.memory == "sequential_offload",
            "skip_torch_cuda_test": True,
            "bestshot_best_of": state["best_of"],
            "bestshot_max_cost": limits.max_cost,
        }

    @sd.post("/unload-checkpoint")
    def unload_checkpoint() -> dict[str, Any]:
        from ..models.loader import CACHE

        if jobs.current is None:
            CACHE.pipelines.clear()
            from ..models.loader import free_memory

            free_memory()
        return {}

    @sd.post("/reload-checkpoint")
    def reload_checkpoint() -> dict[str, Any]:
        return {}  # the model loads on the next request

    @sd.post("/extra-batch-images", response_model=A.ExtrasBatchImagesResponse)
    async def extra_batch_images(req: A.ExtrasBatchImagesRequest) -> dict[str, Any]:
        A.upscaler_backend(req.upscaler_1)
        if len(req.imageList) > limits.max_images:
            raise A.FieldError(
                "imageList", f"{len(req.imageList)} images is more than this server's {limits.max_images}"
            )
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

        def work(job: Job) -> list[str]:
            encoded = []
            for i in range(len(images)):  # encode each result and drop it (and its source) before the next
                big = run_upscale(job, images[i], req, limits.max_side * 4, settings.device)
                images[i] = None
                encoded.append(A.encode_image(big))
                del big
            return encoded

        encoded = await run_job("extras", work, f"upscale {len(images)} image(s) ({req.upscaler_1})")
        info = f"Postprocess upscale by: {req.upscaling_resize}, Postprocess upscaler: {req.upscaler_1}"
        return {"html_info": f"<p>{html.escape(info)}</p>", "images": encoded}

    # ------------------------------------------------------------------------------ bestshot API
    def with_files(record: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in record.items() if k != "candidate_images"}
        out["img_file"] = rel(record.get("img_path"), record)
        out["candidates"] = [{**c, "file": rel(c.get("path"), record)} for c in record.get("candidates") or []]
        return out

    @v1.post("/generate")
    async def v1_generate(req: GenerateRequest) -> dict[str, Any]:
        if req.preset is not None and req.preset not in PRESETS:
            raise A.FieldError("preset", f"unknown preset {req.preset!r} — choose one of: {', '.join(PRESETS)}")
        if req.scorer is not None and req.scorer not in scorers:
            raise A.FieldError(
                "scorer", f"unknown scorer {req.scorer!r} — this server offers: {', '.join(scorers) or 'none'}"
            )
        fields = req.model_dump(exclude={"prompt", "preset", "scorer"}, exclude_none=True)
        base = {k: v for k, v in base_cfg().items() if k not in fields}
        lim = {
            "steps_base": limits.max_steps,
            "width": limits.max_side,
            "height": limits.max_side,
            "n_images": limits.max_candidates,
        }
        for k, top in lim.items():
            if k in fields and fields[k] > top:
                raise A.FieldError(k, f"{fields[k]} is more than this server's {top}")
        if not req.prompt.strip():
            raise A.FieldError("prompt", "empty — give a text prompt")
        A.check_prompt("prompt", req.prompt, limits)
        A.check_prompt("negative_prompt", req.negative_prompt, limits)
        try:
            cfg = resolve_config(None, preset=req.preset, model=state["model"], **base, **fields)
        except BestshotError as e:
            raise A.FieldError("request", str(e)) from None
        for k, top in lim.items():  # preset / model defaults above the server's caps
            if getattr(cfg, k) > top:
                raise A.FieldError(
                    k,
                    f"{getattr(cfg, k)} (from the preset or model defaults) is more than this "
                    f"server's {top} — set {k} explicitly",
                )
        A.check_cost(cfg, cfg.n_images, limits)
        scorer = scorers[req.scorer] if req.scorer else settings.scorer

        def work(job: Job):
            from ..generation import generate

            result = generate(req.prompt, cfg=cfg, scorer=scorer, store=store, on_step=job.on_step)
            if job.stopped is not None:  # interrupted, timed out or shut down: what it finished, marked
                result = {**result, "interrupted": True, "stopped": job.stopped}
            return result

        result = await run_job("generate", work, f"generate: {cfg.n_images} candidates, {req.prompt[:60]!r}")
        return with_files(result)

    @v1.get("/runs")
    def v1_runs(limit: int = Query(20, ge=0, le=500), offset: int = Query(0, ge=0, le=10**9)) -> dict[str, Any]:
        runs = store.index.list(limit=limit, offset=offset)
        return {"runs": [with_files(r) for r in runs], "limit": limit, "offset": offset}

    @v1.get("/runs/{run_id}")
    def v1_run(run_id: str) -> dict[str, Any]:
        rec = store.index.get(run_id)
        if rec is None:
            raise HTTPException(404, f"no run {run_id!r}")
        return with_files(rec)

    def serve_file(path_of: Callable[[], Path], name: str) -> FileResponse:
        try:
            path = path_of()
        except BestshotError:
            raise HTTPException(400, f"unsafe image name {name!r}") from None
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            raise HTTPException(404, f"no image {name!r}")
        return FileResponse(path)

    @v1.get("/images/{name:path}", response_class=FileResponse)
    def v1_image(name: str) -> FileResponse:
        return serve_file(lambda: store.safe_path(name), name)

    @v1.get("/jobs")
    def v1_jobs() -> dict[str, Any]:
        return jobs.snapshot()

    @v1.delete("/jobs/{job_id}")
    def v1_cancel_job(job_id: str) -> dict[str, Any]:
        """Cancel a queued job, or stop a running one at its next step (it returns what it finished)."""
        job = jobs.cancel(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id!r} (only recent jobs are kept)")
        return job.info()

    @v1.get("/jobs/{job_id}")
    def v1_job(job_id: str) -> dict[str, Any]:
        job = jobs.find(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id!r} (only recent jobs are kept)")
        out = job.info()
        if job.future.cancelled():
            out["error"], out["result"] = f"cancelled ({job.stopped or 'cancelled'}) before it started", None
        elif job.future.done():
            err = job.future.exception()
            out["error"] = None if err is None else str(err)
            out["result"] = (
                None if err is not None or not isinstance(job.future.result(), dict) else job.future.result()
            )
        return out

    # ------------------------------------------------------------------------------ curation (gallery)
    @v1.get("/curate")
    def curate_list() -> dict[str, Any]:
        """Stage-1 images (each with kept, starred, metadata), trash, final."""
        why = upscaler.unavailable()
        return {**curation.listing(), "upscale_available": why is None, "upscale_unavailable_reason": why}

    @v1.get("/curate/images/{folder}/{name}", response_class=FileResponse)
    def curate_image(folder: str, name: str) -> FileResponse:
        if folder not in ("stage1", "trash", "final"):
            raise HTTPException(404, f"no folder {folder!r}")
        return serve_file(lambda: curation.image_path(name, folder), name)

    def _act(fn: Callable[[], dict[str, Any]], name: str) -> dict[str, Any]:
        try:
            return fn()
        except FileNotFoundError:
            raise HTTPException(404, f"no image {name!r} there") from None
        except OSError as e:  # full disk, read-only folder: nothing was changed (the action rolls back)
            from ..store import disk_error

            err = disk_error(e, f"the curation folder {str(curation.root)!r}")
            raise StorageError(f"{err} (nothing was changed)") from None

    @v1.post("/curate/keep")
    def curate_keep(req: KeepRequest) -> dict[str, Any]:
        """Mark a stage-1 image kept (keep=false: unmark); records a keep (or undo) preference row."""
        return _act(lambda: curation.keep(req.name, req.keep), req.name)

    @v1.post("/curate/star")
    def curate_star(req: StarRequest) -> dict[str, Any]:
        """Star a stage-1 image, a stronger keep (star=false: unstar); records a star preference row."""
        return _act(lambda: curation.star(req.name, req.star), req.name)

    @v1.post("/curate/delete")
    def curate_delete(req: NameRequest) -> dict[str, Any]:
        """Move a stage-1 image to trash (undoable); records a delete preference row."""
        return _act(lambda: curation.delete(req.name), req.name)

    @v1.post("/curate/undo")
    def curate_undo(req: NameRequest) -> dict[str, Any]:
        """Move a deleted image back to stage 1; records an undo row (its verdict is forgotten)."""
        return _act(lambda: curation.undo(req.name), req.name)

    @v1.post(
        "/curate/upscale",
        status_code=202,
        responses={
            503: {"description": "bestshot.curate (the upscale step) is not installed"},
            429: {"description": "the job queue is full; see Retry-After"},
        },
    )
    def curate_upscale() -> dict[str, Any]:
        why = upscaler.unavailable()
        if why is not None:
            raise HTTPException(503, why)
        names = curation.kept()
        if not names:
            raise A.FieldError("kept", "no stage-1 image is marked keep — mark some first")
        try:
            job = jobs.submit(
                "curate-upscale",
                lambda job: upscaler.run(job, curation, names),
                f"upscale {len(names)} kept image(s)",
                parts=len(names),
            )
        except QueueFull as e:
            raise HTTPException(429, str(e), headers={"Retry-After": str(e.retry_after)}) from None
        return {"job": job.id, "images": names}

    app.include_router(sd)
    app.include_router(v1)
    app.include_router(AC.controlnet_router(base_cfg, [Depends(auth.check)]))  # control branch: /controlnet/*

    add_internal_routes(app, jobs, A.preview_image, [Depends(auth.check)])  # /internal/progress, sysinfo, /config

    @app.get("/internal/ping", tags=["AUTOMATIC1111"], dependencies=[Depends(auth.check)])
    def internal_ping() -> dict[str, Any]:
        """A1111's liveness probe."""
        return {}

    # ------------------------------------------------------------------------------ gallery
    @app.get("/", include_in_schema=False)
    def gallery() -> FileResponse:
        return FileResponse(GALLERY_DIR / "index.html")

    app.mount("/gallery", StaticFiles(directory=GALLERY_DIR), name="gallery")
    return app


__all__ = ["ServerSettings", "create_app", "GenerateRequest"]
