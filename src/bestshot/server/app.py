"""``create_app(settings)``: the FastAPI app behind ``bestshot serve``.

Three faces on one app:

* ``/sdapi/v1/*`` — AUTOMATIC1111's routes and shapes, so A1111 clients (webuiapi, plugins, chat front
  ends) get best-of-N generation unchanged;
* ``/v1/*`` — bestshot's own API: generate, runs, images, jobs, curation;
* ``/`` — the gallery (plain HTML + JS from ``gallery/``).

The routes live in ``server/routes/`` (one ``APIRouter`` per module); what they share is one
:class:`~bestshot.server.context.ServerContext` on ``app.state.ctx``. Every model call goes through its
:class:`~bestshot.server.queue.JobQueue` (one GPU job at a time).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from fastapi import Depends, FastAPI

from .. import __version__
from .bodies import BodyLimit, JSONBodies
from .context import ServerContext
from .cors import add_cors
from .error_handlers import add_error_handlers
from .routes import AUTHENTICATED, PUBLIC, gallery
from .routes.native import GenerateRequest
from .safety import HostCheck, allowed_hosts
from .settings import ServerSettings


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    jobs = app.state.ctx.jobs
    jobs.start()
    yield
    jobs.shutdown()  # queued jobs are answered 503, the running one stops at its next step
    await asyncio.to_thread(jobs.close, 8)


def create_app(settings: ServerSettings | None = None, **overrides: Any) -> FastAPI:
    """Build the app. ``create_app(model=..., scorer=..., out_dir=...)`` is shorthand for the settings."""
    settings = settings or ServerSettings(**overrides)
    ctx = ServerContext.build(settings)
    app = FastAPI(
        title="bestshot",
        version=__version__,
        lifespan=lifespan,
        description="Best-of-N text-to-image with an AUTOMATIC1111-compatible API (/sdapi/v1), "
        "bestshot's own API (/v1) and a curation gallery (/).",
    )
    app.state.ctx = ctx  # and, for callers that read them (the CLI, the Ray replica, tests), its main parts:
    app.state.settings, app.state.store = settings, ctx.store
    app.state.jobs, app.state.curation = ctx.jobs, ctx.curation
    max_mb = settings.limits.max_body_mb
    app.add_middleware(HostCheck, allowed=allowed_hosts(settings.host, settings.allowed_hosts))
    app.add_middleware(JSONBodies)  # bodies without Content-Type (or text/plain) are JSON, as A1111 reads them
    app.add_middleware(BodyLimit, max_bytes=None if max_mb is None else int(max_mb * 2**20))
    add_cors(app, settings.cors_allow_origins, settings.cors_allow_origins_regex)  # outermost: errors carry it too
    add_error_handlers(app)  # error bodies in A1111's shape
    for router in AUTHENTICATED:
        app.include_router(router, dependencies=[Depends(ctx.auth.check)])
    for router in PUBLIC:
        app.include_router(router)
    app.mount("/gallery", gallery.static_files(), name="gallery")
    return app


__all__ = ["ServerSettings", "create_app", "GenerateRequest"]
