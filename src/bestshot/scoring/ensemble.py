"""Weighted sums of scorers: ``--scorer clip+taste:0.5``, ``embedded+regions:1+taste@my/head.json:0.3``.

Grammar. A spec is split on ``+``; the parts ``regions`` and ``spatial`` stay attached to the term before
them (the existing suffixes, ``embedded+regions``). A term ending in ``:<number>`` has that weight; the
spec is an ensemble when at least one term carries a weight (terms without one weigh 1). So
``embedded+regions`` stays the region scorer, ``open_clip:ViT-B-32:laion2b_s34b_b79k`` stays one open_clip
scorer (its last part is not a number), and ``clip+taste:0.5`` is CLIP (weight 1) plus the taste head
(weight 0.5). ``clip`` names the default CLIP (the embedded one, or the model family's default scorer).

Normalisation. Each term's scores are z-scored over the candidate set of the call (``(s - mean) / std``
over the images scored together for one prompt; a term whose scores are all equal contributes 0), then
summed with the weights: a weight is then "how many standard deviations of this scorer one unit is worth",
whatever each scorer's native scale (cosine ~0.3, taste logits ~±5). A call with a single image (the
re-score of a re-rendered best) uses the mean and std of the last call with several images for the same
text, so its score stays on the same scale; with none, it scores 0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..errors import BestshotError

SUFFIXES = ("regions", "spatial")
_WEIGHT = re.compile(r"^(?P<spec>.+):(?P<w>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)$")


@dataclass(frozen=True)
class Term:
    spec: str
    weight: float


def parse_ensemble(spec: str) -> list[Term] | None:
    """The weighted terms of ``spec``, or None when it is not an ensemble (no term carries a weight)."""
    if "+" not in spec:
        m = _WEIGHT.match(spec)
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


def zscore(scores: Sequence[float]) -> tuple[np.ndarray, float, float]:
    s = np.asarray(scores, dtype=np.float64)
    mean, std = float(s.mean()), float(s.std())
    return ((s - mean) / std if std > 1e-12 else np.zeros_like(s)), mean, std


class EnsembleScorer:
    """``sum_i w_i * zscore(scorer_i(images, text))`` (see the module doc)."""

    def __init__(self, scorers: Sequence[Any], weights: Sequence[float], name: str | None = None):
        if len(scorers) != len(weights) or not scorers:
            raise BestshotError("an ensemble needs one weight per scorer")
        self.scorers = list(scorers)
        self.weights = [float(w) for w in weights]
        self.name = name or "+".join(f"{s.name}:{w:g}" for s, w in zip(self.scorers, self.weights))
        self._stats: dict[tuple[int, str], tuple[float, float]] = {}

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
        total = np.zeros(len(images))
        key_text = text if isinstance(text, str) else "\x00".join(text)
        for i, (scorer, w) in enumerate(zip(self.scorers, self.weights)):
            raw = [float(v) for v in scorer.score(images, text)]
            if len(images) > 1:
                z, mean, std = zscore(raw)
                if len(self._stats) >= 1024:  # a long serve session: keep the cache bounded
                    self._stats.pop(next(iter(self._stats)))
                self._stats[(i, key_text)] = (mean, std)
            else:
                mean, std = self._stats.get((i, key_text), (raw[0], 0.0))
                z = (np.asarray(raw) - mean) / std if std > 1e-12 else np.zeros(len(raw))
            total += w * z
        return total.tolist()
