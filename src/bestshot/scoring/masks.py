"""The three ``scipy.ndimage`` operations that :func:`~bestshot.scoring.regions.find_regions` needs, on numpy.

Why not scipy: importing ``scipy.ndimage`` costs ~0.35-0.45 CPU s (it pulls ``scipy._lib.array_api_compat``
and ``numpy.f2py``), the largest single import of a cold ``bestshot generate`` after torch, for a few array
operations on 32×32 masks. Each function here returns what its scipy counterpart returns for these
arguments, element for element (``tests/test_regions.py`` compares them with scipy on random masks):

- :func:`label8` — ``ndimage.label(mask, structure=np.ones((3, 3)))``: 8-connected components numbered
  1..n in raster order of each one's first pixel;
- :func:`dilate` — ``ndimage.binary_dilation(mask, iterations=k)``: the default cross-shaped structure,
  outside the image counts as background, ``k < 1`` repeats until nothing changes;
- :func:`median3x3` — ``ndimage.median_filter(arr, size=(3, 3, 1))``: the default ``reflect`` border
  (the edge pixel repeated, numpy's ``symmetric``); a median of 9 values is one of them, so it is exact.
"""

from __future__ import annotations

import numpy as np


def label8(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """(labels, n): the 8-connected components of a 2-D boolean ``mask``, 0 = background."""
    h, w = mask.shape
    padded = np.zeros((h, w + 2), np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    rows, starts = np.nonzero(edges == 1)  # runs of foreground along each row, in raster order
    _, ends = np.nonzero(edges == -1)  # (exclusive ends, in the same order)
    rows, starts, ends = rows.tolist(), starts.tolist(), ends.tolist()
    parent = list(range(len(rows)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    # join each run with the runs of the row above that touch it, diagonals included (8-connectivity)
    above, k = 0, 0  # first run of the previous row; first run of this row
    while k < len(rows):
        r = rows[k]
        end_row = k
        while end_row < len(rows) and rows[end_row] == r:
            end_row += 1
        while above < k and rows[above] < r - 1:
            above += 1
        j = above
        for i in range(k, end_row):
            while j < k and ends[j] < starts[i]:  # run j ends left of run i's diagonal neighbour
                j += 1
            m = j
            while m < k and starts[m] <= ends[i]:
                a, b = root(i), root(m)
                if a != b:  # the earlier run (raster order) stays the root: it holds the component's first pixel
                    parent[max(a, b)] = min(a, b)
                m += 1
        above, k = k, end_row
    labels = np.zeros((h, w), np.int32)
    ids: dict[int, int] = {}
    for i in range(len(rows)):
        lab = ids.setdefault(root(i), len(ids) + 1)  # roots met in raster order: numbered as scipy numbers them
        labels[rows[i], starts[i] : ends[i]] = lab
    return labels, len(ids)


def dilate(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    """``mask`` grown by one pixel up, down, left and right, ``iterations`` times (< 1: until it stops)."""
    out = np.asarray(mask, bool)
    k = 0
    while iterations < 1 or k < iterations:
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        k += 1
        if iterations < 1 and np.array_equal(grown, out):
            return grown
        out = grown
    return out


def median3x3(arr: np.ndarray) -> np.ndarray:
    """The median of each pixel's 3×3 neighbourhood, per channel, of an (H, W, C) array."""
    h, w = arr.shape[:2]
    p = np.pad(arr, ((1, 1), (1, 1), (0, 0)), mode="symmetric")
    stack = np.stack([p[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)])
    return np.partition(stack, 4, axis=0)[4]
