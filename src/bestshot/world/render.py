"""Geometry and rendering: one definition of every shape, drawn by exact supersampled area coverage.

Each object fills a square box of side ``SIZE_FRACTION[size]`` (fraction of the image side) centred on
``(cx, cy)`` in ``[0, 1]`` image coordinates (y grows downwards). Shapes are inside-tests on
box-normalised coordinates (:func:`shape_inside`); the renderer and the oracle share them.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from .scenes import Scene
from .vocabulary import BACKGROUNDS, COLOURS, SIZE_FRACTION

CROSS_ARM = 0.18  # half-width of a cross arm, in box units
SUPERSAMPLE = 4


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


def coverage(
    shape: str,
    cx: float,
    cy: float,
    side: float,
    height: int,
    width: int,
    window: tuple[int, int, int, int] | None = None,
    ss: int = SUPERSAMPLE,
) -> np.ndarray:
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
