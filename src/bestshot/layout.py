"""A layout: where each object of a prompt goes, as boxes on the image (the ``layout.json`` schema).

A :class:`Layout` is a background prompt plus a list of objects, each a short phrase ("a red circle")
and a box ``(x0, y0, x1, y1)`` in fractions of the image's width and height (origin top left, y grows
downwards). Planners (:mod:`bestshot.prompts.layout`) make layouts from prompts;
:mod:`bestshot.prompts.regions` steers each region of the image with its own phrase (``--regions``). An empty
``objects`` list means "no layout" and ``reason`` says why. The JSON file::

    {
      "version": 1,
      "prompt": "a red circle above a blue square",
      "background": "a plain background",
      "objects": [
        {"phrase": "a red circle", "box": [0.34, 0.08, 0.66, 0.40]},
        {"phrase": "a blue square", "box": [0.34, 0.60, 0.66, 0.92]}
      ],
      "source": "world",
      "reason": ""
    }

Only ``objects`` is required (``version`` must be 1 when given); every box must lie inside ``[0, 1]``
with ``x0 < x1`` and ``y0 < y1``, every phrase must be non-empty. Errors are one line naming the entry.

This module is plain settings (``ImgCfg.validate`` reads ``--regions FILE`` through it); writing a layout
file atomically is :func:`bestshot.prompts.layout.save_layout`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bestshot import jsonio

from .errors import BestshotError

VERSION = 1
LAYOUT_MODES = ("auto", "off")  # the other values of ImgCfg.regions: a layout.json path or a layout dict
_FIX = "see docs/generate.md (--regions) for the layout.json schema"


@dataclass(frozen=True)
class LayoutObject:
    """One object of a layout: what to draw (``phrase``) and where (``box``, fractions of the image)."""

    phrase: str
    box: tuple[float, float, float, float]

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2


@dataclass(frozen=True)
class Layout:
    """Objects with boxes plus a background prompt; no objects = no layout (``reason`` says why)."""

    objects: tuple[LayoutObject, ...] = ()
    background: str = ""
    prompt: str = ""
    source: str = "file"  # "world" | "llm" | "file" | "none"
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # e.g. the LLM's raw answer

    def __bool__(self) -> bool:
        return bool(self.objects)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "version": VERSION,
            "prompt": self.prompt,
            "background": self.background,
            "objects": [{"phrase": o.phrase, "box": [round(v, 4) for v in o.box]} for o in self.objects],
            "source": self.source,
            "reason": self.reason,
        }
        if self.extra:
            d["extra"] = self.extra
        return d

    def to_json(self) -> str:
        return jsonio.dumps(self.to_dict(), indent=2) + "\n"


def _number(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise BestshotError(f"{where} must hold finite numbers (got {v!r}) — {_FIX}")
    return float(v)


def check_box(box: Any, where: str) -> tuple[float, float, float, float]:
    """A valid ``(x0, y0, x1, y1)`` box inside ``[0, 1]``, or one clear error naming ``where``."""
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise BestshotError(f"{where} must be a list [x0, y0, x1, y1] of four fractions (got {box!r}) — {_FIX}")
    x0, y0, x1, y1 = (_number(v, where) for v in box)
    if not all(0.0 <= v <= 1.0 for v in (x0, y0, x1, y1)):
        raise BestshotError(f"{where} {list(box)} leaves the image: coordinates are fractions in [0, 1] — {_FIX}")
    if not (x0 < x1 and y0 < y1):
        raise BestshotError(f"{where} {list(box)} is empty: it needs x0 < x1 and y0 < y1 — {_FIX}")
    return x0, y0, x1, y1


def layout_from_dict(data: Any, where: str = "layout") -> Layout:
    """Validate a parsed ``layout.json`` (see the module docstring) into a :class:`Layout`."""
    if not isinstance(data, dict):
        raise BestshotError(f"{where} must be a JSON object with an 'objects' list (got {type(data).__name__})")
    if data.get("version", VERSION) != VERSION:
        raise BestshotError(f"{where} has version {data.get('version')!r}; this bestshot reads version {VERSION}")
    unknown = sorted(set(data) - {"version", "prompt", "background", "objects", "source", "reason", "extra"})
    if unknown:
        raise BestshotError(f"{where} has unknown key(s) {', '.join(unknown)} — {_FIX}")
    objs = data.get("objects")
    if not isinstance(objs, list):
        raise BestshotError(f"{where} needs an 'objects' list of {{phrase, box}} entries — {_FIX}")
    out = []
    for i, o in enumerate(objs):
        at = f"{where} objects[{i}]"
        if not isinstance(o, dict) or set(o) - {"phrase", "box"}:
            raise BestshotError(f"{at} must be an object with just 'phrase' and 'box' (got {o!r}) — {_FIX}")
        phrase = o.get("phrase")
        if not isinstance(phrase, str) or not phrase.strip():
            raise BestshotError(f"{at} needs a non-empty 'phrase' (what to draw in its box) — {_FIX}")
        out.append(LayoutObject(" ".join(phrase.split()), check_box(o.get("box"), f"{at} box")))
    texts = {k: data.get(k, "") for k in ("prompt", "background", "source", "reason")}
    for k, v in texts.items():
        if not isinstance(v, str):
            raise BestshotError(f"{where} '{k}' must be a string (got {v!r})")
    extra = data.get("extra") or {}
    if not isinstance(extra, dict):
        raise BestshotError(f"{where} 'extra' must be an object (got {extra!r})")
    return Layout(tuple(out), texts["background"], texts["prompt"], texts["source"] or "file", texts["reason"], extra)


def read_layout(path: str | Path) -> Layout:
    """Load and validate a ``layout.json`` file; a missing, unreadable or invalid file is one clear error."""
    p = Path(path)
    if not p.is_file():
        raise BestshotError(f"layout file {str(p)!r} does not exist — give a layout.json path, 'auto' or 'off'")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise BestshotError(f"cannot read layout file {str(p)!r}: {err}") from None
    except json.JSONDecodeError as err:
        raise BestshotError(f"layout file {str(p)!r} is not valid JSON ({err.msg} at line {err.lineno})") from None
    return layout_from_dict(data, f"layout file {p.name}")


def check_regions_setting(value: Any) -> None:
    """``ImgCfg.regions``: 'auto', 'off', a layout.json path (read and validated here) or a layout dict."""
    if value is None or value in LAYOUT_MODES:
        return
    if isinstance(value, dict):
        layout_from_dict(value, "regions")
        return
    if not isinstance(value, str) or not value.strip():
        raise BestshotError(f"regions must be 'auto', 'off' or a layout.json path (got {value!r})")
    read_layout(value)
