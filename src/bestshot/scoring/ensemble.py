"""Weighted sums of scorers: ``--scorer clip+taste:0.5``, ``embedded+regions:1+taste@my/head.json:0.3``.

Grammar. A spec is split on ``+``; the parts ``regions`` and ``spatial`` stay attached to the term before
them (the existing suffixes, ``embedded+regions``). A term ending in ``:<number>`` has that weight; the
spec is an ensemble when at least one term carries a weight (terms without one weigh 1). So
``embedded+regions`` stays the region scorer, ``open_clip:ViT-B-32:laion2b_s34b_b79k`` stays one open_clip
scorer (its last part is not a number), and ``clip+taste:0.5`` is CLIP (weight 1) plus the taste head
(weight 0.5). ``clip`` names the default CLIP (the embedded one, or the model family's default scorer).

Normalisation. Each term is put on its own saved scale, ``(s - mean) / std``, then summed with the
weights, so a weight is "how many standard deviations of this scorer one unit is worth" whatever its native
units (cosine ~0.8 ± 0.03 for the embedded CLIP, taste logits ~±5), and a score does not depend on which
other images are scored with it (one image scores the same alone as in a set of 8). Where the scale comes
from (:func:`scale_of`):

* a scorer's own ``scale`` attribute: the taste head's is the mean/std of its logits on its training rows
  (saved in ``head.json`` by ``bestshot taste train``); ImageReward's output is already standardised by the
  model (mean 0, std 1);
* otherwise :data:`MEASURED` by the scorer's name: constants measured with ``bench/scorer_scale.py``;
* otherwise :data:`DEFAULT_SCALE` (mean 0, std 1: the weight is in the scorer's raw units), and the
  ensemble logs once which terms fell back to it. A head saved before scales were stored falls back too.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..errors import BestshotError

log = logging.getLogger(__name__)
SUFFIXES = ("regions", "spatial")
_WEIGHT = re.compile(r"^(?P<spec>.+):(?P<w>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)$")
_NOT_FINITE = re.compile(r"^(?P<spec>.+):(?P<w>[-+]?(?:nan|inf|infinity))$", re.IGNORECASE)


@dataclass(frozen=True)
class Term:
    spec: str
    weight: float


def parse_ensemble(spec: str) -> list[Term] | None:
    """The weighted terms of ``spec``, or None when it is not an ensemble (no term carries a weight)."""
    if "+" not in spec:
        m = _WEIGHT.match(spec) or _NOT_FINITE.match(spec)
        if m is None:
            return None
        parts = [spec]
    else:
        parts = spec.split("+")
    terms: list[str] = []
    for p in parts:
        if not p:
            raise BestshotError(f"scorer spec {spec!r} has an empty term — write e.g. clip+taste:0.5")
        if terms and (p in SUFFIXES or _WEIGHT.match(p) and _WEIGHT.match(p)["spec"] in SUFFIXES):
            terms[-1] += "+" + p  # embedded+regions:0.5 → the term 'embedded+regions' with weight 0.5
        else:
            terms.append(p)
    for t in terms:  # taste:nan is a bad weight, not a scorer named "embedded+taste:nan"
        bad = _NOT_FINITE.match(t)
        if bad is not None:
            raise BestshotError(
                f"scorer weight {bad['w']!r} in {t!r} is not a finite number — give a number, e.g. {bad['spec']}:0.5"
            )
    weighted = [(_WEIGHT.match(t), t) for t in terms]
    if not any(m for m, _ in weighted):
        return None
    out = []
    for m, t in weighted:
        spec_t, w = (m["spec"], float(m["w"])) if m else (t, 1.0)
        if not np.isfinite(w):
            raise BestshotError(f"scorer weight in {t!r} is not a finite number")
        out.append(Term(spec_t, w))
    if all(t.weight == 0 for t in out):
        raise BestshotError(f"every weight in {spec!r} is 0 — give at least one term a non-zero weight")
    return out


@dataclass(frozen=True)
class Scale:
    """Where a scorer's scores usually lie: ``(s - mean) / std`` puts them on a common scale."""

    mean: float
    std: float
    source: str = "given"

    def valid(self) -> bool:
        return math.isfinite(self.mean) and math.isfinite(self.std) and self.std > 1e-12


DEFAULT_SCALE = Scale(0.0, 1.0, "default")

# Measured on 2026-12-05 by `python bench/scorer_scale.py --prompts 40 --n 8` (bench/RESULTS.md): mean and
# std of the scorer over every candidate of the embedded model (its shipped 16 steps, seeds 0-7) for 40
# held-out world prompts of seed 31337, each image scored against its own prompt (320 images). The std is
# over all images together (the spread between prompts included), as the taste head's is over all its
# training rows; the spread within one prompt's 8 candidates is smaller (0.040, 0.149, 0.076).
MEASURED: dict[str, Scale] = {
    "embedded": Scale(0.7790, 0.0571, "measured"),
    "embedded+regions": Scale(0.6165, 0.2010, "measured"),
    "embedded+spatial": Scale(0.7382, 0.1117, "measured"),
}


def scale_of(scorer: Any) -> Scale:
    """The scale of ``scorer``'s scores (see the module doc); never fails: a bad or missing one is the default."""
    own = getattr(scorer, "scale", None)
    if isinstance(own, Scale) and own.valid():
        return own
    if isinstance(own, (tuple, list)) and len(own) == 2:
        try:
            s = Scale(float(own[0]), float(own[1]), "given")
        except (TypeError, ValueError):
            s = DEFAULT_SCALE
        if s.valid():
            return s
    measured = MEASURED.get(str(getattr(scorer, "name", "")))
    return measured if measured is not None else DEFAULT_SCALE


def combine(term_scores: Sequence[Sequence[float]], scales: Sequence[Scale], weights: Sequence[float]) -> np.ndarray:
    """``sum_i w_i * (s_i - mean_i) / std_i``: one number per image."""
    total = np.zeros(len(term_scores[0]) if term_scores else 0)
    for raw, sc, w in zip(term_scores, scales, weights):
        total += w * (np.asarray(raw, dtype=np.float64) - sc.mean) / sc.std
    return total


class EnsembleScorer:
    """``sum_i w_i * (scorer_i(images, text) - mean_i) / std_i`` (see the module doc)."""

    def __init__(self, scorers: Sequence[Any], weights: Sequence[float], name: str | None = None):
        if len(scorers) != len(weights) or not scorers:
            raise BestshotError("an ensemble needs one weight per scorer")
        self.scorers = list(scorers)
        self.weights = [float(w) for w in weights]
        self.name = name or "+".join(f"{s.name}:{w:g}" for s, w in zip(self.scorers, self.weights))
        self.scales = [scale_of(s) for s in self.scorers]
        unscaled = [s.name for s, sc in zip(self.scorers, self.scales) if sc.source == "default"]
        if unscaled:
            log.warning(
                "ensemble %s: no saved scale for %s — their weights are in raw score units",
                self.name,
                ", ".join(map(str, unscaled)),
            )

    @property
    def base(self) -> Any:
        """The first term (e.g. its CLIP, for callers that need image embeddings)."""
        return getattr(self.scorers[0], "base", self.scorers[0])

    def truncate(self, text: str) -> tuple[str, bool]:
        return self.scorers[0].truncate(text)

    def term_scores(self, images: Sequence[Image.Image], text: str | Sequence[str]) -> list[list[float]]:
        return [list(map(float, s.score(images, text))) for s in self.scorers]

    def score(self, images: Sequence[Image.Image], text: str | Sequence[str]) -> list[float]:
        if not images:
            return []
        return combine(self.term_scores(images, text), self.scales, self.weights).tolist()
