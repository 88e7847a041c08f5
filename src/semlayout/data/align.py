"""Align raw SEM images to their layout templates, with QC verdicts.

A template (250x250, values 0/255) lies somewhere inside its raw SEM (304x304):
we look for the top-left offset (x = column, y = row) over the 55x55 valid
positions. Plain intensity NCC fails on three things real SEMs do, so the score
is built differently:

* polarity: lines may image bright or dark, and secondary-electron edge
  brightening makes edges bright whatever the material contrast. We model the
  SEM window as ``c + a*T + b*E`` (T: blurred template, E: blurred edge map of
  the template) and score each offset by the multiple correlation R of that
  fit. R comes from two ``cv2.matchTemplate`` NCC maps and the fixed
  correlation of T and E, is invariant to the sign of a (polarity) and
  reduces to |NCC| when the SEM carries only material contrast. b is held
  >= 0: a fit that needs dark edges is unphysical, and forbidding it breaks
  most of the "half-period shift + inverted polarity" look-alikes of
  line/space patterns.
* charging: slow brightness gradients are removed by a box high-pass filter
  on the SEM (correlation with a smooth template barely sees the rest).
* periodicity: for a line/space array several offsets are equally right.
  Offsets whose template content is identical (mismatch <= ``equiv_tol``,
  computed exactly from the binary template) are *equivalent*: they count in
  `n_equivalent` and never compete with the chosen peak.
* confidence: a z-score, not the raw peak. The noise of a score difference
  R_p - R_q scales with |m_p - m_q| (m: the template model placed at p or q)
  and with the unexplained share 1 - R_p^2, split into shot noise (white,
  estimated from the SEM) and systematic misfit (CD bias, edge shape), whose
  structured residual counts as far fewer independent pixels.
  `separation` is the smallest such z over distant non-equivalent local peaks,
  `localization` over the non-equivalent neighbours of p (1-2 px, using the
  blurred fitted model). A shift that changes the content a little needs only
  a small margin at high dose, and a large one at low dose. QC passes when
  both clear their thresholds; `confidence` folds the two into one number
  whose pass line is `min_confidence`.

`align_pair` is pure (arrays in, `AlignResult` out) and runs in named steps:
`check_inputs` / `check_content` (reject what cannot be matched), the score map
(`semlayout.data.align_maps`), `find_peak` (integer peak, subpixel, fit),
`polarity`, `equivalent_offsets`, `score_noise`, `separation_z` /
`localization_z`, `combined_confidence` and `qc_reason`.
`semlayout.data.align_folder` runs it over a pair folder and writes the aligned
pair folder + alignment.csv atomically.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from semlayout.data.align_maps import (
    ScoreMaps,
    model_dist2,
    noise_ratio,
    score_map,
    sem_features,
    shift_stats,
    template_features,
)
from semlayout.data.pairs import SEM_RAW_SHAPE, TEMPLATE_SHAPE
from semlayout.errors import SemlayoutError

_MAX_CONFIDENCE = 99.0
REASONS = (
    "ok",
    "low_score",
    "ambiguous",
    "blank_sem",
    "saturated_sem",
    "blank_template",
    "wrong_size",
    "bit_depth",
    "not_grayscale",
    "unreadable",
    "missing",
    "not_binary",
)


@dataclass(frozen=True)
class AlignConfig:
    """Matching and QC settings. Defaults were tuned on two independent simulators."""

    blur: float = 0.0  # extra Gaussian sigma (px) on the SEM before matching; 0 = none
    template_sigma: float = 1.5  # PSF model: sigma (px) applied to the template features
    highpass: int = 81  # box size (px) of the background removed from SEM and features; 0 = off
    use_edges: bool = True  # add the edge-brightening regressor E to the fit
    edges_bright: bool = True  # constrain the edge coefficient to be >= 0 (SE edge effect)
    min_score: float = 0.05  # QC: least multiple correlation R at the peak
    min_confidence: float = 4.0  # QC: least z-score of the gap to the best non-equivalent peak
    equiv_tol: float = (
        0.005  # offsets whose template content differs by <= this share are equivalent
    )
    min_localization: float = 1.0  # QC: least z-score of the peak vs its non-equivalent neighbours
    systematic_corr: float = 16.0  # the same for the misfit beyond shot noise (structured residual)
    misfit_corr: float = 4.0  # pixels per independent residual sample (the residual is not white)
    exclusion: int = (
        2  # competitors within this Chebyshev radius of an equivalent offset are ignored
    )
    blank_std: float = 2.0  # SEM standard deviation (grey levels) below which it is blank
    max_clipped: float = 0.5  # share of SEM pixels at 255 above which it is saturated
    max_dark: float = 0.8  # share at 0 (or at 0 and 255) above which it is saturated
    min_minority: float = 0.002  # template: least share of the rarer value (else blank)
    sem_shape: tuple[int, int] | None = SEM_RAW_SHAPE  # None accepts any SEM >= the template
    template_shape: tuple[int, int] = TEMPLATE_SHAPE

    def __post_init__(self) -> None:
        checks = {
            "blur": self.blur >= 0,
            "template_sigma": self.template_sigma >= 0,
            "highpass": self.highpass >= 0,
            "min_confidence": self.min_confidence >= 0,
            "equiv_tol": 0 <= self.equiv_tol < 0.5,
            "exclusion": self.exclusion >= 0,
            "min_localization": self.min_localization >= 0,
            "misfit_corr": self.misfit_corr > 0,
            "systematic_corr": self.systematic_corr > 0,
            "blank_std": self.blank_std >= 0,
            "max_clipped": 0 < self.max_clipped <= 1,
            "max_dark": 0 < self.max_dark <= 1,
            "min_score": -1 <= self.min_score <= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise SemlayoutError(
                "invalid align setting(s): "
                + ", ".join(f"{k}={getattr(self, k)!r}" for k in bad)
                + " (blur/template_sigma/highpass/min_confidence/exclusion/blank_std >= 0, "
                "0 <= equiv_tol < 0.5, 0 < max_clipped/max_dark <= 1, -1 <= min_score <= 1)"
            )


@dataclass
class AlignResult:
    x: int | None = None  # column of the template's top-left in the SEM
    y: int | None = None  # row
    x_sub: float | None = None
    y_sub: float | None = None
    score: float | None = None  # multiple correlation R at the peak, in [0, 1]
    confidence: float | None = None  # z-score of the R gap to the best non-equivalent peak (capped)
    polarity: int | None = None  # +1 lines bright, -1 lines dark (reversed contrast)
    n_equivalent: int | None = None  # offsets in the search range with identical template content
    separation: float | None = None  # z-score of the gap to the best distant non-equivalent peak
    localization: float | None = None  # z-score of the peak vs its non-equivalent neighbours
    qc_pass: bool = False
    reason: str = "ok"

    def qc_summary(self) -> str:
        """Why QC said what it said, for a message: "ambiguous (score 0.109, confidence 0.163)"."""

        def num(v: float | None) -> str:
            return "-" if v is None else f"{v:.3f}"

        return f"{self.reason} (score {num(self.score)}, confidence {num(self.confidence)})"


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


# ----------------------------------------------------------------------------- steps


def check_inputs(sem: np.ndarray, layout: np.ndarray, cfg: AlignConfig) -> str | None:
    """The QC reason code for inputs that cannot be matched (type, shape), or None."""
    for img, shape in ((sem, cfg.sem_shape), (layout, cfg.template_shape)):
        if img.dtype != np.uint8:
            return "bit_depth"
        if img.ndim == 3 and img.shape[2] != 1:
            return "not_grayscale"
        if img.ndim not in (2, 3):
            return "unreadable"
        if shape is not None and tuple(img.shape[:2]) != tuple(shape):
            return "wrong_size"
    if sem.shape[0] < layout.shape[0] or sem.shape[1] < layout.shape[1]:
        return "wrong_size"
    return None


def check_content(sem: np.ndarray, layout: np.ndarray, cfg: AlignConfig) -> str | None:
    """The QC reason code for (H, W) uint8 images with nothing to match, or None."""
    import cv2

    fg = layout == 255
    if not np.all(fg | (layout == 0)):
        return "not_binary"
    share = float(fg.mean())
    if min(share, 1 - share) < cfg.min_minority:
        return "blank_template"
    if float(cv2.meanStdDev(sem)[1][0, 0]) < cfg.blank_std:
        return "blank_sem"
    # zeros are clipped black *or* honest zero counts of a low-dose image: allow more of them
    bright = float(np.count_nonzero(sem == 255)) / sem.size
    dark = float(np.count_nonzero(sem == 0)) / sem.size
    if bright > cfg.max_clipped or dark > cfg.max_dark or bright + dark > cfg.max_dark:
        return "saturated_sem"
    return None


def _parabolic(m: np.ndarray, y: int, x: int) -> tuple[float, float]:
    """Subpixel peak by a 1-D parabola through the peak and its two neighbours, per axis."""

    def off(a: float, b: float, c: float) -> float:
        d = a - 2 * b + c
        return 0.0 if d >= 0 else float(np.clip(0.5 * (a - c) / d, -0.5, 0.5))

    h, w = m.shape
    dy = off(m[y - 1, x], m[y, x], m[y + 1, x]) if 0 < y < h - 1 else 0.0
    dx = off(m[y, x - 1], m[y, x], m[y, x + 1]) if 0 < x < w - 1 else 0.0
    return y + dy, x + dx


def find_peak(maps: ScoreMaps) -> Peak:
    """The integer maximum of R, its parabolic subpixel position and the fit's coefficients."""
    R = maps.R
    peak = np.unravel_index(int(np.argmax(R)), R.shape)
    y, x = int(peak[0]), int(peak[1])
    y_sub, x_sub = _parabolic(R, y, x)
    coef_t, coef_e = maps.coefficients(y, x)
    return Peak(y, x, float(R[y, x]), y_sub, x_sub, coef_t, coef_e)


def polarity(peak: Peak) -> int:
    """+1 when the pattern images bright (material coefficient >= 0), -1 when reversed."""
    return 1 if peak.coef_t >= 0 else -1


def equivalent_offsets(
    tpl01: np.ndarray, shape: tuple[int, int], peak: Peak, equiv_tol: float
) -> Equivalence:
    """Offsets of the (ny, nx) map whose binary template content matches the peak's."""
    ny, nx = shape
    y, x = peak.y, peak.x
    mism, dist2 = shift_stats(tpl01, ny - 1, nx - 1)  # [dy + ny-1, dx + nx-1]
    win = (slice(ny - 1 - y, 2 * ny - 1 - y), slice(nx - 1 - x, 2 * nx - 1 - x))  # q - p
    return Equivalence(mism[win] <= equiv_tol, dist2[win])


def score_noise(sem: np.ndarray, score: float, n_pixels: int, cfg: AlignConfig) -> np.float64:
    """Std of a score difference R_p - R_q per unit |m_p - m_q| (float64, scales z-scores).

    The noise of that difference is (residual/std) * |m_p - m_q| / sqrt(N) for white
    residuals, so a competitor that differs from the template in few pixels needs only a
    small margin. The unexplained share of the window's variance (shot noise *and* model
    misfit such as CD bias) is what can flip the ranking; its std in NCC units is
    sqrt(1 - R^2). Split it: shot noise (white, Immerkaer's estimate) and the rest, a
    systematic misfit whose residual is structured (few independent samples) -- e.g. a
    line/space array seen with the other polarity half a period away fits almost as well
    at any dose.
    """
    unexplained = max(1.0 - score * score, 1e-4)
    noise = min(noise_ratio(sem) ** 2, unexplained)
    return np.float64(
        np.sqrt(
            (cfg.misfit_corr * noise + cfg.systematic_corr * (unexplained - noise))
            / float(n_pixels)
        )
    )


def separation_z(
    R: np.ndarray, peak: Peak, equiv: Equivalence, sigma: np.float64, exclusion: int
) -> float:
    """Smallest z-score of R_p - R_q over local maxima q of R not within `exclusion` of an
    equivalent offset (distant look-alikes; judged on the binary template); capped."""
    import cv2

    k = 2 * exclusion + 1
    near_equiv = cv2.dilate(equiv.mask.astype(np.uint8), np.ones((k, k), np.uint8)) > 0
    local_max = cv2.dilate(R, np.ones((3, 3), np.uint8)) <= R
    comp = local_max & ~near_equiv
    if not comp.any():
        return _MAX_CONFIDENCE
    z = (peak.score - R[comp]) / (sigma * np.sqrt(equiv.dist2[comp]))
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


def qc_reason(score: float, confidence: float, cfg: AlignConfig) -> str:
    """The verdict: "ok", "low_score" (weak match) or "ambiguous" (a look-alike too close)."""
    if score < cfg.min_score:
        return "low_score"
    if confidence < cfg.min_confidence:
        return "ambiguous"
    return "ok"


# ----------------------------------------------------------------------------- one pair


def align_pair(
    sem_u8: np.ndarray, layout_u8: np.ndarray, cfg: AlignConfig | None = None
) -> AlignResult:
    """Find the layout template inside the raw SEM; never raises for bad images (see `reason`)."""
    cfg = cfg or AlignConfig()
    bad = check_inputs(sem_u8, layout_u8, cfg)
    if bad:
        return AlignResult(reason=bad)
    sem = sem_u8.reshape(sem_u8.shape[:2])
    layout = layout_u8.reshape(layout_u8.shape[:2])
    bad = check_content(sem, layout, cfg)
    if bad:
        return AlignResult(reason=bad)

    tpl01 = (layout == 255).astype(np.uint8)
    T, E = template_features(tpl01, cfg.template_sigma, cfg.use_edges)
    maps = score_map(sem_features(sem, cfg.blur, cfg.highpass), T, E, cfg.edges_bright)
    peak = find_peak(maps)
    equiv = equivalent_offsets(tpl01, maps.R.shape, peak, cfg.equiv_tol)
    sigma = score_noise(sem, peak.score, layout.size, cfg)
    separation = separation_z(maps.R, peak, equiv, sigma, cfg.exclusion)
    localization = localization_z(maps.R, T, E, peak, equiv, sigma, cfg.exclusion)
    confidence = combined_confidence(separation, localization, cfg)
    reason = qc_reason(peak.score, confidence, cfg)
    return AlignResult(
        x=peak.x,
        y=peak.y,
        x_sub=float(peak.x_sub),
        y_sub=float(peak.y_sub),
        score=peak.score,
        confidence=confidence,
        separation=separation,
        localization=localization,
        polarity=polarity(peak),
        n_equivalent=equiv.count,
        qc_pass=reason == "ok",
        reason=reason,
    )


def plain_ncc(sem_u8: np.ndarray, layout_u8: np.ndarray, min_score: float = 0.3) -> AlignResult:
    """The baseline: TM_CCOEFF_NORMED argmax on raw intensity, QC by a fixed score threshold."""
    import cv2

    r = cv2.matchTemplate(
        sem_u8.astype(np.float32), layout_u8.astype(np.float32), cv2.TM_CCOEFF_NORMED
    )
    y, x = np.unravel_index(int(np.argmax(r)), r.shape)
    s = float(r[y, x])
    ok = s >= min_score
    return AlignResult(
        x=int(x),
        y=int(y),
        x_sub=float(x),
        y_sub=float(y),
        score=s,
        confidence=None,
        polarity=1,
        n_equivalent=None,
        qc_pass=ok,
        reason="ok" if ok else "low_score",
    )
