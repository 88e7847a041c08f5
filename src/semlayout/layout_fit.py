"""From the SEM->Layout generator's grey output to a drawn layout: threshold, then Manhattan fit.

A drawn layout is a set of axis-parallel (Manhattan) polygons on the design grid. The
generator's output, thresholded at the middle of the range, is the *printed-looking*
version of that: a 4 px via comes out as a disc, a line's edges wander by a pixel
with the line-edge roughness the generator saw. The fit puts the drawing back:

    mask = grey > threshold                                  (the IoU metric's binarisation)
    for each 4-connected component of mask:
        R = the axis-parallel rectangle that best covers it  (majority rule, below)
        if IoU(R, component) >= min_iou: replace the component by R
        else: keep it as thresholded                         (L, T, routing, merged shapes)

The majority rule: rows where at least half of the component's columns are set, then
columns where at least half of those rows are set (twice); the rectangle spans the
first to last such row and column. It is the rectangle a layout engineer would draw
over the blob, and unlike the bounding box it ignores one-pixel excursions (LER).

`method="threshold"` skips the fit (the raw binarisation). Both return uint8 {0, 255}.
Measured (docs/physics.md, "the layout fit"): the fit adds IoU on line/space, line ends,
vias and the independent simulator's combs; it leaves L/T/routing shapes as they were.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

from semlayout.errors import SemlayoutError

FitMethod = Literal["manhattan", "threshold"]  # also the config's `layout_fit.method` type
FIT_METHODS: tuple[str, ...] = get_args(FitMethod)


def _majority_rectangle(comp: np.ndarray) -> tuple[int, int, int, int] | None:
    """(r0, r1, c0, c1) inclusive of the majority-rule rectangle of a boolean (h, w) blob."""
    cols = np.ones(comp.shape[1], dtype=bool)
    rows = np.zeros(comp.shape[0], dtype=bool)
    for _ in range(2):
        rows = comp[:, cols].mean(axis=1) >= 0.5
        if not rows.any():
            return None
        cols = comp[rows].mean(axis=0) >= 0.5
        if not cols.any():
            return None
    r, c = np.flatnonzero(rows), np.flatnonzero(cols)
    return int(r[0]), int(r[-1]), int(c[0]), int(c[-1])


def manhattan_fit(mask: np.ndarray, min_iou: float = 0.75) -> np.ndarray:
    """Boolean (H, W) mask -> boolean mask with rectangle-like components made rectangles."""
    import cv2

    if mask.ndim != 2:
        raise SemlayoutError(f"expected an (H, W) mask, got shape {mask.shape}")
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4)
    # every decision is taken on the input mask; the edits are applied at the end, so a blob
    # inside another's rectangle (an island in a hole) cannot erase part of that rectangle
    erase = np.zeros(mask.shape, dtype=bool)
    paint = np.zeros(mask.shape, dtype=bool)
    for i in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[i])
        comp = labels[y : y + h, x : x + w] == i
        rect = _majority_rectangle(comp)
        if rect is None:
            continue
        r0, r1, c0, c1 = rect
        inside = int(comp[r0 : r1 + 1, c0 : c1 + 1].sum())
        union = area + (r1 - r0 + 1) * (c1 - c0 + 1) - inside
        if inside / union < min_iou:
            continue
        erase[y : y + h, x : x + w] |= comp
        paint[y + r0 : y + r1 + 1, x + c0 : x + c1 + 1] = True
    return (mask.astype(bool) & ~erase) | paint


def fit_layout(
    grey: np.ndarray, method: str = "manhattan", threshold: float = 0.5, min_iou: float = 0.75
) -> np.ndarray:
    """(H, W) uint8 generator output -> (H, W) uint8 layout in {0, 255} (see module docstring)."""
    if method not in FIT_METHODS:
        raise SemlayoutError(
            f"unknown layout fit '{method}': expected one of {', '.join(FIT_METHODS)}"
        )
    if grey.ndim != 2 or grey.dtype != np.uint8:
        raise SemlayoutError(f"expected an (H, W) uint8 image, got {grey.dtype} {grey.shape}")
    mask = grey > threshold * 255.0
    if method == "manhattan":
        mask = manhattan_fit(mask, min_iou)
    return np.where(mask, 255, 0).astype(np.uint8)
