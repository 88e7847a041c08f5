"""Alignment settings (`AlignConfig`) and the QC reason codes (`REASONS`).

The matching core is `semlayout.data.align`; its module docstring says what each setting
acts on.
"""

from __future__ import annotations

from dataclasses import dataclass

from semlayout.data.pairs import SEM_RAW_SHAPE, TEMPLATE_SHAPE
from semlayout.errors import SemlayoutError

REASONS = (
    "ok",
    "low_score",
    "ambiguous",
    "ambiguous_polarity",
    "polarity_conflict",
    "distorted",
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
    # polarity: a pair's own polarity counts (for the data-set prior) from this margin (z)
    min_polarity_margin: float = 4.0
    prior_min_pairs: int = 5  # confident pairs a data-set prior needs ...
    prior_min_share: float = 0.95  # ... and the share of them that must agree
    # field distortion (rotation, magnification): corrected when the largest displacement of a
    # template corner is >= min_distortion_px and >= distortion_z standard errors
    correct_distortion: bool = True
    min_distortion_px: float = 0.5
    distortion_z: float = 3.0
    distortion_steps: int = 2  # corrections in a row (each re-estimates what is left)
    # QC: a distortion left (not undone) that moves a corner >= residual_px, at residual_z
    # standard errors (less sure than needed to undo it, too sure to pass the pair)
    residual_px: float = 1.0
    residual_z: float = 2.5
    distortion_grid: int = 4  # patches per side for the estimate
    # the estimate runs only when a linearised whole-window screen moves a template corner by
    # >= this (px; 0 = always; at most min_distortion_px); set on a tuning set and checked
    # held out, docs/alignment.md (0.35 before issue 20's speed pass)
    distortion_screen_px: float = 0.5
    distortion_search: int = 5  # px searched around each patch's expected place
    max_rotation_deg: float = 3.0  # a larger significant estimate is refused ("distorted")
    max_scale_error: float = 0.05  # |scale - 1| beyond this is refused too

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
            "min_polarity_margin": self.min_polarity_margin >= 0,
            "prior_min_pairs": self.prior_min_pairs >= 1,
            "prior_min_share": 0.5 < self.prior_min_share <= 1,
            "min_distortion_px": self.min_distortion_px >= 0,
            "distortion_z": self.distortion_z >= 0,
            "distortion_steps": self.distortion_steps >= 1,
            "residual_px": self.residual_px >= self.min_distortion_px,
            "residual_z": self.residual_z >= 0,
            "distortion_grid": self.distortion_grid >= 3,
            "distortion_screen_px": 0 <= self.distortion_screen_px <= self.min_distortion_px,
            "distortion_search": self.distortion_search >= 1,
            "max_rotation_deg": self.max_rotation_deg > 0,
            "max_scale_error": 0 < self.max_scale_error < 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise SemlayoutError(
                "invalid align setting(s): "
                + ", ".join(f"{k}={getattr(self, k)!r}" for k in bad)
                + " (blur/template_sigma/highpass/min_confidence/exclusion/blank_std/"
                "min_polarity_margin/min_distortion_px/distortion_z >= 0, 0 <= equiv_tol < 0.5, "
                "0 < max_clipped/max_dark <= 1, -1 <= min_score <= 1, prior_min_pairs >= 1, "
                "0.5 < prior_min_share <= 1, max_rotation_deg > 0, 0 < max_scale_error < 1, "
                "distortion_steps >= 1, residual_px >= min_distortion_px, distortion_grid >= 3, "
                "distortion_search >= 1, 0 <= distortion_screen_px <= min_distortion_px)"
            )
