"""AUTOMATIC1111's routes outside /sdapi/v1 that API clients read: ``POST /internal/progress`` (the web
UI's progress poll, which some browser front-ends use instead of /sdapi/v1/progress), ``GET
/internal/sysinfo`` and ``GET /config`` (read for the version and to tell A1111 from Forge/SD.Next).
Each answers the fields clients read, from the job queue; nothing else of the Gradio UI is served."""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict

from .. import __version__


class InternalProgressRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id_task: str | None = None
    id_live_preview: int = -1
    live_preview: bool = True


def add_internal_routes(app: Any, jobs: Any, preview: Callable[[Any], str | None], dependencies: list[Any]) -> None:
    """Add the three routes to ``app`` (``preview``: latents → base64 PNG, as /sdapi/v1/progress uses)."""
    from fastapi import APIRouter

    router = APIRouter(tags=["AUTOMATIC1111"], dependencies=dependencies)

    @router.post("/internal/progress")
    def internal_progress(req: InternalProgressRequest) -> dict[str, Any]:
        """A1111's shape: active, queued, completed, progress, eta, live_preview, id_live_preview, textinfo.
        ``id_task`` names a bestshot job id (GET /v1/jobs) or any task of the client's: the running job answers."""
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
        live = preview(job.preview) if active and req.live_preview else None
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

    @router.get("/internal/sysinfo")
    def internal_sysinfo() -> dict[str, Any]:
        return {
            "Platform": platform.platform(),
            "Python": sys.version.split()[0],
            "Version": f"bestshot {__version__}",
            "Commit": None,
            "Script path": None,
            "Data path": None,
            "Extensions": [],
            "Inactive extensions": [],
            "Environment": {},
            "Config": {},
            "Startup": {},
            "Packages": [],
            "Exceptions": [],
        }

    @router.get("/config")
    def config() -> dict[str, Any]:
        """What clients read of Gradio's /config: the version (no UI components are served)."""
        return {
            "version": f"bestshot {__version__}",
            "mode": "api",
            "title": "bestshot",
            "components": [],
            "dependencies": [],
            "layout": {},
        }

    app.include_router(router)
