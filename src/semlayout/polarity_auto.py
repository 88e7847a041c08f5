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
at 1.5 px. The layer's word (`semlayout.polarity_layer.LayerPrior`): a configured polarity
decides (source `layer`); else its pooled evidence adds to the image's (source `pooled` once
the layer has read images, `auto` for the image alone): the polarity is the sign of the sum
and `margin` its absolute value (log-odds: 0 = a coin toss).
Cost: two G_A and two G_B forwards instead of one G_A (the chosen hypothesis' output is
already computed). docs/polarity.md has the measurements.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from semlayout.polarity import BRIGHT, DARK
from semlayout.polarity_layer import CLIP, LayerPrior

SIGMAS = (0.75, 1.5, 3.0)  # px at the model's size: below, about and above a rim width
RIM_SCALES = ((0.75, 3.0), (1.0, 5.0), (0.5, 2.0))  # (fine, coarse) blurs, px at model size
FEATURES = (
    *(f"corr_{p}_s{s}" for s in SIGMAS for p in ("bright", "dark")),
    "decided_bright",
    "decided_dark",
    # which phase the SE rims lie on, from the image alone (`rim_features`); appended: a head
    # fitted before they existed uses the first len(weights) features
    *(f"rim_{k}_s{f}_{c}" for f, c in RIM_SCALES for k in ("phase", "side")),
    "skew",
)
RAW_SCALE = 50.0  # logits per unit of c_+1 - c_-1 when there is no calibrated head
# |evidence| below this (logits: p < 0.62) is no reading of the image's polarity: the drift
# monitor counts it neither way
EVIDENCE_MIN = 0.5

Run = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (B,1,S,S), (B,) -> (B,1,S,S)


@dataclass(frozen=True)
class PolarityDecision:
    """The polarity an image was translated in, and why."""

    polarity: int  # +1 bright, -1 dark
    source: str  # given (the caller) | layer (configured) | pooled (the image + its layer's
    # evidence) | auto (the image alone) | only (the model serves one polarity)
    margin: float | None = None  # pooled / auto: |clipped evidence + pooled|, log-odds
    evidence: float | None = None  # auto: log-odds of bright from the image alone
    # auto: corr(blur(G_B(G_A(x))), blur(x)) at 0.75 px in the chosen polarity, the cycle
    # reconstruction the analysis already computed (the confidence reuses it, issue 17)
    cycle: float | None = None


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


def rim_features(x: np.ndarray) -> list[float]:
    """Which phase the secondary-electron rims lie on, from the image alone ((S, S) in
    [-1, 1]): rims are on the pattern side of every edge in both polarities, so near edges the
    fine-scale residual (a light blur minus a heavier one) is bright on the bright phase in
    normal contrast and on the dark phase in reversed contrast. Per scale pair: the residual
    times the local phase (its sign against a wide blur) near edges, over |residual|; the
    residual's mean on the bright side minus the dark side, over the image's spread. Then the
    grey levels' skewness."""
    import cv2

    x = np.asarray(x, np.float32)
    wide = cv2.GaussianBlur(x, (0, 0), 12.0)
    out: list[float] = []
    for fine, coarse in RIM_SCALES:
        a, b = cv2.GaussianBlur(x, (0, 0), fine), cv2.GaussianBlur(x, (0, 0), coarse)
        res, phase = a - b, np.sign(b - wide)
        grad = np.hypot(cv2.Sobel(b, cv2.CV_32F, 1, 0), cv2.Sobel(b, cv2.CV_32F, 0, 1))
        near = grad > np.quantile(grad, 0.8)
        hi, lo = near & (phase > 0), near & (phase < 0)
        if not hi.any() or not lo.any():
            out += [0.0, 0.0]
            continue
        out.append(float((res * phase)[near].mean() / (np.abs(res[near]).mean() + 1e-6)))
        out.append(float((res[hi].mean() - res[lo].mean()) / (x.std() + 1e-6)))
    out.append(float(((x - x.mean()) ** 3).mean() / (x.std() ** 3 + 1e-6)))
    return out


def hypotheses(
    run_a: Run, run_b: Run, batch: np.ndarray, known: dict[int, np.ndarray] | None = None
) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """({+1: G_A output if bright, -1: if dark} (B, 1, S, S), features (B, len(FEATURES)));
    `known`: G_A's output of this batch in a polarity already computed (e.g. the answer's own
    pass): not run again."""
    ones = np.ones(len(batch), np.float32)
    known = known or {}
    lay = {p: known[p] if p in known else run_a(batch, p * ones) for p in (BRIGHT, DARK)}
    ren = {p: run_b(lay[p], p * ones)[:, 0] for p in (BRIGHT, DARK)}
    cols = [consistency(batch[:, 0], ren[p], s) for s in SIGMAS for p in (BRIGHT, DARK)]
    cols += [np.abs(lay[p][:, 0]).mean(axis=(1, 2)) for p in (BRIGHT, DARK)]
    rims = np.array([rim_features(x) for x in batch[:, 0]], np.float64).reshape(len(batch), -1)
    return lay, np.concatenate([np.stack(cols, axis=1), rims], axis=1).astype(np.float64)


def evidence(feats: np.ndarray, head: Any | None = None) -> np.ndarray:
    """Log-odds of bright per image from its features, by `head` (`AutoHeadConfig`) or raw."""
    if head is None:
        i, j = FEATURES.index("corr_bright_s1.5"), FEATURES.index("corr_dark_s1.5")
        return RAW_SCALE * (feats[:, i] - feats[:, j])
    f = feats[:, : len(head.weights)]  # a head fitted before the rim features: the first ones
    z = (f - np.asarray(head.mean)) / np.asarray(head.scale)
    return z @ np.asarray(head.weights) + head.bias


def auto_sem2layout(
    run_a: Run,
    run_b: Run,
    batch: np.ndarray,
    prior: int | LayerPrior | None = None,
    head: Any | None = None,
) -> tuple[np.ndarray, list[PolarityDecision]]:
    """(G_A output in the chosen polarity (B, 1, S, S), one decision per image) for a
    (B, 1, S, S) float32 batch; `prior`: the layer's configured polarity (+1 / -1) or its
    `LayerPrior` (configured and pooled evidence)."""
    lay, feats = hypotheses(run_a, run_b, batch)
    e = evidence(feats, head)
    cycles = {
        BRIGHT: feats[:, FEATURES.index("corr_bright_s0.75")],
        DARK: feats[:, FEATURES.index("corr_dark_s0.75")],
    }
    return choose(lay, e, LayerPrior.of(prior), cycles)


def choose(
    lay: dict[int, np.ndarray],
    e: np.ndarray,
    prior: LayerPrior,
    cycles: dict[int, np.ndarray] | None = None,
) -> tuple[np.ndarray, list[PolarityDecision]]:
    """Pick each image's hypothesis from its evidence `e` (B,) and the layer's word: the
    image's evidence counts clipped (`polarity_layer.CLIP`), as when it is pooled, so a
    layer's pooled evidence can outweigh any one image. `cycles`: each hypothesis' cycle
    correlation (B,), kept in the decision for the chosen one (the confidence reuses it)."""
    total = np.clip(e, -CLIP, CLIP) + prior.pooled
    if prior.configured is not None:
        chosen = np.full(len(e), prior.configured)
        source = "layer"
        margins: list[float | None] = [None] * len(e)
    else:
        chosen = np.where(total >= 0, BRIGHT, DARK)
        source = "pooled" if prior.n > 0 else "auto"
        margins = [float(abs(t)) for t in total]
    cyc: list[float | None] = [None] * len(e)
    if cycles is not None:
        cyc = [float(v) for v in np.where(chosen == BRIGHT, cycles[BRIGHT], cycles[DARK])]
    decisions = [
        PolarityDecision(int(c), source, m, float(v), r)
        for c, m, v, r in zip(chosen, margins, e, cyc, strict=True)
    ]
    out = np.where(chosen[:, None, None, None] == BRIGHT, lay[BRIGHT], lay[DARK])
    return out, decisions


def fit_head(feats: np.ndarray, polarity: np.ndarray, l2: float = 0.01) -> dict[str, Any]:
    """A logistic regression of bright (polarity +1) on standardised `feats` (N, F): the
    fields of `AutoHeadConfig`. The two polarities weigh the same whatever their counts, so
    the log-odds are a likelihood ratio (no base rate in the bias: a layer's images can be
    pooled, `semlayout.polarity_layer`). Deterministic (full-batch gradient descent from
    zero); `accuracy` is the balanced accuracy (the mean of the per-polarity ones)."""
    y = (np.asarray(polarity) > 0).astype(np.float64)
    n_pos, n_neg = max(y.sum(), 1.0), max((1 - y).sum(), 1.0)
    wt = np.where(y > 0.5, 0.5 / n_pos, 0.5 / n_neg)  # sums to 1, half per polarity
    mean = feats.mean(axis=0)
    scale = feats.std(axis=0) + 1e-6
    z = (feats - mean) / scale
    w, b = np.zeros(z.shape[1]), 0.0
    for _ in range(2000):
        r = wt * (1.0 / (1.0 + np.exp(-(z @ w + b))) - y)
        w -= 0.5 * (z.T @ r + l2 * w)
        b -= 0.5 * float(r.sum())
    right = ((z @ w + b) >= 0) == (y > 0.5)
    acc = float(np.sum(wt * right))
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
    e = decision.evidence if decision.source in ("auto", "pooled", "layer") else None
    if e is None or abs(e) < EVIDENCE_MIN:
        return None
    return BRIGHT if e > 0 else DARK
