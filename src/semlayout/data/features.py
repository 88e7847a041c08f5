"""Per-image features: the drift reference (`reference_stats.json`) and the server's DriftDetector.

The same function describes a training image and a request image, so both sides
of the drift comparison are measured identically. Everything here runs per
request, so it is plain OpenCV on the uint8 image (< 2 ms at 256x256) and no torch.

Units: intensities are on the [0, 1] scale (uint8 / 255). Every feature is a
per-pixel average or a quantile, so it does not depend on the image size: a
250x250 crop and its 304x304 parent give close values.

| feature        | meaning                                                              |
|----------------|----------------------------------------------------------------------|
| mean, std      | intensity mean and standard deviation                                |
| p05, p95       | 5th / 95th intensity percentiles (exact on uint8, "lower" rule)      |
| edge_density   | share of pixels on a Canny edge of the lightly blurred image         |
| laplacian_var  | variance of the 3x3 Laplacian: sharpness, and noise on SEM images    |
| fg_fraction    | share of pixels above the image's own Otsu threshold (0 if constant) |
"""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

from semlayout.errors import SemlayoutError

FEATURE_NAMES: tuple[str, ...] = (
    "mean",
    "std",
    "edge_density",
    "p05",
    "p95",
    "laplacian_var",
    "fg_fraction",
)
HISTOGRAM_BINS = 64

# Canny hysteresis thresholds on the 3x3-blurred uint8 image: the blur keeps single-pixel
# shot noise from producing edges; on SEM images noise above ~20 grey levels still does,
# which is wanted here (a noisier microscope is drift).
_CANNY_LOW, _CANNY_HIGH = 50, 150


def _check(img: np.ndarray) -> np.ndarray:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 2:
        got = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
        raise SemlayoutError(f"image features need an (H, W) uint8 image, got {got}")
    if img.shape[0] < 3 or img.shape[1] < 3:
        raise SemlayoutError(f"image features need an image of at least 3x3 px, got {img.shape}")
    return np.ascontiguousarray(img)


def _percentile_u8(counts: np.ndarray, q: float) -> float:
    """Exact q-quantile of a uint8 image from its 256-bin counts (numpy's method="lower")."""
    n = counts.sum()
    # smallest value v whose rank floor(q * (n - 1)) falls within the first cumsum[v] pixels
    rank = np.floor(q * (n - 1))
    return float(np.searchsorted(np.cumsum(counts), rank, side="right"))


def image_features(img_u8: np.ndarray) -> dict[str, float]:
    """The `FEATURE_NAMES` features of one (H, W) uint8 image, as plain floats."""
    img = _check(img_u8)
    n = float(img.size)
    counts = cv2.calcHist([img], [0], None, [256], [0, 256]).ravel().astype(np.int64)  # (256,)
    mean, std = cv2.meanStdDev(img)
    blurred = cv2.GaussianBlur(img, (3, 3), 0)
    edges = cv2.Canny(blurred, _CANNY_LOW, _CANNY_HIGH)
    lap = cv2.Laplacian(img, cv2.CV_32F, ksize=1)
    _, lap_std = cv2.meanStdDev(lap)
    otsu, _ = cv2.threshold(img, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    # pixels > threshold, as THRESH_BINARY does; a constant image has no foreground
    fg = counts[int(otsu) + 1 :].sum() / n if std[0, 0] > 0 else 0.0
    return {
        "mean": float(mean[0, 0]) / 255.0,
        "std": float(std[0, 0]) / 255.0,
        "edge_density": float(np.count_nonzero(edges)) / n,
        "p05": _percentile_u8(counts, 0.05) / 255.0,
        "p95": _percentile_u8(counts, 0.95) / 255.0,
        "laplacian_var": (float(lap_std[0, 0]) / 255.0) ** 2,
        "fg_fraction": float(fg),
    }


def histogram(img_u8: np.ndarray, bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """Normalised intensity histogram over [0, 256) in `bins` equal bins:
    (bins,) float64, sums to 1."""
    img = _check(img_u8)
    if not isinstance(bins, int | np.integer) or not 1 <= bins <= 256:
        raise SemlayoutError(f"histogram bins must be an integer in 1..256, got {bins!r}")
    h = cv2.calcHist([img], [0], None, [int(bins)], [0, 256]).ravel().astype(np.float64)
    return h / h.sum()


def features_table(images: Iterable[np.ndarray]) -> dict[str, list[float]]:
    """Features of many images, column-wise: {feature: [value per image]}."""
    table: dict[str, list[float]] = {f: [] for f in FEATURE_NAMES}
    for img in images:
        for k, v in image_features(img).items():
            table[k].append(v)
    return table
