"""Sliding-window refinement: split a large image into overlapping tiles, refine each, blend back.

A diffusion model cannot denoise a 4096x4096 image in one go, so stage 3 runs img2img on tiles.
Seams are hidden by overlapping the tiles and blending them with weights that ramp up from the
tile edge across the overlap (cosine or linear) and are flat elsewhere. The ramps of two
neighbours add up to 1 in a regular overlap, and the accumulation is divided by the summed
weights anyway, so any grid (shifted last tiles, corners) is a proper weighted average: a
constant image stays constant, and an identity refinement returns the input.

Everything here is pure numpy/PIL and model-free; the caller supplies ``refine_fn``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from bestshot.errors import BestshotError

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (x1/y1 exclusive), PIL crop order
BLEND_MODES = ("cosine", "linear")


def _starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile starts along one axis: a regular stride, the last one shifted back inside the image."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def tile_grid(width: int, height: int, tile_size: int, overlap: int) -> list[Box]:
    """Boxes of ``tile_size`` (clipped to the image) covering every pixel, neighbours overlapping
    by at least ``overlap``; row-major order. An image smaller than a tile is one tile."""
    if width < 1 or height < 1:
        raise BestshotError(f"cannot tile an empty image ({width}x{height})")
    if tile_size < 1 or overlap < 0 or overlap >= tile_size:
        raise BestshotError(
            f"bad tiling: tile_size={tile_size}, overlap={overlap} — need tile_size > 0 and 0 <= overlap < tile_size"
        )
    stride = tile_size - overlap
    tw, th = min(tile_size, width), min(tile_size, height)
    return [
        (x, y, x + tw, y + th) for y in _starts(height, tile_size, stride) for x in _starts(width, tile_size, stride)
    ]


def _ramp(n: int, overlap: int, mode: str, start: bool, end: bool) -> np.ndarray:
    """1-D weights of length n: rising over the first ``overlap`` samples (if ``start``), falling
    over the last ``overlap`` (if ``end``), 1 elsewhere. Sampled at pixel centres, so every value is
    > 0 and a falling ramp plus the next tile's rising ramp sum to exactly 1."""
    w = np.ones(n, dtype=np.float64)
    if overlap <= 0:
        return w
    t = np.clip((np.arange(n) + 0.5) / overlap, 0.0, 1.0)  # 0..1 across the overlap
    rise = np.sin(t * np.pi / 2) ** 2 if mode == "cosine" else t
    if start:
        w = np.minimum(w, rise)
    if end:
        w = np.minimum(w, rise[::-1])
    return w


def blend_weights(
    tile_w: int,
    tile_h: int,
    overlap: int,
    mode: str = "cosine",
    edges: tuple[bool, bool, bool, bool] = (True, True, True, True),
) -> np.ndarray:
    """Per-pixel weight (tile_h x tile_w, float64) of one tile.

    The weight ramps only inside the ``overlap`` band of each edge flagged in ``edges``
    (left, top, right, bottom) — edges on the image border are left flat, since nothing blends
    there. ``cosine`` is sin^2 (smooth, C1 joins); ``linear`` is a straight ramp.
    """
    if mode not in BLEND_MODES:
        raise BestshotError(f"unknown blend mode {mode!r} — use one of {', '.join(BLEND_MODES)}")
    left, top, right, bottom = edges
    return np.outer(_ramp(tile_h, overlap, mode, top, bottom), _ramp(tile_w, overlap, mode, left, right))


def _inner_edges(box: Box, width: int, height: int) -> tuple[bool, bool, bool, bool]:
    x0, y0, x1, y1 = box
    return (x0 > 0, y0 > 0, x1 < width, y1 < height)


class TileBlender:
    """Weighted accumulator: add tiles one at a time (so only one tile is in flight), then
    :meth:`result` divides by the summed weights. Memory: one float32 HxWxC plus one HxW."""

    def __init__(self, width: int, height: int, channels: int, overlap: int, mode: str = "cosine"):
        if mode not in BLEND_MODES:
            raise BestshotError(f"unknown blend mode {mode!r} — use one of {', '.join(BLEND_MODES)}")
        self.width, self.height, self.overlap, self.mode = width, height, overlap, mode
        self.acc = np.zeros((height, width, channels), dtype=np.float32)
        self.wsum = np.zeros((height, width), dtype=np.float32)

    def add(self, box: Box, tile: np.ndarray) -> None:
        x0, y0, x1, y1 = box
        tile = tile if tile.ndim == 3 else tile[..., None]
        if tile.shape[:2] != (y1 - y0, x1 - x0):
            raise ValueError(f"tile of shape {tile.shape[:2]} does not fit box {box}")
        w = blend_weights(x1 - x0, y1 - y0, self.overlap, self.mode, _inner_edges(box, self.width, self.height)).astype(
            np.float32
        )
        self.acc[y0:y1, x0:x1] += tile * w[..., None]
        self.wsum[y0:y1, x0:x1] += w

    def result(self) -> np.ndarray:
        if (self.wsum <= 0).any():
            raise ValueError("some pixels are covered by no tile")
        self.acc /= self.wsum[..., None]
        return self.acc


def _infer_overlap(boxes: list[Box]) -> int:
    """Overlap of a regular grid = tile size minus the smallest step between tile starts."""
    best = 0
    for axis in (0, 1):
        starts = sorted({b[axis] for b in boxes})
        if len(starts) > 1:
            size = boxes[0][axis + 2] - boxes[0][axis]
            best = max(best, size - min(b - a for a, b in zip(starts, starts[1:])))
    return best


def blend_tiles(
    tiles: Iterable[tuple[Box, np.ndarray]], width: int, height: int, mode: str = "cosine", overlap: int | None = None
) -> np.ndarray:
    """Blend ``(box, HxWxC float array)`` tiles into one height x width x C float32 array.

    ``overlap`` sets the ramp width; by default it is read off the grid (tile size minus stride).
    """
    tiles = list(tiles)
    if not tiles:
        raise ValueError("no tiles to blend")
    if overlap is None:
        overlap = _infer_overlap([box for box, _ in tiles])
    first = tiles[0][1]
    blender = TileBlender(width, height, first.shape[2] if first.ndim == 3 else 1, overlap, mode)
    for box, arr in tiles:
        blender.add(box, arr)
    return blender.result()


def _save_atomic(image: Image.Image, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def refine_tiled(
    image: Image.Image,
    refine_fn: Callable[[Image.Image, Box], Image.Image],
    tile_size: int = 1024,
    overlap: int = 128,
    mode: str = "cosine",
    progress: bool = True,
    tiles_dir: str | Path | None = None,
    tile_name: str = "tile_{index:03d}.png",
) -> Image.Image:
    """Refine ``image`` tile by tile with ``refine_fn(tile_image, box)`` and blend the results.

    ``refine_fn`` is the per-tile img2img call; it gets the crop and its box in the full image and
    returns an image of the same size (a different size, e.g. one snapped to a multiple of 8 by a
    pipeline, is Lanczos-resized back). With ``tiles_dir`` each refined tile is saved there as
    ``tile_name.format(index=i)`` (the intermediates/tiles folder). Tiles are accumulated one at
    a time, so memory is the output plus one tile.
    """
    if mode not in BLEND_MODES:
        raise BestshotError(f"unknown blend mode {mode!r} — use one of {', '.join(BLEND_MODES)}")
    boxes = tile_grid(image.width, image.height, tile_size, overlap)
    src_mode = image.mode if image.mode in ("RGB", "L", "RGBA") else "RGB"
    image = image.convert(src_mode)
    blender = TileBlender(image.width, image.height, len(image.getbands()), overlap, mode)
    if tiles_dir is not None:
        tiles_dir = Path(tiles_dir)
        tiles_dir.mkdir(parents=True, exist_ok=True)
    indexed: Iterable[tuple[int, Box]] = enumerate(boxes)
    if progress:
        from rich.progress import track

        indexed = track(indexed, total=len(boxes), description=f"refining {len(boxes)} tiles")
    for i, box in indexed:
        out = refine_fn(image.crop(box), box).convert(src_mode)
        size = (box[2] - box[0], box[3] - box[1])
        if out.size != size:
            out = out.resize(size, Image.Resampling.LANCZOS)
        if tiles_dir is not None:
            _save_atomic(out, tiles_dir / tile_name.format(index=i))
        blender.add(box, np.asarray(out, dtype=np.float32))
    arr = blender.result()
    arr = np.clip(np.rint(arr, out=arr), 0, 255, out=arr).astype(np.uint8)  # in place: no 2 extra copies
    return Image.fromarray(arr[..., 0] if src_mode == "L" else arr, src_mode)
