"""GenEval: the prompt set and its rules (object counts, colours, relative positions) on detections.

The 553 prompts of GenEval (Ghosh et al., NeurIPS 2023; MIT licence, shipped in ``geneval_data/``) carry
a ``tag`` (single_object, two_object, counting, colors, position, color_attr) and ``include`` / ``exclude``
clauses. An image is correct when every include clause holds (at least ``count`` boxes of the class; of
those, the ``count`` most confident have the ``color``; each of them lies at ``position`` relative to every
box of the referenced clause) and no exclude clause does (fewer than ``count`` boxes of the class). These
are GenEval's ``evaluate`` rules, reimplemented on any detector with a ``detect`` method
(:mod:`bestshot.evaluate.detect`; GenEval used Mask2Former).

One documented approximation: GenEval names a box's colour with CLIP zero-shot on the masked crop; here the
colour is the majority vote of the pixels of the box's central half, each given the nearest of ten anchor
colours in CIELAB (no CLIP needed, deterministic; it misreads multicoloured objects more often).
Positions follow GenEval's rule: centre offsets shrunk by ``margin × (sum of the two box sizes)`` per axis,
then a relation holds when its axis carries more than half of the (unshrunk) offset's length.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from ..errors import BestshotError
from .detect import Detection

TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS = ("left of", "right of", "above", "below")
# anchor colours of GenEval's ten colour names (sRGB)
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (210, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 160, 60),
    "blue": (40, 70, 220),
    "purple": (130, 50, 180),
    "pink": (245, 140, 200),
    "brown": (125, 80, 40),
    "black": (15, 15, 15),
    "white": (245, 245, 245),
}
THRESHOLD = 0.3  # GenEval's confidence threshold (Mask2Former); OWLv2's scores run lower: see GenevalRules
COUNTING_THRESHOLD = 0.9
POSITION_MARGIN = 0.1
SHIPPED = "evaluation_metadata.jsonl"
NAMES = "object_names.txt"  # GenEval's 80 detector classes (COCO's)


@cache
def object_names() -> tuple[str, ...]:
    """GenEval's 80 object classes, shipped beside its prompts."""
    text = resources.files("bestshot.evaluate").joinpath("geneval_data", NAMES).read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


@dataclass(frozen=True)
class GenevalPrompt:
    tag: str
    prompt: str
    include: tuple[dict[str, Any], ...]
    exclude: tuple[dict[str, Any], ...] = ()
    index: int = 0

    @property
    def classes(self) -> list[str]:
        return list(dict.fromkeys(c["class"] for c in self.include + self.exclude))

    def metadata(self) -> dict[str, Any]:
        d: dict[str, Any] = {"tag": self.tag, "include": list(self.include), "prompt": self.prompt}
        if self.exclude:
            d["exclude"] = list(self.exclude)
        return d


def _clause(c: Any, where: str, n_before: int | None) -> dict[str, Any]:
    if not isinstance(c, dict) or not isinstance(c.get("class"), str) or not c["class"].strip():
        raise BestshotError(f"{where} needs a 'class' name (got {c!r})")
    count = c.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise BestshotError(f"{where} 'count' must be a whole number >= 1 (got {count!r})")
    if c.get("color") is not None and c["color"] not in COLOURS:
        raise BestshotError(f"{where} colour {c['color']!r} is not one of GenEval's: {', '.join(COLOURS)}")
    pos = c.get("position")
    if pos is not None:
        ok = isinstance(pos, list) and len(pos) == 2 and pos[0] in RELATIONS and isinstance(pos[1], int)
        if not ok or n_before is None or not 0 <= pos[1] < n_before:
            raise BestshotError(
                f"{where} 'position' must be [relation, index of an earlier include clause] with a relation "
                f"in {', '.join(RELATIONS)} (got {pos!r})"
            )
    return {**c, "count": count}


def parse_line(data: Any, where: str, index: int = 0) -> GenevalPrompt:
    """One GenEval metadata object, validated (one-line errors naming ``where``)."""
    if not isinstance(data, dict):
        raise BestshotError(f"{where} must be a JSON object with tag, prompt and include")
    if data.get("tag") not in TAGS:
        raise BestshotError(f"{where} tag {data.get('tag')!r} is not one of {', '.join(TAGS)}")
    if not isinstance(data.get("prompt"), str) or not data["prompt"].strip():
        raise BestshotError(f"{where} needs a non-empty 'prompt'")
    inc, exc = data.get("include"), data.get("exclude", [])
    if not isinstance(inc, list) or not inc or not isinstance(exc, list):
        raise BestshotError(f"{where} needs a non-empty 'include' list (and 'exclude', when given, a list)")
    include = tuple(_clause(c, f"{where} include[{i}]", i) for i, c in enumerate(inc))
    exclude = tuple(_clause(c, f"{where} exclude[{i}]", None) for i, c in enumerate(exc))
    return GenevalPrompt(data["tag"], data["prompt"].strip(), include, exclude, index)


def load_prompts(path: str | Path | None = None) -> list[GenevalPrompt]:
    """The GenEval prompt set: the shipped 553 prompts, or a user file in the same JSONL format."""
    if path is None:
        text = resources.files("bestshot.evaluate").joinpath("geneval_data", SHIPPED).read_text(encoding="utf-8")
        name = SHIPPED
    else:
        p = Path(path)
        if not p.is_file():
            raise BestshotError(f"GenEval prompt file {str(p)!r} does not exist — give a metadata .jsonl file")
        text, name = p.read_text(encoding="utf-8"), p.name
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as err:
            raise BestshotError(f"{name} line {n} is not valid JSON ({err.msg})") from None
        out.append(parse_line(data, f"{name} line {n}", len(out)))
    if not out:
        raise BestshotError(f"{name} holds no prompts")
    return out


# ------------------------------------------------------------------------------------------- rules


def _lab(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.asarray(rgb, np.float32).reshape(-1, 1, 3) / 255.0, cv2.COLOR_RGB2LAB).reshape(-1, 3)


_NAMES = list(COLOURS)
_ANCHORS = _lab(np.array([COLOURS[c] for c in _NAMES]))


def colour_of(image: Image.Image, box: tuple[float, ...]) -> str:
    """The colour name of the object in ``box``: a vote of its central half's pixels (nearest anchor in Lab)."""
    x0, y0, x1, y1 = box
    dx, dy = (x1 - x0) / 4, (y1 - y0) / 4
    crop = image.convert("RGB").crop(
        (int(x0 + dx), int(y0 + dy), max(int(x1 - dx), int(x0 + dx) + 1), max(int(y1 - dy), int(y0 + dy) + 1))
    )
    crop.thumbnail((48, 48))
    lab = _lab(np.asarray(crop))
    nearest = np.linalg.norm(lab[:, None, :] - _ANCHORS[None], axis=-1).argmin(1)
    return _NAMES[int(np.bincount(nearest, minlength=len(_NAMES)).argmax())]


def relative_position(a: tuple[float, ...], b: tuple[float, ...], margin: float = POSITION_MARGIN) -> set[str]:
    """Relations of box ``a`` to box ``b`` (GenEval's ``relative_position``; y grows downwards)."""
    ca = np.array([(a[0] + a[2]) / 2, (a[1] + a[3]) / 2])
    cb = np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2])
    dims = np.array([abs(a[2] - a[0]) + abs(b[2] - b[0]), abs(a[3] - a[1]) + abs(b[3] - b[1])])
    offset = ca - cb
    revised = np.maximum(np.abs(offset) - margin * dims, 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    rels = set()
    if dx < -0.5:
        rels.add("left of")
    if dx > 0.5:
        rels.add("right of")
    if dy < -0.5:
        rels.add("above")
    if dy > 0.5:
        rels.add("below")
    return rels


@dataclass
class GenevalRules:
    """Thresholds of the rules. GenEval's Mask2Former values are 0.3 / 0.9; OWLv2's sigmoid scores run much
    lower (a clear object often scores 0.3-0.6), so the defaults here are lower; tune them per detector."""

    threshold: float = 0.15
    counting_threshold: float = 0.3
    nms: float = 0.5
    max_objects: int = 16
    position_margin: float = POSITION_MARGIN
    # ask the detector for all 80 GenEval classes, not only the prompt's: a box then goes to the class it looks
    # most like (as GenEval's closed-set detector does), so a cat is not counted as the prompt's dog
    all_classes: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def threshold_for(self, tag: str) -> float:
        return self.counting_threshold if tag == "counting" else self.threshold


def judge(
    image: Image.Image, meta: GenevalPrompt, found: dict[str, list[Detection]], rules: GenevalRules
) -> tuple[bool, str]:
    """GenEval's verdict on one image from its detections (per class, most confident first)."""
    correct, reasons, groups = True, [], []
    for req in meta.include:
        cls, n = req["class"], req["count"]
        objs = found.get(cls, [])[:n]
        ok = len(objs) >= n
        if not ok:
            reasons.append(f"expected {cls}>={n}, found {len(objs)}")
        if ok and "color" in req:
            colours = [colour_of(image, o.box) for o in objs]
            if colours.count(req["color"]) < n:
                ok = False
                reasons.append(f"expected {req['color']} {cls}>={n}, found {', '.join(colours)}")
        if ok and "position" in req:
            rel, target = req["position"]
            if groups[target] is None:
                ok = False
                reasons.append(f"no target for {cls} to be {rel}")
            else:
                for o in objs:
                    bad = next(
                        (
                            t
                            for t in groups[target]
                            if rel not in relative_position(o.box, t.box, rules.position_margin)
                        ),
                        None,
                    )
                    if bad is not None:
                        got = relative_position(o.box, bad.box, rules.position_margin)
                        reasons.append(f"expected {cls} {rel} target, found {' and '.join(sorted(got)) or 'overlap'}")
                        ok = False
                        break
        correct &= ok
        groups.append(objs if ok else None)
    for req in meta.exclude:
        cls, n = req["class"], req["count"]
        if len(found.get(cls, [])) >= n:
            correct = False
            reasons.append(f"expected {cls}<{n}, found {len(found[cls])}")
    return correct, "; ".join(reasons)


def judge_image(image: Image.Image, meta: GenevalPrompt, detector: Any, rules: GenevalRules) -> dict[str, Any]:
    """Detect the prompt's classes and judge: ``{"correct", "reason", "detections"}``."""
    queries = meta.classes + ([c for c in object_names() if c not in meta.classes] if rules.all_classes else [])
    found = detector.detect(image, queries, rules.threshold_for(meta.tag), rules.nms, rules.max_objects)
    found = {c: found.get(c, []) for c in meta.classes}
    correct, reason = judge(image, meta, found, rules)
    dets = {c: [[round(v, 1) for v in d.box] + [round(d.score, 4)] for d in ds] for c, ds in found.items() if ds}
    return {"correct": correct, "reason": reason, "detections": dets}
