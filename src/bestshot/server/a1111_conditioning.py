"""The A1111 request fields that condition the draw, read into ImgCfg fields: sd-webui-controlnet's units
(``alwayson_scripts.controlnet.args``), variation seeds (``subseed`` / ``subseed_strength``) and
``override_settings.sd_vae``; and the shapes of sd-webui-controlnet's own routes (``/controlnet/...``).

A unit is ``{enabled, module, model, weight, image (base64, or {"image": ...}; old clients: input_image),
resize_mode, processor_res, threshold_a, threshold_b, guidance_start, guidance_end, control_mode, pixel_perfect}``.
Units that are disabled or have no model are skipped, as the extension does. Control images travel to the
draw as ``data:`` URLs; nothing is written to disk.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

from ..errors import BestshotError
from ..models import control_preprocess, controlnet, ip_adapter, vae
from ..models.image_input import to_data_url
from .a1111 import FieldError, decode_image

API_VERSION = 2  # what sd-webui-controlnet's /controlnet/version answers
RESIZE_MODES = {
    "0": "resize",
    "just resize": "resize",
    "1": "crop",
    "crop and resize": "crop",
    "inner fit (scale to fit)": "crop",
    "2": "fill",
    "resize and fill": "fill",
    "outer fit (shrink to fit)": "fill",
    "envelope (outer fit)": "fill",
}
BALANCED = ("0", "balanced")
NO_MODEL = ("", "none")
LATENT_FAMILIES = ("sd15", "sdxl")  # where ControlNet, IP-Adapter and variation seeds are drawn


def folders(base: dict[str, Any]) -> tuple[Path, Path]:
    """(ControlNet folder, VAE folder) of the server's base settings, as ImgCfg resolves them."""
    parent = Path(base.get("out_dir") or "images_out").parent
    cn = Path(base["controlnet_dir"]) if base.get("controlnet_dir") else parent / controlnet.DEFAULT_DIR
    vd = Path(base["vae_dir"]) if base.get("vae_dir") else parent / vae.DEFAULT_DIR
    return cn, vd


def _units(scripts: dict[str, Any]) -> list[tuple[int, dict[str, Any]]] | None:
    """The enabled ControlNet units (index, unit), or None when the request has no ControlNet entry."""
    key = next((k for k in scripts if str(k).lower() == "controlnet"), None)
    if key is None:
        return None
    entry = scripts[key]
    args = entry.get("args", []) if isinstance(entry, dict) else entry
    if not isinstance(args, list):
        raise FieldError("alwayson_scripts.controlnet.args", "must be a list of ControlNet units (JSON objects)")
    out = []
    for i, unit in enumerate(args):
        if not isinstance(unit, dict):
            raise FieldError(
                f"alwayson_scripts.controlnet.args[{i}]", "must be a JSON object (a ControlNet unit with named fields)"
            )
        if unit.get("enabled", True) is False or str(unit.get("model") or "").strip().lower() in NO_MODEL:
            continue
        out.append((i, unit))
    return out


def _number(unit: dict[str, Any], key: str, default: float, where: str, lo: float, hi: float) -> float:
    v = unit.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise FieldError(f"{where}.{key}", f"must be a number from {lo:g} to {hi:g} (got {v!r})")
    return float(v)


def _image_of(unit: dict[str, Any], where: str, fallback: str | None, max_pixels: int) -> str:
    img = unit.get("image", unit.get("input_image"))
    field = f"{where}.image"
    if isinstance(img, list):
        img = img[0] if img else None
    if isinstance(img, dict):
        img = img.get("image")
    if img is None or img == "":
        if fallback is None:
            raise FieldError(field, "missing — send the control image as base64 (txt2img has no init image to use)")
        img = fallback
    pic = decode_image(img, field, max_pixels)
    buf = io.BytesIO()
    pic.convert("RGB").save(buf, "PNG", compress_level=1)
    return to_data_url(buf.getvalue())


def controlnet_overrides(
    req: Any, base: dict[str, Any], notes: dict[str, Any], max_pixels: int, init_image: str | None = None
) -> dict[str, Any]:
    """ImgCfg fields of the request's ControlNet units (empty when it has none)."""
    units = _units(req.alwayson_scripts or {})
    if not units:
        return {}
    folder, _ = folders(base)
    nets, images, modules, scales, starts, ends, resizes, unhonoured = [], [], [], [], [], [], [], []
    ip: dict[str, Any] = {}
    for i, unit in units:
        where = f"alwayson_scripts.controlnet.args[{i}]"
        if is_ip_unit(unit):
            if ip:
                raise FieldError(where, "one IP-Adapter unit per request — send the others as separate requests")
            ip = _ip_fields(unit, where, folder, init_image, max_pixels)
            continue
        try:
            nets.append(controlnet.resolve(str(unit.get("model")), folder))
        except BestshotError as e:
            raise FieldError(f"{where}.model", f"{e} (GET /controlnet/model_list lists them)") from None
        name = str(unit.get("module") or "none")
        try:
            mod, _ = control_preprocess.parse(name)
        except BestshotError as e:
            raise FieldError(f"{where}.module", str(e)) from None
        sliders = control_preprocess.MODULES[mod][1]
        values = [unit.get(k) for k in ("threshold_a", "threshold_b")][: len(sliders)]
        given = [str(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0]
        modules.append(":".join([mod, *given]) if len(given) == len(values) and given else mod)
        images.append(_image_of(unit, where, init_image, max_pixels))
        scales.append(_number(unit, "weight", 1.0, where, 0.0, 10.0))
        starts.append(_number(unit, "guidance_start", 0.0, where, 0.0, 1.0))
        ends.append(_number(unit, "guidance_end", 1.0, where, 0.0, 1.0))
        if starts[-1] >= ends[-1]:
            raise FieldError(f"{where}.guidance_start", "must be below guidance_end")
        resize = RESIZE_MODES.get(str(unit.get("resize_mode", "Crop and Resize")).strip().lower())
        if resize is None:
            raise FieldError(f"{where}.resize_mode", "use Just Resize, Crop and Resize or Resize and Fill (or 0, 1, 2)")
        resizes.append(resize)
        if str(unit.get("control_mode", "Balanced")).strip().lower() not in BALANCED:
            unhonoured.append(f"args[{i}].control_mode {unit.get('control_mode')!r}: drawn as Balanced")
    if ip:
        notes["ip_adapter"] = {"model": Path(ip["ip_adapter"]).name, "scale": ip["ip_scale"]}
    if not nets:
        return ip
    if len(set(resizes)) > 1:
        unhonoured.append(f"resize_mode differs between units: all use the first unit's ({resizes[0]})")
    notes["controlnet"] = {"units": len(nets), "models": [Path(n).name for n in nets], "modules": modules}
    if unhonoured:
        notes["controlnet"]["not_honoured"] = unhonoured
    return dict(
        **ip,
        controlnets=tuple(nets),
        control_images=tuple(images),
        control_modules=tuple(modules),
        control_scales=tuple(scales),
        control_start=tuple(starts),
        control_end=tuple(ends),
        control_resize=resizes[0],
    )


def is_ip_unit(unit: dict[str, Any]) -> bool:
    """sd-webui-controlnet runs IP-Adapters as units: module ``ip-adapter_clip_sd15`` (and kin), model
    ``ip-adapter_sd15 [hash]``."""
    text = f"{unit.get('module') or ''} {unit.get('model') or ''}".lower()
    return "ip-adapter" in text or "ip_adapter" in text


def ip_adapter_files(folder: Path) -> list[str]:
    """IP-Adapter weight files in the ControlNet folder (sd-webui-controlnet keeps them there)."""
    if not folder.is_dir():
        return []
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.is_file()
        and p.suffix in ip_adapter.WEIGHT_SUFFIXES
        and p.name.lower().startswith(("ip-adapter", "ip_adapter"))
    )


def _ip_fields(unit: dict[str, Any], where: str, folder: Path, init_image: str | None, max_pixels: int) -> dict:
    """ImgCfg's IP-Adapter fields of an IP-Adapter unit: its weights file from the ControlNet folder (the image
    encoder in ``image_encoder/`` beside it), its image and weight."""
    name = controlnet.clean_name(str(unit.get("model")))
    found = [folder / f"{name}{suffix}" for suffix in ("", *ip_adapter.WEIGHT_SUFFIXES)]
    path = next((p for p in found if p.is_file()), None)
    if path is None:
        have = ", ".join(ip_adapter_files(folder)) or "none"
        raise FieldError(f"{where}.model", f"IP-Adapter {name!r} not found in {str(folder)!r} (there: {have})")
    return dict(
        ip_adapter=str(path),
        ip_image=_image_of(unit, where, init_image, max_pixels),
        ip_scale=_number(unit, "weight", 1.0, where, 0.0, 10.0),
    )


def subseed_overrides(req: Any, seed: int, count: int, max_seed: int) -> tuple[int, dict[str, Any]]:
    """(the request's variation seed, -1 when unused; ImgCfg fields for the first call)."""
    if not req.subseed_strength or req.subseed_strength <= 0:
        return -1, {}
    sub = req.subseed if req.subseed is not None and req.subseed >= 0 else random.randrange(2**32)
    if sub + count > max_seed:
        raise FieldError("subseed", f"{sub} is too large for {count} consecutive variation seeds")
    return sub, {"subseed": int(sub), "subseed_strength": float(req.subseed_strength)}


def vae_override(req: Any, base: dict[str, Any]) -> dict[str, Any]:
    """``override_settings.sd_vae`` as the ``vae`` field ("Automatic" / "None": the model's own)."""
    name = (req.override_settings or {}).get("sd_vae")
    if name is None or vae.is_own(str(name)):
        return {}
    _, folder = folders(base)
    try:
        vae.resolve(str(name).strip(), folder)
    except BestshotError as e:
        raise FieldError("override_settings", f"sd_vae: {e} (GET /sdapi/v1/sd-vae lists them)") from None
    return {"vae": str(name).strip()}


# ---------------------------------------------------------------------------------- routes' answers
def model_list(base: dict[str, Any]) -> dict[str, Any]:
    folder = folders(base)[0]
    return {"model_list": controlnet.list_models(folder) + ip_adapter_files(folder)}


def module_list() -> dict[str, Any]:
    return {"module_list": list(control_preprocess.MODULES), "module_detail": control_preprocess.module_detail()}


def version() -> dict[str, Any]:
    return {"version": API_VERSION}


def vae_list(base: dict[str, Any]) -> list[dict[str, str]]:
    return vae.list_vaes(folders(base)[1])


def request_overrides(
    req: Any,
    base: dict[str, Any],
    model: str,
    seed: int,
    count: int,
    notes: dict[str, Any],
    max_pixels: int,
    max_seed: int,
) -> tuple[dict[str, Any], int]:
    """(ImgCfg fields, variation seed or -1) of a request: on txt2img with an SD 1.x / SDXL ``model``
    sd_vae, ControlNet units and variation seeds; elsewhere they are reported in ``info.bestshot.ignored``
    (img2img draws through its own pipeline call; other models have no ControlNet / latent noise to blend)."""
    from ..models.registry import resolve_model

    family = resolve_model(model).family.name
    out = vae_override(req, base)
    if hasattr(req, "init_images") or family not in LATENT_FAMILIES:
        why = "img2img" if hasattr(req, "init_images") else f"this model ({family})"
        ignored = dict(notes.get("ignored", {}))
        if out:
            ignored["sd_vae"] = f"a custom VAE is not used on {why}; the model's own VAE drew"
        if req.subseed_strength > 0 and not hasattr(req, "init_images"):
            ignored["subseed_strength"] = f"{req.subseed_strength:g}: variation seeds are not drawn on {why}"
        if _units(req.alwayson_scripts or {}) and not hasattr(req, "init_images"):
            prior = ignored.get("alwayson_scripts")
            ignored["alwayson_scripts"] = (f"{prior}; " if prior else "") + f"controlnet: units are not run on {why}"
        if ignored:
            notes["ignored"] = ignored
        return {}, -1
    sub, fields = subseed_overrides(req, seed, count, max_seed)
    return {**out, **fields, **controlnet_overrides(req, base, notes, max_pixels)}, sub
