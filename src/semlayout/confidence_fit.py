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

from semlayout.confidence import INLINE, KEPT, signals
from semlayout.confidence_calibration import (
    GOOD_IOU,
    GOOD_SSIM_SHARE,
    METRIC,
    Calibration,
    DirectionCalibration,
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
            [t.decision.cycle for t in done],
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


STRESS_DOSE = (1.0, 4.0)  # e-/px of the re-noised copies: below anything a layer is imaged at


def stressed(sems: list[np.ndarray], seed: int = 0) -> list[np.ndarray]:
    """Stress copies of SEMs whose truth is unchanged: every other one re-imaged at a very low
    dose (Poisson noise on the grey levels as yield), the others in inverted grey levels (the
    pattern's side of the contrast unknown to the model)."""
    rng = np.random.default_rng(seed)
    out = []
    for i, sem in enumerate(sems):
        if i % 2 == 0:
            dose = float(rng.uniform(*STRESS_DOSE))
            noisy = rng.poisson(sem.astype(np.float64) / 255.0 * dose) / dose * 255.0
            out.append(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))
        else:
            out.append((255 - sem).astype(np.uint8))
    return out


def fit_calibration(
    translator: Any,
    shards_dir: str | os.PathLike[str],
    split: str = "val",
    max_pairs: int | None = 400,
    stress: bool = True,
) -> Calibration:
    """Both directions' calibrations, fitted on `split` of the shards (see module docstring).
    With `stress`, SEM->Layout is fitted on the split plus one stress copy of each SEM
    (`stressed`: a very low dose or inverted grey levels, same truth), so the calibration has
    seen failures the in-distribution split rarely holds (docs/confidence.md measures both)."""
    from semlayout.data.shards import load_split_arrays
    from semlayout.evaluation import select_indices

    d = load_split_arrays(shards_dir, split)
    idx = select_indices(d["families"], max_pairs)
    sems, lays = list(d["sem"][idx]), list(d["layout"][idx])
    pol = np.asarray(d.get("polarity", np.ones(len(d["ids"]), int)))[idx]
    pol = np.array([p if p in translator.polarities else translator.polarities[0] for p in pol])
    from semlayout.data.features import features_table

    out, inline = {}, {}
    for direction in ("sem2layout", "layout2sem"):
        names = all_signals(direction)
        x, y, _ = direction_samples(translator, direction, sems, lays, pol, names)
        good = GOOD_IOU if direction == "sem2layout" else GOOD_SSIM_SHARE * float(np.median(y))
        if stress and direction == "sem2layout":
            xs, ys, _ = direction_samples(translator, direction, stressed(sems), lays, pol, names)
            x, y = np.concatenate([x, xs]), np.concatenate([y, ys])
        kept = KEPT[direction]
        ref: dict[str, list[float]] = features_table(sems if direction == "sem2layout" else lays)
        ref |= {k: x[:, names.index(k)].tolist() for k in kept}
        out[direction], inline[direction] = fit_tiers(x, y, names, direction, good, ref)
    extra = " + stress copies" if stress else ""
    return Calibration(out, f"{Path(shards_dir).name}:{split} ({len(idx)} pairs{extra})", inline)


def all_signals(direction: str) -> tuple[str, ...]:
    """The kept signals of `direction` and those of its inline tiers, each once."""
    names = list(KEPT[direction])
    for tier in INLINE[direction]:
        names += [k for k in tier if k not in names]
    return tuple(names)


def fit_tiers(
    x: np.ndarray,
    y: np.ndarray,
    names: tuple[str, ...],
    direction: str,
    good: float,
    ref: dict[str, list[float]] | None = None,
) -> tuple[DirectionCalibration, list[DirectionCalibration]]:
    """The full calibration (the kept signals, with the population reference) and the inline
    tiers, fitted on the same (N, len(names)) signals `x` and qualities `y`."""

    def cols(want: tuple[str, ...]) -> np.ndarray:
        return x[:, [names.index(k) for k in want]]

    metric = METRIC[direction]
    full = fit_direction(cols(KEPT[direction]), y, KEPT[direction], metric, good, ref)
    tiers = [fit_direction(cols(t), y, t, metric, good) for t in INLINE[direction]]
    return full, tiers


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
    """Spearman(predicted, true); the share of bad predictions (true < good) held by the 20 %
    least confident ("capture_20"; at most 20 % / bad share, "capture_20_ceiling"), and the
    share of bad among as many least confident as there are bad ones; calibration error
    (binned: |mean predicted - mean true| over 10 equal-count bins, weighted; per image: mean
    |predicted - true|); reliability bins."""
    from scipy.stats import spearmanr

    p, c, t = (np.asarray(v, np.float64) for v in (predicted, confidence, true))
    bad = t < good
    k = max(1, int(round(0.2 * len(t))))
    lowest = np.argsort(c, kind="stable")[:k]
    bins = reliability(p, t)
    rho = spearmanr(p, t).statistic if np.ptp(p) > 0 and np.ptp(t) > 0 else float("nan")
    n_bad = int(bad.sum())
    at_bad = np.argsort(c, kind="stable")[:n_bad]
    return {
        "n": int(len(t)),
        "spearman": float(rho),
        "bad": n_bad,
        "capture_20": float(bad[lowest].sum() / n_bad) if n_bad else None,
        # the most capture_20 can be when bad predictions outnumber the 20 %
        "capture_20_ceiling": min(1.0, k / n_bad) if n_bad else None,
        # of the n_bad least confident, the share that is bad (1 = a perfect ranking)
        "capture_at_bad": float(bad[at_bad].mean()) if n_bad else None,
        "calibration_error": float(sum(b["n"] * abs(b["predicted"] - b["true"]) for b in bins))
        / max(1, len(t)),
        "mae": float(np.mean(np.abs(p - t))),
        "reliability": bins,
    }


def judge_split(
    translator: Any,
    calibration: Calibration,
    shards_dir: str | os.PathLike[str],
    split: str = "test",
    max_pairs: int | None = 400,
    examples: int = 6,
) -> dict[str, Any]:
    """The calibration judged on `split` (by default the test split: pairs it was not fitted
    on), per direction: `judge`'s numbers and the `examples` least confident predictions
    (`least_confident`: id, family, confidence, predicted, true, and the uint8 `input` /
    `output` images for the report; drop them before writing JSON)."""
    from semlayout.data.shards import load_split_arrays
    from semlayout.evaluation import select_indices

    d = load_split_arrays(shards_dir, split)
    idx = select_indices(d["families"], max_pairs)
    sems, lays = list(d["sem"][idx]), list(d["layout"][idx])
    pol = np.asarray(d.get("polarity", np.ones(len(d["ids"]), int)))[idx]
    pol = np.array([p if p in translator.polarities else translator.polarities[0] for p in pol])
    out: dict[str, Any] = {"split": split, "n": len(idx)}
    for direction in ("sem2layout", "layout2sem"):
        cal = calibration.get(direction)
        if cal is None:
            continue
        names = tuple(dict.fromkeys((*cal.signals, *all_signals(direction))))
        x, y, outs = direction_samples(translator, direction, sems, lays, pol, names)
        pred, conf = cal.predict(x[:, [names.index(k) for k in cal.signals]])
        res = judge(pred, conf, y, cal.good_threshold)
        tier = calibration.inline_for(direction, names)
        if tier is not None:  # the inline tier's numbers on the same predictions
            ip, ic = tier.predict(x[:, [names.index(k) for k in tier.signals]])
            res["inline"] = {
                k: v for k, v in judge(ip, ic, y, tier.good_threshold).items() if k != "reliability"
            } | {"signals": list(tier.signals)}
        inputs = sems if direction == "sem2layout" else lays
        res["least_confident"] = [
            {
                "id": str(d["ids"][idx[i]]),
                "family": str(d["families"][idx[i]]),
                "confidence": float(conf[i]),
                "predicted": float(pred[i]),
                "true": float(y[i]),
                "input": inputs[i],
                "output": outs[i],
            }
            for i in np.argsort(conf, kind="stable")[:examples]
        ]
        res["metric"] = cal.metric
        res["good_threshold"] = cal.good_threshold
        res["points"] = [[float(a), float(b)] for a, b in zip(pred, y, strict=True)]
        out[direction] = res
    return out


def json_ready(judged: dict[str, Any]) -> dict[str, Any]:
    """`judge_split`'s result without the images."""
    out = dict(judged)
    for direction in ("sem2layout", "layout2sem"):
        if isinstance(out.get(direction), dict):
            block = dict(out[direction])
            block["least_confident"] = [
                {k: v for k, v in e.items() if k not in ("input", "output")}
                for e in block.get("least_confident", [])
            ]
            out[direction] = block
    return out


def calibrate_and_judge(
    checkpoint: Path, shards_dir: Path, backend: str = "eager"
) -> tuple[Calibration | None, dict[str, Any] | None]:
    """Evaluate time: the calibration fitted on the val split and judged on the test split,
    or (None, None) with the reason printed when the val split is too small to fit one (the
    version's confidence is then unknown)."""
    from semlayout.errors import SemlayoutError
    from semlayout.inference import Translator

    tr = Translator.load(checkpoint, backend=backend)
    try:
        cal = fit_calibration(tr, shards_dir)
    except SemlayoutError as err:
        print(f"no confidence calibration: {err}")
        return None, None
    return cal, judge_split(tr, cal, shards_dir)
