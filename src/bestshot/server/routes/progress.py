"""The running job as A1111 clients see it: ``GET /sdapi/v1/progress`` (progress, ETA, live preview),
``POST /internal/progress`` (the web UI's poll, which some browser front-ends use instead), and
``POST /sdapi/v1/interrupt`` / ``/skip`` (stop the job, or its current batch, at the next step)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from .. import a1111 as A
from ..context import Ctx

router = APIRouter(tags=["AUTOMATIC1111"])


@router.get("/sdapi/v1/progress", response_model=A.ProgressResponse)
def progress(ctx: Ctx, skip_current_image: bool = False) -> dict[str, Any]:
    jobs = ctx.jobs
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


@router.post("/sdapi/v1/interrupt")
def interrupt(ctx: Ctx) -> dict[str, Any]:
    """Stop the running job at its next step; its finished images are returned, marked interrupted."""
    ctx.jobs.interrupt()
    return {}


@router.post("/sdapi/v1/skip")
def skip(ctx: Ctx) -> dict[str, Any]:
    """Stop the running job's current batch (one n_iter) at its next step and go on with the next one."""
    ctx.jobs.interrupt(skip=True)
    return {}


class InternalProgressRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id_task: str | None = None
    id_live_preview: int = -1
    live_preview: bool = True


@router.post("/internal/progress")
def internal_progress(req: InternalProgressRequest, ctx: Ctx) -> dict[str, Any]:
    """A1111's shape: active, queued, completed, progress, eta, live_preview, id_live_preview, textinfo.
    ``id_task`` names a bestshot job id (GET /v1/jobs) or any task of the client's: the running job answers."""
    jobs = ctx.jobs
    cur = jobs.current
    job = jobs.find(req.id_task) if req.id_task else None
    job = job or cur
    active = job is not None and job is cur and cur is not None
    queued = job is not None and not job.started
    completed = job is not None and job.finished is not None
    prog, eta = None, None
    if active and job.started:
        prog = round(job.progress, 4)
        elapsed = time.time() - job.started
        eta = round(max(0.0, elapsed / prog - elapsed), 3) if prog else None
    live = A.preview_image(job.preview) if active and req.live_preview else None
    return {
        "active": active,
        "queued": queued,
        "completed": completed,
        "progress": prog,
        "eta": eta,
        "live_preview": f"data:image/png;base64,{live}" if live else None,
        "id_live_preview": (req.id_live_preview + 1) if live else req.id_live_preview,
        "textinfo": job.description if job is not None else "Waiting...",
    }


__all__ = ["InternalProgressRequest", "router"]
