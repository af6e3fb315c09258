"""Schedulers by name: bestshot's names ↔ diffusers classes ↔ AUTOMATIC1111 sampler names.

Plain data and name normalisation, nothing loaded: :class:`bestshot.config.ImgCfg` validates a
``scheduler`` setting with it, :func:`bestshot.models.loader.set_scheduler` builds the class it names,
and the A1111 routes translate sampler names with it. (Schedulers are separate from models: any
scheduler name applies to any family that takes that kind of scheduler.)
"""

from __future__ import annotations

from typing import Any

from .errors import BestshotError

# bestshot name → (diffusers class, extra config, AUTOMATIC1111 sampler name)
SCHEDULERS: dict[str, tuple[str, dict[str, Any], str]] = {
    "euler": ("EulerDiscreteScheduler", {}, "Euler"),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}, "Euler a"),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}, "DPM++ 2M"),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, "DPM++ 2M Karras"),
    "ddim": ("DDIMScheduler", {}, "DDIM"),
    "ddpm": ("DDPMScheduler", {}, "DDPM"),
    "unipc": ("UniPCMultistepScheduler", {}, "UniPC"),
    "heun": ("HeunDiscreteScheduler", {}, "Heun"),
    "lms": ("LMSDiscreteScheduler", {}, "LMS"),
    "pndm": ("PNDMScheduler", {}, "PLMS"),
    "flow_euler": ("FlowMatchEulerDiscreteScheduler", {}, "Euler"),
}

# A1111 sampler names as clients send them ("Euler a", "DPM++ 2M Karras") → bestshot names
SAMPLER_ALIASES = {a1111.lower(): name for name, (_, _, a1111) in SCHEDULERS.items() if name != "flow_euler"}


def scheduler_name(name: str) -> str:
    """Normalise a scheduler / sampler name to bestshot's key, or raise a clear error."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_").replace("++", "pp")
    if key in SCHEDULERS:
        return key
    if name.strip().lower() in SAMPLER_ALIASES:
        return SAMPLER_ALIASES[name.strip().lower()]
    raise BestshotError(f"unknown scheduler {name!r} — choose one of: {', '.join(SCHEDULERS)}")


def sampler_label(scheduler: Any) -> str:
    """The AUTOMATIC1111 sampler name of a diffusers scheduler instance (for PNG metadata)."""
    cls = type(scheduler).__name__
    karras = bool(getattr(getattr(scheduler, "config", None), "use_karras_sigmas", False))
    for name, (c, extra, label) in SCHEDULERS.items():
        if c == cls and bool(extra.get("use_karras_sigmas", False)) == karras:
            return label
    return cls
