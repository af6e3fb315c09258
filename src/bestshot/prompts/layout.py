"""Layout planning: prompt → :class:`~bestshot.layout.Layout` (objects with boxes, plus a background).

Planners, chosen by :func:`plan_layout`'s ``mode``:

* ``world`` — the embedded world's grammar ("a red circle above a blue square", "a red circle, a blue
  square and a green cross", "two red circles"), parsed with :func:`bestshot.world.parse_prompt` and placed
  deterministically with the world's own geometry (box side = ``SIZE_FRACTION[size]``, medium when the
  prompt names no size; objects at least ``GAP`` apart and ``MARGIN`` inside the canvas), so a rendered
  layout is a scene the oracle accepts. A relation is placed on its axis with both centres on one line.
* ``llm`` — free text: an instruct LLM (:mod:`bestshot.prompts.layout_llm`) asked for JSON boxes; an
  unusable answer or no LLM gives an empty layout ("no layout") whose ``reason`` says why.
* ``auto`` — ``world`` when the prompt is a world prompt, else ``llm``; ``off`` — no layout.

:func:`resolve_layout` turns the ``ImgCfg.regions`` setting (``auto`` | ``off`` | a file) into a layout.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import BestshotError
from ..layout import Layout, LayoutObject, read_layout
from ..store import atomic_write_text
from ..world import GAP, MARGIN, RELATIONS, SIZE_FRACTION, Obj, Scene, parse_prompt
from ..world.captions import PromptSpec

MODES = ("auto", "world", "llm", "off")
DEFAULT_SIZE = "medium"
MAX_WORLD_OBJECTS = 3
_NUMBERS = {"two": 2, "three": 3, "2": 2, "3": 3}
_COUNTED = re.compile(r"\b(two|three|2|3) ((?:[a-z-]+ ){0,2}[a-z]+s)\b")


def _expand_counts(prompt: str) -> str:
    """ "two red circles" → "a red circle and a red circle" (the world grammar names objects one by one)."""

    def one(m: re.Match) -> str:
        words = m.group(2)
        words = words[:-2] if words.endswith(("sses", "xes")) else words[:-1]  # crosses, boxes; circles
        return " and ".join([f"a {words}"] * _NUMBERS[m.group(1)])

    return _COUNTED.sub(one, prompt.lower())


def parse_world(prompt: str) -> PromptSpec | None:
    """The world's reading of ``prompt`` (counted plurals expanded), or None when it is not a world prompt."""
    spec = parse_prompt(prompt)
    if spec is None:
        expanded = _expand_counts(prompt)
        spec = parse_prompt(expanded) if expanded != prompt.lower() else None
    return spec


def _pair(s1: float, s2: float) -> tuple[float, float]:
    """Centres of two objects on one axis (first before second), as far apart as the canvas comfortably allows."""
    lo1, hi2 = MARGIN + s1 / 2, 1 - MARGIN - s2 / 2
    need, room = (s1 + s2) / 2 + GAP, hi2 - lo1
    slack = (room - need) / 2  # half the free room goes between the objects, the rest to the edges
    return lo1 + slack / 2, hi2 - slack / 2


def _row(sides: list[float]) -> list[tuple[float, float]] | None:
    """Centres of objects side by side on the middle line, or None when they do not fit in one row."""
    extra = 1 - 2 * MARGIN - sum(sides) - (len(sides) - 1) * GAP
    if extra < 0:
        return None
    step = extra / (len(sides) + 1)
    x, out = MARGIN + step, []
    for s in sides:
        out.append((x + s / 2, 0.5))
        x += s + GAP + step
    return out


def _triangle(sides: list[float]) -> list[tuple[float, float]]:
    """Three objects: two in the top corners, one at the bottom centre (fits even three large ones)."""
    a, b, c = sides
    return [(MARGIN + a / 2, MARGIN + a / 2), (1 - MARGIN - b / 2, MARGIN + b / 2), (0.5, 1 - MARGIN - c / 2)]


def world_scene(spec: PromptSpec, background: str = "white") -> Scene:
    """The deterministic scene a world layout stands for (``background`` when the prompt names none)."""
    if not 1 <= len(spec.objects) <= MAX_WORLD_OBJECTS:
        raise BestshotError(f"a world layout holds 1-{MAX_WORLD_OBJECTS} objects, the prompt names {len(spec.objects)}")
    sizes = [o.size or DEFAULT_SIZE for o in spec.objects]
    sides = [SIZE_FRACTION[s] for s in sizes]
    if spec.relation is not None:
        first_is_a = spec.relation in ("left of", "above")
        p1, p2 = _pair(*(sides if first_is_a else sides[::-1]))
        pa, pb = (p1, p2) if first_is_a else (p2, p1)
        horizontal = spec.relation in ("left of", "right of")
        centres = [(pa, 0.5), (pb, 0.5)] if horizontal else [(0.5, pa), (0.5, pb)]
    else:
        centres = _row(sides) or _triangle(sides)
    objects = tuple(
        Obj(o.shape, o.colour or "red", size, round(x, 4), round(y, 4))
        for o, size, (x, y) in zip(spec.objects, sizes, centres)
    )
    return Scene(objects, spec.background or background, spec.relation)


def world_layout(prompt: str) -> Layout | None:
    """Plan a world prompt (see the module docstring); None when ``prompt`` is not a world prompt."""
    spec = parse_world(prompt)
    if spec is None:
        return None
    scene = world_scene(spec)
    objects = []
    for o, so in zip(scene.objects, spec.objects):
        half = SIZE_FRACTION[o.size] / 2
        text = " ".join(w for w in (so.size, so.colour, so.shape) if w)
        box = (o.cx - half, o.cy - half, o.cx + half, o.cy + half)
        objects.append(LayoutObject(f"{'an' if text[0] in 'aeiou' else 'a'} {text}", tuple(round(v, 4) for v in box)))
    bg = f"a plain {spec.background} background" if spec.background else "a plain background"
    rel = f"; objects[0] {spec.relation} objects[1]" if spec.relation else ""
    return Layout(tuple(objects), bg, prompt, "world", f"world grammar{rel}")


def plan_layout(prompt: str, mode: str = "auto", *, llm: Any = None, **llm_options: Any) -> Layout:
    """Plan where the objects of ``prompt`` go.

    ``mode``: ``auto`` (world grammar, else the LLM), ``world`` (a non-world prompt is an error), ``llm``
    or ``off``. ``llm`` is a chat object with ``complete(messages) -> str`` (tests pass a stub); without one
    the LLM chain of :mod:`bestshot.prompts.llm` is used with ``llm_options`` (``backend``, ``model``,
    ``device``). The LLM path never raises: it returns an empty layout with the reason.
    """
    if mode not in MODES:
        raise BestshotError(f"unknown layout mode {mode!r} — use one of: {', '.join(MODES)}")
    if mode == "off":
        return Layout(prompt=prompt, source="none", reason="layout off")
    if not prompt or not prompt.strip():
        raise BestshotError("a layout needs a non-empty prompt")
    if mode in ("auto", "world"):
        planned = world_layout(prompt)
        if planned is not None:
            return planned
        if mode == "world":
            raise BestshotError(
                f"{prompt!r} is not a prompt of the embedded world — e.g. 'a red circle above a blue square' "
                f"(relations: {', '.join(RELATIONS)}); use --regions auto for free text"
            )
    from .layout_llm import llm_layout

    return llm_layout(prompt, llm=llm, **llm_options)


def resolve_layout(setting: str | None, prompt: str, **llm_options: Any) -> Layout | None:
    """The layout an ``ImgCfg.regions`` setting asks for: None (unset/off), a planned one (auto) or a file's."""
    if setting in (None, "off"):
        return None
    if setting == "auto":
        return plan_layout(prompt, "auto", **llm_options)
    return read_layout(setting)


def save_layout(layout: Layout, path: str | Path) -> Path:
    """Write ``layout`` as ``layout.json`` atomically (no half-written file)."""
    return atomic_write_text(path, layout.to_json())
