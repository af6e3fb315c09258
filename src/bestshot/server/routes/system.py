"""AUTOMATIC1111's lists and settings under ``/sdapi/v1``: models, samplers, schedulers, upscalers, options
(GET and POST: the checkpoint and ``bestshot_best_of`` clients switch), command-line flags, memory, and the
checkpoint load / unload calls. Features bestshot does not have answer what A1111 answers without them
(empty lists, null), never 404."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body

from ... import __version__
from .. import a1111 as A
from .. import a1111_conditioning as AC
from ..context import Ctx, ServerContext
from ..safety import MAX_ITEMS, json_size, oversized_path, surrogate_path

router = APIRouter(prefix="/sdapi/v1", tags=["AUTOMATIC1111"])


@router.get("/sd-models", response_model=list[A.SDModelItem])
def sd_models(ctx: Ctx) -> list[dict[str, Any]]:
    return [A.model_item(m) for m in ctx.models]


@router.get("/samplers", response_model=list[A.SamplerItem])
def samplers() -> list[dict[str, Any]]:
    return A.samplers()


@router.get("/upscalers", response_model=list[A.UpscalerItem])
def upscalers() -> list[dict[str, Any]]:
    return A.upscalers()


@router.get("/scripts")
def scripts() -> dict[str, list[str]]:
    return {"txt2img": [], "img2img": []}


def current_options(ctx: ServerContext) -> dict[str, Any]:
    return {
        **A.option_defaults(ctx.out_dir),
        **ctx.choices.options,
        "sd_model_checkpoint": ctx.choices.model,
        "bestshot_best_of": ctx.choices.best_of,
        "bestshot_version": __version__,
    }


@router.get("/options")
def get_options(ctx: Ctx) -> dict[str, Any]:
    return current_options(ctx)


@router.post("/options")
def set_options(ctx: Ctx, opts: dict[str, Any] = Body(...)) -> dict[str, Any]:
    limits = ctx.limits
    big = oversized_path(opts)
    if big is not None:
        raise A.FieldError(big, f"holds more than {MAX_ITEMS} items — send only the options you set")
    bad = surrogate_path(opts)
    if bad is not None:
        raise A.FieldError(bad, "holds a lone UTF-16 surrogate — send valid UTF-8 text")
    ckpt = opts.get("sd_model_checkpoint")
    if ckpt is not None:  # by title, model_name or filename, as A1111 matches it
        found = A.find_checkpoint(ckpt, ctx.models)
        if found is None:
            raise A.FieldError("sd_model_checkpoint", f"unknown model {ckpt!r} — GET /sdapi/v1/sd-models lists them")
        ckpt = found
    best = opts.get("bestshot_best_of")
    if best is not None:
        A.check_best_of("bestshot_best_of", best, limits)
    known = A.option_defaults(ctx.out_dir)
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
    unknown = {k for k in {*ctx.choices.options, *updates} if k not in known}
    if len(unknown) > limits.max_options:
        raise A.FieldError(
            "options",
            f"{len(unknown)} options unknown to bestshot is more than this server keeps "
            f"({limits.max_options}) — send only the options you use",
        )
    if ckpt is not None:
        ctx.choices.model = ckpt
    if best is not None:
        ctx.choices.best_of = int(best)
    ctx.choices.options.update(updates)
    return {}


@router.get("/schedulers", response_model=list[A.SchedulerItem])
def schedulers_() -> list[dict[str, Any]]:
    return A.schedulers()


@router.get("/latent-upscale-modes", response_model=list[A.LatentUpscalerModeItem])
def latent_upscale_modes() -> list[dict[str, Any]]:
    return [{"name": n} for n in A.LATENT_UPSCALE_MODES]


@router.get("/realesrgan-models", response_model=list[A.RealesrganItem])
def realesrgan_models() -> list[dict[str, Any]]:
    return [{"name": u["name"], "path": None, "scale": int(u["scale"])} for u in A.upscalers() if u.get("model_name")]


# a route that gets a real handler (e.g. GET /loras) leaves this tuple for a function above
EMPTY_LISTS = (
    "/sd-modules",
    "/prompt-styles",
    "/face-restorers",
    "/hypernetworks",
    "/script-info",
    "/extensions",
)
for _path in EMPTY_LISTS:
    router.add_api_route(
        _path,
        A.empty_list,
        methods=["GET"],
        response_model=list[dict[str, Any]],
        summary=f"GET {_path}: an empty list (bestshot has none)",
    )
for _path in ("/refresh-checkpoints", "/refresh-vae", "/refresh-embeddings"):
    router.add_api_route(_path, A.nothing, methods=["POST"], summary=f"POST {_path}: nothing to refresh")


@router.get("/sd-vae", summary="VAEs in vae_dir (override_settings.sd_vae picks one)")
def sd_vae(ctx: Ctx) -> list[dict[str, str]]:
    return AC.vae_list(ctx.base_cfg())


# the LoRA and embeddings folders are read on every call (a refresh has nothing to reload)
@router.get("/loras", summary=A.LORAS_DOC)
def loras(ctx: Ctx) -> list[dict[str, Any]]:
    return A.lora_items(ctx.base_cfg())


@router.post("/refresh-loras", summary=A.REFRESH_DOC)
def refresh_loras(ctx: Ctx) -> Any:
    return A.refresh_loras(ctx.base_cfg())


@router.get("/embeddings")
def embeddings(ctx: Ctx) -> dict[str, Any]:
    """The embeddings folder's files (used when a prompt names one), loaded or skipped by vector width."""
    return A.embedding_items(ctx.base_cfg(), ctx.choices.model)


@router.get("/memory")
def memory() -> dict[str, Any]:
    return A.memory_info()


@router.get("/cmd-flags")
def cmd_flags(ctx: Ctx) -> dict[str, Any]:
    s = ctx.settings
    return {
        "api": True,
        "nowebui": True,
        "listen": s.host not in ("127.0.0.1", "localhost", "::1"),
        "server_name": s.host,
        "port": None,
        "api_auth": None,
        "ckpt": ctx.choices.model,
        "ckpt_dir": None,
        "vae_dir": None,
        **A.prompt_folders(ctx.base_cfg()),  # lora_dir, embeddings_dir
        "hypernetwork_dir": None,
        "data_dir": str(ctx.out_dir.parent),
        "outdir_samples": str(ctx.out_dir),
        "device_id": s.device,
        "precision": s.dtype,
        "medvram": s.memory == "model_offload",
        "lowvram": s.memory == "sequential_offload",
        "skip_torch_cuda_test": True,
        "bestshot_best_of": ctx.choices.best_of,
        "bestshot_max_cost": ctx.limits.max_cost,
    }


@router.post("/unload-checkpoint")
def unload_checkpoint(ctx: Ctx) -> dict[str, Any]:
    from ...models.loader import CACHE, free_memory

    if ctx.jobs.current is None:
        CACHE.pipelines.clear()
        free_memory()
    return {}


@router.post("/reload-checkpoint")
def reload_checkpoint() -> dict[str, Any]:
    return {}  # the model loads on the next request


__all__ = ["router"]
