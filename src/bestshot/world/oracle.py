"""An oracle for the procedural world: does this image show what this prompt says?

Why: the embedded model is evaluated by *reading its images back*, attribute by attribute, instead of
trusting a learned score. The oracle is exact on rendered images (it fits the world's own shape
definitions, :func:`bestshot.world.render.coverage`) and tolerant of the noise and blur of generated ones.

How, per image:
1. background = median colour of a 2-pixel border ring (robust to objects touching the border);
   the border's spread also estimates the noise level, which decides whether to smooth the image.
2. foreground = pixels far from the background (threshold relative to the nearest palette colour);
   8-connected components, tiny ones dropped.
3. each component: colour = median of its core pixels, nearest palette colour in CIELAB; a soft
   coverage map (alpha) from projecting pixels on the background->object colour line; for every
   shape, a box is fitted from the alpha's area and centroid and the shape is rendered there, sharp and
   blurred by a few widths (generated images have soft edges: blur rounds a cross towards a diamond and
   a diamond towards a circle, so a sharp template alone misreads them); the (shape, blur) with the least
   squared error wins (its soft IoU is reported), and the fitted box gives size and centre. Coverage is
   measured against the named palette colour, not the observed one, which a small blurred object never
   reaches.
4. prompt objects are matched to components (best assignment), then shape, colour, size, count,
   background and the relation (centre offset within 45 degrees of the axis) are checked.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage

from bestshot.errors import BestshotError

from .captions import PromptSpec, parse_prompt
from .render import SHAPE_AREA, SHAPE_CENTROID_DY, coverage
from .scenes import Obj
from .vocabulary import BACKGROUNDS, COLOURS, RELATIONS, SHAPES, SIZE_FRACTION, SIZES

_SIZE_EDGES = [(SIZE_FRACTION[a] + SIZE_FRACTION[b]) / 2 for a, b in zip(SIZES, SIZES[1:])]
# edge blurs the shape templates are also fitted with, as a fraction of the image side (0.032 = 1 px at 32 px);
# a sharp render still fits its own sharp template best (error ~0), so renders stay exact
_FIT_BLURS = (0.0, 0.016, 0.032)


@dataclass(frozen=True)
class Blob:
    """One object found in an image (centre and side as fractions of the image side)."""

    colour: str
    shape: str
    size: str
    cx: float
    cy: float
    side: float
    shape_iou: float
    area_px: int

    def describe(self) -> str:
        return f"{self.size} {self.colour} {self.shape}@({self.cx:.2f},{self.cy:.2f})"


@dataclass(frozen=True)
class Analysis:
    background: str
    blobs: tuple[Blob, ...]


@dataclass(frozen=True)
class OracleResult:
    match: bool
    shape: bool
    colour: bool
    count: bool
    position: bool  # True when the prompt states no relation
    size: bool | None = None  # None when the prompt mentions no size
    background: bool | None = None  # None when the prompt mentions no background
    detail: str = ""
    blobs: tuple[Blob, ...] = field(default=(), repr=False)


# ------------------------------------------------------------------------------------------- colour
def _srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 255] (..., 3) -> CIELAB (D65): distances there roughly follow perceived ones."""
    c = np.asarray(rgb, np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


_COLOUR_NAMES = list(COLOURS)
_COLOUR_LAB = _srgb_to_lab(np.array([COLOURS[c] for c in _COLOUR_NAMES]))
_BG_NAMES = list(BACKGROUNDS)
_BG_LAB = _srgb_to_lab(np.array([BACKGROUNDS[b] for b in _BG_NAMES]))
_PALETTE_RGB = np.array([COLOURS[c] for c in _COLOUR_NAMES], np.float64)


def _nearest(lab_table: np.ndarray, names: list[str], rgb: np.ndarray) -> str:
    return names[int(np.argmin(np.linalg.norm(lab_table - _srgb_to_lab(rgb), axis=-1)))]


# ------------------------------------------------------------------------------------------- images
def to_array(image) -> np.ndarray:
    """PIL image, HWC uint8/float[0,1] array, or CHW tensor in [-1, 1] -> float64 HWC in [0, 255]."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), np.float64)
    if hasattr(image, "detach"):  # torch tensor, the dataset convention: CHW in [-1, 1]
        arr = image.detach().float().cpu().numpy()
        arr = np.moveaxis(arr, 0, -1) if arr.ndim == 3 and arr.shape[0] in (1, 3) else arr
        arr = (arr + 1.0) * 127.5
    else:
        arr = np.asarray(image)
        if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
            arr = np.moveaxis(arr, 0, -1)
        arr = arr.astype(np.float64) * (255.0 if arr.dtype.kind == "f" else 1.0)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, -1)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise BestshotError(f"oracle needs an RGB image, got an array of shape {arr.shape} — pass HxWx3")
    return np.clip(arr, 0, 255)


def analyse(image) -> Analysis:
    """Find the background and the objects of an image (see the module docstring)."""
    arr = to_array(image)
    h, w, _ = arr.shape
    side = float(min(h, w))
    ring = np.ones((h, w), bool)
    ring[2:-2, 2:-2] = False
    border = arr[ring]
    bg = np.median(border, axis=0)
    noise = float(np.median(1.4826 * np.median(np.abs(border - bg), axis=0)))
    # smooth only what is noisy: clean renders keep their exact edges (the oracle must be exact there)
    sigma = 0.0 if noise < 2.0 else min(1.2, 0.5 + noise / 40.0)
    smooth = ndimage.gaussian_filter(arr, sigma=(sigma, sigma, 0)) if sigma else arr
    contrast = np.linalg.norm(_PALETTE_RGB - bg, axis=-1)
    dist = np.linalg.norm(smooth - bg, axis=-1)
    mask = dist > max(0.4 * float(contrast.min()), 6.0 * noise / max(1.0, 2.5 * sigma))
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    min_area = 0.3 * 0.5 * (SIZE_FRACTION["small"] * side) ** 2
    comps = [k for k, a in enumerate(ndimage.sum_labels(mask, labels, range(1, n + 1)), start=1) if a >= min_area]
    comps.sort(key=lambda k: -int((labels == k).sum()))
    comps = comps[:8]  # a generated mess is a count mismatch anyway; keep the work bounded
    masks = {k: labels == k for k in comps}
    grown = {k: ndimage.binary_dilation(m, iterations=1) for k, m in masks.items()}
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    blobs = []
    for k in comps:
        m = masks[k]
        d = dist[m]
        core = m & (dist >= 0.8 * np.percentile(d, 90))
        obj = np.median(arr[core], axis=0)  # raw pixels: smoothing would wash out thin objects
        colour = _nearest(_COLOUR_LAB, _COLOUR_NAMES, obj)
        region = ndimage.binary_dilation(m, iterations=2)
        for j in comps:
            if j != k:
                region &= ~grown[j]
        # the palette colour, not the observed one: a small blurred object never reaches its full colour, and
        # scaling coverage by its faded peak would flatten it (a blurred small cross then fits a diamond)
        direction = np.asarray(COLOURS[colour], np.float64) - bg
        raw = (smooth - bg) @ direction / max(float(direction @ direction), 1e-6)
        raw[~region] = 0
        # area and centroid from the unclipped map: zero-mean noise cancels instead of adding area
        area = max(float(raw.sum()), 1.0)
        mx, my = float((raw * xx).sum() / area), float((raw * yy).sum() / area)
        alpha = np.clip(raw, 0, 1)
        ys, xs = np.nonzero(region)
        win = (ys.min() - 3, ys.max() + 4, xs.min() - 3, xs.max() + 4)
        best = None
        for shape in SHAPES:
            s_px = math.sqrt(area / SHAPE_AREA[shape])
            cy = my - SHAPE_CENTROID_DY[shape] * s_px
            t = coverage(shape, mx, cy, s_px, h, w, window=win)
            sl = (slice(max(0, win[0]), win[1]), slice(max(0, win[2]), win[3]))
            a, reg = alpha[sl], region[sl]
            for fit_blur in _FIT_BLURS:
                # the alpha map may have been smoothed (sigma) on top of the image's own blur: blur alike
                b = math.hypot(sigma, fit_blur * side)
                tt = ndimage.gaussian_filter(t[sl], b, mode="constant") if b else t[sl]
                iou = float(np.minimum(a, tt).sum() / max(np.maximum(a, tt).sum(), 1e-6))
                err = float((((a - tt) ** 2) * reg).sum())  # alpha is zeroed outside the region
                if best is None or err < best[5]:
                    best = (iou, shape, s_px, mx, cy, err)
        iou, shape, s_px, cx, cy, _ = best
        frac = s_px / side
        size = SIZES[int(np.searchsorted(_SIZE_EDGES, frac))]
        blobs.append(Blob(colour, shape, size, cx / w, cy / h, frac, iou, int(m.sum())))
    return Analysis(_nearest(_BG_LAB, _BG_NAMES, bg), tuple(blobs))


# ------------------------------------------------------------------------------------------ judging
def relation_holds(a: Blob | Obj, b: Blob | Obj, relation: str) -> bool:
    """``a <relation> b`` when the centre offset lies within 45 degrees of the relation's axis."""
    dx, dy = b.cx - a.cx, b.cy - a.cy
    along = {"left of": dx, "right of": -dx, "above": dy, "below": -dy}[relation]
    across = abs(dy) if relation in ("left of", "right of") else abs(dx)
    return along > across


def _judge(spec: PromptSpec, an: Analysis) -> OracleResult:
    objs, blobs = spec.objects, an.blobs
    k = min(len(objs), len(blobs))
    best, best_score = None, -1.0
    # every way to give k of the prompt's objects a distinct blob (k <= 3, blobs <= 8: small)
    for which in itertools.combinations(range(len(objs)), k):
        for perm in itertools.permutations(range(len(blobs)), k):
            assign = dict(zip(which, perm))
            score = 0.0
            for i, j in assign.items():
                o, b = objs[i], blobs[j]
                score += 2 * (o.colour in (None, b.colour)) + 2 * (o.shape == b.shape) + (o.size in (None, b.size))
            if spec.relation and 0 in assign and 1 in assign:
                score += 0.5 * relation_holds(blobs[assign[0]], blobs[assign[1]], spec.relation)
            if score > best_score:
                best, best_score = assign, score
    assign = best or {}
    got = [blobs[assign[i]] if i in assign else None for i in range(len(objs))]
    colour = all(b is not None and o.colour in (None, b.colour) for o, b in zip(objs, got))
    shape = all(b is not None and o.shape == b.shape for o, b in zip(objs, got))
    size = None
    if any(o.size for o in objs):
        size = all(b is not None and o.size in (None, b.size) for o, b in zip(objs, got))
    count = len(blobs) == len(objs)
    position = True
    if spec.relation:
        position = (
            len(got) >= 2
            and got[0] is not None
            and got[1] is not None
            and relation_holds(got[0], got[1], spec.relation)
        )
    background = None if spec.background is None else spec.background == an.background
    checks = {
        "shape": shape,
        "colour": colour,
        "count": count,
        "position": position,
        "size": size,
        "background": background,
    }
    failed = [name for name, ok in checks.items() if ok is False]
    found = ", ".join(b.describe() for b in blobs) or "nothing"
    detail = f"{'ok' if not failed else 'wrong ' + '/'.join(failed)}; {an.background} background; found {found}"
    return OracleResult(not failed, shape, colour, count, position, size, background, detail, blobs)


def oracle(image, prompt: str) -> OracleResult:
    """Check ``image`` against a world ``prompt``; every attribute the prompt mentions must hold."""
    spec = parse_prompt(prompt)
    if spec is None:
        raise BestshotError(
            f"{prompt!r} is not a prompt of the procedural world — use shapes "
            f"({', '.join(SHAPES)}), colours ({', '.join(COLOURS)}) and relations "
            f"({', '.join(RELATIONS)}), e.g. 'a red circle above a blue square'"
        )
    return _judge(spec, analyse(image))


ATTRIBUTES = ("shape", "colour", "count", "position", "size", "background")


def match_rate(images, prompts) -> dict:
    """Full-match rate and per-attribute rates over image/prompt pairs (size and background over the
    prompts that mention them). ``results`` keeps the per-pair :class:`OracleResult`."""
    images, prompts = list(images), list(prompts)
    if len(images) != len(prompts):
        raise BestshotError(
            f"match_rate got {len(images)} images but {len(prompts)} prompts — pass one prompt per image"
        )
    results = [oracle(im, p) for im, p in zip(images, prompts)]
    out: dict = {"n": len(results), "match": float(np.mean([r.match for r in results])) if results else 0.0}
    for a in ATTRIBUTES:
        vals = [getattr(r, a) for r in results if getattr(r, a) is not None]
        out[a] = float(np.mean(vals)) if vals else None
        out[f"n_{a}"] = len(vals)
    out["results"] = results
    return out
