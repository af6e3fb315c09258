"""The curation gallery page: ``GET /`` (its HTML) and ``/gallery/*`` (its scripts and styles, from
``server/gallery/``). Public: the page carries no data, its scripts call the authenticated ``/v1/curate``."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

GALLERY_DIR = Path(__file__).parent.parent / "gallery"

router = APIRouter(include_in_schema=False)


@router.get("/")
def gallery() -> FileResponse:
    return FileResponse(GALLERY_DIR / "index.html")


def static_files() -> StaticFiles:
    """What ``create_app`` mounts at ``/gallery``."""
    return StaticFiles(directory=GALLERY_DIR)


__all__ = ["GALLERY_DIR", "router", "static_files"]
