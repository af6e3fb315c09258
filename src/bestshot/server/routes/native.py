"""bestshot's own API under ``/v1``: generate (ImgCfg fields in, the run record out), the run history,
stored images, and the job queue (list, look up, cancel)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import FileResponse
from pydantic import ConfigDict, Field

from ...config import PRESETS
from ...errors import BestshotError
from ...models.settings import resolve_config
from .. import a1111 as A
from ..context import Ctx, ServerContext
from ..curation import IMAGE_SUFFIXES
from ..queue import Job

router = APIRouter(prefix="/v1", tags=["bestshot"])


class NativeBody(A._A1111):
    """The native API's bodies: A1111's checks (no NaN/∞, no lone surrogates), unknown fields refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class GenerateRequest(NativeBody):
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
    loras: list[str] | None = Field(None, max_length=16, description="LoRA names or files, each NAME[:WEIGHT]")
    clip_skip: int | None = Field(None, ge=1, le=12, description="A1111's clip skip: 1 = the last layer")
    prompt_weighting: bool | None = Field(None, description="false: A1111 weight syntax is not read")
    regions: str | dict[str, Any] | None = Field(
        None, description="region-steered sampling: 'auto', 'off' or a layout object (docs/generate.md, --regions)"
    )
    search: bool | None = Field(None, description="spend the candidates as a search over noises (--search)")
    search_pool: int | None = Field(None, ge=1, le=1024, description="noises a search starts (default 2·n_images)")
    search_at: float | None = Field(None, gt=0, lt=1, description="fraction of the steps before a search branches")
    search_branches: int | None = Field(None, ge=0, le=256, description="branches per kept noise of a search")
    search_keep_noise: float | None = Field(None, ge=0, lt=1, description="how much parent noise a branch keeps")
    repair: bool | None = Field(None, description="repaint what the scorer reads as wrong in the best (--repair)")
    repair_tries: int | None = Field(None, ge=1, le=64, description="repaints per repair round")
    repair_rounds: int | None = Field(None, ge=1, le=16, description="repair rounds")


def with_files(ctx: ServerContext, record: dict[str, Any]) -> dict[str, Any]:
    """A run record with the names GET /v1/images/{name} serves for its image and candidates."""
    out = {k: v for k, v in record.items() if k != "candidate_images"}
    out["img_file"] = ctx.rel(record.get("img_path"), record)
    out["candidates"] = [{**c, "file": ctx.rel(c.get("path"), record)} for c in record.get("candidates") or []]
    return out


def serve_file(path_of: Callable[[], Path], name: str) -> FileResponse:
    """An image file by a client's name: 400 for an unsafe name, 404 for none (or not an image)."""
    try:
        path = path_of()
    except BestshotError:
        raise HTTPException(400, f"unsafe image name {name!r}") from None
    if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
        raise HTTPException(404, f"no image {name!r}")
    return FileResponse(path)


@router.post("/generate")
async def v1_generate(req: GenerateRequest, ctx: Ctx) -> dict[str, Any]:
    limits = ctx.limits
    if req.preset is not None and req.preset not in PRESETS:
        raise A.FieldError("preset", f"unknown preset {req.preset!r} — choose one of: {', '.join(PRESETS)}")
    if req.scorer is not None and req.scorer not in ctx.scorers:
        raise A.FieldError(
            "scorer", f"unknown scorer {req.scorer!r} — this server offers: {', '.join(ctx.scorers) or 'none'}"
        )
    fields = req.model_dump(exclude={"prompt", "preset", "scorer"}, exclude_none=True)
    if req.regions is not None:
        A.check_regions("regions", req.regions, ctx.choices.model)
    base = {k: v for k, v in ctx.base_cfg().items() if k not in fields}
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
        cfg = resolve_config(None, preset=req.preset, model=ctx.choices.model, **base, **fields)
    except BestshotError as e:
        raise A.FieldError("request", str(e)) from None
    for k, top in lim.items():  # preset / model defaults above the server's caps
        if getattr(cfg, k) > top:
            raise A.FieldError(
                k,
                f"{getattr(cfg, k)} (from the preset or model defaults) is more than this "
                f"server's {top} — set {k} explicitly",
            )
    pool = (cfg.search_pool or 2 * cfg.n_images) if cfg.search else cfg.n_images
    if pool > limits.max_candidates:
        raise A.FieldError("search_pool", f"a search pool of {pool} is more than this server's {limits.max_candidates}")
    if pool + cfg.repair_seeds > limits.max_candidates:
        raise A.FieldError(
            "repair_tries",
            f"{pool} candidates and {cfg.repair_seeds} repaints are more than this server's {limits.max_candidates}",
        )
    A.check_cost(cfg, pool + cfg.repair_seeds, limits)  # a search costs at most its whole pool finished, repairs all
    A.check_loras(req.prompt, cfg, "loras" if req.loras else "prompt")
    scorer = ctx.scorers[req.scorer] if req.scorer else ctx.settings.scorer
    store = ctx.store

    def work(job: Job):
        from ...generation import generate

        result = generate(req.prompt, cfg=cfg, scorer=scorer, store=store, on_step=job.on_step)
        if job.stopped is not None:  # interrupted, timed out or shut down: what it finished, marked
            result = {**result, "interrupted": True, "stopped": job.stopped}
        return result

    result = await ctx.run_job("generate", work, f"generate: {cfg.n_images} candidates, {req.prompt[:60]!r}")
    return with_files(ctx, result)


@router.get("/runs")
def v1_runs(ctx: Ctx, limit: int = Query(20, ge=0, le=500), offset: int = Query(0, ge=0, le=10**9)) -> dict[str, Any]:
    runs = ctx.store.index.list(limit=limit, offset=offset)
    return {"runs": [with_files(ctx, r) for r in runs], "limit": limit, "offset": offset}


@router.get("/runs/{run_id}")
def v1_run(run_id: str, ctx: Ctx) -> dict[str, Any]:
    rec = ctx.store.index.get(run_id)
    if rec is None:
        raise HTTPException(404, f"no run {run_id!r}")
    return with_files(ctx, rec)


@router.get("/images/{name:path}", response_class=FileResponse)
def v1_image(name: str, ctx: Ctx) -> FileResponse:
    return serve_file(lambda: ctx.store.safe_path(name), name)


@router.get("/jobs")
def v1_jobs(ctx: Ctx) -> dict[str, Any]:
    return ctx.jobs.snapshot()


@router.delete("/jobs/{job_id}")
def v1_cancel_job(job_id: str, ctx: Ctx) -> dict[str, Any]:
    """Cancel a queued job, or stop a running one at its next step (it returns what it finished)."""
    job = ctx.jobs.cancel(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id!r} (only recent jobs are kept)")
    return job.info()


@router.get("/jobs/{job_id}")
def v1_job(job_id: str, ctx: Ctx) -> dict[str, Any]:
    job = ctx.jobs.find(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id!r} (only recent jobs are kept)")
    out = job.info()
    if job.future.cancelled():
        out["error"], out["result"] = f"cancelled ({job.stopped or 'cancelled'}) before it started", None
    elif job.future.done():
        err = job.future.exception()
        out["error"] = None if err is None else str(err)
        out["result"] = None if err is not None or not isinstance(job.future.result(), dict) else job.future.result()
    return out


__all__ = ["GenerateRequest", "NativeBody", "router", "serve_file", "with_files"]
