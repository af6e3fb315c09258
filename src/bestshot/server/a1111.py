"""AUTOMATIC1111's web API shapes, and their translation into bestshot calls.

Field names follow A1111's ``modules/api/models.py`` (and what the ``webuiapi`` client sends); fields
bestshot does not use (hires fix, styles, scripts, face restoration...) are accepted and ignored, as
A1111 ignores what it does not know. Values bestshot cannot honour are refused with 422 naming the
field. bestshot's extras ride in the same bodies: ``best_of`` (candidates per returned image),
``score_min`` (the quality gate in the scorer's units; ``clip_min`` is its old name) and ``scorer``.

Seeds follow A1111: image ``i`` of a request uses ``seed + i``. With ``best_of = k`` image ``i`` is the
best of seeds ``seed + i*k ... seed + i*k + k - 1`` (so ``best_of=1`` is exactly A1111).
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import random
import time
import types
import typing
from dataclasses import dataclass, field, replace
from typing import Any

from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, model_validator

from bestshot import jsonio

from .. import __version__
from ..config import ImgCfg
from ..errors import BestshotError
from ..models.settings import resolve_config
from ..schedulers import K_ALIASES, SAMPLERS, SCHEDULE_TYPES, scheduler_spec
from .safety import MAX_ITEMS, oversized_path, reject_surrogates, unknown_keys

MAX_SEED = 2**53 - 1  # what a JavaScript client can hold exactly


class FieldError(BestshotError):
    """A request value bestshot refuses; the server turns it into 422 naming ``field``."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class _A1111(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _valid_text(cls, data: Any) -> Any:
        # one error for an oversized body, not one per item or unknown key (those were built by the million)
        big = oversized_path(data)
        if big is not None:
            raise ValueError(f"{big} holds more than {MAX_ITEMS} items — send at most {MAX_ITEMS}")
        if cls.model_config.get("extra") == "forbid":
            extra = unknown_keys(data, cls)
            if extra:
                shown = ", ".join(repr(k[:50]) for k in extra[:5]) + (
                    f" and {len(extra) - 5} more" if len(extra) > 5 else ""
                )
                raise ValueError(f"unknown field(s) {shown} — this route takes only: {', '.join(cls.model_fields)}")
        return reject_surrogates(data)


def _int_field(annotation: Any) -> bool:
    """Whether a field holds a whole number (``int`` or ``Optional[int]``, not ``float | int``)."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    args = typing.get_args(annotation) if union else (annotation,)
    return int in args and float not in args


class _Lenient(_A1111):
    """What A1111's pydantic (v1) models accept, coerced as they coerce it: ``null`` for a field with a default
    means the default (``batch_size: null``, ``prompt: null``), and a finite number for a whole-number field is
    truncated (``hr_second_pass_steps: 12.5`` → 12, as a client sending ``steps / 2`` gets from A1111)."""

    @model_validator(mode="before")
    @classmethod
    def _a1111_coercion(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, f in cls.model_fields.items():
            if name not in out:
                continue
            v = out[name]
            if v is None and not f.is_required() and f.default is not None:
                del out[name]
            elif isinstance(v, float) and math.isfinite(v) and _int_field(f.annotation):
                out[name] = int(v)
        return out


class Txt2ImgRequest(_Lenient):
    prompt: str = ""
    negative_prompt: str = ""
    seed: int = Field(-1, ge=-1, le=MAX_SEED, description="-1 = random; image i uses seed + i")
    steps: int | None = Field(None, ge=1, le=1000, description="None = the model's default")
    cfg_scale: float | None = Field(None, ge=0, le=100)
    width: int | None = Field(None, ge=8, le=16384)
    height: int | None = Field(None, ge=8, le=16384)
    batch_size: int = Field(1, ge=1, le=256)
    n_iter: int = Field(1, ge=1, le=256)
    sampler_name: str | None = Field(None, max_length=100)
    sampler_index: str | None = Field(None, max_length=100, description="deprecated alias of sampler_name")
    scheduler: str | None = Field(
        None,
        max_length=100,
        description="A1111 schedule type; 'Karras' picks the "
        "Karras variant of the sampler where bestshot has one, others are ignored",
    )
    override_settings: dict[str, Any] | None = None
    enable_hr: bool = Field(False, description="hires fix: upscale each image, then img2img it at denoising_strength")
    hr_scale: float = Field(2.0, ge=1, le=8)
    hr_upscaler: str | None = Field(None, max_length=200, description="A1111 upscaler name; Latent modes use Lanczos")
    hr_second_pass_steps: int = Field(0, ge=0, le=1000, description="0: the first pass's steps")
    hr_resize_x: int = Field(0, ge=0, le=16384)
    hr_resize_y: int = Field(0, ge=0, le=16384)
    denoising_strength: float | None = Field(None, ge=0, le=1, description="hires fix strength (default 0.7)")
    send_images: bool = True
    save_images: bool = Field(
        False,
        description="true: the images are kept on the server (served by /v1/images); "
        "false, A1111's default: they are only sent",
    )
    # A1111 features a later change implements; until then info["bestshot"]["ignored"] names what was not honoured
    subseed: int = Field(-1, ge=-1, le=MAX_SEED, description="variation seed (-1 = random); image i uses subseed + i")
    subseed_strength: float = Field(0.0, ge=0, le=1, description="how far toward the variation seed's noise (txt2img)")
    seed_resize_from_w: int = Field(-1, description="ignored for now")
    seed_resize_from_h: int = Field(-1, description="ignored for now")
    script_name: str | None = Field(None, max_length=500, description="ignored for now (A1111 scripts)")
    script_args: list[Any] = Field(default_factory=list, description="ignored for now (A1111 scripts)")
    alwayson_scripts: dict[str, Any] = Field(
        default_factory=dict, description="controlnet (sd-webui-controlnet units) on txt2img; others ignored for now"
    )
    styles: list[str] | None = Field(None, description="ignored (bestshot has no prompt styles)")
    restore_faces: bool | None = Field(None, description="ignored (bestshot has no face restoration)")
    tiling: bool | None = Field(None, description="ignored (no seamless tiling)")
    refiner_checkpoint: str | None = Field(None, max_length=500, description="ignored for now")
    # bestshot extras
    best_of: int = Field(
        1,
        ge=1,
        le=256,
        description="candidates per returned image; the best is returned (default: "
        "override_settings.bestshot_best_of, POST /options bestshot_best_of, serve --best-of)",
    )
    score_min: float | None = Field(
        None,
        description="quality gate in the scorer's units (a cosine for a CLIP, "
        "the weighted sum for an ensemble); images below it are marked in "
        "info.bestshot.gate",
    )
    clip_min: float | None = Field(None, description="old name of score_min (same setting)")
    scorer: str | None = Field(None, max_length=500, description="one of the server's scorers")
    bestshot_regions: str | dict[str, Any] | None = Field(
        None,
        description="region-steered sampling on txt2img: 'auto', 'off' or a layout object (bestshot's --regions); "
        "img2img lists it in info.bestshot.ignored",
    )
    bestshot_search: bool = Field(
        False,
        description="txt2img: spend each image's best_of candidates as a search (twice as many noises start, the "
        "best early previews finish with branches around them; bestshot's --search)",
    )
    bestshot_repair: bool = Field(
        False,
        description="txt2img with best_of >= 2: after ranking, keep the objects the scorer reads as right in the "
        "best candidate and repaint the rest (bestshot's --repair: 2 rounds of 4 repaints at most; needs a "
        "'+regions' scorer)",
    )


class Img2ImgRequest(Txt2ImgRequest):
    init_images: list[str] = Field(
        ..., min_length=1, max_length=16, description="base64 images (data: URLs accepted; the first is used)"
    )
    denoising_strength: float = Field(0.75, ge=0, le=1)
    include_init_images: bool = False
    mask: str | None = Field(None, description="base64 mask: white is repainted (inpainting)")
    mask_blur: int = Field(4, ge=0, le=64, description="Gaussian blur radius of the mask's edge, in pixels")
    inpainting_fill: int = Field(
        1,
        ge=0,
        le=3,
        description="masked content: 0 fill, 1 original, 2 latent noise, "
        "3 latent nothing (done in pixels before encoding)",
    )
    inpaint_full_res: bool = Field(True, description="inpaint only the masked area, at full resolution")
    inpaint_full_res_padding: int = Field(32, ge=0, le=256)
    inpainting_mask_invert: int = Field(0, ge=0, le=1, description="1: repaint what is black in the mask")


def ignored_fields(req: Txt2ImgRequest) -> dict[str, str]:
    """A1111 fields the request set that bestshot does not honour yet, each with what happened instead."""
    out: dict[str, str] = {}
    drawn = not isinstance(req, Img2ImgRequest)  # txt2img honours variation seeds and ControlNet units
    if req.subseed_strength > 0 and not drawn:
        out["subseed_strength"] = f"{req.subseed_strength:g}: variation seeds work on txt2img only; plain seeds used"
    if req.seed_resize_from_w > 0 or req.seed_resize_from_h > 0:
        out["seed_resize_from"] = "not implemented yet; the noise is drawn at the image's size"
    if req.script_name:
        out["script_name"] = f"{req.script_name!r}: A1111 scripts are not implemented yet; not run"
    scripts = [str(k) for k in req.alwayson_scripts if not (drawn and str(k).lower() == "controlnet")]
    if scripts:
        out["alwayson_scripts"] = (
            ", ".join(sorted(scripts))[:300] + ": A1111 extensions are not implemented yet; not run"
        )
    if req.styles:
        out["styles"] = "bestshot has no prompt styles; the prompt is used as sent"
    if req.restore_faces:
        out["restore_faces"] = "bestshot has no face restoration"
    if req.tiling:
        out["tiling"] = "seamless tiling is not implemented"
    if req.refiner_checkpoint:
        out["refiner_checkpoint"] = "a refiner pass is not implemented yet; not run"
    if not drawn and req.bestshot_regions not in (None, "off"):
        out["bestshot_regions"] = "regions steer txt2img only; img2img drew without them"
    return out


def check_regions(name: str, value: Any, model: str) -> None:
    """A request's regions setting: 'auto', 'off' or an inline layout object (a server-side file path is not
    read), on a model whose UNet it can steer; else a 422 naming ``name``."""
    from ..layout import check_regions_setting
    from ..models.registry import resolve_model
    from ..prompts.regions import FAMILIES

    if isinstance(value, str) and value not in ("auto", "off"):
        raise FieldError(
            name, f"{value[:80]!r}: give 'auto', 'off' or a layout object {{'objects': [...]}} (no server file is read)"
        )
    try:
        check_regions_setting(value)
    except BestshotError as e:
        raise FieldError(name, str(e)) from None
    family = resolve_model(model).family.name
    if value != "off" and family not in FAMILIES:
        raise FieldError(name, f"region-steered sampling needs an SD 1.x / SDXL / embedded UNet, not {family}")


@dataclass
class Inpaint:
    """An img2img request's mask, prepared: what run_img2img repaints and how."""

    mask: Image.Image  # L, at the init image's size, blurred; 255 = repaint
    fill: int = 1
    only_masked: bool = True
    padding: int = 32
    blur: int = 4


class TextToImageResponse(BaseModel):
    images: list[str] | None = Field(None, description="base64 PNGs with their `parameters` chunk")
    parameters: dict[str, Any]
    info: str = Field(..., description="JSON text: A1111's infotext fields plus `bestshot`")


class ImageToImageResponse(TextToImageResponse):
    pass


class ExtrasSingleImageRequest(_A1111):
    image: str = Field(..., description="base64 image")
    resize_mode: int = Field(0, ge=0, le=1, description="0: scale by upscaling_resize, 1: to upscaling_resize_w x h")
    upscaling_resize: float = Field(2, gt=0, le=8)
    upscaling_resize_w: int = Field(512, ge=1, le=16384)
    upscaling_resize_h: int = Field(512, ge=1, le=16384)
    upscaling_crop: bool = True
    upscaler_1: str | None = Field("None", max_length=200)


class ImageItem(_A1111):
    data: str = Field(..., description="base64 image")
    name: str = Field("", max_length=500)


class ExtrasBatchImagesRequest(ExtrasSingleImageRequest):
    image: str = ""  # not used: imageList
    imageList: list[ImageItem] = Field(
        ..., min_length=1, max_length=256, description="at most the server's images per request (16 by default)"
    )


class ExtrasBatchImagesResponse(BaseModel):
    html_info: str
    images: list[str]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float | None = None
    need_inner_model: bool | None = None


class LatentUpscalerModeItem(BaseModel):
    name: str


class RealesrganItem(BaseModel):
    name: str
    path: str | None = None
    scale: int | None = None


LATENT_UPSCALE_MODES = (
    "Latent",
    "Latent (antialiased)",
    "Latent (bicubic)",
    "Latent (bicubic antialiased)",
    "Latent (nearest)",
    "Latent (nearest-exact)",
)


def empty_list() -> list[Any]:
    return []


def nothing() -> None:
    return None


def memory_info() -> dict[str, Any]:
    """A1111's /memory: RAM of this host, and CUDA memory (or the reason there is none)."""
    import psutil

    vm = psutil.virtual_memory()
    proc = psutil.Process()
    ram = {"free": vm.available, "used": proc.memory_info().rss, "total": vm.total}
    try:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("CUDA is not available")
        free, total = torch.cuda.mem_get_info()
        stats = torch.cuda.memory_stats()
        cuda: dict[str, Any] = {
            "system": {"free": free, "used": total - free, "total": total},
            "active": {
                "current": stats.get("active_bytes.all.current", 0),
                "peak": stats.get("active_bytes.all.peak", 0),
            },
            "allocated": {
                "current": stats.get("allocated_bytes.all.current", 0),
                "peak": stats.get("allocated_bytes.all.peak", 0),
            },
            "reserved": {
                "current": stats.get("reserved_bytes.all.current", 0),
                "peak": stats.get("reserved_bytes.all.peak", 0),
            },
            "inactive": {
                "current": stats.get("inactive_split_bytes.all.current", 0),
                "peak": stats.get("inactive_split_bytes.all.peak", 0),
            },
            "events": {"retries": stats.get("num_alloc_retries", 0), "oom": stats.get("num_ooms", 0)},
        }
    except Exception as e:  # noqa: BLE001 - A1111 reports the error in the body
        cuda = {"error": str(e)}
    return {"ram": ram, "cuda": cuda}


class ExtrasSingleImageResponse(BaseModel):
    html_info: str
    image: str


class PNGInfoRequest(_A1111):
    image: str


class PNGInfoResponse(BaseModel):
    info: str
    items: dict[str, Any]
    parameters: dict[str, Any]


class InterrogateRequest(_A1111):
    image: str
    model: str = "clip"


class InterrogateResponse(BaseModel):
    caption: str


class ProgressResponse(BaseModel):
    progress: float
    eta_relative: float
    state: dict[str, Any]
    current_image: str | None = None
    textinfo: str | None = None


class SDModelItem(BaseModel):
    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, str]


class UpscalerItem(BaseModel):
    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


# ---------------------------------------------------------------------------------- samplers, upscalers


def samplers() -> list[dict[str, Any]]:
    """A1111 sampler names bestshot can run, with bestshot's scheduler key as alias."""
    out = []
    for spec in SAMPLERS.values():
        if spec.flow:
            continue
        opts = {"scheduler": "", "note": spec.note} if spec.note else {}
        k_names = [k for k, (key, sched) in K_ALIASES.items() if key == spec.key and sched is None]
        out.append({"name": spec.label, "aliases": [*k_names, spec.key], "options": opts})
    return out


def schedulers() -> list[dict[str, Any]]:
    """A1111's GET /sdapi/v1/schedulers: schedule types (name, label, aliases, default_rho, need_inner_model)."""
    return [
        {"name": key.replace(" ", "_"), "label": label, "aliases": None, "default_rho": -1, "need_inner_model": False}
        for key, (label, _, _) in SCHEDULE_TYPES.items()
    ]


# A1111 upscaler names → bestshot upscale backend ("None" in A1111 still resizes, with Lanczos)
UPSCALERS = {
    "none": "lanczos",
    "lanczos": "lanczos",
    "nearest": "lanczos",
    "r-esrgan 4x+": "auto",
    "r-esrgan 4x+ anime6b": "auto",
    "esrgan_4x": "auto",
    "realesrgan": "auto",
    "realesrgan_x4plus": "auto",
}
UPSCALER_MODELS = {"r-esrgan 4x+ anime6b": "realesrgan-x4plus-anime"}


def upscalers() -> list[dict[str, Any]]:
    return [
        {"name": "None", "scale": 1},
        {"name": "Lanczos", "scale": 4},
        {"name": "R-ESRGAN 4x+", "model_name": "realesrgan-x4plus", "scale": 4},
        {"name": "R-ESRGAN 4x+ Anime6B", "model_name": "realesrgan-x4plus-anime", "scale": 4},
    ]


def upscaler_backend(name: str | None) -> tuple[str, str]:
    """(backend, ncnn model) for an A1111 upscaler name, or a 422-worthy error."""
    key = (name or "None").strip().lower()
    if key not in UPSCALERS:
        known = ", ".join(u["name"] for u in upscalers())
        raise FieldError("upscaler_1", f"unknown upscaler {name!r} — choose one of: {known}")
    return UPSCALERS[key], UPSCALER_MODELS.get(key, "realesrgan-x4plus")


# ---------------------------------------------------------------------------------- png-info


_A1111_PNGINFO_DEFAULTS: dict[str, Any] = {
    "Clip skip": "1",
    "Hires resize-1": 0,
    "Hires resize-2": 0,
    "Hires sampler": "Use same sampler",
    "Hires schedule type": "Use same scheduler",
    "Hires checkpoint": "Use same checkpoint",
    "Hires prompt": "",
    "Hires negative prompt": "",
    "Mask mode": "Inpaint masked",
    "Masked content": "original",
    "Inpaint area": "Whole picture",
    "Masked area padding": 32,
    "RNG": "GPU",
    "Schedule type": "Automatic",
    "Schedule max sigma": 0,
    "Schedule min sigma": 0,
    "Schedule rho": 0,
    "VAE Encoder": "Full",
    "VAE Decoder": "Full",
    "FP8 weight": "Disable",
    "Cache FP16 weight for LoRA": False,
    "Emphasis": "Original",
    "Refiner switch by sampling steps": False,
}


def a1111_parameters(infotext: str) -> dict[str, Any]:
    """``parameters`` of A1111's /png-info: "Prompt", "Negative prompt" and the infotext's values as the
    strings A1111's parse_generation_parameters returns, plus its defaults for keys the text lacks."""
    from ..store import parse_parameters

    if not infotext:
        return {}
    parsed = parse_parameters(infotext)
    out: dict[str, Any] = {"Prompt": parsed.pop("prompt", ""), "Negative prompt": parsed.pop("negative_prompt", "")}
    for k, v in parsed.items():
        out[k] = (
            v
            if isinstance(v, str)
            else (str(int(v)) if isinstance(v, float) and v.is_integer() and k != "CFG scale" else str(v))
        )
    sampler = out.get("Sampler", "")
    if "Schedule type" not in out and sampler:
        for key, (label, _, _) in SCHEDULE_TYPES.items():
            if key != "automatic" and sampler.lower().endswith(" " + key):
                out["Sampler"], out["Schedule type"] = sampler[: -len(key) - 1], label
                break
    for k, v in _A1111_PNGINFO_DEFAULTS.items():
        out.setdefault(k, v)
    return out


# ---------------------------------------------------------------------------------- images


def decode_image(data: str, field: str = "image", max_pixels: int = 4096 * 4096) -> Image.Image:
    """A base64 image (raw or ``data:image/...;base64,``) → RGB(A) PIL image, or a 422 naming ``field``."""
    if not isinstance(data, str) or not data.strip():
        raise FieldError(field, "empty — send a base64-encoded PNG or JPEG")
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        raw = base64.b64decode(data.strip(), validate=False)
        with Image.open(io.BytesIO(raw)) as probe:
            w, h = probe.size
            if w * h > max_pixels or w < 1 or h < 1:
                raise FieldError(
                    field, f"image of {w}x{h} pixels is larger than this server accepts ({max_pixels} pixels)"
                )
            img = probe.copy() if probe.format == "PNG" else probe.convert("RGB")
            if img.mode not in ("RGB", "RGBA", "L", "LA"):  # palette, 16-bit, CMYK...: what the models take
                img = img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB")
            img.info.update(probe.info)
            img.load()
    except FieldError:
        raise
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise FieldError(
            field, f"not a readable base64 image ({type(e).__name__}) — send a base64-encoded PNG or JPEG"
        ) from None
    return img


def encode_file(path: str) -> str:
    """The saved PNG as base64, exactly as on disk (so its `parameters` chunk comes along)."""
    with open(path, "rb") as f:
        return base64.b64encode(f.read()).decode("ascii")


# A1111's "Approx cheap" latent → RGB factors for SD 1.x/2.x latents (4 channels)
_LATENT_RGB = ((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473))


def preview_image(latents: Any) -> str | None:
    """A cheap base64 PNG of a job's latest latents (progress.current_image), or None.

    Three channels are taken as RGB in [-1, 1] (the embedded pixel-space model); four get A1111's
    linear approximation; other latent spaces get no preview.
    """
    if latents is None:
        return None
    try:
        import numpy as np

        x = latents[0] if latents.dim() == 4 else latents
        c = x.shape[0]
        if c == 3:
            rgb = x
        elif c == 4:
            import torch

            rgb = torch.einsum("chw,cr->rhw", x, torch.tensor(_LATENT_RGB, dtype=x.dtype))
        else:
            return None
        arr = ((rgb.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        return encode_image(Image.fromarray(np.ascontiguousarray(arr), "RGB"))
    except (AttributeError, RuntimeError, TypeError, ValueError, IndexError):
        return None


def encode_image(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


# ---------------------------------------------------------------------------------- txt2img / img2img plans


@dataclass
class Limits:
    """Server-side caps, checked per request (422 naming the field) so one request cannot hog the GPU."""

    max_steps: int = 150
    max_side: int = 2048
    max_images: int = 16  # batch_size * n_iter
    max_candidates: int = 64  # batch_size * n_iter * best_of
    # cost budget in native-image steps: (width*height / native side²) * steps * candidates. 4000 is e.g.
    # 8 images x best of 8 at 512² and 60 steps on SD 1.5, or 16 candidates x 50 steps at 1024² on SDXL
    max_cost: float = 4000.0
    max_prompt_chars: int = 10000  # prompt and negative prompt, on every route
    job_timeout: float | None = 900.0  # seconds a job may run before it is stopped at its next step
    max_options: int = 64  # unknown keys POST /sdapi/v1/options may add
    max_option_bytes: int = 4096  # JSON size of one such value
    # request body cap, checked before the body is read (bodies.BodyLimit); a 2048² PNG is at most ~22 MB in
    # base64, so this fits a few with room to spare. None: no cap
    max_body_mb: float | None = 100.0


def check_prompt(field: str, text: str | None, limits: Limits) -> None:
    """422 for a prompt longer than the server's cap (each route checks every prompt it takes)."""
    if text is not None and len(text) > limits.max_prompt_chars:
        raise FieldError(
            field,
            f"{len(text)} characters is more than this server's {limits.max_prompt_chars} "
            "(bestshot serve --max-prompt-chars)",
        )


def check_cost(cfg: ImgCfg, candidates: int, limits: Limits) -> float:
    """The request's cost against the model family's sizes and the server's budget (422 naming the limit)."""
    from ..models.registry import resolve_model, size_limits

    ref = resolve_model(cfg.model)
    native, top = size_limits(ref)
    for name in ("width", "height"):
        v = getattr(cfg, name)
        if v > top:
            raise FieldError(
                name,
                f"{v} px is more than the {ref.family.name} model family's {top} px (it samples at "
                f"{native} px) — ask for at most {top}",
            )
    cost = cfg.width * cfg.height / native**2 * cfg.steps_base * candidates
    if cost > limits.max_cost:
        raise FieldError(
            "request",
            f"cost {cost:.0f} (width x height / {native}² native x {cfg.steps_base} steps x "
            f"{candidates} candidates) is more than this server's budget of {limits.max_cost:g} "
            "(bestshot serve --max-cost) — ask for fewer steps, candidates or pixels",
        )
    return cost


A1111_DEFAULT_SIZE = 512  # what A1111 clients send when the user set nothing


def fit_size(width: int | None, height: int | None, model: str) -> tuple[int | None, int | None, str | None]:
    """A requested size the model cannot draw (a side above its family's largest, e.g. 512² or 1024² on the
    embedded 32 px model) mapped onto its native grid: the shorter side at the native size, the longer one
    keeping the aspect ratio (a multiple of 8, at most the largest side). Returns (width, height, the note
    for info, or None when the size is kept). Sizes the model can draw are kept: the cost budget guards them."""
    from ..models.registry import resolve_model, size_limits

    if width is None and height is None:
        return width, height, None
    try:
        ref = resolve_model(model)
        native, top = size_limits(ref)
    except BestshotError:
        return width, height, None
    w, h = width or native, height or native
    if max(w, h) <= top:
        return width, height, None
    short, long_ = min(w, h), max(w, h)
    side = min(top, max(native, round(native * long_ / short / 8) * 8))
    fw, fh = (side, native) if w >= h else (native, side)
    default = " (A1111's default)" if w == h == A1111_DEFAULT_SIZE else ""
    kept = "the aspect ratio kept" if fw * h == fh * w else "the aspect ratio as near as multiples of 8 allow"
    return (
        fw,
        fh,
        (
            f"{w}x{h}{default} is more than the {ref.family.name} model draws ({top} px a side at most): "
            f"mapped to {fw}x{fh} from its native size {native}x{native}, {kept}"
        ),
    )


def model_item(model: str) -> dict[str, Any]:
    """A served model as GET /sdapi/v1/sd-models lists it."""
    from pathlib import Path

    return {
        "title": model,
        "model_name": Path(model).name or model,
        "hash": None,
        "sha256": None,
        "filename": model,
        "config": None,
    }


def find_checkpoint(name: Any, models: list[str]) -> str | None:
    """The served model an ``sd_model_checkpoint`` names, as A1111 matches it: by title, model_name or
    filename (as /sd-models lists them), also with A1111's " [hash]" suffix; None when none matches."""
    if not isinstance(name, str):
        return None
    wanted = name.strip()
    for cand in (wanted, wanted.rsplit(" [", 1)[0] if wanted.endswith("]") else wanted):
        for m in models:
            item = model_item(m)
            if cand in (item["title"], item["model_name"], item["filename"]):
                return m
    return None


def check_best_of(field: str, value: Any, limits: Limits) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limits.max_candidates:
        raise FieldError(field, f"{value!r} must be a whole number from 1 to {limits.max_candidates}")
    return value


def option_defaults(out_dir: Any = "") -> dict[str, Any]:
    """The options A1111 clients read (GET /sdapi/v1/options), with what bestshot does for each."""
    return {
        "sd_model_checkpoint": None,
        "sd_checkpoint_hash": None,
        "sd_vae": "Automatic",
        "sd_vae_as_default": True,
        "CLIP_stop_at_last_layers": 1,
        "eta_noise_seed_delta": 0,
        "samples_save": True,
        "samples_format": "png",
        "grid_save": False,
        "grid_format": "png",
        "jpeg_quality": 80,
        "save_images_add_number": True,
        "outdir_samples": str(out_dir),
        "outdir_txt2img_samples": str(out_dir),
        "outdir_img2img_samples": str(out_dir),
        "outdir_extras_samples": str(out_dir),
        "live_previews_enable": True,
        "show_progress_every_n_steps": 4,
        "live_preview_content": "Prompt",
        "show_progressbar": True,
        "img2img_fix_steps": False,
        "enable_pnginfo": True,
        "sd_checkpoints_limit": 1,
        "sd_lora": "None",
        "forge_additional_modules": [],
        "upscaler_for_img2img": None,
        "face_restoration_model": None,
        "sampler_name": None,
        "scheduler": None,
        "bestshot_best_of": 1,
        "bestshot_score_min": None,
        "bestshot_clip_min": None,
        "img2img_color_correction": False,
        "inpainting_mask_weight": 1.0,
        "img2img_background_color": "#ffffff",
        "samples_filename_pattern": "",
        "save_to_dirs": False,
        "sd_vae_checkpoint_cache": 0,
        "sd_checkpoint_cache": 0,
    }


@dataclass
class Plan:
    """What one txt2img/img2img request becomes: ``calls`` generate() configurations, in order."""

    cfg: ImgCfg
    seed: int
    n_images: int
    best_of: int
    calls: list[ImgCfg]
    scorer: Any
    notes: dict[str, Any] = field(default_factory=dict)  # what bestshot changed, reported in info["bestshot"]
    cost: float = 0.0
    subseed: int = -1  # the variation seed of image 0 (-1: none)


def sampler_of(req: Txt2ImgRequest) -> str | None:
    """bestshot's scheduler key ("dpmpp_2m:karras") for the request's sampler name and schedule type."""
    name = req.sampler_name or req.sampler_index
    if not name:
        if req.scheduler and req.scheduler.strip().lower() not in ("", "automatic"):
            raise FieldError("scheduler", f"schedule type {req.scheduler!r} needs a sampler_name to apply to")
        return None
    try:
        return scheduler_spec(name, req.scheduler).key
    except BestshotError as e:
        if "schedule type" in str(e):
            raise FieldError("scheduler", f"{e} (GET /sdapi/v1/schedulers lists them)") from None
        field_ = "sampler_name" if req.sampler_name else "sampler_index"
        if "not available" in str(e):
            raise FieldError(field_, str(e)) from None
        raise FieldError(
            field_, f"unknown sampler {name!r} — GET /sdapi/v1/samplers lists the ones available"
        ) from None


def plan_request(
    req: Txt2ImgRequest,
    *,
    model: str,
    scorers: dict[str, Any],
    default_scorer: Any,
    limits: Limits,
    base: dict[str, Any],
    default_best_of: int = 1,
) -> Plan:
    """Validate ``req`` against the server's limits and build the generate() configs it needs.

    ``base`` holds the server-controlled ImgCfg fields (out_dir, device, dtype, ...). A1111 adds no
    style suffix, so neither does this route: the PNG's prompt is the client's prompt.
    """
    n = req.batch_size * req.n_iter
    overrides_ = req.override_settings or {}
    if "best_of" in req.model_fields_set:
        pass  # the request's own value wins
    elif "bestshot_best_of" in overrides_:
        req.best_of = check_best_of("override_settings.bestshot_best_of", overrides_["bestshot_best_of"], limits)
    else:
        req.best_of = default_best_of  # `serve --best-of` or POST /options bestshot_best_of
    if n > limits.max_images:
        raise FieldError(
            "batch_size", f"batch_size * n_iter = {n} is more than this server's {limits.max_images} images per request"
        )
    if n * req.best_of > limits.max_candidates:
        raise FieldError(
            "best_of",
            f"batch_size * n_iter * best_of = {n * req.best_of} candidates is more than this "
            f"server's {limits.max_candidates} per request",
        )
    if req.steps is not None and req.steps > limits.max_steps:
        raise FieldError("steps", f"{req.steps} is more than this server's {limits.max_steps}")
    width, height, size_note = fit_size(req.width, req.height, model)
    for name, v in (("width", width), ("height", height)):
        if v is not None and (v % 8 or v > limits.max_side):
            raise FieldError(name, f"{v} must be a multiple of 8 and at most {limits.max_side}")
    if req.scorer is not None and req.scorer not in scorers:
        raise FieldError(
            "scorer", f"unknown scorer {req.scorer!r} — this server offers: {', '.join(scorers) or 'none'}"
        )
    ckpt = (req.override_settings or {}).get("sd_model_checkpoint")
    if ckpt is not None and find_checkpoint(ckpt, [model]) is None:
        raise FieldError(
            "override_settings",
            "sd_model_checkpoint: this server serves one model at a time — "
            f"use {model!r} or POST /sdapi/v1/options to switch",
        )
    seed = req.seed if req.seed >= 0 else random.randrange(2**32)
    gate_min = requested_min(req)
    if seed + n * req.best_of > MAX_SEED:
        raise FieldError("seed", f"{seed} is too large for {n * req.best_of} consecutive seeds")
    check_prompt("prompt", req.prompt, limits)
    check_prompt("negative_prompt", req.negative_prompt, limits)
    notes: dict[str, Any] = {"size": size_note} if size_note else {}
    ignored = ignored_fields(req)
    if ignored:
        notes["ignored"] = ignored
    if not req.prompt.strip():
        notes["prompt"] = "empty: the images are drawn unconditioned (as A1111 does)" + (
            "; best_of ranks them against the empty text, which says nothing" if req.best_of > 1 else ""
        )
    overrides = dict(
        base,
        **clip_skip_of(req),  # A1111's CLIP_stop_at_last_layers
        steps_base=req.steps,
        guidance=req.cfg_scale,
        width=width,
        height=height,
        negative_prompt=req.negative_prompt,
        style_suffix="",
        scheduler=sampler_of(req),
        score_min=gate_min,
    )
    if req.bestshot_regions is not None and not isinstance(req, Img2ImgRequest):
        check_regions("bestshot_regions", req.bestshot_regions, model)
        overrides["regions"] = req.bestshot_regions
    if req.bestshot_search:
        if isinstance(req, Img2ImgRequest) or req.enable_hr:
            raise FieldError("bestshot_search", "works on plain txt2img only — drop it (or enable_hr)")
        overrides["search"] = True
    if req.bestshot_repair:
        if isinstance(req, Img2ImgRequest) or req.enable_hr:
            raise FieldError("bestshot_repair", "works on plain txt2img only — drop it (or enable_hr)")
        if req.best_of < 2:
            raise FieldError("bestshot_repair", "ranks repaints against the candidates — set best_of to 2 or more")
        overrides["repair"] = True
    from .a1111_conditioning import request_overrides  # ControlNet units, subseed, sd_vae

    extra, subseed = request_overrides(req, base, model, seed, n * req.best_of, notes, limits.max_side**2 * 4, MAX_SEED)
    overrides.update(extra)
    try:
        cfg = resolve_config(None, model=model, **overrides)
    except BestshotError as e:
        raise FieldError("bestshot_regions" if "--regions" in str(e) else "request", str(e)) from None
    if cfg.steps_base > limits.max_steps or max(cfg.width, cfg.height) > limits.max_side:
        cfg = replace(
            cfg,
            steps_base=min(cfg.steps_base, limits.max_steps),
            width=min(cfg.width, limits.max_side),
            height=min(cfg.height, limits.max_side),
        )
    if cfg.scheduler:
        spec = scheduler_spec(cfg.scheduler)
        if cfg.steps_base < spec.sampler.min_steps:
            raise FieldError(
                "steps",
                f"{spec.sampler.label} needs at least {spec.sampler.min_steps} steps (got "
                f"{cfg.steps_base}) — raise steps or pick another sampler",
            )
        notes.update({"sampler_notes": spec.notes()} if spec.notes() else {})
    check_loras(req.prompt, cfg)  # a missing or refused <lora:...> is a 422 before queueing
    k = req.best_of
    # what one image's run may draw: its candidates (a search: its whole pool finished, at most), then its repaints
    per_image = (cfg.search_pool or 2 * k if cfg.search else k) + cfg.repair_seeds
    cost = check_cost(cfg, n * per_image, limits)
    # the score_min gate is applied here, not in generate(): an A1111 route always returns its best images
    # and says in info which ones failed the gate (clients read images[0])
    if k == 1:  # plain A1111: one batched call per n_iter (what /skip skips), every image kept and saved
        calls = [
            replace(
                cfg,
                n_images=req.batch_size,
                seed_base=seed + j * req.batch_size,
                save_candidates=True,
                exact_best=False,
                gate=False,
            )
            for j in range(req.n_iter)
        ]
    else:
        calls = [replace(cfg, n_images=k, seed_base=seed + i * k, gate=False) for i in range(n)]
    if subseed >= 0:  # image i of the request: seed + i and subseed + i, as A1111 does
        calls = [replace(c, subseed=subseed + c.seed_base - seed) for c in calls]
    scorer = scorers[req.scorer] if req.scorer is not None else default_scorer
    if gate_min is not None:
        check_gate_range(gate_min, scorer, model)
    return Plan(
        cfg=cfg, seed=seed, n_images=n, best_of=k, calls=calls, scorer=scorer, notes=notes, cost=cost, subseed=subseed
    )


def clip_skip_of(req: Txt2ImgRequest) -> dict[str, Any]:
    """``{"clip_skip": n}`` from A1111's ``override_settings.CLIP_stop_at_last_layers`` (1 = the last layer)."""
    value = (req.override_settings or {}).get("CLIP_stop_at_last_layers")
    if value is None:
        return {}
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 12:
        raise FieldError(
            "override_settings",
            f"CLIP_stop_at_last_layers must be a whole number from 1 to 12 (got {value!r}) — 1 is the last layer",
        )
    return {"clip_skip": value}


def check_loras(prompt: str, cfg: ImgCfg, field_: str = "prompt") -> None:
    """The prompt's ``<lora:name:weight>`` tags: each names a LoRA this server has, for a model that takes them."""
    from ..prompts import extra_networks

    try:
        extra_networks.apply(prompt, cfg)
    except BestshotError as e:
        raise FieldError(field_, str(e)) from None


LORAS_DOC = (
    "The LoRA folder's files (name, alias, path, safetensors metadata); a prompt's <lora:name:weight> applies one "
    "for that request"
)
REFRESH_DOC = "null: the LoRA folder is read anew on every listing and request"


def lora_items(base: dict[str, Any]) -> list[dict[str, Any]]:
    """A1111's ``/sdapi/v1/loras``: the files of the LoRA folder of the server's settings ``base``."""
    from ..models import lora

    out = []
    for path in lora.files(lora.folder(ImgCfg(**base))):
        meta = lora.metadata(path)
        alias = meta.get("ss_output_name") or path.stem
        out.append({"name": path.stem, "alias": alias, "path": str(path), "metadata": meta})
    return out


def prompt_folders(base: dict[str, Any]) -> dict[str, str]:
    """``lora_dir`` and ``embeddings_dir`` of A1111's ``/sdapi/v1/cmd-flags``: the folders the server reads."""
    from ..models import embeddings, lora

    cfg = ImgCfg(**base)
    return {"lora_dir": str(lora.folder(cfg)), "embeddings_dir": str(embeddings.folder(cfg))}


def refresh_loras(base: dict[str, Any]) -> None:
    """A1111's ``POST /sdapi/v1/refresh-loras``: the folder is read anew on every listing; this checks it reads."""
    lora_items(base)


def embedding_items(base: dict[str, Any], model: str) -> dict[str, Any]:
    """A1111's ``/sdapi/v1/embeddings``: the embeddings folder's files, ``loaded`` where they fit the model's
    text encoders, else ``skipped`` (every one, for a model that takes none, like the embedded model)."""
    from ..models import embeddings
    from ..models.registry import resolve_model

    ref = resolve_model(model)
    folder = embeddings.folder(ImgCfg(**base))
    if ref.family.name == "embedded":
        found = embeddings.listing(folder, None)
        return {"loaded": {}, "skipped": {**found["loaded"], **found["skipped"]}}
    return embeddings.listing(folder, embeddings.expected_dims(ref.source if ref.local else None))


def chosen(result: dict[str, Any], plan: Plan) -> list[dict[str, Any]]:
    """The candidates of one generate() result that become returned images."""
    if plan.best_of == 1:
        return [c for c in result["candidates"] if c["path"]]
    return [c for c in result["candidates"] if c["seed"] == result["best_seed"] and c["path"]]


def hires_plan(req: Txt2ImgRequest, plan: Plan, limits: Limits) -> Plan | None:
    """The second pass of A1111's hires fix (one img2img per returned image), or None when off; checked
    against the family's sizes and the budget together with the first pass."""
    if not req.enable_hr:
        return None
    cfg = plan.cfg
    if req.hr_resize_x or req.hr_resize_y:
        w = req.hr_resize_x or round(cfg.width * req.hr_resize_y / cfg.height)
        h = req.hr_resize_y or round(cfg.height * req.hr_resize_x / cfg.width)
    else:
        w, h = round(cfg.width * req.hr_scale), round(cfg.height * req.hr_scale)
    w, h = max(8, w // 8 * 8), max(8, h // 8 * 8)
    if max(w, h) > limits.max_side:
        raise FieldError("hr_scale", f"the hires size {w}x{h} is larger than this server's {limits.max_side} a side")
    steps = req.hr_second_pass_steps or cfg.steps_base
    hr = replace(cfg, width=w, height=h, steps_base=steps, gate=False)
    cost = check_cost(hr, plan.n_images, limits)
    if cost + plan.cost > limits.max_cost:
        raise FieldError(
            "enable_hr",
            f"the hires pass makes the cost {cost + plan.cost:.0f}, more than this server's "
            f"budget of {limits.max_cost:g} (bestshot serve --max-cost)",
        )
    strength = 0.7 if req.denoising_strength is None else req.denoising_strength
    if int(steps * strength) < 1:
        raise FieldError("denoising_strength", f"{strength} x {steps} steps leaves no hires denoising step")
    return Plan(
        cfg=hr,
        seed=plan.seed,
        n_images=plan.n_images,
        best_of=1,
        calls=[],
        scorer=plan.scorer,
        notes={
            "hires": {
                "size": f"{w}x{h}",
                "steps": steps,
                "denoising_strength": strength,
                "upscaler": req.hr_upscaler or "Latent",
            }
        },
        cost=cost,
    )


def requested_min(req: Any) -> float | None:
    """The request's gate: ``score_min``, or its old name ``clip_min`` (both given: they must agree)."""
    new, old = getattr(req, "score_min", None), getattr(req, "clip_min", None)
    if new is not None and old is not None and new != old:
        raise FieldError(
            "clip_min",
            f"{old} disagrees with score_min {new} — they are one setting (clip_min is "
            "its old name): send only score_min",
        )
    return new if new is not None else old


def check_gate_range(value: float, scorer: Any, model: str) -> None:
    """Refuse (422) a gate outside the range of the scorer's units (a cosine range only for a cosine scorer)."""
    from ..models.registry import resolve_model
    from ..scoring import spec_range

    if scorer is not None and not isinstance(scorer, str):
        from ..scoring import resolve_gate

        try:
            resolve_gate(scorer, value)
        except BestshotError as e:
            raise FieldError("score_min", str(e)) from None
        return
    try:
        spec = scorer or resolve_model(model).family.default_scorer
    except BestshotError:
        return
    rng = spec_range(spec)
    if rng is not None and not rng[0] <= value <= rng[1]:
        raise FieldError(
            "score_min",
            f"{value:g} is outside the range [{rng[0]:g}, {rng[1]:g}] of scorer {spec!r} "
            "(a cosine) — give a value in that range",
        )


def gate_info(kept: list[dict[str, Any]], score_min: float | None, scorer: str | None = None) -> dict[str, Any]:
    if score_min is None:
        return {}
    failed = [c["seed"] for c in kept if c["score"] < score_min]
    out: dict[str, Any] = {
        "gate": {
            "score_min": score_min,
            "clip_min": score_min,
            "scorer": scorer,
            "failed_seeds": failed,
            "passed": not failed,
        }
    }
    if failed:
        out["gate"]["note"] = (
            f"{len(failed)} of {len(kept)} image(s) scored below score_min {score_min} and failed "
            "the gate; they are returned anyway (the best bestshot found)"
        )
    return out


def discard_unsaved(results: list[dict[str, Any]]) -> None:
    """Delete the temp files of runs stored without keeping their images (``saved: false``), once read."""
    import os

    for r in results:
        if r.get("saved") is not False:
            continue
        for c in r.get("candidates") or []:
            if c.get("path"):
                try:
                    os.unlink(c["path"])
                except OSError:
                    pass


def build_response(
    req: Txt2ImgRequest,
    plan: Plan,
    results: list[dict[str, Any]],
    rel: Any,
    model_title: str,
    sampler: str,
    extra_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A1111's response: base64 images, the request as ``parameters``, the infotext fields as ``info``.

    ``rel`` maps a stored path to the name GET /v1/images/{name} serves.
    """
    from ..store import read_png_info

    kept = [c for r in results for c in chosen(r, plan)]
    images = [encode_file(c["path"]) for c in kept] if req.send_images else []
    images += nsfw_placeholders(results, plan) if req.send_images else []  # safety check
    infotexts = [read_png_info(c["path"]).get("parameters") or "" for c in kept]
    seeds = [c["seed"] for c in kept]
    cfg = plan.cfg
    gate_min = requested_min(req)
    scorer_name = results[0].get("scorer") if results else None
    prompt = results[0]["sd_prompt"] if results else req.prompt
    info = {
        "prompt": prompt,
        "all_prompts": [prompt] * len(kept),
        "negative_prompt": req.negative_prompt,
        "all_negative_prompts": [req.negative_prompt] * len(kept),
        "seed": seeds[0] if seeds else plan.seed,
        "all_seeds": seeds,
        "subseed": plan.subseed,
        "all_subseeds": [plan.subseed + c["seed"] - plan.seed if plan.subseed >= 0 else -1 for c in kept],
        "subseed_strength": req.subseed_strength if plan.subseed >= 0 else 0,
        "width": cfg.width,
        "height": cfg.height,
        "sampler_name": sampler,
        "cfg_scale": cfg.guidance,
        "steps": cfg.steps_base,
        "batch_size": req.batch_size,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": model_title,
        "sd_model_hash": None,
        "sd_vae_name": cfg.vae,
        "sd_vae_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": getattr(req, "denoising_strength", None),
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "clip_skip": 1,
        "is_using_inpainting_conditioning": False,
        "version": f"bestshot {__version__}",
        "bestshot": {
            "best_of": plan.best_of,
            "score_min": gate_min,
            "clip_min": gate_min,
            "scorer": scorer_name,
            "requested_images": plan.n_images,
            "returned_images": len(kept),
            "images": [
                {
                    "seed": c["seed"],
                    "score": c["score"],
                    "clip": c["score"],
                    "clip_score": c.get("clip_score"),
                    "file": rel(c["path"]),
                }
                for c in kept
            ],
            "runs": [
                {
                    "run_id": r["run_id"],
                    "ok": r["ok"],
                    "reason": r.get("reason"),
                    "best_seed": r["best_seed"],
                    "best_score": r.get("best_score", r.get("best_clip")),
                    "best_clip": r.get("best_clip"),
                    "scorer": r.get("scorer"),
                    "candidates": [
                        {
                            "seed": c["seed"],
                            "score": c["score"],
                            "clip": c["score"],
                            "clip_score": c.get("clip_score"),
                            "file": rel(c["path"]) if c["path"] else None,
                        }
                        for c in r["candidates"]
                    ],
                    **({"search": r["search"]} if "search" in r else {}),  # what a bestshot_search run did
                    **({"repair": r["repair"]} if "repair" in r else {}),  # what a bestshot_repair run repainted
                }
                for r in results
            ],
            "cost": round(plan.cost, 1),
            **plan.notes,
            **gate_info(kept, gate_min, scorer_name),
            **nsfw_info(results),
            **({"regions": results[0]["regions"]} if results and "regions" in results[0] else {}),
            **(extra_info or {}),
        },
    }
    if req.save_images is False:  # honoured: nothing of this request stays in the output folder (the log says so)
        discard_unsaved(results)
        info["bestshot"]["images"] = [{**x, "file": None} for x in info["bestshot"]["images"]]
        for run in info["bestshot"]["runs"]:
            run["candidates"] = [{**x, "file": None} for x in run["candidates"]]
        info["bestshot"]["saved"] = False
    return {"images": images, "parameters": request_parameters(req), "info": jsonio.dumps(info)}


def nsfw_info(results: list[dict[str, Any]]) -> dict[str, Any]:
    """How many candidates the image safety check flagged (absent when it did not run); flagged images are never
    returned."""
    if not any("nsfw_flagged" in r for r in results):
        return {}
    return {"nsfw_flagged": sum(int(r.get("nsfw_flagged") or 0) for r in results)}


def nsfw_placeholders(results: list[dict[str, Any]], plan: Plan) -> list[str]:
    """A black image (base64 PNG) in place of each image the safety check withheld, as diffusers' safety checker
    answers: a client that asked for N images and reads images[0] still gets them, and never the flagged ones."""
    count = sum(
        sum(bool(c.get("nsfw")) for c in r["candidates"])
        if plan.best_of == 1
        else int(r.get("reason") == "nsfw_flagged")
        for r in results
    )
    if not count:
        return []
    buf = io.BytesIO()
    Image.new("RGB", (plan.cfg.width, plan.cfg.height)).save(buf, "PNG")
    return [base64.b64encode(buf.getvalue()).decode("ascii")] * count


def request_parameters(req: Txt2ImgRequest) -> dict[str, Any]:
    """The response's ``parameters``: the request, with img2img's ``init_images`` and ``mask`` null unless
    ``include_init_images`` is set (as A1111 does: a 400 MB upload is not echoed back)."""
    if isinstance(req, Img2ImgRequest) and not req.include_init_images:
        return {**req.model_dump(exclude={"init_images", "mask"}), "init_images": None, "mask": None}
    return req.model_dump()
