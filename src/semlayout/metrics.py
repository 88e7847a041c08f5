"""Image-quality metrics for both translation directions, in numpy.

Every metric takes two images of the same shape, each either uint8 (H, W)
(0..255, mapped to [0, 1]) or float in [0, 1]; batched variants take (N, H, W)
stacks and return one value per image. Layouts are binary with the pattern
(foreground) at 255.

- `l1`    mean |a - b| in [0, 1].
- `ssim`  Gaussian-window SSIM (sigma 1.5, truncate 3.5 -> 11x11 window,
          K1=0.01, K2=0.03, population covariance, data_range 1), the mean over
          the map with the 5-px border cropped: identical to scikit-image's
          `structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
          use_sample_covariance=False, data_range=1.0)`.
- `ssim_lowpass`  SSIM after a Gaussian low-pass of both images (sigma `LOWPASS_SIGMA` =
          2 px at 256 px, scaled with the width: 0.5 px at 64 px, where the 250 -> 64
          INTER_AREA resize has already averaged the noise 4x4): Layout->SEM against a *noisy*
          SEM, where no model can predict the shot noise and the plain SSIM rewards imitating
          it. On the test split of the `make run` model (60 pairs with their noise-free SEM)
          the per-pair Spearman correlation with SSIM against the noise-free SEM is 0.16 for
          the plain SSIM against the noisy one, 0.51 / 0.65 / 0.74 / 0.76 after a low-pass of
          1 / 1.5 / 2 / 3 px (docs/adaptation.md).
- `psnr`  dB with data_range 1, capped at `PSNR_CAP_DB` = 100 dB so identical
          images give a finite number that JSON and means can carry.
- `iou`   intersection over union of the foregrounds after `> threshold`;
          two empty foregrounds agree perfectly (1.0).
- `edge_placement_error`  symmetric mean distance (px) between the binary
          edges of prediction and target.
- `cd_error`  |CD_pred - CD_target| (px) for line/space patterns.

`aggregate` turns per-image values into overall and per-family means.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from semlayout.errors import SemlayoutError

PSNR_CAP_DB = 100.0
SSIM_SIGMA = 1.5
LOWPASS_SIGMA = 2.0  # px at LOWPASS_WIDTH: `ssim_lowpass` (Layout->SEM against noisy SEMs)
LOWPASS_WIDTH = 256  # px: the image width LOWPASS_SIGMA was chosen at (the product's size)
SSIM_TRUNCATE = 3.5
SSIM_RADIUS = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)  # 5, as scipy.ndimage rounds it
SSIM_WIN = 2 * SSIM_RADIUS + 1  # 11
_K1, _K2 = 0.01, 0.03


# ---------------------------------------------------------------- conversion
def to_unit_float(img: np.ndarray, name: str = "image") -> np.ndarray:
    """uint8 -> float64 / 255; bool -> 0/1; float in [0, 1] -> float64. Anything else is refused."""
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    if arr.dtype == np.bool_:
        return arr.astype(np.float64)
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and (np.nanmin(arr) < -1e-6 or np.nanmax(arr) > 1 + 1e-6):
            raise SemlayoutError(
                f"{name}: float values must lie in [0, 1], "
                f"got [{np.nanmin(arr):.4g}, {np.nanmax(arr):.4g}]"
            )
        return np.clip(arr.astype(np.float64), 0.0, 1.0)
    raise SemlayoutError(f"{name}: expected uint8 or float in [0, 1], got dtype {arr.dtype}")


def _pair(a: np.ndarray, b: np.ndarray, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = to_unit_float(a, "prediction"), to_unit_float(b, "target")
    if x.shape != y.shape:
        raise SemlayoutError(f"shape mismatch: prediction {x.shape} vs target {y.shape}")
    if x.ndim != ndim:
        what = "(H, W)" if ndim == 2 else "(N, H, W)"
        raise SemlayoutError(f"expected {what} arrays, got shape {x.shape}")
    return x, y


# ---------------------------------------------------------------- L1 / PSNR
def l1_batch(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x, y = _pair(a, b, 3)
    return np.abs(x - y).mean(axis=(1, 2))


def l1(a: np.ndarray, b: np.ndarray) -> float:
    return float(l1_batch(np.asarray(a)[None], np.asarray(b)[None])[0])


def psnr_batch(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x, y = _pair(a, b, 3)
    mse = ((x - y) ** 2).mean(axis=(1, 2))
    with np.errstate(divide="ignore"):
        db = 10.0 * np.log10(1.0 / mse)
    return np.minimum(db, PSNR_CAP_DB)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(psnr_batch(np.asarray(a)[None], np.asarray(b)[None])[0])


# ---------------------------------------------------------------- SSIM
def _gauss_blur_rows_stacked(stack: np.ndarray) -> np.ndarray:
    """Gaussian blur of a (M, H, W) float64 stack, exact except within SSIM_RADIUS of each plane's
    border.

    The planes are blurred as one tall (M*H, W) image: a pixel only mixes with
    another plane when it lies within the kernel radius of its own plane's top or
    bottom edge, and exactly those rows are cropped by SSIM, so the result is
    exact where it is used (one cv2 call instead of M).
    """
    import cv2

    m, h, w = stack.shape
    tall = np.ascontiguousarray(stack.reshape(m * h, w))
    blurred = cv2.GaussianBlur(
        tall,
        (SSIM_WIN, SSIM_WIN),
        SSIM_SIGMA,
        sigmaY=SSIM_SIGMA,
        borderType=cv2.BORDER_REFLECT,  # = scipy's "reflect"; the cropped border hides it anyway
    )
    return blurred.reshape(m, h, w)


def _ssim_chunk(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    # One blur call for all five moments: (5N, H, W).
    moments = _gauss_blur_rows_stacked(np.concatenate([x, y, x * x, y * y, x * y], axis=0))
    ux, uy, uxx, uyy, uxy = (moments[i * n : (i + 1) * n] for i in range(5))
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
    c1, c2 = _K1**2, _K2**2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    r = SSIM_RADIUS
    return s[:, r:-r, r:-r].mean(axis=(1, 2), dtype=np.float64)


def ssim_batch(a: np.ndarray, b: np.ndarray, chunk: int = 2) -> np.ndarray:
    """SSIM per image of two (N, H, W) stacks (see module docstring for the exact definition)."""
    x, y = _pair(a, b, 3)
    if min(x.shape[1:]) < SSIM_WIN:
        raise SemlayoutError(
            f"ssim needs images of at least {SSIM_WIN}x{SSIM_WIN} px, got {x.shape[1:]}"
        )
    if x.shape[0] == 0:
        return np.zeros(0)
    # Small chunks keep the 5 float64 moment planes in cache: measured ~3 ms per 250x250 pair
    # at chunk 2 vs ~10 ms at chunk 32 (and a large split never sits in memory 5 times over).
    return np.concatenate(
        [_ssim_chunk(x[i : i + chunk], y[i : i + chunk]) for i in range(0, x.shape[0], chunk)]
    )


def ssim_lowpass_batch(a: np.ndarray, b: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """SSIM per image after a Gaussian low-pass of both (N, H, W) stacks (module docstring);
    `sigma` in px, by default LOWPASS_SIGMA scaled from LOWPASS_WIDTH to the images' width."""
    import cv2

    x, y = _pair(a, b, 3)
    if sigma is None:
        sigma = LOWPASS_SIGMA * x.shape[-1] / LOWPASS_WIDTH
    smooth = [
        np.stack([cv2.GaussianBlur(img, (0, 0), sigma, borderType=cv2.BORDER_REFLECT) for img in z])
        if len(z)
        else z
        for z in (x.astype(np.float32), y.astype(np.float32))
    ]
    return ssim_batch(np.clip(smooth[0], 0, 1), np.clip(smooth[1], 0, 1))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    return float(ssim_batch(np.asarray(a)[None], np.asarray(b)[None])[0])


# ---------------------------------------------------------------- binary metrics
def binarize(img: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Foreground mask: pixel value (in [0, 1]) strictly above `threshold`."""
    return to_unit_float(img) > threshold


def iou_batch(pred: np.ndarray, target: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    x, y = _pair(pred, target, 3)
    p, t = x > threshold, y > threshold
    inter = np.logical_and(p, t).sum(axis=(1, 2)).astype(np.float64)
    union = np.logical_or(p, t).sum(axis=(1, 2)).astype(np.float64)
    out = np.ones_like(inter)  # both empty -> perfect agreement
    nz = union > 0
    out[nz] = inter[nz] / union[nz]
    return out


def iou(pred: np.ndarray, target: np.ndarray, threshold: float = 0.5) -> float:
    return float(iou_batch(np.asarray(pred)[None], np.asarray(target)[None], threshold)[0])


def binary_edges(mask: np.ndarray) -> np.ndarray:
    """Inner boundary of a binary mask: foreground pixels with a 4-neighbour in the background.

    The image frame is not an edge (the mask is extended by replication).
    """
    m = np.pad(mask.astype(bool), 1, mode="edge")
    core = m[1:-1, 1:-1]
    any_bg = ~m[:-2, 1:-1] | ~m[2:, 1:-1] | ~m[1:-1, :-2] | ~m[1:-1, 2:]
    return core & any_bg


def _mean_distance_to(src_edges: np.ndarray, dst_edges: np.ndarray) -> float:
    import cv2

    # distanceTransform measures the distance to the nearest ZERO pixel: make dst edges zero.
    free = np.where(dst_edges, 0, 255).astype(np.uint8)
    dist = cv2.distanceTransform(free, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return float(dist[src_edges].mean())


def edge_placement_error(pred: np.ndarray, target: np.ndarray, threshold: float = 0.5) -> float:
    """Symmetric mean edge distance in px: (mean pred-edge -> nearest target edge
    + mean target-edge -> nearest pred edge) / 2.

    No edges in either -> 0. Edges in only one of them -> the image diagonal
    (the largest possible distance), so a blank prediction is scored as bad, not undefined.
    """
    x, y = _pair(pred, target, 2)
    ep, et = binary_edges(x > threshold), binary_edges(y > threshold)
    has_p, has_t = bool(ep.any()), bool(et.any())
    if not has_p and not has_t:
        return 0.0
    if has_p != has_t:
        return float(math.hypot(*x.shape))
    return 0.5 * (_mean_distance_to(ep, et) + _mean_distance_to(et, ep))


def _runs_inside(line: np.ndarray) -> np.ndarray:
    """Lengths of foreground runs in a 1-D bool array that touch neither end
    (cut runs are not widths)."""
    padded = np.concatenate([[False], line, [False]]).astype(np.int8)
    d = np.diff(padded)
    starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    keep = (starts > 0) & (ends < line.size)
    return (ends - starts)[keep]


def critical_dimension(img: np.ndarray, threshold: float = 0.5) -> float:
    """Mean line width (px) of a line/space pattern, measured across the lines.

    The dominant orientation is the scan direction with more foreground/background
    transitions (vertical lines -> scan along rows). Runs cut by the image frame
    are ignored. NaN when no complete line is found.
    """
    m = binarize(img, threshold)
    if m.ndim != 2:
        raise SemlayoutError(f"expected an (H, W) image, got shape {m.shape}")
    along_rows = np.count_nonzero(np.diff(m, axis=1))
    along_cols = np.count_nonzero(np.diff(m, axis=0))
    scans = m if along_rows >= along_cols else m.T
    runs = [r for row in scans for r in _runs_inside(row)]
    return float(np.mean(runs)) if runs else float("nan")


def cd_error(pred: np.ndarray, target: np.ndarray, threshold: float = 0.5) -> float:
    """|CD_pred - CD_target| in px (line/space). NaN if either has no complete line."""
    _pair(pred, target, 2)
    cd_t = critical_dimension(target, threshold)
    cd_p = critical_dimension(pred, threshold)
    return float(abs(cd_p - cd_t))


# ---------------------------------------------------------------- aggregation
def _mean_or_none(values: Sequence[float]) -> float | None:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(vals)) if vals else None


def aggregate(per_image: Mapping[str, Sequence[float]], families: Sequence[str]) -> dict[str, Any]:
    """Means of per-image metric values, overall and per family.

    `per_image` = {metric: [value per image]}, `families[i]` = the family of image i.
    NaN/None values (e.g. cd_error outside line/space) are left out of the means;
    a metric with no finite value becomes None (JSON null), never NaN.
    Returns {metric: mean, ..., "per_family": {family: {metric: mean, ..., "n": count}}}.
    """
    n = len(families)
    for key, vals in per_image.items():
        if len(vals) != n:
            raise ValueError(f"metric {key!r} has {len(vals)} values for {n} images")
    out: dict[str, object] = {k: _mean_or_none(v) for k, v in per_image.items()}
    per_family: dict[str, dict[str, float | int | None]] = {}
    for fam in sorted(set(families)):
        idx = [i for i, f in enumerate(families) if f == fam]
        row: dict[str, float | int | None] = {
            k: _mean_or_none([v[i] for i in idx]) for k, v in per_image.items()
        }
        row["n"] = len(idx)
        per_family[fam] = row
    out["per_family"] = per_family
    return out
