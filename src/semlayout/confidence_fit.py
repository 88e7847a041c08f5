"""Fitting and judging the confidence on a shard split (issue 17).

`fit_calibration(translator, shards)` translates the VALIDATION split the way the API does by
default (SEM->Layout with `polarity=auto`, binarized; Layout->SEM in each pair's polarity),
scores every output against its truth (IoU / SSIM against the measured SEM), computes the
kept signals (`semlayout.confidence.signals`) and fits `confidence_calibration.fit_direction`.
`judge(predicted, confidence, true, good)` is how well a confidence ranks and predicts quality:
the numbers docs/confidence.md, the evaluation report and `make bench` print.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from semlayout.confidence import KEPT, signals
from semlayout.confidence_calibration import (
    GOOD_IOU,
    GOOD_SSIM_SHARE,
    METRIC,
    Calibration,
    fit_direction,
)


def direction_samples(
    translator: Any,
    direction: str,
    sems: list[np.ndarray],
    layouts: list[np.ndarray],
    polarity: np.ndarray,
    names: tuple[str, ...] | None = None,
    batch_size: int = 16,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(signals (N, F), true quality (N,), outputs) of translating the pairs in `direction`."""
    from semlayout import metrics as M

    names = names or KEPT[direction]
    rows: list[list[float]] = []
    quality: list[float] = []
    outs: list[np.ndarray] = []
    for s in range(0, len(sems), batch_size):
        sl = slice(s, s + batch_size)
        if direction == "sem2layout":
            inputs, truths = sems[sl], layouts[sl]
            done = translator.translate_detailed(direction, inputs, polarity="auto")
        else:
            inputs, truths = layouts[sl], sems[sl]
            pols = polarity[sl]
            done = [
                translator.translate_detailed(direction, [im], polarity=int(p))[0]
                for im, p in zip(inputs, pols, strict=True)
            ]
        greys = [t.output for t in done]
        sig = signals(
            translator,
            direction,
            inputs,
            greys,
            [t.decision.polarity for t in done],
            [t.decision.margin for t in done],
            names,
        )
        rows += [[r[k] for k in names] for r in sig]
        for grey, truth in zip(greys, truths, strict=True):
            if direction == "sem2layout":
                out = translator.to_layout(grey)
                quality.append(M.iou(out, truth))
            else:
                out = grey
                quality.append(M.ssim(out, truth))
            outs.append(out)
    return np.asarray(rows, np.float64), np.asarray(quality), outs


def fit_calibration(
    translator: Any,
    shards_dir: str | os.PathLike[str],
    split: str = "val",
    max_pairs: int | None = 400,
) -> Calibration:
    """Both directions' calibrations, fitted on `split` of the shards (see module docstring)."""
    from semlayout.data.shards import load_split_arrays
    from semlayout.evaluation import select_indices

    d = load_split_arrays(shards_dir, split)
    idx = select_indices(d["families"], max_pairs)
    sems, lays = list(d["sem"][idx]), list(d["layout"][idx])
    pol = np.asarray(d.get("polarity", np.ones(len(d["ids"]), int)))[idx]
    pol = np.array([p if p in translator.polarities else translator.polarities[0] for p in pol])
    out = {}
    for direction in ("sem2layout", "layout2sem"):
        x, y, _ = direction_samples(translator, direction, sems, lays, pol)
        good = GOOD_IOU if direction == "sem2layout" else GOOD_SSIM_SHARE * float(np.median(y))
        out[direction] = fit_direction(x, y, KEPT[direction], METRIC[direction], good)
    return Calibration(out, f"{Path(shards_dir).name}:{split} ({len(idx)} pairs)")


def reliability(predicted: np.ndarray, true: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Equal-count bins of the predicted quality: mean predicted, mean true, count."""
    order = np.argsort(predicted, kind="stable")
    out = []
    for chunk in np.array_split(order, min(bins, max(1, len(order)))):
        if len(chunk):
            out.append(
                {
                    "predicted": float(predicted[chunk].mean()),
                    "true": float(true[chunk].mean()),
                    "n": int(len(chunk)),
                }
            )
    return out


def judge(
    predicted: np.ndarray, confidence: np.ndarray, true: np.ndarray, good: float
) -> dict[str, Any]:
    """Spearman(predicted, true); the share of bad predictions (true < good) among the 20 %
    least confident ("capture"); calibration error (binned: |mean predicted - mean true| over
    10 equal-count bins, weighted; per image: mean |predicted - true|); reliability bins."""
    from scipy.stats import spearmanr

    p, c, t = (np.asarray(v, np.float64) for v in (predicted, confidence, true))
    bad = t < good
    k = max(1, int(round(0.2 * len(t))))
    lowest = np.argsort(c, kind="stable")[:k]
    bins = reliability(p, t)
    rho = spearmanr(p, t).statistic if np.ptp(p) > 0 and np.ptp(t) > 0 else float("nan")
    return {
        "n": int(len(t)),
        "spearman": float(rho),
        "bad": int(bad.sum()),
        "capture_20": float(bad[lowest].sum() / bad.sum()) if bad.any() else None,
        "calibration_error": float(sum(b["n"] * abs(b["predicted"] - b["true"]) for b in bins))
        / max(1, len(t)),
        "mae": float(np.mean(np.abs(p - t))),
        "reliability": bins,
    }
