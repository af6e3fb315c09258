"""What bestshot knows about models: ids → family → pipeline class (sampler names: bestshot.schedulers).

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
    "sdxl": Family(
        "sdxl",
        "StableDiffusionXLPipeline",
        "StableDiffusionXLImg2ImgPipeline",
        CLIP_L14,
        native_size=1024,
        max_side=2048,
        inpaint=True,
    ),
    "sdxl_refiner": Family(
        "sdxl_refiner",
        "StableDiffusionXLImg2ImgPipeline",
        "StableDiffusionXLImg2ImgPipeline",
        CLIP_L14,
        native_size=1024,
        max_side=2048,
    ),
    "sd3": Family(
        "sd3",
        "StableDiffusion3Pipeline",
        "StableDiffusion3Img2ImgPipeline",
        CLIP_L14,
        native_size=1024,
        max_side=2048,
        inpaint=True,
    ),
    "sd15": Family(
        "sd15",
        "StableDiffusionPipeline",
        "StableDiffusionImg2ImgPipeline",
        CLIP_L14,
        native_size=512,
        max_side=2048,
        inpaint=True,
    ),
    # regions: each object read alone where it is (two objects best of 8: 37.0 % with +spatial, 52.5 %; RESULTS.md)
    # a 32 px pixel-space model: larger sizes only cost time (and give noise), so it is capped at 4x native
    "embedded": Family("embedded", "BestshotWorldPipeline", None, EMBEDDED + REGIONS, native_size=32, max_side=128),
    "generic": Family("generic", "DiffusionPipeline", None, CLIP_L14, native_size=1024, max_side=2048),
}


def native_size(ref: ModelRef) -> int:
    """The side a model samples best at: its folder's defaults (e.g. the embedded UNet's sample size), else
    its family's."""
    if ref.local:
        d = _load_defaults(ref.source)
        if isinstance(d.get("width"), int) and d["width"] > 0:
            return int(d["width"])
    return ref.family.native_size


def size_limits(ref: ModelRef) -> tuple[int, int]:
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
        raise BestshotError(
            f"model {ref!r} is a file, not a pipeline folder — pass the folder holding model_index.json"
        )
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


def default_scorer(ref: ModelRef) -> str:
    """The scorer a model is ranked with when none is given: its folder's ``bestshot_defaults.json`` "scorer";
    for a BestshotWorldPipeline conditioned on image embeddings or trained on another dataset than the shapes
    world, its own CLIP's plain cosine (``embedded``: the region scorer knows the world's nouns only);
    otherwise the family's default."""
    d = _load_defaults(ref.source) if ref.local else {}
    if isinstance(d.get("scorer"), str) and d["scorer"]:
        return d["scorer"]
    dataset = str(d.get("dataset") or "world").split(":")[0]
    if ref.family.name == "embedded" and (d.get("conditioning") == "image_embed" or dataset != "world"):
        return "embedded"
    return ref.family.default_scorer


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
    from .world_sampling import DEFAULTS

    return {**DEFAULTS, "height": size, "width": size}
