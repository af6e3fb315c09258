"""Repair: keep the objects the scorer reads as right in the kept image, repaint the rest, rank again.

Best-of-N keeps only what one draw made whole. On a prompt of two or three objects most draws get some
objects right and one wrong (a wrong shape, a missing object, an object on the wrong side), and the chance
that one draw gets all of them right falls with every object. A scorer that *locates* objects
(:meth:`bestshot.scoring.regions.RegionScorer.locate`: each phrase's region, how well it reads as that phrase,
and whether the stated relation holds) says which object of the kept image is wrong; repair keeps the boxes
of the objects it reads as right and repaints everything else at full strength (inpainting, new seeds), so the
next draw has only the missing part left to get right. The repaints are scored by the same scorer and
compete with the candidates under the same gate: a repair never replaces a better image.

A round: :func:`plan` reads the best image not repaired yet. When every phrase has its own region that reads
as its kind of thing and its colour (the likeliest of the closed vocabularies, where the scorer has them), no
region is left over and the relation holds, there is nothing to repair and the rounds end.
Otherwise the weakest phrase (lowest per-phrase score; a phrase without a region first) is repainted together
with every phrase that does not read right and every region no phrase took — or, when two objects both read
right but break the relation, the one whose partner leaves it more room on the side the relation puts it.
The other objects' boxes (grown by ``GROW`` of the side) and a border ring (``RING``: the repaint sees the
background; cleared where an object that goes reaches into it) are kept. ``repair_tries`` repaints per round,
``repair_rounds`` rounds. Cost: at most ``tries × rounds`` more draws, none when the scorer finds nothing wrong.

The record's ``repair`` entry lists each round (the image repaired, what was kept and repainted and why,
the repaint seeds and scores) and, when a repaint is kept, which image it repaints: its seed alone renders
a different image (repeating the whole call renders it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageDraw

from .errors import BestshotError
from .scoring.regions import Located

GROW = 0.06  # a kept object's box grows by this fraction of the image side (its soft edge stays with it)
RING = 0.1  # the image's border ring of this width (fraction of the side) is kept: the repaint sees the background


@dataclass(frozen=True)
class Plan:
    """One round's repair: the phrases kept in place (their boxes) and repainted, why, and the mask (L, 255 =
    repaint)."""

    keep: tuple[str, ...]
    redraw: tuple[str, ...]
    why: str
    mask: Image.Image = field(repr=False)


def locator(scorer: Any) -> Any:
    """The scorer's ``locate`` (it, or the scorer it wraps); a clear error when it cannot locate objects."""
    s = scorer
    for _ in range(4):
        if hasattr(type(s), "locate"):
            return s.locate
        s = getattr(s, "base", None)
        if s is None:
            break
    name = getattr(scorer, "name", type(scorer).__name__)
    raise BestshotError(
        f"--repair needs a scorer that locates objects; {name!r} does not — use a '+regions' scorer (the embedded "
        "model's default embedded+regions, or e.g. --scorer clip+regions) or drop --repair"
    )


def _wrong(o: Any) -> str | None:
    if o.region is None:
        return f"no region for {o.phrase!r}"
    if o.noun_top is False:
        return f"{o.phrase!r} reads as another kind (p={o.noun:.2f})"
    if o.colour_top is False:
        return f"{o.phrase!r} reads as another colour (p={o.colour:.2f})"
    return None


def _room(box: tuple[float, float, float, float], side: str) -> float:
    """Free span of the image beyond ``box`` on ``side`` (fractions of the side)."""
    x0, y0, x1, y1 = box
    return {"right": 1 - x1, "left": x0, "below": 1 - y1, "above": y0}[side]


def _to_move(a: Any, b: Any, relation: str) -> int:
    """Which of two objects that read right but break "A <relation> B" to repaint (0: A, 1: B): the one whose
    partner, kept in place, leaves it more room on the side the relation puts it."""
    b_side = {"left of": "right", "right of": "left", "above": "below", "below": "above"}[relation]  # B seen from A
    a_side = {"right": "left", "left": "right", "below": "above", "above": "below"}[b_side]
    return 1 if _room(a.box, b_side) >= _room(b.box, a_side) else 0


def _pixels(box: tuple[float, float, float, float], w: int, h: int) -> tuple[int, int, int, int]:
    """A box (fractions) grown by ``GROW``, as the inclusive pixel rectangle PIL draws."""
    x0, y0, x1, y1 = box
    return (
        max(0, round((x0 - GROW) * w)),
        max(0, round((y0 - GROW) * h)),
        min(w, round((x1 + GROW) * w)) - 1,
        min(h, round((y1 + GROW) * h)) - 1,
    )


def plan(located: Located | None, size: tuple[int, int]) -> tuple[Plan | None, str]:
    """What to repaint in an image of ``size`` (w, h) read as ``located``: ``(plan, why)``, the plan None when
    there is nothing to repair (or the prompt names no objects the scorer can locate)."""
    if located is None:
        return None, "the prompt is not a short list of objects the scorer can locate"
    objs = located.objects
    wrong = {j: w for j, o in enumerate(objs) if (w := _wrong(o))}
    relation_off = located.relation is not None and located.agreement <= 0
    if not wrong and not located.unmatched and not relation_off:
        return None, "every object reads right"
    weakest = min(range(len(objs)), key=lambda j: objs[j].quality)
    if relation_off and not wrong and len(objs) == 2:  # both read right, on the wrong sides: move one of them
        weakest = _to_move(objs[0].region, objs[1].region, located.relation)
    redraw = sorted(set(wrong) | {weakest})
    reasons = [wrong[j] for j in sorted(wrong)]
    if relation_off:
        reasons.append(f"the relation {located.relation!r} does not hold")
    if located.unmatched:
        reasons.append(f"{len(located.unmatched)} region(s) no phrase took")
    if weakest not in wrong:
        moved = relation_off and not wrong and len(objs) == 2
        reasons.append(f"{'moved' if moved else 'weakest'}: {objs[weakest].phrase!r}")
    w, h = size
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    rx, ry = max(1, round(RING * w)), max(1, round(RING * h))
    draw.rectangle((rx, ry, w - 1 - rx, h - 1 - ry), fill=255)
    # what goes is repainted even where it reaches into the ring (no fragment of it stays); what stays is kept
    gone = [objs[j].region for j in redraw if objs[j].region is not None] + list(located.unmatched)
    for r in gone:
        draw.rectangle(_pixels(r.box, w, h), fill=255)
    keep = [o for j, o in enumerate(objs) if j not in redraw]
    for o in keep:
        draw.rectangle(_pixels(o.region.box, w, h), fill=0)
    why = "; ".join(reasons)
    return Plan(tuple(o.phrase for o in keep), tuple(objs[j].phrase for j in redraw), why, mask), why


def round_record(from_seed: int, p: Plan | None, why: str, seeds: list[int], scores: list[float]) -> dict[str, Any]:
    """One round of the record's ``repair`` entry."""
    d: dict[str, Any] = {"from_seed": from_seed, "why": why}
    if p is not None:
        painted = sum(1 for v in p.mask.getdata() if v) / (p.mask.width * p.mask.height)
        d.update(keep=list(p.keep), redraw=list(p.redraw), repainted_fraction=round(painted, 4))
        d["tries"] = [{"seed": s, "score": round(float(v), 6)} for s, v in zip(seeds, scores)]
    return d
