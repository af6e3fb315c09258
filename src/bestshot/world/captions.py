"""Captions: what is true of a scene, in words, and world prompts read back into attributes.

:func:`caption` writes a true caption of a scene from several templates; :func:`parse_prompt` reads a
prompt back (``parse_prompt(prompt_for(s)) == s``); :func:`log_prior` is the world's prior of a prompt.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

from .scenes import N_OBJECT_WEIGHTS, Obj, Scene
from .vocabulary import BACKGROUNDS, COLOURS, INVERSE, RELATIONS, SHAPES, SIZES


@dataclass(frozen=True)
class ObjSpec:
    """An object as a prompt describes it; ``None`` means the prompt does not say."""

    shape: str
    colour: str | None = None
    size: str | None = None


@dataclass(frozen=True)
class PromptSpec:
    """What :func:`parse_prompt` recovers from a prompt: a :class:`Scene` without positions."""

    objects: tuple[ObjSpec, ...]
    background: str | None
    relation: str | None  # objects[0] <relation> objects[1], as the prompt states it


_REL_PHRASES: dict[str, tuple[str, ...]] = {
    "left of": ("to the left of", "left of"),
    "right of": ("to the right of", "right of"),
    "above": ("above",),
    "below": ("below", "under"),
}
_PREFIXES = ("a picture of ", "an image of ", "a drawing of ")
_SIZE_WORDS = {
    "small": "small",
    "tiny": "small",
    "medium": "medium",
    "medium-sized": "medium",
    "large": "large",
    "big": "large",
}
_SHAPE_WORDS = {**{s: s for s in SHAPES}, "rhombus": "diamond", "plus": "cross", "ball": "circle"}
_COLOUR_WORDS = {**{c: c for c in COLOURS}, "violet": "purple"}
_BG_WORDS = {**{b: b for b in BACKGROUNDS}, "grey": "gray"}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _obj_phrase(o: Obj, rng: random.Random, with_size: bool, article: bool = True) -> str:
    words = ([o.size] if with_size else []) + [o.colour, o.shape]
    text = " ".join(words)
    return f"{_article(text)} {text}" if article else text


def _bg_clause(bg: str, rng: random.Random) -> str:
    return rng.choice((f" on a {bg} background", f" on a {bg} background", f" on {bg}"))


def caption(scene: Scene, rng: random.Random, require_relation: bool = False) -> str:
    """A lower-case caption that is true of ``scene``, drawn from several templates.

    Size words and the background clause are optional; a relation may be phrased either way round
    ("A above B" or "B below A"). ``require_relation`` forces two-object captions to state it (held-out
    evaluation prompts need it).
    """
    objs = scene.objects
    with_size = rng.random() < 0.5
    bg = _bg_clause(scene.background, rng) if rng.random() < 0.5 else ""
    if len(objs) == 1:
        r = rng.random()
        if r < 0.15 and not with_size:  # terse: "red circle"
            body = _obj_phrase(objs[0], rng, False, article=False)
        else:
            body = _obj_phrase(objs[0], rng, with_size)
            if r > 0.9:
                body = rng.choice(_PREFIXES) + body
    elif len(objs) == 2:
        a, b = (_obj_phrase(o, rng, with_size) for o in objs)
        if scene.relation is None or (not require_relation and rng.random() < 0.1):
            body = f"{a} and {b}"
        elif rng.random() < 0.5:
            body = f"{a} {rng.choice(_REL_PHRASES[scene.relation])} {b}"
        else:
            body = f"{b} {rng.choice(_REL_PHRASES[INVERSE[scene.relation]])} {a}"
    else:
        phrases = [_obj_phrase(o, rng, with_size) for o in objs]
        body = ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return (body + bg).lower()


def spec_of(scene: Scene) -> PromptSpec:
    """Everything a prompt can say about ``scene`` (what a fully specific caption states)."""
    return PromptSpec(
        tuple(ObjSpec(o.shape, o.colour, o.size) for o in scene.objects), scene.background, scene.relation
    )


def prompt_for(spec: PromptSpec) -> str:
    """The canonical prompt for a spec: ``parse_prompt(prompt_for(s)) == s`` for any valid spec."""
    phrases = []
    for o in spec.objects:
        text = " ".join(w for w in (o.size, o.colour, o.shape) if w)
        phrases.append(f"{_article(text)} {text}")
    if spec.relation is not None:
        if len(phrases) != 2:
            raise ValueError("a relation needs exactly two objects")
        body = f"{phrases[0]} {spec.relation} {phrases[1]}"
    else:
        body = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return body + (f" on a {spec.background} background" if spec.background else "")


_OBJ_RE = re.compile(r"^(?:(?:a|an|one|the) )?(?:(?P<size>[a-z-]+) )?(?:(?P<colour>[a-z]+) )?(?P<shape>[a-z]+)$")


def _parse_obj(text: str) -> ObjSpec | None:
    m = _OBJ_RE.match(text.strip())
    if not m:
        return None
    size, colour, shape = m.group("size"), m.group("colour"), m.group("shape")
    if shape not in _SHAPE_WORDS and shape.endswith("s"):  # tolerate a plural
        shape = shape[:-1]
    if size and colour is None and size in _COLOUR_WORDS:  # "a red circle": regex put the colour in size
        size, colour = None, size
    if shape not in _SHAPE_WORDS or (colour and colour not in _COLOUR_WORDS) or (size and size not in _SIZE_WORDS):
        return None
    return ObjSpec(_SHAPE_WORDS[shape], _COLOUR_WORDS[colour] if colour else None, _SIZE_WORDS[size] if size else None)


def parse_prompt(prompt: str) -> PromptSpec | None:
    """Read a prompt back into the world's attributes, or None when it is not a world prompt.

    Accepts everything :func:`caption` writes (and a few synonyms: grey, big, tiny, under, ...).
    The relation is returned as stated: ``objects[0] <relation> objects[1]``.
    """
    text = re.sub(r"\s+", " ", prompt.lower().strip().rstrip(".!").strip())
    for p in _PREFIXES + ("a photo of ", "a render of "):
        if text.startswith(p):
            text = text[len(p) :]
            break
    background = None
    m = re.search(r" (?:on|against|with) (?:a |an )?([a-z]+)(?: background| backdrop)?$", text)
    if m and m.group(1) in _BG_WORDS:
        background = _BG_WORDS[m.group(1)]
        text = text[: m.start()]
    relation = None
    for rel, phrases in _REL_PHRASES.items():
        for ph in sorted(phrases + (("beneath",) if rel == "below" else ()), key=len, reverse=True):
            if f" {ph} " in text:
                left, right = text.split(f" {ph} ", 1)
                parts, relation = [left, right], rel
                break
        if relation:
            break
    if relation is None:
        parts = [p for p in re.split(r",? and |, ", text)]
    objs = [_parse_obj(p) for p in parts]
    if not objs or any(o is None for o in objs) or len(objs) > 3:
        return None
    return PromptSpec(tuple(objs), background, relation)  # type: ignore[arg-type]


def log_prior(spec: PromptSpec) -> float:
    """Natural log of the probability that :func:`sample_scene` draws a scene ``spec`` describes.

    What the spec leaves out (sizes, background, relation) is summed over. Objects are a set: a pair with
    a relation can be drawn in two orders ("A left of B" is "B right of A"), three objects in six. Sizes
    count as uniform (the redraw of sizes that cannot be placed is ignored) and colours are not required to
    differ, so this is the world's prior up to that approximation. Why: a contrastive CLIP scores how much
    *more* likely a text is given the image than without it, so a search for the most probable prompt adds
    this prior (see ``interrogate.WorldSearch``); without it, two same-coloured objects that hedge between
    two shapes outscore the single object that is there.
    """
    n = len(spec.objects)
    if not 1 <= n <= 3:
        raise ValueError(f"a world scene has 1-3 objects, got {n}")
    kinds = len(SHAPES) * len(COLOURS)
    lp = math.log(N_OBJECT_WEIGHTS[n] / sum(N_OBJECT_WEIGHTS.values())) + math.log(math.factorial(n))
    lp -= sum(math.log(kinds - i) for i in range(n))  # distinct (shape, colour) kinds, drawn in order
    lp -= sum(math.log(len(SIZES)) for o in spec.objects if o.size is not None)
    if spec.background is not None:
        lp -= math.log(len(BACKGROUNDS))
    if spec.relation is not None and n == 2:
        lp -= math.log(len(RELATIONS))
    return lp
