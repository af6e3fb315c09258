"""AUTOMATIC1111's web-UI routes outside ``/sdapi/v1`` that API clients read: ``GET /internal/ping`` (the
liveness probe), ``GET /internal/sysinfo`` and ``GET /config`` (read for the version and to tell A1111
from Forge/SD.Next). Each answers the fields clients read; nothing else of the Gradio UI is served."""

from __future__ import annotations

import platform
import sys
from typing import Any

from fastapi import APIRouter

from ... import __version__

router = APIRouter(tags=["AUTOMATIC1111"])


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


@router.get("/internal/ping")
def internal_ping() -> dict[str, Any]:
    """A1111's liveness probe."""
    return {}


__all__ = ["router"]
