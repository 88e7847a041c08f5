"""Whole SEM fields and layouts larger than the network's window, by overlapping tiles.

The generators were trained on 250 px crops (the template size) resized to their input size,
so a field is cut into 250 px windows at its own pixel scale — never resized as a whole —
translated in batches, and blended back: every window's output is weighted 1 in its middle
and by a linear ramp over the `overlap` pixels at each side it shares with a neighbour, and
the field is the weighted mean. Where one window alone covers a pixel the field is exactly that
window's output; across a seam it fades from one window to the next, so there is no edge.

Memory is bounded by the field (two float32 accumulators) plus one batch of windows; the
windows are made and translated `batch_size` at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from semlayout.errors import SemlayoutError

WINDOW = 250  # the template size the generators learned at (SEM crops, layouts)
OVERLAP = 64
# an image larger than this on a side is a field: tiled rather than resized as one window (the
# raw 304 px SEMs and the 250 px crops stay single windows, as the generators learned them)
SINGLE_MAX = 320
MAX_FIELD_SIDE = 2048  # the default limit of a field's side (SEMLAYOUT_MAX_FIELD_SIDE)

# (B, h, w) uint8 windows -> (B, h, w) float32 outputs in [-1, 1]
Forward = Callable[[np.ndarray], np.ndarray]


def tile_origins(length: int, window: int, overlap: int) -> list[int]:
    """Start offsets of windows covering [0, length): stride `window - overlap`, the last one
    flush with the end (so it may overlap its neighbour by more)."""
    if length <= window:
        return [0]
    stride = window - overlap
    starts = list(range(0, length - window, stride))
    return [*starts, length - window]


def _ramp(window: int, lo: bool, hi: bool, overlap: int) -> np.ndarray:
    """(window,) weights: 1 inside, a ramp down over `overlap` px on the sides with a neighbour."""
    w = np.ones(window, np.float32)
    ramp = (np.arange(overlap, dtype=np.float32) + 1) / (overlap + 1)  # never 0
    if lo:
        w[:overlap] = ramp
    if hi:
        w[window - overlap :] = ramp[::-1]
    return w


def windows(shape: tuple[int, int], window: int, overlap: int) -> Iterator[tuple[int, int]]:
    """(row, column) origins of the windows covering an image of `shape`, row by row."""
    rows = tile_origins(shape[0], window, overlap)
    cols = tile_origins(shape[1], window, overlap)
    for r in rows:
        for c in cols:
            yield r, c


def check_field(img: np.ndarray, max_side: int, window: int = WINDOW) -> None:
    if img.ndim != 2 or img.dtype != np.uint8:
        raise SemlayoutError(f"expected a 2-D uint8 image, got {img.dtype} {img.shape}")
    if min(img.shape) < window:
        raise SemlayoutError(
            f"a field is tiled in {window} px windows: {img.shape[1]}x{img.shape[0]} px is "
            f"smaller than one window on a side"
        )
    if max(img.shape) > max_side:
        raise SemlayoutError(
            f"{img.shape[1]}x{img.shape[0]} px is larger than the {max_side} px limit for a "
            "field (SEMLAYOUT_MAX_FIELD_SIDE / --max-field-side)"
        )


def translate_field(
    img: np.ndarray,
    forward: Forward,
    window: int = WINDOW,
    overlap: int = OVERLAP,
    batch_size: int = 8,
    max_side: int = MAX_FIELD_SIDE,
) -> np.ndarray:
    """(H, W) uint8 field -> (H, W) float32 in [-1, 1]: `forward` on overlapping windows,
    blended without seams."""
    check_field(img, max_side, window)
    if not 0 < overlap < window // 2:
        raise SemlayoutError(f"overlap={overlap}: expected 1..{window // 2 - 1} px")
    h, w = img.shape
    acc = np.zeros((h, w), np.float32)
    weight = np.zeros((h, w), np.float32)
    last_r, last_c = h - window, w - window
    origins = list(windows((h, w), window, overlap))
    for start in range(0, len(origins), max(1, batch_size)):
        chunk = origins[start : start + batch_size]
        batch = np.stack([img[r : r + window, c : c + window] for r, c in chunk])
        out = np.asarray(forward(batch), np.float32)
        if out.shape != batch.shape:
            raise RuntimeError(f"forward returned {out.shape} for windows {batch.shape}")
        for (r, c), o in zip(chunk, out, strict=True):
            # a side has a neighbour unless the window touches the field's edge there
            wr = _ramp(window, r > 0, r < last_r, overlap)
            wc = _ramp(window, c > 0, c < last_c, overlap)
            wt = wr[:, None] * wc[None, :]
            acc[r : r + window, c : c + window] += o * wt
            weight[r : r + window, c : c + window] += wt
    return acc / weight


def is_field(shape: tuple[int, ...], single_max: int = SINGLE_MAX, window: int = WINDOW) -> bool:
    """Whether an image is translated as a field (tiles) rather than as one window: larger than
    `single_max` on a side and at least one window on both (a thin strip stays one image)."""
    return max(shape) > single_max and min(shape) >= window


def translator_forward(translator: object, direction: str, polarity: int = 1) -> Forward:
    """A `Translator`'s network as a `Forward` in `polarity`: each window resized to the
    network's input size and back, in float (the field is quantised to uint8 once, after
    blending)."""
    import cv2

    tr: Any = translator

    def forward(batch: np.ndarray) -> np.ndarray:
        h, w = batch.shape[1:]
        x = np.stack([tr.preprocess(im) for im in batch])[:, None]  # (B, 1, S, S)
        y = tr.run_batch(direction, x, polarity)[:, 0]  # (B, S, S)
        if y.shape[1:] == (h, w):
            return y
        return np.stack([cv2.resize(o, (w, h), interpolation=cv2.INTER_LINEAR) for o in y])

    return forward


def sample_windows(img: np.ndarray, n: int, window: int = WINDOW) -> np.ndarray:
    """(k, window, window) uint8: up to `n` windows spread evenly over the field (no overlap
    needed: what they are for is a reading of the whole field, e.g. its polarity)."""
    origins = list(windows(img.shape, window, OVERLAP))
    picks = np.unique(np.linspace(0, len(origins) - 1, min(n, len(origins))).round().astype(int))
    return np.stack([img[r : r + window, c : c + window] for r, c in (origins[i] for i in picks)])


def field_reading(translator: object, img: np.ndarray, n: int) -> tuple[float, dict[int, float]]:
    """A SEM field's own polarity evidence (log-odds of bright: the mean of up to `n` windows
    spread over it; neighbouring windows are not independent readings, so their log-odds are
    averaged, not summed) and each hypothesis' mean cycle correlation {+1, -1}."""
    from semlayout.polarity_auto import FEATURES, evidence, hypotheses

    tr: Any = translator
    batch = np.stack([tr.preprocess(w) for w in sample_windows(img, n)])[:, None]
    _, feats = hypotheses(
        lambda x, p: tr.run_batch("sem2layout", x, p),
        lambda x, p: tr.run_batch("layout2sem", x, p),
        batch,
    )
    e = float(np.mean(evidence(feats, tr.config.polarity.auto_head)))
    cycles = {
        p: float(feats[:, FEATURES.index(f"corr_{name}_s0.75")].mean())
        for p, name in ((1, "bright"), (-1, "dark"))
    }
    return e, cycles
