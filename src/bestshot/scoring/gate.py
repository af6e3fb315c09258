"""The quality gate in the scorer's own units: a kept image must score at least ``score_min``.

Every scorer says what its numbers are (optional attributes, read with :func:`units_of`):

* ``units`` — a word for them ("cosine", "region score", "taste logit", ...);
* ``score_range`` — ``(low, high)`` when they are bounded (a cosine: ``(-1, 1)``), else None;
* ``default_min`` — its default gate in those units, or None for "no default gate" (scores that measure a
  preference rather than prompt alignment: the taste head, PickScore, HPSv2, ImageReward).

A CLIP's default is 0.22 (``openai/clip-vit-large-patch14``'s design value); a model's own CLIP takes the
``clip_min`` of its folder's ``bestshot_defaults.json`` (the embedded one: 0.35), and ``+regions`` /
``+spatial`` keep their CLIP's default. A scorer that declares nothing has no range and no default gate.

:func:`resolve_gate` turns the ``score_min`` setting into a :class:`Gate`: an explicit value is compared
with the scorer's own score and validated against its range (so a cosine range is enforced only for a
cosine scorer); None means the scorer's default. An ensemble (``clip+taste:0.5``) has no fixed range: its
score is a weighted sum of standardised terms. Its *default* gate is its first term's default, compared with
that term's score of the kept image: the gate asks "does the kept image match the prompt", which the primary
(alignment) term measures, while a taste or preference term does not; a threshold on the whole sum would
refuse an aligned image for being disliked, and would change meaning with every weight. The ensemble then
keeps its best-scored candidate among those the first term passes (:meth:`Gate.pick`), so
``clip+taste:0.5`` refuses a run exactly when the first term alone (the model's default scorer) would: when
no candidate passes it.
An explicit ``score_min`` with an ensemble is in the ensemble's units (the sum).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from ..errors import BestshotError

COSINE_RANGE = (-1.0, 1.0)
CLIP_DEFAULT_MIN = 0.22


def units_of(scorer: Any) -> tuple[str, tuple[float, float] | None]:
    """``(units, range)`` of ``scorer``'s scores; an ensemble is a weighted sum of standardised terms."""
    if _is_ensemble(scorer):
        return "weighted sum of standardised scores", None
    units = getattr(scorer, "units", None)
    rng = getattr(scorer, "score_range", None)
    return (str(units) if units else "score"), (tuple(map(float, rng)) if rng is not None else None)


def cosine_like(scorer: Any) -> bool:
    """Whether the scores are cosines or weighted means of them (at most 1): ``100·max(s, 0)``, torchmetrics'
    CLIPScore scale, means something only then."""
    rng = units_of(scorer)[1]
    return rng is not None and rng[1] <= 1.0


def default_min(scorer: Any) -> float | None:
    """The scorer's default gate in its own units (None: no default gate)."""
    v = getattr(scorer, "default_min", None)
    return None if v is None else float(v)


def _is_ensemble(scorer: Any) -> bool:
    return isinstance(getattr(scorer, "scorers", None), list) and isinstance(getattr(scorer, "weights", None), list)


@dataclass(frozen=True)
class Gate:
    """``minimum`` (None: no gate) compared with ``judge``'s score of the kept image (``judge`` None: the
    run's own score)."""

    minimum: float | None
    units: str
    on: str  # the name of the scorer whose score is compared
    source: str  # "score_min", "default" or "off"
    judge: Any = None

    def value(self, image: Image.Image, score: float, text: str) -> float:
        """The number compared with ``minimum`` for the kept image whose run score is ``score``."""
        if self.judge is None:
            return float(score)
        return float(self.judge.score([image], text)[0])

    def passes(self, value: float) -> bool:
        return self.minimum is None or value >= self.minimum

    def pick(
        self, images: Sequence[Image.Image], scores: Sequence[float], text: str, eligible: Sequence[int] | None = None
    ) -> int:
        """The candidate to keep: the best-scored one among those that pass (the best overall when none does,
        which the gate then refuses). With no judge that is simply the best-scored one. ``eligible`` limits
        the choice (after a stop: the candidates that got furthest)."""
        pool = list(range(len(scores))) if eligible is None else list(eligible)
        order = max(pool, key=lambda k: scores[k])
        if self.judge is None or self.minimum is None:
            return order
        values = gate_values(self, images, scores, text)
        passing = [k for k in pool if self.passes(values[k])]
        return max(passing, key=lambda k: scores[k]) if passing else order

    def record(self, value: float | None) -> dict[str, Any]:
        return {
            "min": self.minimum,
            "on": self.on,
            "units": self.units,
            "source": self.source,
            "value": None if value is None else round(float(value), 6),
        }


def resolve_gate(scorer: Any, score_min: float | None, *, enabled: bool = True) -> Gate:
    """The gate of a run scored by ``scorer`` with the setting ``score_min`` (see the module doc)."""
    name = str(getattr(scorer, "name", type(scorer).__name__))
    units, rng = units_of(scorer)
    if not enabled:
        return Gate(None, units, name, "off")
    if score_min is not None:
        v = float(score_min)
        if rng is not None and not rng[0] <= v <= rng[1]:
            d = default_min(scorer)
            hint = f"its default is {d:g}" if d is not None else "leave it unset for no gate"
            raise BestshotError(
                f"score_min (--score-min, old name clip_min) {v:g} is outside the range [{rng[0]:g}, "
                f"{rng[1]:g}] of scorer {name!r} ({units}) — give a value in that range ({hint})"
            )
        return Gate(v, units, name, "score_min")
    if _is_ensemble(scorer):
        primary = scorer.scorers[0]
        inner = resolve_gate(primary, None)
        return Gate(inner.minimum, inner.units, inner.on, "default", inner.judge or primary)
    return Gate(default_min(scorer), units, name, "default")


def gate_values(gate: Gate, images: Sequence[Image.Image], scores: Sequence[float], text: str) -> list[float]:
    """:meth:`Gate.value` of several images in one scorer call."""
    if gate.judge is None:
        return [float(s) for s in scores]
    return [float(v) for v in gate.judge.score(list(images), text)] if images else []
