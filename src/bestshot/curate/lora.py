"""LoRA discovery, the seeded pick of one character + one style LoRA per image, and adapter switching.

Layout: ``loras/character/*.safetensors`` and ``loras/style/*.safetensors`` (``.safetensor`` too), each
with an optional ``.txt`` of comma-separated trigger words beside it. Adapters are loaded into a
pipeline once (``load_lora_weights(..., adapter_name=...)``) and then only switched with
``set_adapters``, so picking a different LoRA per image costs no reload. A file that does not fit the
model (wrong architecture, wrong shapes, not a LoRA) is skipped with a warning and never retried.
"""

from __future__ import annotations

import random
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..models.lora import EXTENSIONS
from ..models.lora import listed as _listed
from ..models.lora import trigger_words as _triggers

KINDS = ("character", "style")


@dataclass(frozen=True)
class Lora:
    kind: str  # character | style
    name: str  # file stem
    path: Path
    trigger_words: tuple[str, ...]

    @property
    def adapter(self) -> str:
        """Adapter name: unique per kind and file, and a valid module-name fragment for peft."""
        return re.sub(r"\W", "_", f"{self.kind}_{self.name}")


def discover(root: Path) -> dict[str, list[Lora]]:
    """All LoRAs under ``root/character`` and ``root/style``, sorted by name (a stable seeded pick)."""
    found: dict[str, list[Lora]] = {k: [] for k in KINDS}
    for kind in KINDS:
        folder = Path(root) / kind
        if not folder.is_dir():
            continue
        for p in sorted(folder.iterdir()):
            if p.is_file() and p.suffix.lower() in EXTENSIONS:
                found[kind].append(Lora(kind, p.stem, p, _triggers(p.with_suffix(".txt"))))
    return found


def pick(loras: dict[str, list[Lora]], seed: int) -> list[Lora]:
    """One LoRA of each kind that has any, chosen by ``seed`` (same seed, same LoRAs)."""
    rng = random.Random(f"lora:{seed}")
    return [rng.choice(loras[k]) for k in KINDS if loras.get(k)]


@dataclass
class LoraSwitcher:
    """Keeps track of which adapters each pipeline holds; one instance per workflow run."""

    strengths: dict[str, float]  # kind → strength
    loaded: dict[int, set[str]] = field(default_factory=dict)  # id(pipe) → adapter names
    failed: set[Path] = field(default_factory=set)

    def activate(self, pipe: Any, chosen: list[Lora]) -> list[dict[str, Any]]:
        """Load what is missing, switch to ``chosen``; returns the LoRAs really applied (for metadata)."""
        have = self.loaded.setdefault(id(pipe), set())
        applied: list[Lora] = []
        for lora in chosen:
            if lora.path in self.failed:
                continue
            if lora.adapter not in have and lora.adapter in _listed(pipe):
                have.add(lora.adapter)  # loaded earlier into this (cached) pipeline by another run
            if lora.adapter not in have:
                if not self._load(pipe, lora):
                    continue
                have.add(lora.adapter)
            applied.append(lora)
        if applied:
            if hasattr(pipe, "enable_lora"):
                pipe.enable_lora()
            pipe.set_adapters(
                [lo.adapter for lo in applied], adapter_weights=[self.strengths[lo.kind] for lo in applied]
            )
        elif have and hasattr(pipe, "disable_lora"):
            pipe.disable_lora()
        return [
            {
                "kind": lo.kind,
                "name": lo.name,
                "file": str(lo.path),
                "strength": self.strengths[lo.kind],
                "trigger_words": list(lo.trigger_words),
            }
            for lo in applied
        ]

    def _load(self, pipe: Any, lora: Lora) -> bool:
        if not hasattr(pipe, "load_lora_weights"):
            self._skip(lora, f"the {type(pipe).__name__} pipeline does not take LoRAs")
            return False
        try:
            with warnings.catch_warnings():  # peft warns on every adapter after the first: that is the point here
                warnings.filterwarnings("ignore", message=".*Already found a `peft_config`")
                pipe.load_lora_weights(str(lora.path), adapter_name=lora.adapter)
        except Exception as e:  # noqa: BLE001 - any failure means "does not fit this model"
            self._cleanup(pipe, lora)
            self._skip(lora, f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}")
            return False
        if lora.adapter not in _listed(pipe):  # diffusers only warns when no key matches the model
            self._cleanup(pipe, lora)
            self._skip(lora, "none of its keys match this model's layers")
            return False
        return True

    def _skip(self, lora: Lora, why: str) -> None:
        self.failed.add(lora.path)
        warnings.warn(
            f"skipping {lora.kind} LoRA {lora.path.name}: it does not fit this model ({why}) — "
            f"use a LoRA trained for this base model, or remove it from {lora.path.parent}",
            stacklevel=3,
        )

    @staticmethod
    def _cleanup(pipe: Any, lora: Lora) -> None:
        try:
            if lora.adapter in _listed(pipe):
                pipe.delete_adapters(lora.adapter)
        except Exception:  # noqa: BLE001 - best effort: a half-loaded adapter stays inactive anyway
            pass
