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

* field distortion: a stage rotation and a magnification error move the template's
  corners by pixels; after the integer peak a cheap linearised screen
  (`align_distortion.screen_distortion`) clears the pairs whose corners it sees move by
  less than `distortion_screen_px`, and for the others the distortion is estimated from patch
  displacements (`semlayout.data.align_distortion`) and, when large and significant,
  undone: the SEM is resampled into the layout's frame and matched again. `rotation_deg`
  and `scale` say what was undone (0 and 1: nothing).
* polarity as data (`semlayout.data.align_polarity`): every pair reports its polarity,
  the z-score margin by which that polarity beats the other, and whether it came from
  the pair itself or from a data-set prior. An ambiguous pair whose only look-alikes
  have the other polarity (a reversed grating half a pitch away) is "ambiguous_polarity"
  without a prior, and is placed under a clear prior's polarity.

`align_pair` is pure (arrays in, `AlignResult` out) and runs in named steps:
`check_inputs` / `check_content` (reject what cannot be matched), `prepare` (features
and the score map, `semlayout.data.align_maps`), `correct_field` (distortion),
`evaluate` (integer peak, subpixel, fit, `equivalent_offsets`, `score_noise`,
`separation_z` / `localization_z`, `combined_confidence`) on the map of both polarities
and on each polarity's own map, `polarity_margin` and `decide` (the QC verdict).
`semlayout.data.align_folder` runs it over a pair folder, estimates the data set's
polarity from its confident pairs, places the ambiguous ones with it and writes the
aligned pair folder + alignment.csv atomically.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from semlayout.data.align_config import REASONS, AlignConfig
from semlayout.data.align_distortion import FieldDistortion, correct_field, needs_estimate
from semlayout.data.align_maps import (
    pair_model_dist2,
    signed_fit,
)
from semlayout.data.align_peak import _MAX_CONFIDENCE, Peak, Verdict, evaluate
from semlayout.data.align_polarity import PolarityPrior, fixed_prior
from semlayout.data.align_scene import Scene, prepare
from semlayout.data.field_distortion import warp_field

__all__ = ["REASONS", "AlignConfig", "AlignResult", "align_pair", "aligned_crop", "plain_ncc"]


@dataclass
class AlignResult:
    x: int | None = None  # column of the template's top-left in the SEM
    y: int | None = None  # row
    x_sub: float | None = None
    y_sub: float | None = None
    score: float | None = None  # multiple correlation R at the peak, in [0, 1]
    confidence: float | None = None  # z-score of the R gap to the best non-equivalent peak (capped)
    polarity: int | None = None  # +1 pattern bright, -1 pattern dark (reversed contrast)
    polarity_margin: float | None = None  # z-score by which that polarity beats the other (>= 0)
    polarity_source: str | None = None  # "pair" (its own fit) or "prior" (the data set's)
    n_equivalent: int | None = None  # offsets in the search range with identical template content
    separation: float | None = None  # z-score of the gap to the best distant non-equivalent peak
    localization: float | None = None  # z-score of the peak vs its non-equivalent neighbours
    rotation_deg: float | None = None  # field rotation undone before matching (0: none)
    scale: float | None = None  # field magnification undone before matching (1: none)
    qc_pass: bool = False
    reason: str = "ok"
    # True: the patch estimate of the field distortion ran (the screen saw a possible one);
    # False: the screen cleared the pair and it was skipped; None: not attempted
    distortion_estimated: bool | None = None

    @property
    def corrected(self) -> bool:
        """True when a field distortion was undone (the crop is resampled, not cut)."""
        return (self.rotation_deg or 0.0) != 0.0 or (self.scale or 1.0) != 1.0

    def qc_summary(self) -> str:
        """Why QC said what it said, for a message: "ambiguous (score 0.109, confidence 0.163)",
        with the polarity and any distortion undone ("...; rotation +0.62 deg, scale 1.0130")."""

        def num(v: float | None) -> str:
            return "-" if v is None else f"{v:.3f}"

        text = f"{self.reason} (score {num(self.score)}, confidence {num(self.confidence)}"
        if self.polarity is not None:
            text += f"; polarity {self.polarity:+d} from the {self.polarity_source}"
            text += f", margin {num(self.polarity_margin)}"
        if self.corrected:
            text += f"; rotation {self.rotation_deg:+.2f} deg, scale {self.scale:.4f}"
        return text + ")"


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


# ----------------------------------------------------------------------------- matching


def polarity_margin(
    scene: Scene, peak: Peak, other: tuple[np.ndarray, np.ndarray, np.ndarray], sigma: float
) -> float:
    """z-score by which `peak` beats the best placement fitted with the other polarity
    (`other` = its signed map and coefficients); 0 when that one fits at least as well."""
    R, a, b = other
    qy, qx = (int(v) for v in np.unravel_index(int(np.argmax(R)), R.shape))
    gap = peak.score - float(R[qy, qx])
    if gap <= 0:
        return 0.0
    d2 = pair_model_dist2(
        scene.T,
        scene.E,
        (peak.y, peak.x),
        (peak.coef_t, peak.coef_e),
        (qy, qx),
        (float(a[qy, qx]), float(b[qy, qx])),
        scene.units,
    )
    return float(min(_MAX_CONFIDENCE, gap / (sigma * np.sqrt(d2))))


def _same_place(R: np.ndarray, v: Verdict) -> bool:
    """The maximum of map `R` is one of `v`'s equivalent offsets (or next to one)."""
    qy, qx = (int(i) for i in np.unravel_index(int(np.argmax(R)), R.shape))
    m = v.equiv.mask
    return bool(m[max(0, qy - 1) : qy + 2, max(0, qx - 1) : qx + 2].any())


def _result(
    v: Verdict,
    reason: str,
    polarity: int,
    margin: float,
    source: str,
    field: FieldDistortion | None,
) -> AlignResult:
    p = v.peak
    return AlignResult(
        x=p.x,
        y=p.y,
        x_sub=float(p.x_sub),
        y_sub=float(p.y_sub),
        score=p.score,
        confidence=v.confidence,
        polarity=polarity,
        polarity_margin=margin,
        polarity_source=source,
        n_equivalent=v.equiv.count,
        separation=v.separation,
        localization=v.localization,
        rotation_deg=field.rotation_deg if field is not None else 0.0,
        scale=field.scale if field is not None else 1.0,
        qc_pass=reason == "ok",
        reason=reason,
    )


def decide(
    scene: Scene, cfg: AlignConfig, prior: PolarityPrior, field: FieldDistortion | None
) -> AlignResult:
    """The QC verdict and polarity of a prepared pair (module docstring: polarity as data)."""
    maps = scene.maps
    free = evaluate(
        maps.R, maps.coefficients, scene.table, scene.T, scene.E, scene.raw, cfg, None, scene.noise
    )
    sign = 1 if free.peak.coef_t >= 0 else -1
    fits = functools.cache(lambda s: signed_fit(maps, s))  # each sign's maps, when needed
    margin = polarity_margin(scene, free.peak, fits(-sign), float(free.sigma))
    if free.peak.score < cfg.min_score:
        return _result(free, "low_score", sign, margin, "pair", field)
    weak = margin < cfg.min_polarity_margin
    if free.confidence >= cfg.min_confidence:
        if not prior.clear or prior.polarity == sign:
            return _result(free, "ok", sign, margin, "pair", field)
        if _same_place(fits(-sign)[0], free):  # the data set's polarity, the same place
            if weak:
                return _result(free, "ok", -sign, 0.0, "prior", field)
            return _result(free, "ok", sign, margin, "pair", field)
        if not weak:  # sure of the other polarity, and it moves the placement: refuse
            return _result(free, "polarity_conflict", sign, margin, "pair", field)
        return _result(free, "ok", sign, margin, "pair", field)
    own: Verdict | None = None
    if prior.polarity is not None and (prior.polarity == sign or weak):
        pol = prior.polarity
        v = scene.evaluate_signed(*fits(pol), cfg)
        if v.peak.score >= cfg.min_score and v.confidence >= cfg.min_confidence:
            m = polarity_margin(scene, v.peak, fits(-pol), float(v.sigma))
            return _result(v, "ok", pol, m, "prior", field)
        own = v if pol == sign else None
    own = own or scene.evaluate_signed(*fits(sign), cfg)
    reason = "ambiguous_polarity" if own.confidence >= cfg.min_confidence else "ambiguous"
    return _result(free, reason, sign, margin, "pair", field)


def as_prior(prior: PolarityPrior | int | str | None) -> PolarityPrior:
    """None -> no prior; +1/-1/"bright"/"dark" -> fixed; a `PolarityPrior` as it is."""
    if prior is None:
        return PolarityPrior()
    if isinstance(prior, PolarityPrior):
        return prior
    return fixed_prior(prior)


# ----------------------------------------------------------------------------- one pair


def align_pair(
    sem_u8: np.ndarray,
    layout_u8: np.ndarray,
    cfg: AlignConfig | None = None,
    prior: PolarityPrior | int | str | None = None,
) -> AlignResult:
    """Find the layout template inside the raw SEM; never raises for bad images (see `reason`).

    `prior`: the data set's polarity, used only for pairs whose own polarity is unclear
    (a `PolarityPrior`, or +1/-1/"bright"/"dark" fixed by the caller; None: no prior)."""
    cfg = cfg or AlignConfig()
    bad = check_inputs(sem_u8, layout_u8, cfg)
    if bad:
        return AlignResult(reason=bad)
    sem = sem_u8.reshape(sem_u8.shape[:2])
    layout = layout_u8.reshape(layout_u8.shape[:2])
    bad = check_content(sem, layout, cfg)
    if bad:
        return AlignResult(reason=bad)
    scene = prepare(sem, layout, cfg)
    field = None
    estimated = cfg.correct_distortion and needs_estimate(scene, cfg)
    if estimated:
        scene, field, refused = correct_field(scene, cfg)
        if refused is not None:
            res = decide(scene, cfg, PolarityPrior(), refused)
            res.qc_pass, res.reason, res.distortion_estimated = False, "distorted", True
            return res
    res = decide(scene, cfg, as_prior(prior), field)
    res.distortion_estimated = estimated if cfg.correct_distortion else None
    return res


def aligned_crop(img: np.ndarray, res: AlignResult, shape: tuple[int, ...]) -> np.ndarray:
    """The (h, w) window of a raw 8-bit image (SEM, clean) that `res` matched to the layout:
    cut at (res.y, res.x) after resampling into the layout's frame when `res` undid a field
    distortion. Same dtype as `img`."""
    if res.x is None or res.y is None:
        raise ValueError("aligned_crop needs a placed result (x and y)")
    h, w = shape[:2]
    if res.corrected:
        warped = warp_field(img.astype(np.float32), res.rotation_deg or 0.0, res.scale or 1.0, True)
        img = np.clip(np.rint(warped), 0, 255).astype(img.dtype)
    return np.ascontiguousarray(img[res.y : res.y + h, res.x : res.x + w])


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
        polarity=1,  # plain NCC assumes the pattern bright
        polarity_source="pair",
        n_equivalent=None,
        qc_pass=ok,
        reason="ok" if ok else "low_score",
    )
