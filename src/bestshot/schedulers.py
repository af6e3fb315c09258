"""Schedulers by name: bestshot's names ↔ diffusers classes ↔ AUTOMATIC1111 sampler names.

Plain data and name normalisation, nothing loaded: :class:`bestshot.config.ImgCfg` validates a
``scheduler`` setting with it, :func:`bestshot.models.loader.set_scheduler` builds the class it names,
and the A1111 routes translate sampler names with it. (Schedulers are separate from models: any
scheduler name applies to any family that takes that kind of scheduler.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import BestshotError

# One table: every AUTOMATIC1111 sampler name and schedule type → a diffusers scheduler class and its
# keyword arguments. A scheduler is always built from the MODEL's own scheduler config (kept when the
# pipeline is loaded), never from the one the previous call left, so the same seed and settings give
# the same pixels whatever ran before (models/loader.py set_scheduler).


@dataclass(frozen=True)
class Sampler:
    key: str  # bestshot's name (CLI --scheduler)
    label: str  # A1111's sampler name
    cls: str  # diffusers scheduler class
    kwargs: tuple[tuple[str, Any], ...] = ()
    min_steps: int = 1
    note: str | None = None  # where the diffusers scheduler only approximates A1111's sampler
    flow: bool = False


def _s(
    key: str, label: str, cls: str, min_steps: int = 1, note: str | None = None, flow: bool = False, **kw: Any
) -> Sampler:
    return Sampler(key, label, cls, tuple(sorted(kw.items())), min_steps, note, flow)


SAMPLERS: dict[str, Sampler] = {
    s.key: s
    for s in (
        _s("euler", "Euler", "EulerDiscreteScheduler"),
        _s("euler_a", "Euler a", "EulerAncestralDiscreteScheduler"),
        _s("dpmpp_2m", "DPM++ 2M", "DPMSolverMultistepScheduler", algorithm_type="dpmsolver++", solver_order=2),
        _s(
            "dpmpp_2m_sde",
            "DPM++ 2M SDE",
            "DPMSolverMultistepScheduler",
            algorithm_type="sde-dpmsolver++",
            solver_order=2,
        ),
        _s(
            "dpmpp_3m_sde",
            "DPM++ 3M SDE",
            "DPMSolverMultistepScheduler",
            algorithm_type="sde-dpmsolver++",
            solver_order=3,
        ),
        _s(
            "dpmpp_sde",
            "DPM++ SDE",
            "DPMSolverMultistepScheduler",
            algorithm_type="sde-dpmsolver++",
            solver_order=2,
            note="DPM++ SDE runs as diffusers' SDE DPM-Solver++ (2M): its Brownian-tree variant needs torchsde",
        ),
        _s(
            "dpmpp_2s_a",
            "DPM++ 2S a",
            "DPMSolverSinglestepScheduler",
            algorithm_type="dpmsolver++",
            solver_order=2,
            note="DPM++ 2S a runs as diffusers' single-step DPM-Solver++ (no ancestral noise)",
        ),
        _s("dpm2", "DPM2", "KDPM2DiscreteScheduler"),
        _s("dpm2_a", "DPM2 a", "KDPM2AncestralDiscreteScheduler"),
        _s("heun", "Heun", "HeunDiscreteScheduler"),
        _s("lms", "LMS", "LMSDiscreteScheduler"),
        _s("ddim", "DDIM", "DDIMScheduler"),
        _s("ddpm", "DDPM", "DDPMScheduler"),
        _s("pndm", "PLMS", "PNDMScheduler", min_steps=4),  # its 4-step warm-up breaks below 4 steps
        _s("unipc", "UniPC", "UniPCMultistepScheduler"),
        _s("lcm", "LCM", "LCMScheduler"),
        _s(
            "restart",
            "Restart",
            "HeunDiscreteScheduler",
            note="Restart is not in diffusers; Heun (the solver Restart builds on) is used instead",
        ),
        _s(
            "dpmpp_2m_sde_heun",
            "DPM++ 2M SDE Heun",
            "DPMSolverMultistepScheduler",
            algorithm_type="sde-dpmsolver++",
            solver_order=2,
            solver_type="heun",
        ),
        _s(
            "dpm_fast",
            "DPM fast",
            "DPMSolverSinglestepScheduler",
            algorithm_type="dpmsolver",
            solver_order=3,
            final_sigmas_type="sigma_min",
            note="DPM fast runs as diffusers' single-step DPM-Solver (order 3), not k-diffusion's order schedule",
        ),
        _s("flow_euler", "Euler", "FlowMatchEulerDiscreteScheduler", flow=True),
    )
}

# A1111 schedule types ("scheduler" in a request, or a suffix of an old-style sampler name) → kwargs
SCHEDULE_TYPES: dict[str, tuple[str, dict[str, Any], str | None]] = {
    "automatic": ("Automatic", {}, None),
    "uniform": ("Uniform", {"timestep_spacing": "linspace"}, None),
    "normal": ("Normal", {"timestep_spacing": "linspace"}, None),
    "simple": ("Simple", {"timestep_spacing": "trailing"}, None),
    "karras": ("Karras", {"use_karras_sigmas": True}, None),
    "exponential": ("Exponential", {"use_exponential_sigmas": True}, None),
    "polyexponential": ("Polyexponential", {"use_exponential_sigmas": True}, "Polyexponential runs as Exponential"),
    "sgm uniform": ("SGM Uniform", {"timestep_spacing": "trailing"}, None),
    "beta": ("Beta", {"use_beta_sigmas": True}, None),
    "ddim": ("DDIM", {"timestep_spacing": "leading"}, None),
    "kl optimal": ("KL Optimal", {}, "KL Optimal is not in diffusers; the model's own schedule is used"),
    "align your steps": (
        "Align Your Steps",
        {},
        "Align Your Steps is not in diffusers; the model's own schedule is used",
    ),
    "turbo": ("Turbo", {"timestep_spacing": "trailing"}, "Turbo runs as trailing timesteps"),
}

# legacy table (bestshot name → (class, kwargs, A1111 label)), kept for callers that list schedulers
SCHEDULERS: dict[str, tuple[str, dict[str, Any], str]] = {
    k: (v.cls, dict(v.kwargs), v.label) for k, v in SAMPLERS.items()
}
SCHEDULERS["dpmpp_2m_karras"] = (
    "DPMSolverMultistepScheduler",
    {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    "DPM++ 2M Karras",
)

_LABELS = {v.label.lower(): k for k, v in SAMPLERS.items() if not v.flow}
SAMPLER_ALIASES = {**_LABELS, "dpm++ 2m karras": "dpmpp_2m_karras"}

# A1111's sampler aliases (its samplers' `aliases`: the k-diffusion names older clients send) → key, schedule
K_ALIASES: dict[str, tuple[str, str | None]] = {
    "k_euler_a": ("euler_a", None),
    "k_euler_ancestral": ("euler_a", None),
    "k_euler": ("euler", None),
    "k_lms": ("lms", None),
    "k_lms_ka": ("lms", "karras"),
    "k_heun": ("heun", None),
    "k_dpm_2": ("dpm2", None),
    "k_dpm_2_ka": ("dpm2", "karras"),
    "k_dpm_2_a": ("dpm2_a", None),
    "k_dpm_2_a_ka": ("dpm2_a", "karras"),
    "k_dpmpp_2s_a": ("dpmpp_2s_a", None),
    "k_dpmpp_2s_a_ka": ("dpmpp_2s_a", "karras"),
    "k_dpmpp_2m": ("dpmpp_2m", None),
    "k_dpmpp_2m_ka": ("dpmpp_2m", "karras"),
    "k_dpmpp_sde": ("dpmpp_sde", None),
    "k_dpmpp_sde_ka": ("dpmpp_sde", "karras"),
    "k_dpmpp_2m_sde": ("dpmpp_2m_sde", None),
    "k_dpmpp_2m_sde_ka": ("dpmpp_2m_sde", "karras"),
    "k_dpmpp_2m_sde_heun": ("dpmpp_2m_sde_heun", None),
    "k_dpmpp_3m_sde": ("dpmpp_3m_sde", None),
    "k_dpm_fast": ("dpm_fast", None),
    "k_lcm": ("lcm", None),
    "plms": ("pndm", None),
}

# A1111 samplers bestshot cannot run, refused by name with the reason (never silently replaced)
UNSUPPORTED: dict[str, str] = {
    "dpm adaptive": "DPM adaptive picks its own step count (k-diffusion's adaptive solver), which diffusers does not "
    "have — use DPM++ 2M or DPM fast",
    "k_dpm_ad": "DPM adaptive (k_dpm_ad) picks its own step count, which diffusers does not have — use DPM++ 2M",
    "ddim cfg++": "DDIM CFG++ guides with a different formula (its CFG scale is about 1, not 7) that diffusers does "
    "not have — use DDIM",
    "ddim_cfgpp": "DDIM CFG++ (ddim_cfgpp) guides with a formula diffusers does not have — use DDIM",
}


def _norm(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_").replace("++", "pp")


@dataclass(frozen=True)
class SchedulerSpec:
    """A sampler and a schedule type, resolved: what set_scheduler builds, and how infotext names it."""

    sampler: Sampler
    schedule: str = "automatic"

    @property
    def key(self) -> str:
        return (
            self.sampler.key
            if self.schedule == "automatic"
            else f"{self.sampler.key}:{self.schedule.replace(' ', '_')}"
        )

    @property
    def label(self) -> str:
        """A1111's name: "DPM++ 2M", or with a schedule type "DPM++ 2M Karras" (the infotext's Sampler field)."""
        return (
            self.sampler.label
            if self.schedule == "automatic"
            else f"{self.sampler.label} {SCHEDULE_TYPES[self.schedule][0]}"
        )

    def kwargs(self) -> dict[str, Any]:
        return {**dict(self.sampler.kwargs), **SCHEDULE_TYPES[self.schedule][1]}

    def notes(self) -> list[str]:
        return [n for n in (self.sampler.note, SCHEDULE_TYPES[self.schedule][2]) if n]


def _compact(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum())


_SCHEDULE_COMPACT = {_compact(k): k for k in SCHEDULE_TYPES}  # "SGMUniform", "sgm_uniform", "KL-Optimal"...


def _schedule_key(name: str | None) -> str:
    key = (name or "automatic").strip().lower().replace("_", " ")
    if key in ("", "none", "default"):
        key = "automatic"
    key = _SCHEDULE_COMPACT.get(_compact(key), key)
    if key not in SCHEDULE_TYPES:
        raise BestshotError(
            f"unknown schedule type {name!r} — choose one of: " + ", ".join(v[0] for v in SCHEDULE_TYPES.values())
        )
    return key


def scheduler_spec(name: str, schedule: str | None = None) -> SchedulerSpec:
    """A sampler name (bestshot key, A1111 name, or either with a schedule type: "DPM++ 2M Karras",
    "dpmpp_2m:karras") and an optional schedule type → a :class:`SchedulerSpec`, or a clear error."""
    raw = name.strip()
    if raw.lower() in UNSUPPORTED:
        raise BestshotError(f"sampler {name!r} is not available: {UNSUPPORTED[raw.lower()]}")
    if raw.lower() in K_ALIASES:
        key, alias_schedule = K_ALIASES[raw.lower()]
        return SchedulerSpec(
            SAMPLERS[key], _schedule_key(schedule if _schedule_key(schedule) != "automatic" else alias_schedule)
        )
    if ":" in raw:
        raw, _, suffix = raw.partition(":")
        schedule = schedule if _schedule_key(schedule) != "automatic" else suffix
    low = raw.lower()
    if low == "dpm++ 2m karras" or _norm(raw) == "dpmpp_2m_karras":
        low, schedule = "dpm++ 2m", schedule if _schedule_key(schedule) != "automatic" else "karras"
    sampler = SAMPLERS.get(_norm(raw)) or (SAMPLERS[_LABELS[low]] if low in _LABELS else None)
    if sampler is None:  # "Euler a Karras", "DPM2 a Exponential": a label plus a schedule type
        for st in sorted(SCHEDULE_TYPES, key=len, reverse=True):
            if low.endswith(" " + st) and low[: -len(st) - 1].strip() in _LABELS:
                sampler = SAMPLERS[_LABELS[low[: -len(st) - 1].strip()]]
                if _schedule_key(schedule) == "automatic":
                    schedule = st
                break
    if sampler is None:
        raise BestshotError(
            f"unknown scheduler {name!r} — choose one of: "
            + ", ".join(dict.fromkeys(v.label for v in SAMPLERS.values()))
        )
    return SchedulerSpec(sampler, _schedule_key(schedule))


def scheduler_name(name: str) -> str:
    """Normalise a scheduler / sampler name to bestshot's key (``dpmpp_2m`` or ``dpmpp_2m:karras``), or raise."""
    return scheduler_spec(name).key


def sampler_label(scheduler: Any) -> str:
    """The AUTOMATIC1111 sampler name of a diffusers scheduler instance (for PNG metadata)."""
    label = getattr(scheduler, "_bestshot_label", None)
    if label:
        return label
    cls = type(scheduler).__name__
    cfg = getattr(scheduler, "config", None)
    karras = bool(getattr(cfg, "use_karras_sigmas", False))
    for spec in SAMPLERS.values():
        if spec.cls == cls:
            return f"{spec.label} Karras" if karras else spec.label
    return cls
