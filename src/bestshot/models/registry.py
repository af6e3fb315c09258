"""What bestshot knows about models: ids → family → pipeline class, schedulers by name.

Nothing here loads weights. A *model reference* is one of

* ``"embedded"`` — the small model shipped inside the package (``models/embedded``);
* a local folder holding a diffusers pipeline (``model_index.json``);
* a Hugging Face hub id (``org/name``), loaded from the local cache or the hub.

The family decides which diffusers pipeline class loads it and how candidates are generated
(e.g. SDXL can hand latents to a refiner); unknown diffusers pipelines are family ``generic``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..config import CLIP_L14, EMBEDDED, REGIONS, SD15, SD35_LARGE, SDXL_BASE, SDXL_REFINER
from ..errors import BestshotError

EMBEDDED_DIR = Path(__file__).parent / "embedded"


@dataclass(frozen=True)
class Family:
    name: str
    pipeline_class: str  # a diffusers class name, or bestshot's own
    img2img_class: str | None  # for refiners / staged upscaling
    default_scorer: str
    native_size: int = 1024  # the side it was trained at (a folder's bestshot_defaults.json / UNet may say otherwise)
    max_side: int = 2048  # the largest width/height worth asking of it
    inpaint: bool = False  # diffusers' AutoPipelineForInpainting.from_pipe can build an inpainting pipeline


FAMILIES: dict[str, Family] = {
    "sdxl": Family("sdxl", "StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", CLIP_L14,
                   native_size=1024, max_side=2048, inpaint=True),
    "sdxl_refiner": Family("sdxl_refiner", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLImg2ImgPipeline", CLIP_L14,
                           native_size=1024, max_side=2048),
    "sd3": Family("sd3", "StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline", CLIP_L14,
                  native_size=1024, max_side=2048, inpaint=True),
    "sd15": Family("sd15", "StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", CLIP_L14,
                   native_size=512, max_side=2048, inpaint=True),
    # regions: each object read alone where it is (two objects best of 8: 37.0 % with +spatial, 52.5 %; RESULTS.md)
    # a 32 px pixel-space model: larger sizes only cost time (and give noise), so it is capped at 4x native
    "embedded": Family("embedded", "BestshotWorldPipeline", None, EMBEDDED + REGIONS, native_size=32, max_side=128),
    "generic": Family("generic", "DiffusionPipeline", None, CLIP_L14, native_size=1024, max_side=2048),
}


def native_size(ref: "ModelRef") -> int:
    """The side a model samples best at: its folder's defaults (e.g. the embedded UNet's sample size), else
    its family's."""
    if ref.local:
        d = _load_defaults(ref.source)
        if isinstance(d.get("width"), int) and d["width"] > 0:
            return int(d["width"])
    return ref.family.native_size


def size_limits(ref: "ModelRef") -> tuple[int, int]:
    """(native side, largest side) of a model: a folder trained at N px is capped at ``max(family max, N)``."""
    native = native_size(ref)
    return native, max(ref.family.max_side, native)

KNOWN_IDS: dict[str, str] = {
    SDXL_BASE: "sdxl",
    SDXL_REFINER: "sdxl_refiner",
    SD35_LARGE: "sd3",
    "stabilityai/stable-diffusion-3.5-medium": "sd3",
    "stabilityai/stable-diffusion-3.5-large-turbo": "sd3",
    SD15: "sd15",
    "runwayml/stable-diffusion-v1-5": "sd15",
    EMBEDDED: "embedded",
}

# pipeline class name (model_index.json "_class_name") → family
_CLASS_TO_FAMILY = {
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusionXLImg2ImgPipeline": "sdxl_refiner",
    "StableDiffusion3Pipeline": "sd3",
    "StableDiffusionPipeline": "sd15",
    "BestshotWorldPipeline": "embedded",
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass(frozen=True)
class ModelRef:
    """A resolved model reference: where it loads from and what it is."""

    ref: str  # what the user wrote
    source: str  # local folder path or hub id
    local: bool
    family: Family


def _read_model_index(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "model_index.json").read_text())
    except FileNotFoundError:
        raise BestshotError(
            f"{folder} has no model_index.json, so it is not a diffusers pipeline folder — "
            "pass the folder that `pipeline.save_pretrained(...)` wrote, or a hub id"
        ) from None
    except json.JSONDecodeError as e:
        raise BestshotError(f"{folder}/model_index.json is not valid JSON ({e}) — re-save the pipeline") from None


def is_world_folder(ref: str | None) -> bool:
    """Whether ``ref`` is a pipeline folder of the embedded family (a ``bestshot train export``); a path
    that is no readable pipeline folder is not (loading it reports why)."""
    if not ref or not Path(ref).expanduser().is_dir():
        return False
    try:
        cls = _read_model_index(Path(ref).expanduser()).get("_class_name", "")
    except BestshotError:
        return False
    return _CLASS_TO_FAMILY.get(cls) == "embedded"


def resolve_model(ref: str | None) -> ModelRef:
    """Turn what the user typed into a :class:`ModelRef`, or a clear error."""
    ref = EMBEDDED if ref in (None, "") else str(ref)
    if ref == EMBEDDED:
        if not (EMBEDDED_DIR / "model_index.json").exists():
            raise BestshotError(
                f"the embedded model is missing from {EMBEDDED_DIR} — reinstall bestshot, or train it with "
                "scripts/train_embedded.sh"
            )
        return ModelRef(ref, str(EMBEDDED_DIR), True, FAMILIES["embedded"])
    path = Path(ref).expanduser()
    if path.is_dir():
        cls = _read_model_index(path).get("_class_name", "")
        return ModelRef(ref, str(path), True, FAMILIES[_CLASS_TO_FAMILY.get(cls, "generic")])
    if ref in KNOWN_IDS:
        return ModelRef(ref, ref, False, FAMILIES[KNOWN_IDS[ref]])
    looks_like_path = ref.startswith((".", "/", "~")) or ref.count("/") != 1
    if path.exists():
        raise BestshotError(f"model {ref!r} is a file, not a pipeline folder — pass the folder holding model_index.json")
    if looks_like_path or not _HUB_ID.match(ref):
        raise BestshotError(
            f"model path {ref!r} does not exist — pass an existing pipeline folder, a hub id such as "
            f"{SDXL_BASE}, or 'embedded'"
        )
    return ModelRef(ref, ref, False, FAMILIES[KNOWN_IDS.get(ref, "generic")])


def model_defaults(ref: str | None) -> dict[str, Any]:
    """The recommended settings a model folder ships in ``bestshot_defaults.json`` (or ``{}``).

    A model that cannot be resolved has no defaults here; loading it reports the problem.
    """
    try:
        m = resolve_model(ref)
    except BestshotError:
        return {}
    if not m.local:
        return {}
    return _load_defaults(m.source)


@lru_cache(maxsize=32)
def _load_defaults(folder: str) -> dict[str, Any]:
    f = Path(folder) / "bestshot_defaults.json"
    if not f.exists():
        return _world_defaults(Path(folder))
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise BestshotError(f"{f} is not valid JSON ({e}) — fix or delete it") from None


def _world_defaults(folder: Path) -> dict[str, Any]:
    """A BestshotWorldPipeline folder without bestshot_defaults.json: sample at the UNet's own size.

    (Its generic fallback would otherwise be 1024², which a 32² pixel-space model cannot use.)"""
    try:
        index = json.loads((folder / "model_index.json").read_text())
        if index.get("_class_name") != "BestshotWorldPipeline":
            return {}
        size = int(json.loads((folder / "unet" / "config.json").read_text())["sample_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    from .world_pipeline import DEFAULTS

    return {**DEFAULTS, "height": size, "width": size}


# ---------------------------------------------------------------- schedulers
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


def _s(key: str, label: str, cls: str, min_steps: int = 1, note: str | None = None, flow: bool = False, **kw: Any) -> Sampler:
    return Sampler(key, label, cls, tuple(sorted(kw.items())), min_steps, note, flow)


SAMPLERS: dict[str, Sampler] = {s.key: s for s in (
    _s("euler", "Euler", "EulerDiscreteScheduler"),
    _s("euler_a", "Euler a", "EulerAncestralDiscreteScheduler"),
    _s("dpmpp_2m", "DPM++ 2M", "DPMSolverMultistepScheduler", algorithm_type="dpmsolver++", solver_order=2),
    _s("dpmpp_2m_sde", "DPM++ 2M SDE", "DPMSolverMultistepScheduler", algorithm_type="sde-dpmsolver++", solver_order=2),
    _s("dpmpp_3m_sde", "DPM++ 3M SDE", "DPMSolverMultistepScheduler", algorithm_type="sde-dpmsolver++", solver_order=3),
    _s("dpmpp_sde", "DPM++ SDE", "DPMSolverMultistepScheduler", algorithm_type="sde-dpmsolver++", solver_order=2,
       note="DPM++ SDE runs as diffusers' SDE DPM-Solver++ (2M): its Brownian-tree variant needs torchsde"),
    _s("dpmpp_2s_a", "DPM++ 2S a", "DPMSolverSinglestepScheduler", algorithm_type="dpmsolver++", solver_order=2,
       note="DPM++ 2S a runs as diffusers' single-step DPM-Solver++ (no ancestral noise)"),
    _s("dpm2", "DPM2", "KDPM2DiscreteScheduler"),
    _s("dpm2_a", "DPM2 a", "KDPM2AncestralDiscreteScheduler"),
    _s("heun", "Heun", "HeunDiscreteScheduler"),
    _s("lms", "LMS", "LMSDiscreteScheduler"),
    _s("ddim", "DDIM", "DDIMScheduler"),
    _s("ddpm", "DDPM", "DDPMScheduler"),
    _s("pndm", "PLMS", "PNDMScheduler", min_steps=4),  # its 4-step warm-up breaks below 4 steps
    _s("unipc", "UniPC", "UniPCMultistepScheduler"),
    _s("lcm", "LCM", "LCMScheduler"),
    _s("restart", "Restart", "HeunDiscreteScheduler",
       note="Restart is not in diffusers; Heun (the solver Restart builds on) is used instead"),
    _s("flow_euler", "Euler", "FlowMatchEulerDiscreteScheduler", flow=True),
)}

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
    "align your steps": ("Align Your Steps", {}, "Align Your Steps is not in diffusers; the model's own schedule is used"),
    "turbo": ("Turbo", {"timestep_spacing": "trailing"}, "Turbo runs as trailing timesteps"),
}

# legacy table (bestshot name → (class, kwargs, A1111 label)), kept for callers that list schedulers
SCHEDULERS: dict[str, tuple[str, dict[str, Any], str]] = {
    k: (v.cls, dict(v.kwargs), v.label) for k, v in SAMPLERS.items()}
SCHEDULERS["dpmpp_2m_karras"] = ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                                 "use_karras_sigmas": True}, "DPM++ 2M Karras")

_LABELS = {v.label.lower(): k for k, v in SAMPLERS.items() if not v.flow}
SAMPLER_ALIASES = {**_LABELS, "dpm++ 2m karras": "dpmpp_2m_karras"}


def _norm(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_").replace("++", "pp")


@dataclass(frozen=True)
class SchedulerSpec:
    """A sampler and a schedule type, resolved: what set_scheduler builds, and how infotext names it."""

    sampler: Sampler
    schedule: str = "automatic"

    @property
    def key(self) -> str:
        return self.sampler.key if self.schedule == "automatic" else f"{self.sampler.key}:{self.schedule.replace(' ', '_')}"

    @property
    def label(self) -> str:
        """A1111's name: "DPM++ 2M", or with a schedule type "DPM++ 2M Karras" (the infotext's Sampler field)."""
        return self.sampler.label if self.schedule == "automatic" else f"{self.sampler.label} {SCHEDULE_TYPES[self.schedule][0]}"

    def kwargs(self) -> dict[str, Any]:
        return {**dict(self.sampler.kwargs), **SCHEDULE_TYPES[self.schedule][1]}

    def notes(self) -> list[str]:
        return [n for n in (self.sampler.note, SCHEDULE_TYPES[self.schedule][2]) if n]


def _schedule_key(name: str | None) -> str:
    key = (name or "automatic").strip().lower().replace("_", " ")
    if key in ("", "none", "default"):
        key = "automatic"
    if key not in SCHEDULE_TYPES:
        raise BestshotError(f"unknown schedule type {name!r} — choose one of: "
                            + ", ".join(v[0] for v in SCHEDULE_TYPES.values()))
    return key


def scheduler_spec(name: str, schedule: str | None = None) -> SchedulerSpec:
    """A sampler name (bestshot key, A1111 name, or either with a schedule type: "DPM++ 2M Karras",
    "dpmpp_2m:karras") and an optional schedule type → a :class:`SchedulerSpec`, or a clear error."""
    raw = name.strip()
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
        raise BestshotError(f"unknown scheduler {name!r} — choose one of: "
                            + ", ".join(dict.fromkeys(v.label for v in SAMPLERS.values())))
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
