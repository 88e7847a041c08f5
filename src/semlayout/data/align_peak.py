"""The peak of a score map and how sure it is: subpixel position, the template's
equivalent offsets (periodic patterns), the noise of a score difference and the two
z-scores (separation from distant look-alikes, localization among neighbours) that QC
reads. `evaluate` runs them on one map (the map of both polarities, or one polarity's);
`semlayout.data.align` says what the numbers mean and decides.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from semlayout.data.align_config import AlignConfig
from semlayout.data.align_maps import model_dist2, noise_ratio, shift_stats

_MAX_CONFIDENCE = 99.0
Coefficients = Callable[[int, int], tuple[float, float]]


@dataclass(frozen=True)
class Peak:
    """The best offset of the score map and the fit of the template model there."""

    y: int  # row of the template's top-left in the SEM (integer R maximum)
    x: int  # column
    score: float  # R at (y, x)
    y_sub: float  # subpixel refinement of (y, x)
    x_sub: float
    coef_t: float  # material coefficient of the fit c + a*T + b*E (sign = polarity)
    coef_e: float  # edge coefficient


@dataclass(frozen=True)
class Equivalence:
    """Offsets q whose template content equals the peak p's (periodic patterns), over the map."""

    mask: np.ndarray  # (ny, nx) bool: mismatch(q - p) <= equiv_tol
    dist2: np.ndarray  # (ny, nx) |t_p - t_q|^2 of the unit-norm binary template

    @property
    def count(self) -> int:
        return int(np.count_nonzero(self.mask))


def _parabolic(m: np.ndarray, y: int, x: int) -> tuple[float, float]:
    """Subpixel peak by a 1-D parabola through the peak and its two neighbours, per axis."""

    def off(a: float, b: float, c: float) -> float:
        d = a - 2 * b + c
        return 0.0 if d >= 0 else float(np.clip(0.5 * (a - c) / d, -0.5, 0.5))

    h, w = m.shape
    dy = off(m[y - 1, x], m[y, x], m[y + 1, x]) if 0 < y < h - 1 else 0.0
    dx = off(m[y, x - 1], m[y, x], m[y, x + 1]) if 0 < x < w - 1 else 0.0
    return y + dy, x + dx


def find_peak(R: np.ndarray, coefficients: Coefficients) -> Peak:
    """The integer maximum of `R`, its parabolic subpixel position and the fit's coefficients
    there (`coefficients(y, x)` -> (a, b))."""
    peak = np.unravel_index(int(np.argmax(R)), R.shape)
    y, x = int(peak[0]), int(peak[1])
    y_sub, x_sub = _parabolic(R, y, x)
    coef_t, coef_e = coefficients(y, x)
    return Peak(y, x, float(R[y, x]), y_sub, x_sub, float(coef_t), float(coef_e))


@dataclass(frozen=True)
class ShiftTable:
    """The template compared with itself under every shift of the search range (computed
    once per pair): `mismatch` and `dist2` indexed [dy + ny - 1, dx + nx - 1]."""

    mismatch: np.ndarray
    dist2: np.ndarray

    @classmethod
    def of(cls, tpl01: np.ndarray, shape: tuple[int, int]) -> ShiftTable:
        return cls(*shift_stats(tpl01, shape[0] - 1, shape[1] - 1))


def equivalent_offsets(
    table: ShiftTable, shape: tuple[int, int], peak: Peak, equiv_tol: float
) -> Equivalence:
    """Offsets of the (ny, nx) map whose binary template content matches the peak's."""
    ny, nx = shape
    y, x = peak.y, peak.x
    win = (slice(ny - 1 - y, 2 * ny - 1 - y), slice(nx - 1 - x, 2 * nx - 1 - x))  # q - p
    return Equivalence(table.mismatch[win] <= equiv_tol, table.dist2[win])


def score_noise(
    sem: np.ndarray, score: float, n_pixels: int, cfg: AlignConfig, ratio: float | None = None
) -> np.float64:
    """Std of a score difference R_p - R_q per unit |m_p - m_q| (float64, scales z-scores).

    The noise of that difference is (residual/std) * |m_p - m_q| / sqrt(N) for white
    residuals, so a competitor that differs from the template in few pixels needs only a
    small margin. The unexplained share of the window's variance (shot noise *and* model
    misfit such as CD bias) is what can flip the ranking; its std in NCC units is
    sqrt(1 - R^2). Split it: shot noise (white, Immerkaer's estimate) and the rest, a
    systematic misfit whose residual is structured (few independent samples) -- e.g. a
    line/space array seen with the other polarity half a period away fits almost as well
    at any dose. `ratio`: `noise_ratio(sem)` when the caller has it already.
    """
    unexplained = max(1.0 - score * score, 1e-4)
    noise = min((noise_ratio(sem) if ratio is None else ratio) ** 2, unexplained)
    return np.float64(
        np.sqrt(
            (cfg.misfit_corr * noise + cfg.systematic_corr * (unexplained - noise))
            / float(n_pixels)
        )
    )


def separation_z(
    R: np.ndarray,
    peak: Peak,
    equiv: Equivalence,
    sigma: np.float64,
    exclusion: int,
    dist2: np.ndarray | None = None,
) -> float:
    """Smallest z-score of R_p - R_q over local maxima q of R not within `exclusion` of an
    equivalent offset (distant look-alikes; judged on the binary template, or on `dist2`
    when given: the fitted models' own distances); capped."""
    import cv2

    k = 2 * exclusion + 1
    near_equiv = cv2.dilate(equiv.mask.astype(np.uint8), np.ones((k, k), np.uint8)) > 0
    local_max = cv2.dilate(R, np.ones((3, 3), np.uint8)) <= R
    comp = local_max & ~near_equiv
    if not comp.any():
        return _MAX_CONFIDENCE
    d2 = equiv.dist2 if dist2 is None else dist2
    z = (peak.score - R[comp]) / (sigma * np.sqrt(d2[comp]))
    return min(_MAX_CONFIDENCE, float(z.min()))


def localization_z(
    R: np.ndarray,
    T: np.ndarray,
    E: np.ndarray | None,
    peak: Peak,
    equiv: Equivalence,
    sigma: np.float64,
    radius: int,
) -> float:
    """Smallest z-score of R_p - R_q over the non-equivalent q within `radius` of p, judged
    on the blurred fitted model (the binary template is a poor guide that close)."""
    if radius <= 0:
        return _MAX_CONFIDENCE
    ny, nx = R.shape
    y, x, rn = peak.y, peak.x, radius
    d2 = model_dist2(T, E, peak.coef_t, peak.coef_e, rn)
    y0, y1, x0, x1 = max(0, y - rn), min(ny, y + rn + 1), max(0, x - rn), min(nx, x + rn + 1)
    d2 = d2[y0 - y + rn : y1 - y + rn, x0 - x + rn : x1 - x + rn]
    sel = ~equiv.mask[y0:y1, x0:x1]
    if not sel.any():
        return _MAX_CONFIDENCE
    zn = (peak.score - R[y0:y1, x0:x1][sel]) / (sigma * np.sqrt(d2[sel]))
    return float(zn.min())


def combined_confidence(separation: float, localization: float, cfg: AlignConfig) -> float:
    """One number for QC: the near test has its own pass line, rescaled onto min_confidence."""
    return float(
        min(separation, localization * cfg.min_confidence / max(cfg.min_localization, 1e-9))
    )


@dataclass(frozen=True)
class Verdict:
    """One map's best placement and the z-scores that say how sure it is."""

    peak: Peak
    equiv: Equivalence
    sigma: np.float64  # noise of a score difference per unit model distance
    separation: float
    localization: float
    confidence: float


def evaluate(
    R: np.ndarray,
    coefficients: Coefficients,
    table: ShiftTable,
    T: np.ndarray,
    E: np.ndarray | None,
    sem: np.ndarray,
    cfg: AlignConfig,
    model_dist2: Callable[[Peak], np.ndarray] | None = None,
    noise: float | None = None,
) -> Verdict:
    """Peak, equivalence, noise and z-scores of score map `R` (see the module docstring).

    `model_dist2(peak)`, when given, scales the separation by the distance between the
    fitted models (each offset's own fit) instead of the binary template's: needed on one
    polarity's map, where a look-alike may be fitted by the edges alone."""
    peak = find_peak(R, coefficients)
    equiv = equivalent_offsets(table, R.shape, peak, cfg.equiv_tol)
    sigma = score_noise(sem, peak.score, T.size, cfg, noise)
    d2 = model_dist2(peak) if model_dist2 is not None else None
    separation = separation_z(R, peak, equiv, sigma, cfg.exclusion, d2)
    localization = localization_z(R, T, E, peak, equiv, sigma, cfg.exclusion)
    confidence = combined_confidence(separation, localization, cfg)
    return Verdict(peak, equiv, sigma, separation, localization, confidence)
