"""``ServerContext``: what every route of one app shares (settings, job queue, store, curation, the model and
options clients chose), built once by ``create_app`` and handed to the route handlers through FastAPI's
``Depends`` (``ctx: Ctx`` in a handler's signature; the context lives on ``app.state.ctx``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request

from ..config import EMBEDDED
from ..store import Store
from .a1111 import Limits
from .auth import Auth
from .curation import CurateUpscaler, Curation
from .queue import Job, JobCancelled, JobQueue, QueueFull, ShuttingDown
from .safety import check_writable
from .settings import ServerSettings


@dataclass
class Choices:
    """What clients change at run time with POST /sdapi/v1/options (one set per app, shared by all clients)."""

    model: str  # the checkpoint the A1111 routes and /v1/generate use
    best_of: int  # default candidates per image on the A1111 routes
    options: dict[str, Any] = field(default_factory=dict)  # other A1111 options, kept and echoed back


@dataclass
class ServerContext:
    """The state one app's routes share."""

    settings: ServerSettings
    auth: Auth
    out_dir: Path  # where images are written (checked writable)
    log_path: Path  # the JSONL log beside it
    store: Store
    jobs: JobQueue  # every model call goes through it, one job at a time
    upscaler: CurateUpscaler
    curation: Curation
    scorers: dict[str, Any]  # the scorers a request may name
    models: list[str]  # the server's model first, then the ones clients may switch to
    choices: Choices
    interrogators: dict[Any, Any] = field(default_factory=dict)  # loaded interrogators, by CLIP and cache

    @classmethod
    def build(cls, settings: ServerSettings) -> ServerContext:
        """Check the settings (auth, writable folder) and open the store, curation folder and job queue."""
        auth = Auth.from_options(settings.token, settings.api_auth)
        out_dir = check_writable(settings.out_dir)
        log_path = Path(settings.log_jsonl) if settings.log_jsonl else out_dir.parent / "images_log.jsonl"
        store = Store(root=out_dir, log_path=log_path)
        store.sync_index()  # runs a CLI logged but could not index (a full disk) show in /v1/runs
        upscaler = CurateUpscaler(settings.curate_config)
        return cls(
            settings=settings,
            auth=auth,
            out_dir=out_dir,
            log_path=log_path,
            store=store,
            jobs=JobQueue(settings.max_queue, job_timeout=settings.limits.job_timeout),
            upscaler=upscaler,
            curation=Curation(upscaler.outputs() or settings.curate_dir),
            scorers=offered_scorers(settings.scorer),
            models=list(dict.fromkeys([settings.model, *settings.extra_models])),
            choices=Choices(model=settings.model, best_of=settings.best_of),
        )

    @property
    def limits(self) -> Limits:
        return self.settings.limits

    def base_cfg(self) -> dict[str, Any]:
        """The ImgCfg fields the server decides (output paths, device, memory), whatever the request says."""
        s = self.settings
        return dict(
            out_dir=str(self.out_dir),
            log_jsonl=str(self.log_path),
            device=s.device,
            dtype=s.dtype,
            memory=s.memory,
            max_batch=s.max_batch,
            save_candidates=s.save_candidates,
            controlnet_dir=s.controlnet_dir,
            vae_dir=s.vae_dir,
            safety_checker=s.safety_checker,
        )

    def rel(self, path: str | None, record: dict[str, Any] | None = None) -> str | None:
        """The name GET /v1/images/{name} serves for a stored path (None when outside the output folder).

        Logged paths are relative to the log's folder (older logs: to the run's working directory), so
        runs of ``bestshot generate`` started anywhere are found (Store.resolve_path)."""
        found = self.store.resolve_path(path, record)
        if found is None:
            return None
        try:
            return found.resolve().relative_to(self.out_dir.resolve()).as_posix()
        except ValueError:
            return None

    def submit(self, kind: str, fn: Callable[[Job], Any], description: str, parts: int = 1) -> Job:
        """Queue a job; a full queue is 429 with Retry-After, a stopping server 503."""
        try:
            return self.jobs.submit(kind, fn, description, parts)
        except QueueFull as e:
            raise HTTPException(429, str(e), headers={"Retry-After": str(e.retry_after)}) from None
        except ShuttingDown as e:
            raise HTTPException(503, str(e)) from None

    async def run_job(self, kind: str, fn: Callable[[Job], Any], description: str, parts: int = 1) -> Any:
        """Queue a job and wait for its result; a cancelled job is 409 (503 when the server stopped it)."""
        job = self.submit(kind, fn, description, parts)
        try:
            return await job.wait()
        except JobCancelled as e:
            raise HTTPException(503 if e.why == "shutdown" else 409, str(e)) from None


def offered_scorers(default: Any) -> dict[str, Any]:
    """The scorers a request may name: the server's own (a spec or a Scorer object) and the embedded CLIP."""
    scorers: dict[str, Any] = {}
    if isinstance(default, str):
        scorers[default] = default
    elif default is not None:
        scorers[getattr(default, "name", "default")] = default
    from ..models.registry import EMBEDDED_DIR

    if (EMBEDDED_DIR / "clip").is_dir():
        scorers.setdefault(EMBEDDED, EMBEDDED)
    return scorers


def get_ctx(request: Request) -> ServerContext:
    """FastAPI dependency: the context of the app serving this request."""
    return request.app.state.ctx


Ctx = Annotated[ServerContext, Depends(get_ctx)]  # a handler's parameter ``ctx: Ctx`` gets the app's context

__all__ = ["Choices", "Ctx", "ServerContext", "get_ctx", "offered_scorers"]
