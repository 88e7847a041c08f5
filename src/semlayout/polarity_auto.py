"""`polarity=auto` for SEM -> Layout: which contrast polarity explains this SEM better.

Analysis by synthesis with the model's own two generators. For each image x (S x S in
[-1, 1]) and each hypothesis p in {+1 (bright), -1 (dark)}:
```
L_p = G_A(x, p)            the layout the model reads if the pattern is bright / dark
R_p = G_B(L_p, p)          how that layout would look under the microscope in polarity p
c_p = corr(blur(R_p), blur(x))   Pearson correlation after a Gaussian blur of SIGMA px
```
The evidence for bright is `e = c_+1 - c_-1` (in [-2, 2]); the image's polarity is the sign
of `e + prior_bias`. Why it works: the wrong hypothesis reads the complement layout, whose
rendering swaps which side of every edge carries the secondary-electron rim (rims are on
the pattern side in both polarities); the blur averages shot noise over the rim width.
`margin = |e + prior_bias|` is returned with the choice: near 0 the image alone cannot tell
(half-pitch line/space with a weak rim), which is what a layer prior is for.

A layer prior (`prior`: +1 or -1, how sure: `PRIOR_BIAS`) shifts the decision toward the
layer's polarity by a fixed amount of evidence; image evidence stronger than that wins.
Cost: two G_A and two G_B forwards instead of one G_A (the output of the chosen hypothesis is
already computed). `docs/polarity.md` has the measurements.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from semlayout.polarity import BRIGHT, DARK

SIGMA = 1.5  # px at the model's size: about a rim width; averages shot noise over it
PRIOR_BIAS = 0.02  # evidence a layer prior is worth (see docs/polarity.md)

Run = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (B,1,S,S), (B,) -> (B,1,S,S)


@dataclass(frozen=True)
class PolarityDecision:
    """The polarity an image was translated in, and why."""

    polarity: int  # +1 bright, -1 dark
    source: str  # given (the caller or a layer fixed it) | auto (decided from the image) | only
    # (the model serves one polarity)
    margin: float | None = None  # auto: |evidence + prior bias|, how clear the choice was
    evidence: float | None = None  # auto: c_bright - c_dark from the image alone (> 0: bright)


def _blur(batch: np.ndarray, sigma: float) -> np.ndarray:
    import cv2

    return np.stack([cv2.GaussianBlur(im, (0, 0), sigma) for im in batch])


def consistency(x: np.ndarray, rendered: np.ndarray, sigma: float = SIGMA) -> np.ndarray:
    """Per-image Pearson correlation of (B, S, S) images after a Gaussian blur -> (B,)."""
    a = _blur(np.asarray(x, np.float32), sigma).reshape(len(x), -1)
    b = _blur(np.asarray(rendered, np.float32), sigma).reshape(len(x), -1)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    return np.where(den > 0, (a * b).sum(axis=1) / np.maximum(den, 1e-12), 0.0)


def auto_sem2layout(
    run_a: Run, run_b: Run, batch: np.ndarray, prior: int | None = None
) -> tuple[np.ndarray, list[PolarityDecision]]:
    """(G_A output in the chosen polarity (B, 1, S, S), one decision per image) for a
    (B, 1, S, S) float32 batch; `prior` is the layer's polarity when one is configured."""
    n = len(batch)
    ones = np.ones(n, np.float32)
    lay = {p: run_a(batch, p * ones) for p in (BRIGHT, DARK)}
    score = {p: consistency(batch[:, 0], run_b(lay[p], p * ones)[:, 0]) for p in (BRIGHT, DARK)}
    evidence = score[BRIGHT] - score[DARK]
    bias = 0.0 if prior is None else PRIOR_BIAS * prior
    chosen = np.where(evidence + bias >= 0, BRIGHT, DARK)
    out = np.where(chosen[:, None, None, None] == BRIGHT, lay[BRIGHT], lay[DARK])
    decisions = [
        PolarityDecision(int(c), "auto", float(abs(e + bias)), float(e))
        for c, e in zip(chosen, evidence, strict=True)
    ]
    return out, decisions


# evidence below this is no reading of the image's polarity (half-pitch gratings with a weak
# rim): the drift monitor does not count it either way (docs/polarity.md)
EVIDENCE_MIN = 0.01


def observed_polarity(decision: PolarityDecision) -> int | None:
    """The polarity an image shows, for the drift monitor: the caller's when given, the sign
    of auto's evidence (before any layer prior) when clear enough, else None (not judged)."""
    if decision.source == "given":
        return decision.polarity
    e = decision.evidence if decision.source == "auto" else None
    if e is None or abs(e) < EVIDENCE_MIN:
        return None
    return BRIGHT if e > 0 else DARK
