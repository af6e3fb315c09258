"""The image safety check: diffusers' ``StableDiffusionSafetyChecker`` with its ``CLIPImageProcessor`` (the
``CompVis/stable-diffusion-safety-checker`` layout: a folder or hub id holding both).

Off unless asked for (``safety_checker`` setting; ``bestshot serve --safety-checker``). Flagged candidates rank
last: the best is picked among the others, and a flagged image is never saved. When every candidate is flagged
the run keeps none (``ok`` false, ``reason: "nsfw_flagged"``) rather than diffusers' black image: a black file
claimed as the best would be a wrong answer that looks like a right one. (The A1111 routes, whose clients read
``images[0]``, answer a black image in its place, as diffusers does; nothing flagged is saved either way.) The
record says how many were flagged (``nsfw_flagged``, and per candidate ``nsfw``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import BestshotError

DEFAULT = "CompVis/stable-diffusion-safety-checker"
_CACHE: dict[tuple[str, str], tuple[Any, Any]] = {}


def source_of(spec: str) -> str:
    """The checker a setting names: a folder or hub id; "on" / "default" / "true": diffusers' standard one."""
    return DEFAULT if spec.strip().lower() in ("on", "default", "true", "1") else spec


def load(source: str, device: str | None = None) -> tuple[Any, Any]:
    """(checker, image processor) from ``source`` (cached)."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPImageProcessor

    from ..models.hub import require_hub_model
    from ..models.loader import resolve_device

    dev = resolve_device(device)
    source = source_of(source)
    key = (source, str(dev))
    if key not in _CACHE:
        require_hub_model(source, "safety checker", "pass a local folder instead")
        try:
            checker = StableDiffusionSafetyChecker.from_pretrained(source).to(dev).eval()
            processor = CLIPImageProcessor.from_pretrained(source)
        except (OSError, ValueError) as e:
            raise BestshotError(
                f"safety checker {source!r} could not be loaded ({str(e).splitlines()[0][:200]}) — give a folder "
                "in the CompVis/stable-diffusion-safety-checker layout (config.json, weights, preprocessor_config.json)"
            ) from None
        _CACHE.clear()  # one checker at a time
        _CACHE[key] = (checker, processor)
    return _CACHE[key]


@torch.no_grad()
def check(source: str | None, images: Sequence[Image.Image], device: str | None = None) -> list[bool]:
    """Per image: whether the checker flags it (all False when no checker is set)."""
    if not source:
        return [False] * len(images)
    checker, processor = load(source, device)
    param = next(checker.parameters())
    clip_input = processor(images=list(images), return_tensors="pt").pixel_values.to(param.device, param.dtype)
    arrays = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images])
    _, flags = checker(images=arrays, clip_input=clip_input)
    return [bool(f) for f in flags]


def eligible(pool: Sequence[int] | None, flagged: Sequence[bool]) -> list[int] | None:
    """The candidates that may be kept: ``pool`` (None = all) without the flagged ones, unless that leaves none."""
    base = list(range(len(flagged))) if pool is None else list(pool)
    clean = [k for k in base if not flagged[k]]
    return pool if not any(flagged) or not clean else clean


def note(record: dict[str, Any], flagged: Sequence[bool]) -> bool:
    """Record the check: how many were flagged, per candidate, and a run with no clean candidate as refused.
    Returns the run's ``ok``."""
    if not any(flagged) and "safety_checker" not in record.get("settings", {}):
        return bool(record["ok"])
    record["nsfw_flagged"] = sum(bool(f) for f in flagged)
    for c, f in zip(record.get("candidates", ()), flagged):
        c["nsfw"] = bool(f)
    if flagged and all(flagged):
        record.update(ok=False, reason="nsfw_flagged", img_path=None)
    return bool(record["ok"])
