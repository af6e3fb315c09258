"""A procedural captioned world: coloured shapes on plain backgrounds, with exact captions.

This module holds the scenes (objects, their layout and how they are drawn at random); the vocabulary,
renderer, captions, datasets and oracle are its neighbours in :mod:`bestshot.world`.

Why: no pretrained text-to-image weights can be downloaded where bestshot is built, so the embedded
model is trained on a world whose every image has a caption that is *true*, and whose images can be
checked against a prompt by :mod:`bestshot.world.oracle`. Everything is deterministic from a seed and
the world is unlimited (item ``i`` of a dataset depends only on ``(seed, i)``).

Geometry: each object fills a square box of side ``SIZE_FRACTION[size]`` (fraction of the image side)
centred on ``(cx, cy)`` in ``[0, 1]`` image coordinates (y grows downwards); how shapes are defined and
drawn is :mod:`bestshot.world.render`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .vocabulary import BACKGROUNDS, COLOURS, RELATIONS, SHAPES, SIZE_FRACTION, SIZES

# Layout constants (fractions of the image side). GAP keeps objects apart so that they stay separate
# connected components even after blur; RELATION_SLOPE bounds the off-axis offset of a relation
# (|dy| <= slope * dx for "left of"), while the oracle accepts anything within 45 degrees.
MARGIN = 0.03
GAP = 0.08
RELATION_SLOPE = 0.5
N_OBJECT_WEIGHTS = {1: 0.45, 2: 0.40, 3: 0.15}


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    cx: float
    cy: float


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    background: str
    relation: str | None  # relation of objects[0] to objects[1] ("objects[0] <relation> objects[1]")


def _boxes_apart(a: tuple[float, float, float], b: tuple[float, float, float]) -> bool:
    """Boxes (cx, cy, side) separated by at least GAP along some axis."""
    (ax, ay, sa), (bx, by, sb) = a, b
    need = (sa + sb) / 2 + GAP
    return abs(ax - bx) >= need or abs(ay - by) >= need


def _place_pair(
    rng: random.Random, sa: float, sb: float, relation: str
) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """Centres for A and B with ``A <relation> B``, or None when the sizes cannot fit."""
    horizontal = relation in ("left of", "right of")
    need = (sa + sb) / 2 + GAP  # minimum centre distance along the relation axis
    lo_a, hi_a = MARGIN + sa / 2, 1 - MARGIN - sa / 2
    lo_b, hi_b = MARGIN + sb / 2, 1 - MARGIN - sb / 2
    for _ in range(100):
        # main axis: A before B (left/top); swapped below for right of / below
        first_is_a = relation in ("left of", "above")
        s1, s2 = (sa, sb) if first_is_a else (sb, sa)
        lo1, hi1 = MARGIN + s1 / 2, 1 - MARGIN - s1 / 2
        lo2, hi2 = MARGIN + s2 / 2, 1 - MARGIN - s2 / 2
        hi1 = min(hi1, hi2 - need)
        if hi1 < lo1:
            return None
        p1 = rng.uniform(lo1, hi1)
        p2 = rng.uniform(max(lo2, p1 + need), hi2)
        d = p2 - p1
        # cross axis: free within the canvas, off-axis offset bounded by the slope
        q_a = rng.uniform(lo_a if horizontal else lo_a, hi_a)
        q_b = (
            rng.uniform(max(lo_b, q_a - RELATION_SLOPE * d), min(hi_b, q_a + RELATION_SLOPE * d))
            if max(lo_b, q_a - RELATION_SLOPE * d) <= min(hi_b, q_a + RELATION_SLOPE * d)
            else None
        )
        if q_b is None:
            continue
        pa, pb = (p1, p2) if first_is_a else (p2, p1)
        if horizontal:
            return (pa, q_a), (pb, q_b)
        return (q_a, pa), (q_b, pb)
    return None


def sample_scene(
    rng: random.Random,
    n_objects: int | None = None,
    max_objects: int = 3,
    min_objects: int = 1,
    object_weights: dict[int, float] | None = None,
) -> Scene:
    """A random scene: 1-3 distinct (shape, colour) objects, non-overlapping, inside the canvas.

    Two-object scenes always carry a relation (objects[0] <relation> objects[1]) and positions that
    satisfy it clearly; one- and three-object scenes have ``relation=None``. ``object_weights`` replaces
    :data:`N_OBJECT_WEIGHTS` (how often 1, 2 and 3 objects are drawn).
    """
    if n_objects is None:
        weights = N_OBJECT_WEIGHTS if object_weights is None else object_weights
        ns = [n for n in N_OBJECT_WEIGHTS if min_objects <= n <= max_objects and weights.get(n, 0) > 0]
        if not ns:
            raise ValueError(
                f"no object count in [{min_objects}, {max_objects}] with a positive weight (supported: 1-3)"
            )
        n_objects = rng.choices(ns, weights=[weights[n] for n in ns])[0]
    if not 1 <= n_objects <= 3:
        raise ValueError(f"n_objects must be 1, 2 or 3, got {n_objects}")
    background = rng.choice(list(BACKGROUNDS))
    kinds: list[tuple[str, str]] = []
    while len(kinds) < n_objects:
        k = (rng.choice(SHAPES), rng.choice(list(COLOURS)))
        if k not in kinds:
            kinds.append(k)
    relation = rng.choice(RELATIONS) if n_objects == 2 else None
    while True:  # sizes that do not fit are redrawn; always terminates (small objects always fit)
        sizes = [rng.choice(SIZES) for _ in range(n_objects)]
        sides = [SIZE_FRACTION[s] for s in sizes]
        centres: list[tuple[float, float]] | None
        if relation is not None:
            pair = _place_pair(rng, sides[0], sides[1], relation)
            centres = list(pair) if pair else None
        else:
            centres = None
            for _ in range(200):
                cand = [
                    (rng.uniform(MARGIN + s / 2, 1 - MARGIN - s / 2), rng.uniform(MARGIN + s / 2, 1 - MARGIN - s / 2))
                    for s in sides
                ]
                boxes = [(x, y, s) for (x, y), s in zip(cand, sides)]
                if all(_boxes_apart(boxes[i], boxes[j]) for i in range(n_objects) for j in range(i)):
                    centres = cand
                    break
        if centres is not None:
            break
    objects = tuple(
        Obj(shape, colour, size, round(x, 4), round(y, 4))
        for (shape, colour), size, (x, y) in zip(kinds, sizes, centres)
    )
    return Scene(objects, background, relation)


def _item_rng(namespace: str, seed: int, i: int) -> random.Random:
    # str seeds are hashed with SHA-512 by random.Random: stable across processes and platforms
    return random.Random(f"bestshot-world:{namespace}:{seed}:{i}")


def scene_for(
    seed: int, i: int, max_objects: int = 3, min_objects: int = 1, object_weights: dict[int, float] | None = None
) -> tuple[Scene, random.Random]:
    """The scene of training item ``i`` (and the rng positioned to draw its caption)."""
    rng = _item_rng("train", seed, i)
    return sample_scene(rng, max_objects=max_objects, min_objects=min_objects, object_weights=object_weights), rng
