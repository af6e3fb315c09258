"""sd-webui-controlnet's read routes under ``/controlnet``: its API version, the ControlNet (and IP-Adapter)
models in the server's ControlNet folder, and the preprocessors that need no downloaded weights."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from .. import a1111_conditioning as AC
from ..context import Ctx

router = APIRouter(prefix="/controlnet", tags=["sd-webui-controlnet"])


@router.get("/version", summary="sd-webui-controlnet's API version")
def version() -> dict[str, Any]:
    return AC.version()


@router.get("/model_list", summary="ControlNet folders in controlnet_dir")
def model_list(ctx: Ctx) -> dict[str, Any]:
    return AC.model_list(ctx.base_cfg())


@router.get("/module_list", summary="the weight-free preprocessors")
def module_list() -> dict[str, Any]:
    return AC.module_list()
