"""A1111's extra-network tags in a prompt: ``<lora:name:weight>`` (and ``<lyco:...>``) become LoRA settings.

The tags are taken out of the text before anything reads it (text encoder, scorer, blocklist, record), as
A1111 does, and added to ``cfg.loras``; every route and the CLI pass through :func:`apply`. A tag is
``<lora:NAME>``, ``<lora:NAME:WEIGHT>`` or ``<lora:NAME:TE_WEIGHT:UNET_WEIGHT>`` (the first weight is used
for both: diffusers sets one weight per adapter).
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from ..errors import BestshotError
from ..models import lora as lora_files
from ..models.registry import resolve_model

_TAG = re.compile(r"<(lora|lyco):([^>:]+)((?::[^>:]*)*)>", re.I)


def extract(prompt: str) -> tuple[str, list[str]]:
    """(prompt without the tags, ``"name:weight"`` entries in order)."""
    entries: list[str] = []

    def take(m: re.Match) -> str:
        name = m.group(2).strip()
        weights = [w.strip() for w in m.group(3).split(":")[1:] if w.strip()]
        weight = 1.0
        if weights:
            try:
                weight = float(weights[0])
            except ValueError:
                raise BestshotError(
                    f"LoRA tag {m.group(0)!r}: the weight {weights[0]!r} is not a number — write <lora:{name}:0.8>"
                ) from None
        entries.append(f"{name}:{weight:g}")
        return ""

    text = _TAG.sub(take, prompt or "")
    if entries:
        text = re.sub(r"\s*,(\s*,)+", ",", text)  # "a, <lora:x>, b" leaves no empty item
        text = re.sub(r"\s+", " ", text).strip(" ,")
    return text, entries


def apply(prompt: str, cfg: Any) -> tuple[str, Any, list[str]]:
    """(prompt without tags, ``cfg`` with the tags' LoRAs added, the LoRAs' trigger words); a missing LoRA, or
    LoRAs for a model that takes none, fail here, before any model loads."""
    text, entries = extract(prompt)
    if entries:
        cfg = replace(cfg, loras=tuple(cfg.loras) + tuple(entries))
    if not cfg.loras:
        return text, cfg, []
    if resolve_model(cfg.model).family.name == "embedded":
        raise BestshotError(
            "the embedded model takes no LoRAs (it is not a Stable Diffusion UNet pipeline) — choose an SD 1.x/2.x "
            "or SDXL model with --model, or drop --lora and the prompt's <lora:...> tags"
        )
    loras = lora_files.resolve(cfg)
    triggers = [t for lo in loras for t in lo.trigger_words]
    return text, cfg, list(dict.fromkeys(triggers))


def infotext(cfg: Any) -> dict[str, Any]:
    """A1111's infotext fields for the LoRAs and clip skip of ``cfg`` (``Lora hashes: "name: hash, ..."``)."""
    out: dict[str, Any] = {}
    if getattr(cfg, "clip_skip", 1) > 1:
        out["Clip skip"] = cfg.clip_skip
    loras = lora_files.resolve(cfg) if getattr(cfg, "loras", ()) else []
    if loras:
        out["Lora hashes"] = ", ".join(f"{lo.name}: {lora_files.short_hash(lo.path)}" for lo in loras)
    return out


def record(cfg: Any) -> list[dict[str, Any]]:
    """The LoRAs of ``cfg`` for a run record: name, file, weight, hash, trigger words."""
    return [
        {
            "name": lo.name,
            "path": str(lo.path),
            "weight": lo.weight,
            "hash": lora_files.short_hash(lo.path),
            "trigger_words": list(lo.trigger_words),
        }
        for lo in (lora_files.resolve(cfg) if getattr(cfg, "loras", ()) else [])
    ]
