"""What the ControlNet / IP-Adapter / variation-seed / VAE / safety settings of a run add to its record and to
its PNG infotext (A1111's and sd-webui-controlnet's keys), in one place."""

from __future__ import annotations

from typing import Any

from .image_input import describe


def settings(cfg: Any) -> dict[str, Any]:
    """The record's settings for the features a run used (nothing for those it did not)."""
    out: dict[str, Any] = {}
    if cfg.controlnets:
        out.update(
            controlnets=list(cfg.controlnets),
            control_images=[describe(r) for r in cfg.control_images],
            control_modules=list(cfg.control_modules),
            control_scales=list(cfg.control_scales),
            control_start=list(cfg.control_start),
            control_end=list(cfg.control_end),
            control_resize=cfg.control_resize,
        )
    if cfg.ip_adapter:
        out.update(ip_adapter=cfg.ip_adapter, ip_image=describe(cfg.ip_image or ""), ip_scale=cfg.ip_scale)
    if cfg.subseed is not None:
        out.update(subseed=cfg.subseed, subseed_strength=cfg.subseed_strength)
    if cfg.vae:
        out["vae"] = cfg.vae
    if cfg.safety_checker:
        out["safety_checker"] = cfg.safety_checker
    return out


def _at(values: tuple, i: int, default: Any) -> Any:
    return values[i] if len(values) > i else (values[0] if values else default)


def infotext(cfg: Any, seed: int) -> dict[str, Any]:
    """Extra infotext fields of the image drawn with ``seed``: "Variation seed" / "Variation seed strength" (as
    A1111 writes them, only at a strength above 0), "VAE", "ControlNet N" (sd-webui-controlnet's unit text)."""
    out: dict[str, Any] = {}
    if cfg.subseed is not None and cfg.subseed_strength > 0:
        out["Variation seed"] = int(cfg.subseed) + int(seed) - int(cfg.seed_base)
        out["Variation seed strength"] = float(cfg.subseed_strength)
    if cfg.vae:
        out["VAE"] = str(cfg.vae)
    for i, model in enumerate(cfg.controlnets):
        out[f"ControlNet {i}"] = (
            f"Module: {_at(cfg.control_modules, i, 'none')}, Model: {model}, "
            f"Weight: {_at(cfg.control_scales, i, 1.0):g}, Resize Mode: {cfg.control_resize}, "
            f"Guidance Start: {_at(cfg.control_start, i, 0.0):g}, Guidance End: {_at(cfg.control_end, i, 1.0):g}"
        )
    if cfg.ip_adapter:
        out["IP-Adapter"] = str(cfg.ip_adapter)
        out["IP-Adapter scale"] = float(cfg.ip_scale)
    return out
