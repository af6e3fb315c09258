"""A procedural captioned world: coloured shapes on plain backgrounds, with exact captions.

Why: no pretrained text-to-image weights can be downloaded where bestshot is built, so the embedded
model is trained on a world whose every image has a caption that is *true*, and whose images can be
checked against a prompt by :mod:`bestshot.world.oracle`. Everything is deterministic from a seed and
the world is unlimited (item ``i`` of a dataset depends only on ``(seed, i)``).

Geometry: each object fills a square box of side ``SIZE_FRACTION[size]`` (fraction of the image side)
centred on ``(cx, cy)`` in ``[0, 1]`` image coordinates (y grows downwards). Shapes are defined once, as
inside-tests on box-normalised coordinates (:func:`shape_inside`), and rendered by exact supersampled
area coverage, so the renderer and the oracle share one definition of every shape.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 170, 60),
    "cyan": (40, 200, 220),
    "blue": (40, 70, 220),
    "purple": (140, 50, 190),
    "pink": (245, 130, 200),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
    "beige": (235, 222, 195),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
SIZES: tuple[str, ...] = ("small", "medium", "large")
SIZE_FRACTION: dict[str, float] = {"small": 0.22, "medium": 0.32, "large": 0.42}
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
INVERSE: dict[str, str] = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}

# Layout constants (fractions of the image side). GAP keeps objects apart so that they stay separate
# connected components even after blur; RELATION_SLOPE bounds the off-axis offset of a relation
# (|dy| <= slope * dx for "left of"), while the oracle accepts anything within 45 degrees.
MARGIN = 0.03
GAP = 0.08
RELATION_SLOPE = 0.5
CROSS_ARM = 0.18  # half-width of a cross arm, in box units
N_OBJECT_WEIGHTS = {1: 0.45, 2: 0.40, 3: 0.15}
SUPERSAMPLE = 4


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


# ----------------------------------------------------------------------------------------- geometry
def shape_inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test for ``shape`` at box-normalised coordinates (box is [-0.5, 0.5]^2, v downwards)."""
    if shape == "circle":
        return u * u + v * v <= 0.25
    if shape == "square":
        return (np.abs(u) <= 0.5) & (np.abs(v) <= 0.5)
    if shape == "triangle":  # apex up, base at the bottom of the box
        return (v <= 0.5) & (np.abs(u) <= (v + 0.5) / 2)
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 0.5
    if shape == "cross":
        a = CROSS_ARM
        au, av = np.abs(u), np.abs(v)
        return ((au <= a) & (av <= 0.5)) | ((av <= a) & (au <= 0.5))
    raise ValueError(f"unknown shape {shape!r}")


# Area of each shape as a fraction of its box, and its centroid's vertical offset from the box centre
# (in box units); the oracle uses both to fit a box to a blob.
SHAPE_AREA: dict[str, float] = {
    "circle": math.pi / 4,
    "square": 1.0,
    "triangle": 0.5,
    "diamond": 0.5,
    "cross": 4 * CROSS_ARM - 4 * CROSS_ARM**2,
}
SHAPE_CENTROID_DY: dict[str, float] = {"circle": 0.0, "square": 0.0, "triangle": 1 / 6, "diamond": 0.0, "cross": 0.0}


def coverage(shape: str, cx: float, cy: float, side: float, height: int, width: int,
             window: tuple[int, int, int, int] | None = None, ss: int = SUPERSAMPLE) -> np.ndarray:
    """Fraction of each pixel covered by ``shape`` (box centre and side in *pixels*).

    Returns a ``(height, width)`` float32 array, computed only inside ``window = (y0, y1, x0, x1)``
    (zero elsewhere). Pixel ``(x, y)`` spans ``[x, x+1) x [y, y+1)``.
    """
    out = np.zeros((height, width), np.float32)
    if window is None:
        r = side / 2 + 1
        window = (int(cy - r), int(math.ceil(cy + r)) + 1, int(cx - r), int(math.ceil(cx + r)) + 1)
    y0, y1, x0, x1 = max(0, window[0]), min(height, window[1]), max(0, window[2]), min(width, window[3])
    if y1 <= y0 or x1 <= x0 or side <= 0:
        return out
    offs = (np.arange(ss) + 0.5) / ss
    ys = (np.arange(y0, y1)[:, None] + offs[None, :]).ravel()
    xs = (np.arange(x0, x1)[:, None] + offs[None, :]).ravel()
    inside = shape_inside(shape, (xs[None, :] - cx) / side, (ys[:, None] - cy) / side)
    out[y0:y1, x0:x1] = inside.reshape(y1 - y0, ss, x1 - x0, ss).mean(axis=(1, 3))
    return out


# ----------------------------------------------------------------------------------------- sampling
def _boxes_apart(a: tuple[float, float, float], b: tuple[float, float, float]) -> bool:
    """Boxes (cx, cy, side) separated by at least GAP along some axis."""
    (ax, ay, sa), (bx, by, sb) = a, b
    need = (sa + sb) / 2 + GAP
    return abs(ax - bx) >= need or abs(ay - by) >= need


def _place_pair(rng: random.Random, sa: float, sb: float, relation: str) -> tuple[tuple[float, float], tuple[float, float]] | None:
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
        q_b = rng.uniform(max(lo_b, q_a - RELATION_SLOPE * d), min(hi_b, q_a + RELATION_SLOPE * d)) \
            if max(lo_b, q_a - RELATION_SLOPE * d) <= min(hi_b, q_a + RELATION_SLOPE * d) else None
        if q_b is None:
            continue
        pa, pb = (p1, p2) if first_is_a else (p2, p1)
        if horizontal:
            return (pa, q_a), (pb, q_b)
        return (q_a, pa), (q_b, pb)
    return None


def sample_scene(rng: random.Random, n_objects: int | None = None, max_objects: int = 3,
                 min_objects: int = 1, object_weights: dict[int, float] | None = None) -> Scene:
    """A random scene: 1-3 distinct (shape, colour) objects, non-overlapping, inside the canvas.

    Two-object scenes always carry a relation (objects[0] <relation> objects[1]) and positions that
    satisfy it clearly; one- and three-object scenes have ``relation=None``. ``object_weights`` replaces
    :data:`N_OBJECT_WEIGHTS` (how often 1, 2 and 3 objects are drawn).
    """
    if n_objects is None:
        weights = N_OBJECT_WEIGHTS if object_weights is None else object_weights
        ns = [n for n in N_OBJECT_WEIGHTS if min_objects <= n <= max_objects and weights.get(n, 0) > 0]
        if not ns:
            raise ValueError(f"no object count in [{min_objects}, {max_objects}] with a positive weight (supported: 1-3)")
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
                cand = [(rng.uniform(MARGIN + s / 2, 1 - MARGIN - s / 2), rng.uniform(MARGIN + s / 2, 1 - MARGIN - s / 2))
                        for s in sides]
                boxes = [(x, y, s) for (x, y), s in zip(cand, sides)]
                if all(_boxes_apart(boxes[i], boxes[j]) for i in range(n_objects) for j in range(i)):
                    centres = cand
                    break
        if centres is not None:
            break
    objects = tuple(Obj(shape, colour, size, round(x, 4), round(y, 4))
                    for (shape, colour), size, (x, y) in zip(kinds, sizes, centres))
    return Scene(objects, background, relation)


# ---------------------------------------------------------------------------------------- rendering
def render(scene: Scene, size: int = 64) -> Image.Image:
    """Render ``scene`` as a ``size`` x ``size`` RGB image, anti-aliased by exact area coverage."""
    if size < 16:
        raise ValueError(f"render size must be >= 16, got {size}")
    img = np.empty((size, size, 3), np.float32)
    img[:] = BACKGROUNDS[scene.background]
    for o in scene.objects:
        a = coverage(o.shape, o.cx * size, o.cy * size, SIZE_FRACTION[o.size] * size, size, size)[..., None]
        img = img * (1 - a) + np.asarray(COLOURS[o.colour], np.float32) * a
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB")


# ----------------------------------------------------------------------------------------- captions
_REL_PHRASES: dict[str, tuple[str, ...]] = {
    "left of": ("to the left of", "left of"),
    "right of": ("to the right of", "right of"),
    "above": ("above",),
    "below": ("below", "under"),
}
_PREFIXES = ("a picture of ", "an image of ", "a drawing of ")
_SIZE_WORDS = {"small": "small", "tiny": "small", "medium": "medium", "medium-sized": "medium",
               "large": "large", "big": "large"}
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
    return PromptSpec(tuple(ObjSpec(o.shape, o.colour, o.size) for o in scene.objects), scene.background, scene.relation)


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
            text = text[len(p):]
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


# ----------------------------------------------------------------------------------------- datasets
def _item_rng(namespace: str, seed: int, i: int) -> random.Random:
    # str seeds are hashed with SHA-512 by random.Random: stable across processes and platforms
    return random.Random(f"bestshot-world:{namespace}:{seed}:{i}")


def scene_for(seed: int, i: int, max_objects: int = 3, min_objects: int = 1,
              object_weights: dict[int, float] | None = None) -> tuple[Scene, random.Random]:
    """The scene of training item ``i`` (and the rng positioned to draw its caption)."""
    rng = _item_rng("train", seed, i)
    return sample_scene(rng, max_objects=max_objects, min_objects=min_objects, object_weights=object_weights), rng


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> float CHW in [-1, 1] (the convention of every bestshot training dataset)."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1).div(127.5).sub(1.0)


class WorldDataset(torch.utils.data.Dataset):
    """``length`` procedurally generated (image, caption) pairs; item i depends only on (seed, i)."""

    def __init__(self, length: int, size: int = 64, seed: int = 0, max_objects: int = 3, min_objects: int = 1):
        if length < 0:
            raise ValueError("length must be >= 0")
        self.length, self.size, self.seed = length, size, seed
        self.max_objects, self.min_objects = max_objects, min_objects

    def __len__(self) -> int:
        return self.length

    def scene(self, i: int) -> Scene:
        return scene_for(self.seed, i, self.max_objects, self.min_objects)[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        if not 0 <= i < self.length:
            raise IndexError(i)
        scene, rng = scene_for(self.seed, i, self.max_objects, self.min_objects)
        return image_to_tensor(render(scene, self.size)), caption(scene, rng)


def heldout_scenes(n: int = 200, seed: int = 12345, n_objects: int | None = None) -> list[tuple[Scene, str]]:
    """The fixed held-out (scene, prompt) pairs behind :func:`heldout_prompts`."""
    out = []
    for i in range(n):
        rng = _item_rng("heldout", seed, i)
        scene = sample_scene(rng, n_objects=n_objects)
        out.append((scene, caption(scene, rng, require_relation=True)))
    return out


def heldout_prompts(n: int = 200, seed: int = 12345, n_objects: int | None = None) -> list[str]:
    """A fixed set of evaluation prompts, drawn from an rng namespace disjoint from training items.

    Two-object prompts always state their relation so that ``position`` is really tested.
    """
    return [p for _, p in heldout_scenes(n, seed, n_objects)]
