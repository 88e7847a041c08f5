"""`polarity=auto` for SEM -> Layout: which contrast polarity explains this SEM better.

Analysis by synthesis with the model's own two generators. For each image x (S x S in
[-1, 1]) and each hypothesis p in {+1 (bright), -1 (dark)}:
```
L_p = G_A(x, p)            the layout the model reads if the pattern is bright / dark
R_p = G_B(L_p, p)          how that layout would look under the microscope in polarity p
c_p(s) = corr(blur_s(R_p), blur_s(x))   Pearson correlation after a Gaussian blur of s px
```
The wrong hypothesis reads (roughly) the complement layout, whose rendering puts the
secondary-electron rims on the other side of every edge (rims are on the pattern side in both
polarities); the blur averages shot noise over the rim width. The features (`FEATURES`) are
c_+1 and c_-1 at three blurs and how decided (|L_p|, mean over pixels) each reading is.

The evidence for bright is a log-odds `e`: with the checkpoint's calibrated head
(`polarity.auto_head`, a logistic regression fitted by training on its val split: the two
branches of a generator are not equally good, so the raw difference of correlations is
biased), `e = w . standardised(features) + b`; without one, `e = RAW_SCALE * (c_+1 - c_-1)`
at 1.5 px. A layer prior (+1 / -1) adds `PRIOR_LOGODDS` toward its polarity; the image's
polarity is the sign of the sum and `margin` its absolute value (log-odds: 0 = a coin toss).
Cost: two G_A and two G_B forwards instead of one G_A (the chosen hypothesis' output is
already computed). docs/polarity.md has the measurements.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from semlayout.polarity import BRIGHT, DARK

SIGMAS = (0.75, 1.5, 3.0)  # px at the model's size: below, about and above a rim width
FEATURES = (
    *(f"corr_{p}_s{s}" for s in SIGMAS for p in ("bright", "dark")),
    "decided_bright",
    "decided_dark",
)
RAW_SCALE = 50.0  # logits per unit of c_+1 - c_-1 when there is no calibrated head
PRIOR_LOGODDS = 2.2  # a layer prior of about 9:1 (docs/polarity.md)
# |evidence| below this (logits: p < 0.62) is no reading of the image's polarity: the drift
# monitor counts it neither way
EVIDENCE_MIN = 0.5

Run = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (B,1,S,S), (B,) -> (B,1,S,S)


@dataclass(frozen=True)
class PolarityDecision:
    """The polarity an image was translated in, and why."""

    polarity: int  # +1 bright, -1 dark
    source: str  # given (the caller or a layer fixed it) | auto (decided from the image) | only
    # (the model serves one polarity)
    margin: float | None = None  # auto: |evidence + prior|, log-odds of the choice
    evidence: float | None = None  # auto: log-odds of bright from the image alone


def _blur(batch: np.ndarray, sigma: float) -> np.ndarray:
    import cv2

    return np.stack([cv2.GaussianBlur(im, (0, 0), sigma) for im in batch])


def consistency(x: np.ndarray, rendered: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """Per-image Pearson correlation of (B, S, S) images after a Gaussian blur -> (B,)."""
    a = _blur(np.asarray(x, np.float32), sigma).reshape(len(x), -1)
    b = _blur(np.asarray(rendered, np.float32), sigma).reshape(len(x), -1)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    return np.where(den > 0, (a * b).sum(axis=1) / np.maximum(den, 1e-12), 0.0)


def hypotheses(
    run_a: Run, run_b: Run, batch: np.ndarray
) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """({+1: G_A output if bright, -1: if dark} (B, 1, S, S), features (B, len(FEATURES)))."""
    ones = np.ones(len(batch), np.float32)
    lay = {p: run_a(batch, p * ones) for p in (BRIGHT, DARK)}
    ren = {p: run_b(lay[p], p * ones)[:, 0] for p in (BRIGHT, DARK)}
    cols = [consistency(batch[:, 0], ren[p], s) for s in SIGMAS for p in (BRIGHT, DARK)]
    cols += [np.abs(lay[p][:, 0]).mean(axis=(1, 2)) for p in (BRIGHT, DARK)]
    return lay, np.stack(cols, axis=1).astype(np.float64)


def evidence(feats: np.ndarray, head: Any | None = None) -> np.ndarray:
    """Log-odds of bright per image from its features, by `head` (`AutoHeadConfig`) or raw."""
    if head is None:
        i, j = FEATURES.index("corr_bright_s1.5"), FEATURES.index("corr_dark_s1.5")
        return RAW_SCALE * (feats[:, i] - feats[:, j])
    z = (feats - np.asarray(head.mean)) / np.asarray(head.scale)
    return z @ np.asarray(head.weights) + head.bias


def auto_sem2layout(
    run_a: Run,
    run_b: Run,
    batch: np.ndarray,
    prior: int | None = None,
    head: Any | None = None,
) -> tuple[np.ndarray, list[PolarityDecision]]:
    """(G_A output in the chosen polarity (B, 1, S, S), one decision per image) for a
    (B, 1, S, S) float32 batch; `prior` is the layer's polarity when one is configured."""
    lay, feats = hypotheses(run_a, run_b, batch)
    e = evidence(feats, head)
    total = e + (0.0 if prior is None else PRIOR_LOGODDS * prior)
    chosen = np.where(total >= 0, BRIGHT, DARK)
    out = np.where(chosen[:, None, None, None] == BRIGHT, lay[BRIGHT], lay[DARK])
    decisions = [
        PolarityDecision(int(c), "auto", float(abs(t)), float(v))
        for c, t, v in zip(chosen, total, e, strict=True)
    ]
    return out, decisions


def fit_head(feats: np.ndarray, polarity: np.ndarray, l2: float = 0.01) -> dict[str, Any]:
    """A logistic regression of bright (polarity +1) on standardised `feats` (N, F): the
    fields of `AutoHeadConfig`. Deterministic (full-batch gradient descent from zero)."""
    y = (np.asarray(polarity) > 0).astype(np.float64)
    mean = feats.mean(axis=0)
    scale = feats.std(axis=0) + 1e-6
    z = (feats - mean) / scale
    w, b = np.zeros(z.shape[1]), 0.0
    for _ in range(2000):
        p = 1.0 / (1.0 + np.exp(-(z @ w + b)))
        w -= 0.5 * (z.T @ (p - y) / len(y) + l2 * w)
        b -= 0.5 * float(np.mean(p - y))
    acc = float(np.mean(((z @ w + b) >= 0) == (y > 0.5)))
    return {
        "mean": mean.tolist(),
        "scale": scale.tolist(),
        "weights": w.tolist(),
        "bias": b,
        "n": len(y),
        "accuracy": acc,
    }


def observed_polarity(decision: PolarityDecision) -> int | None:
    """The polarity an image shows, for the drift monitor: the caller's when given, the sign
    of auto's evidence (before any layer prior) when clear enough, else None (not judged)."""
    if decision.source == "given":
        return decision.polarity
    e = decision.evidence if decision.source == "auto" else None
    if e is None or abs(e) < EVIDENCE_MIN:
        return None
    return BRIGHT if e > 0 else DARK
