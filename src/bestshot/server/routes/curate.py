"""The curation gallery's API under ``/v1/curate``: list the stage-1 images, serve them, keep / star /
delete / undo one (each with its preference row, ``server/curation.py``), and queue the upscale of the kept."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse
from pydantic import Field

from ...errors import StorageError
from .. import a1111 as A
from ..context import Ctx, ServerContext
from .native import NativeBody, serve_file

router = APIRouter(prefix="/v1/curate", tags=["bestshot"])


class KeepRequest(NativeBody):
    name: str = Field(..., max_length=500)
    keep: bool = True


class NameRequest(NativeBody):
    name: str = Field(..., max_length=500)


class StarRequest(NativeBody):
    name: str = Field(..., max_length=500)
    star: bool = True


def act(ctx: ServerContext, fn: Callable[[], dict[str, Any]], name: str) -> dict[str, Any]:
    """Run one curation action: 404 for an image not there, 507 naming the folder when it cannot be written."""
    try:
        return fn()
    except FileNotFoundError:
        raise HTTPException(404, f"no image {name!r} there") from None
    except OSError as e:  # full disk, read-only folder: nothing was changed (the action rolls back)
        from ...store import disk_error

        err = disk_error(e, f"the curation folder {str(ctx.curation.root)!r}")
        raise StorageError(f"{err} (nothing was changed)") from None


@router.get("")
def curate_list(ctx: Ctx) -> dict[str, Any]:
    """Stage-1 images (each with kept, starred, metadata), trash, final."""
    why = ctx.upscaler.unavailable()
    return {**ctx.curation.listing(), "upscale_available": why is None, "upscale_unavailable_reason": why}


@router.get("/images/{folder}/{name}", response_class=FileResponse)
def curate_image(folder: str, name: str, ctx: Ctx) -> FileResponse:
    if folder not in ("stage1", "trash", "final"):
        raise HTTPException(404, f"no folder {folder!r}")
    return serve_file(lambda: ctx.curation.image_path(name, folder), name)


@router.post("/keep")
def curate_keep(req: KeepRequest, ctx: Ctx) -> dict[str, Any]:
    """Mark a stage-1 image kept (keep=false: unmark); records a keep (or undo) preference row."""
    return act(ctx, lambda: ctx.curation.keep(req.name, req.keep), req.name)


@router.post("/star")
def curate_star(req: StarRequest, ctx: Ctx) -> dict[str, Any]:
    """Star a stage-1 image, a stronger keep (star=false: unstar); records a star preference row."""
    return act(ctx, lambda: ctx.curation.star(req.name, req.star), req.name)


@router.post("/delete")
def curate_delete(req: NameRequest, ctx: Ctx) -> dict[str, Any]:
    """Move a stage-1 image to trash (undoable); records a delete preference row."""
    return act(ctx, lambda: ctx.curation.delete(req.name), req.name)


@router.post("/undo")
def curate_undo(req: NameRequest, ctx: Ctx) -> dict[str, Any]:
    """Move a deleted image back to stage 1; records an undo row (its verdict is forgotten)."""
    return act(ctx, lambda: ctx.curation.undo(req.name), req.name)


@router.post(
    "/upscale",
    status_code=202,
    responses={
        503: {"description": "bestshot.curate (the upscale step) is not installed"},
        429: {"description": "the job queue is full; see Retry-After"},
    },
)
def curate_upscale(ctx: Ctx) -> dict[str, Any]:
    why = ctx.upscaler.unavailable()
    if why is not None:
        raise HTTPException(503, why)
    names = ctx.curation.kept()
    if not names:
        raise A.FieldError("kept", "no stage-1 image is marked keep — mark some first")
    upscaler, curation = ctx.upscaler, ctx.curation
    job = ctx.submit(
        "curate-upscale",
        lambda job: upscaler.run(job, curation, names),
        f"upscale {len(names)} kept image(s)",
        parts=len(names),
    )
    return {"job": job.id, "images": names}


__all__ = ["KeepRequest", "NameRequest", "StarRequest", "router"]
