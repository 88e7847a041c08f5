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

`align_pair` is pure (arrays in, `AlignResult` out); `align_folder` runs it
over a pair folder and writes the aligned pair folder + alignment.csv
atomically.
"""

from __future__ import annotations

import csv
import io
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from semlayout.atomic import atomic_dir, check_not_over_inputs
from semlayout.data.pairs import (
    REQUIRED_COLUMNS,
    SEM_RAW_SHAPE,
    TEMPLATE_SHAPE,
    ImageRejected,
    PairRecord,
    read_gray8,
    read_manifest,
)
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
ALIGNMENT_COLUMNS = (
    "id",
    "x",
    "y",
    "score",
    "qc_pass",
    "reason",
    "confidence",
    "x_sub",
    "y_sub",
    "polarity",
    "n_equivalent",
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

    def row(self, pair_id: str) -> dict[str, str]:
        def fmt(v: Any, nd: int = 4) -> str:
            if v is None:
                return ""
            if isinstance(v, bool):
                return "true" if v else "false"
            if isinstance(v, float):
                return f"{v:.{nd}f}"
            return str(v)

        d = asdict(self)
        out = {"id": pair_id}
        for c in ALIGNMENT_COLUMNS[1:]:
            out[c] = fmt(d[c], 3 if c in ("x_sub", "y_sub") else 4)
        return out


@dataclass
class AlignSummary:
    out_dir: str
    n_pairs: int
    n_passed: int
    reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    pairs_per_s: float = 0.0


# ----------------------------------------------------------------------------- features


def _box_highpass(img: np.ndarray, size: int) -> np.ndarray:
    """img minus a two-pass box blur (~Gaussian of sigma size/sqrt(6)); keeps float32."""
    import cv2

    if size <= 1:
        return img
    low = cv2.blur(
        cv2.blur(img, (size, size), borderType=cv2.BORDER_REFLECT),
        (size, size),
        borderType=cv2.BORDER_REFLECT,
    )
    return img - low


def _gauss(img: np.ndarray, sigma: float) -> np.ndarray:
    import cv2

    if sigma <= 0:
        return img
    return cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)


def template_features(tpl01: np.ndarray, cfg: AlignConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """(T, E): the blurred template and the blurred map of its boundary pixels, float32 (H, W)."""
    import cv2

    t = tpl01.astype(np.float32)
    T = _gauss(t, cfg.template_sigma)
    if not cfg.use_edges:
        return T, None
    # boundary = pixel whose 4-neighbourhood holds the other value; both sides of the edge
    cross = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8)
    b = cv2.morphologyEx(tpl01, cv2.MORPH_GRADIENT, cross, borderType=cv2.BORDER_REPLICATE).astype(
        np.float32
    )
    E = _gauss(b, cfg.template_sigma)
    return T, E


def sem_features(sem: np.ndarray, cfg: AlignConfig) -> np.ndarray:
    return _box_highpass(_gauss(sem.astype(np.float32), cfg.blur), cfg.highpass)


@dataclass
class ScoreMaps:
    """NCC maps of the SEM against T and E over the valid offsets, (H-h+1, W-w+1) each."""

    R: np.ndarray  # multiple correlation of the fit c + a*T + b*E, in [0, 1]
    rT: np.ndarray
    rE: np.ndarray | None
    rho: float  # correlation of T and E (fixed by the template)
    edges_bright: bool

    def coefficients(self, y: int, x: int) -> tuple[float, float]:
        """(a, b) of the fit at (y, x) for unit-norm zero-mean T~, E~ (times the window norm)."""
        rt = float(self.rT[y, x])
        if self.rE is None:
            return rt, 0.0
        re, rho = float(self.rE[y, x]), self.rho
        a, b = (rt - rho * re) / (1 - rho * rho), (re - rho * rt) / (1 - rho * rho)
        if self.edges_bright and b < 0:
            return rt, 0.0
        return a, b


def _dft_size(n: int) -> int:
    import cv2

    return int(cv2.getOptimalDFTSize(n))


def _spectrum(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """DFT of `img` zero-padded to `shape`: (H, W) float32 in cv2's packed real (CCS) layout."""
    import cv2

    buf = np.zeros(shape, np.float32)
    buf[: img.shape[0], : img.shape[1]] = img
    return cv2.dft(buf)


def _xcorr(fa: np.ndarray, fb: np.ndarray) -> np.ndarray:
    """Circular cross-correlation c[u] = sum_i a[i + u] * b[i] from two spectra, (H, W) float32."""
    import cv2

    return cv2.idft(
        cv2.mulSpectrums(fa, fb, 0, conjB=True), flags=cv2.DFT_REAL_OUTPUT | cv2.DFT_SCALE
    )


def score_map(
    sem_f: np.ndarray, T: np.ndarray, E: np.ndarray | None, edges_bright: bool = True
) -> ScoreMaps:
    """Score every offset by the multiple correlation R of the SEM window with {T, E}.

    r_T and r_E are `cv2.matchTemplate` TM_CCOEFF_NORMED maps. With unit-normalised zero-mean regressors T~, E~ (correlation rho), the squared
    multiple correlation is (r_T^2 + r_E^2 - 2 rho r_T r_E) / (1 - rho^2); its material
    coefficient is proportional to r_T - rho r_E (sign = polarity).
    """
    import cv2

    rT = cv2.matchTemplate(sem_f, T, cv2.TM_CCOEFF_NORMED)
    if E is None:
        return ScoreMaps(np.abs(rT), rT, None, 0.0, edges_bright)
    tc = T - T.mean()
    ec = E - E.mean()
    denom = float(np.sqrt((tc * tc).sum() * (ec * ec).sum()))
    rho = float((tc * ec).sum() / denom) if denom > 0 else 0.0
    if 1 - rho * rho < 1e-3 or denom == 0:
        return ScoreMaps(np.abs(rT), rT, None, 0.0, edges_bright)
    rE = cv2.matchTemplate(sem_f, E, cv2.TM_CCOEFF_NORMED)
    r2 = (rT * rT + rE * rE - 2 * rho * rT * rE) / (1 - rho * rho)
    if edges_bright:
        # secondary-electron yield rises at edges whatever the material: a fit that needs
        # dark edges is unphysical, so fall back to the material term alone there (b = 0)
        r2 = np.where(rE - rho * rT < 0, rT * rT, r2)
    return ScoreMaps(np.sqrt(np.clip(r2, 0, 1)), rT, rE, rho, edges_bright)


def model_dist2(T: np.ndarray, E: np.ndarray | None, a: float, b: float, r: int) -> np.ndarray:
    """|m_p - m_q|^2 for the unit-norm fitted model m = a T~ + b E~ at shifts |q - p| <= r.

    Returns (2r+1, 2r+1) indexed [dy+r, dx+r]; this is what scales the noise of
    R_p - R_q for nearby offsets, where the blur makes the binary template a poor guide.
    """

    def unit(v: np.ndarray) -> np.ndarray:
        v = v - v.mean()
        n = float(np.sqrt((v * v).sum()))
        return v / n if n > 0 else v

    m = a * unit(T) + (b * unit(E) if E is not None else 0.0)
    m = unit(np.asarray(m, np.float32))
    h, w = m.shape
    out = np.zeros((2 * r + 1, 2 * r + 1), np.float32)
    for dy in range(0, r + 1):
        for dx in range(-r, r + 1):
            if dy == 0 and dx < 0:
                continue
            # <m, m shifted by (dy, dx)> on the overlap; zero padding outside
            ov = float(
                (
                    m[dy:, max(0, dx) : w + min(0, dx)] * m[: h - dy, max(0, -dx) : w - max(0, dx)]
                ).sum()
            )
            out[r + dy, r + dx] = out[r - dy, r - dx] = ov
    return np.clip(2 * (1 - out), 1e-6, 4)


def shift_stats(tpl01: np.ndarray, ry: int, rx: int) -> tuple[np.ndarray, np.ndarray]:
    """Template self-comparison for every shift (dy, dx) in [-ry, ry] x [-rx, rx].

    Returns two (2*ry+1, 2*rx+1) float arrays indexed [dy+ry, dx+rx]:
    * mismatch: share of differing pixels between the template and itself shifted by
      (dy, dx), on the overlap (sum(a) + sum(b) - 2 sum(a*b) for binary a, b);
    * dist2: |t_p - t_q|^2 for the unit-norm zero-mean template placed at two offsets
      q - p = (dy, dx) of the SEM canvas, = 2 (1 - autocorrelation). It scales the
      noise of a score difference between the two offsets.
    """
    import cv2

    h, w = tpl01.shape
    a = tpl01.astype(np.float32)
    # cross[dy+ry, dx+rx] = sum_{overlap} a[i, j] * a[i+dy, j+dx]: the autocorrelation,
    # circular on a grid >= h + ry so that lags up to +-ry do not wrap
    fa = _spectrum(a, (_dft_size(h + ry), _dft_size(w + rx)))
    auto_c = _xcorr(fa, fa)
    rows = np.arange(-ry, ry + 1) % auto_c.shape[0]
    cols = np.arange(-rx, rx + 1) % auto_c.shape[1]
    cross = np.rint(auto_c[np.ix_(rows, cols)].astype(np.float64))  # integer counts
    ii = cv2.integral(a, sdepth=cv2.CV_64F)

    def rect_sum(r0: np.ndarray, r1: np.ndarray, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
        return ii[np.ix_(r1, c1)] - ii[np.ix_(r0, c1)] - ii[np.ix_(r1, c0)] + ii[np.ix_(r0, c0)]

    dys = np.arange(-ry, ry + 1)
    dxs = np.arange(-rx, rx + 1)
    # overlap in the un-shifted copy: rows [max(0,-dy), h - max(0,dy)), same for columns
    r0a, r1a = np.maximum(0, -dys), h - np.maximum(0, dys)
    c0a, c1a = np.maximum(0, -dxs), w - np.maximum(0, dxs)
    sa = rect_sum(r0a, r1a, c0a, c1a)
    sb = sa[::-1, ::-1]  # the shifted copy's overlap for d is the un-shifted one's for -d
    area = np.outer(r1a - r0a, c1a - c0a).astype(np.float64)
    mism = np.clip((sa + sb - 2 * cross) / area, 0, 1)
    n = float(h * w)
    f = float(a.sum()) / n
    var = max(n * f * (1 - f), 1e-9)
    auto = (cross - f * (sa + sb) + f * f * area) / var  # <t~_p, t~_q>, zero outside the overlap
    return mism.astype(np.float32), np.clip(2 * (1 - auto), 1e-6, 4).astype(np.float32)


def noise_ratio(sem: np.ndarray) -> float:
    """Estimated noise std / image std (<= 1), Immerkaer's Laplacian-difference estimator."""
    import cv2

    k = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    img = sem.astype(np.float32)
    resp = cv2.filter2D(img, -1, k)[1:-1, 1:-1]
    sigma = float(np.sqrt(np.pi / 2) * np.abs(resp).mean() / 6)
    sd = float(img.std())
    return min(1.0, sigma / sd) if sd > 0 else 1.0


def _parabolic(m: np.ndarray, y: int, x: int) -> tuple[float, float]:
    """Subpixel peak by a 1-D parabola through the peak and its two neighbours, per axis."""

    def off(a: float, b: float, c: float) -> float:
        d = a - 2 * b + c
        return 0.0 if d >= 0 else float(np.clip(0.5 * (a - c) / d, -0.5, 0.5))

    h, w = m.shape
    dy = off(m[y - 1, x], m[y, x], m[y + 1, x]) if 0 < y < h - 1 else 0.0
    dx = off(m[y, x - 1], m[y, x], m[y, x + 1]) if 0 < x < w - 1 else 0.0
    return y + dy, x + dx


# ----------------------------------------------------------------------------- one pair


def check_inputs(sem: np.ndarray, layout: np.ndarray, cfg: AlignConfig) -> str | None:
    """The QC reason code for inputs that cannot be matched, or None."""
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


def align_pair(
    sem_u8: np.ndarray, layout_u8: np.ndarray, cfg: AlignConfig | None = None
) -> AlignResult:
    """Find the layout template inside the raw SEM; never raises for bad images (see `reason`)."""
    import cv2

    cfg = cfg or AlignConfig()
    bad = check_inputs(sem_u8, layout_u8, cfg)
    if bad:
        return AlignResult(reason=bad)
    sem = sem_u8.reshape(sem_u8.shape[:2])
    layout = layout_u8.reshape(layout_u8.shape[:2])
    fg = layout == 255
    if not np.all(fg | (layout == 0)):
        return AlignResult(reason="not_binary")
    share = float(fg.mean())
    if min(share, 1 - share) < cfg.min_minority:
        return AlignResult(reason="blank_template")
    if float(cv2.meanStdDev(sem)[1][0, 0]) < cfg.blank_std:
        return AlignResult(reason="blank_sem")
    # zeros are clipped black *or* honest zero counts of a low-dose image: allow more of them
    bright = float(np.count_nonzero(sem == 255)) / sem.size
    dark = float(np.count_nonzero(sem == 0)) / sem.size
    if bright > cfg.max_clipped or dark > cfg.max_dark or bright + dark > cfg.max_dark:
        return AlignResult(reason="saturated_sem")

    tpl01 = fg.astype(np.uint8)
    T, E = template_features(tpl01, cfg)
    maps = score_map(sem_features(sem, cfg), T, E, cfg.edges_bright)
    R = maps.R  # (ny, nx)
    ny, nx = R.shape
    peak = np.unravel_index(int(np.argmax(R)), R.shape)
    y, x = int(peak[0]), int(peak[1])
    r1 = float(R[y, x])
    y_sub, x_sub = _parabolic(R, y, x)
    coef_t, coef_e = maps.coefficients(y, x)

    # offsets q with template content identical to the chosen p: mismatch(q - p) <= tol
    mism, dist2 = shift_stats(tpl01, ny - 1, nx - 1)  # [dy + ny-1, dx + nx-1]
    win = (slice(ny - 1 - y, 2 * ny - 1 - y), slice(nx - 1 - x, 2 * nx - 1 - x))  # q - p
    equiv = mism[win] <= cfg.equiv_tol  # (ny, nx)
    n_equiv = int(np.count_nonzero(equiv))

    # Confidence = the smallest z-score of R_p - R_q over non-equivalent q. The noise of
    # that difference is (residual/std) * |m_p - m_q| / sqrt(N) for white residuals, so a
    # competitor that differs from the template in few pixels needs only a small margin.
    # The unexplained share of the window's variance (shot noise *and* model misfit such as
    # CD bias) is what can flip the ranking; its std in NCC units is sqrt(1 - R^2).
    # Split it: shot noise (white, Immerkaer's estimate) and the rest, a systematic misfit whose
    # residual is structured (few independent samples) -- e.g. a line/space array seen with
    # the other polarity half a period away fits almost as well at any dose.
    unexplained = max(1.0 - r1 * r1, 1e-4)
    noise = min(noise_ratio(sem) ** 2, unexplained)
    sigma = np.sqrt(
        (cfg.misfit_corr * noise + cfg.systematic_corr * (unexplained - noise)) / float(layout.size)
    )
    z_min = _MAX_CONFIDENCE
    # far: local maxima of R not within `exclusion` of any equivalent offset (binary template)
    k = 2 * cfg.exclusion + 1
    near_equiv = cv2.dilate(equiv.astype(np.uint8), np.ones((k, k), np.uint8)) > 0
    local_max = cv2.dilate(R, np.ones((3, 3), np.uint8)) <= R
    comp = local_max & ~near_equiv
    if comp.any():
        z = (r1 - R[comp]) / (sigma * np.sqrt(dist2[win][comp]))
        z_min = min(z_min, float(z.min()))
    z_near = _MAX_CONFIDENCE
    # near: every non-equivalent offset around p (localisation), with the blurred model
    rn = cfg.exclusion
    if rn > 0:
        d2 = model_dist2(T, E, coef_t, coef_e, rn)
        y0, y1, x0, x1 = max(0, y - rn), min(ny, y + rn + 1), max(0, x - rn), min(nx, x + rn + 1)
        d2 = d2[y0 - y + rn : y1 - y + rn, x0 - x + rn : x1 - x + rn]
        sel = ~equiv[y0:y1, x0:x1]
        if sel.any():
            zn = (r1 - R[y0:y1, x0:x1][sel]) / (sigma * np.sqrt(d2[sel]))
            z_near = float(zn.min())
    # one number for QC: the near test has its own pass line, rescaled onto min_confidence
    confidence = float(min(z_min, z_near * cfg.min_confidence / max(cfg.min_localization, 1e-9)))

    if r1 < cfg.min_score:
        reason = "low_score"
    elif confidence < cfg.min_confidence:
        reason = "ambiguous"
    else:
        reason = "ok"
    return AlignResult(
        x=x,
        y=y,
        x_sub=float(x_sub),
        y_sub=float(y_sub),
        score=r1,
        confidence=confidence,
        separation=z_min,
        localization=z_near,
        polarity=1 if coef_t >= 0 else -1,
        n_equivalent=n_equiv,
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


# ----------------------------------------------------------------------------- folders


def _align_record(rec: PairRecord, tmp: Path, cfg: AlignConfig, has_clean: bool) -> dict[str, str]:
    """Read, align and (if QC passes) write the cropped pair into `tmp`; returns the CSV row."""
    import cv2

    try:
        sem = read_gray8(rec.sem_path)
        layout = read_gray8(rec.layout_path)  # align_pair rejects non-binary ones (not_binary)
    except ImageRejected as err:
        return AlignResult(reason=err.reason).row(rec.id)
    res = align_pair(sem, layout, cfg)
    clean = None
    if res.qc_pass and rec.clean_path is not None:
        try:
            clean = read_gray8(rec.clean_path, expected_shape=sem.shape)
        except ImageRejected as err:
            res.qc_pass, res.reason = False, err.reason
    if res.qc_pass:
        assert res.x is not None and res.y is not None
        h, w = layout.shape
        y, x = res.y, res.x
        fast = [cv2.IMWRITE_PNG_COMPRESSION, 1]  # lossless either way; level 1 is ~2x faster
        cv2.imwrite(
            str(tmp / "sem" / f"{rec.id}.png"),
            np.ascontiguousarray(sem[y : y + h, x : x + w]),
            fast,
        )
        shutil.copyfile(rec.layout_path, tmp / "layout" / f"{rec.id}.png")
        if clean is not None:
            cv2.imwrite(
                str(tmp / "clean" / f"{rec.id}.png"),
                np.ascontiguousarray(clean[y : y + h, x : x + w]),
                fast,
            )
    return res.row(rec.id)


def _worker_init() -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core; cv2's own threads would oversubscribe


def _worker_run(args: tuple[PairRecord, Path, AlignConfig, bool]) -> dict[str, str]:
    return _align_record(*args)


def align_folder(
    pairs_dir: str | Path,
    out_dir: str | Path,
    cfg: AlignConfig | None = None,
    workers: int = 1,
    progress: bool = False,
) -> AlignSummary:
    """Align every pair of `pairs_dir`; `out_dir` becomes the pair folder of QC-passed pairs.

    `out_dir/alignment.csv` has one row per input pair (rejected ones with a reason).
    Nothing appears at `out_dir` unless the whole run succeeds.
    """
    cfg = cfg or AlignConfig()
    pairs_dir, out_dir = Path(pairs_dir), Path(out_dir)
    records = read_manifest(pairs_dir)
    check_not_over_inputs(out_dir, input_pair_folder=pairs_dir)
    if workers < 1:
        raise SemlayoutError(f"workers must be >= 1, got {workers}")
    has_clean = any(r.clean_path is not None for r in records)
    t0 = time.perf_counter()
    with atomic_dir(out_dir) as tmp:
        for sub in ("sem", "layout") + (("clean",) if has_clean else ()):
            (tmp / sub).mkdir()
        jobs = [(r, tmp, cfg, has_clean) for r in records]
        rows = _run_jobs(jobs, workers, progress)
        _write_outputs(tmp, records, rows, has_clean)
    seconds = time.perf_counter() - t0
    reasons = Counter(r["reason"] for r in rows)
    n_pass = sum(r["qc_pass"] == "true" for r in rows)
    return AlignSummary(
        out_dir=str(out_dir),
        n_pairs=len(rows),
        n_passed=n_pass,
        reasons=dict(sorted(reasons.items())),
        seconds=seconds,
        pairs_per_s=len(rows) / seconds if seconds > 0 else 0.0,
    )


def _run_jobs(
    jobs: list[tuple[PairRecord, Path, AlignConfig, bool]], workers: int, progress: bool
) -> list[dict[str, str]]:
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), unit="pair", desc="align", disable=not progress, leave=False)
    try:
        if workers == 1 or len(jobs) < 64:
            rows = []
            for j in jobs:
                rows.append(_worker_run(j))
                bar.update()
            return rows
        import multiprocessing as mp

        # spawn, not fork: forking a process whose OpenCV thread pool is already running
        # can deadlock the children (seen here: workers stuck in a futex wait forever)
        ctx = mp.get_context("spawn")
        with ctx.Pool(workers, initializer=_worker_init) as pool:
            rows = []
            for row in pool.imap(_worker_run, jobs, chunksize=16):
                rows.append(row)
                bar.update()
            return rows
    finally:
        bar.close()


def _write_outputs(
    tmp: Path, records: list[PairRecord], rows: list[dict[str, str]], has_clean: bool
) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(ALIGNMENT_COLUMNS), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    (tmp / "alignment.csv").write_text(buf.getvalue())

    extra_cols: list[str] = []
    for r in records:
        for k in r.extra:
            if k not in extra_cols:
                extra_cols.append(k)
    columns = list(REQUIRED_COLUMNS) + (["clean_path"] if has_clean else []) + extra_cols
    buf = io.StringIO()
    mw = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    mw.writeheader()
    for rec, row in zip(records, rows, strict=True):
        if row["qc_pass"] != "true":
            continue
        out = {
            "id": rec.id,
            "sem_path": f"sem/{rec.id}.png",
            "layout_path": f"layout/{rec.id}.png",
            "pattern_type": rec.pattern_type,
        }
        if has_clean:
            out["clean_path"] = f"clean/{rec.id}.png" if rec.clean_path is not None else ""
        for k in extra_cols:
            out[k] = rec.extra.get(k, "")
        mw.writerow(out)
    (tmp / "manifest.csv").write_text(buf.getvalue())
