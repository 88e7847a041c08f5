"""A confidence on every prediction, without ground truth (issue 17).

`assess(translator, calibration, direction, images, outputs, decisions)` is the one function
every prediction path calls (the API's translate path, `semlayout predict`, evaluation): it
computes the confidence signals of each image (`signals`), then the calibrated predicted
quality and confidence (`semlayout.confidence_calibration`). It needs only the inputs, the
outputs the caller already has (uint8, the input's size) and the polarity decisions, so it
can run after the answer is built (issue 20's off-path writer can move it).

Signals (model resolution S; x the input in [-1, 1], y the output, p the polarity; which ones
earn their place and what each costs: docs/confidence.md):
```
decided    mean |y|                              how far from undecided (0) the output is; free
cycle      corr(blur(G_B(y, p)), blur(x)), 0.75 px   sem2layout: does the read layout, rendered
                                                 back, look like the SEM (one G_B forward;
                                                 free under polarity=auto, which computed it)
cycle_iou  IoU(G_A(y, p) > 0, x > 0)             layout2sem: does the rendered SEM read back
                                                 as the layout (one G_A forward)
dihedral   IoU(T^-1 G(T x) > 0, y > 0), T = transpose: agreement under a symmetry the model
                                                 was trained with (one forward)
margin     |log-odds| of polarity=auto's choice  sem2layout, free (capped at MARGIN_CAP, the
                                                 cap itself when the polarity was given)
```
An input that defeats the signals — blank, saturated, one value (`input_defect`) — gets
confidence 0 and predicted quality 0 with the reason; a non-finite signal likewise. A model
version without a calibration answers `confidence=None` ("unknown") with its signals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from semlayout.confidence_calibration import METRIC, Calibration
from semlayout.directions import Direction

KEPT: dict[str, tuple[str, ...]] = {
    "sem2layout": ("decided", "cycle", "dihedral", "margin"),
    "layout2sem": ("cycle_iou", "dihedral"),
}
UNCALIBRATED = "uncalibrated"
MIN_STD = 1.0  # grey levels: an input flatter than this carries no pattern to read
EXTREME_SHARE = 0.98  # share of pixels at 0 or 255 over which an input is saturated
MARGIN_CAP = 8.0  # log-odds (p > 0.9997): beyond it the polarity is not in doubt


@dataclass(frozen=True)
class Confidence:
    """How sure the model is of one prediction."""

    confidence: float | None  # P(quality >= good threshold); None: unknown (no calibration)
    predicted: float | None  # predicted IoU (sem2layout) / SSIM (layout2sem)
    metric: str  # "iou" | "ssim"
    reason: str | None = None  # why the lowest, or why unknown
    signals: dict[str, float] = field(default_factory=dict)

    @property
    def known(self) -> bool:
        return self.confidence is not None


def input_defect(img: np.ndarray) -> str | None:
    """Why an (H, W) uint8 input defeats the signals, or None."""
    a = np.asarray(img)
    if a.size == 0:
        return "empty input"
    lo, hi = int(a.min()), int(a.max())
    if lo == hi:
        return f"the input is one value ({lo})"
    if float(a.std()) < MIN_STD:
        return "the input is blank (no contrast to read)"
    extreme = float(np.mean((a == 0) | (a == 255)))
    if extreme > EXTREME_SHARE:
        return f"the input is saturated ({extreme:.0%} of pixels at 0 or 255)"
    return None


def _to_model(translator: Any, imgs: Sequence[np.ndarray]) -> np.ndarray:
    return np.stack([translator.preprocess(im) for im in imgs])[:, None]  # (B, 1, S, S)


def _binary_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(B, ...) IoU of a > 0 and b > 0 per image; two empty masks agree fully."""
    p, t = a > 0, b > 0
    axes = tuple(range(1, a.ndim))
    inter = np.logical_and(p, t).sum(axis=axes).astype(np.float64)
    union = np.logical_or(p, t).sum(axis=axes).astype(np.float64)
    return np.where(union > 0, inter / np.maximum(union, 1.0), 1.0)


def _transpose(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.swapaxes(a, -1, -2))


def signals(
    translator: Any,
    direction: str,
    images: Sequence[np.ndarray],
    outputs: Sequence[np.ndarray],
    polarities: Sequence[int],
    margins: Sequence[float | None],
    names: Sequence[str] | None = None,
    cycles: Sequence[float | None] | None = None,
) -> list[dict[str, float]]:
    """The signals `names` (default: the kept ones) of each image, given its (grey) output;
    `cycles`: the sem2layout cycle reconstruction `polarity=auto` already computed (one per
    image; then no G_B forward is spent on it)."""
    d = Direction.parse(direction)
    want = tuple(names or KEPT[d.value])
    x = _to_model(translator, images)
    y = _to_model(translator, outputs)
    pol = np.asarray(polarities, np.float32)
    cols: dict[str, np.ndarray] = {}
    if "decided" in want:
        cols["decided"] = np.abs(y).mean(axis=(1, 2, 3))
    if "cycle" in want and cycles is not None and all(c is not None for c in cycles):
        cols["cycle"] = np.asarray(cycles, np.float64)
    elif "cycle" in want:
        from semlayout.polarity_auto import consistency

        back = translator.run_batch("layout2sem", y, pol)
        cols["cycle"] = consistency(x[:, 0], back[:, 0], 0.75)
    if "cycle_iou" in want:
        back = translator.run_batch("sem2layout", y, pol)
        cols["cycle_iou"] = _binary_iou(back[:, 0], x[:, 0])
    if "dihedral" in want:
        other = _transpose(translator.run_batch(d.value, _transpose(x), pol))
        cols["dihedral"] = (
            _binary_iou(other[:, 0], y[:, 0])
            if d is Direction.sem2layout
            else 1.0 - np.abs(other - y).mean(axis=(1, 2, 3))
        )
    if "margin" in want:  # a given polarity is as sure as the surest auto choice
        cols["margin"] = np.array(
            [MARGIN_CAP if m is None else min(float(m), MARGIN_CAP) for m in margins]
        )
    return [{k: float(cols[k][i]) for k in want} for i in range(len(images))]


def assess(
    translator: Any,
    calibration: Calibration | None,
    direction: str,
    images: Sequence[np.ndarray],
    outputs: Sequence[np.ndarray],
    decisions: Sequence[Any],
) -> list[Confidence]:
    """The confidence of each prediction (see the module docstring). `outputs` are the grey
    outputs (before any binarization), `decisions` the `PolarityDecision` of each image."""
    d = Direction.parse(direction).value
    metric = METRIC[d]
    cal = calibration.get(d) if calibration is not None else None
    names = tuple(cal.signals) if cal is not None else KEPT[d]
    out: list[Confidence | None] = [None] * len(images)
    todo: list[int] = []
    for i, img in enumerate(images):
        why = input_defect(img)
        if why is not None:
            out[i] = Confidence(0.0 if cal else None, 0.0 if cal else None, metric, why)
        else:
            todo.append(i)
    if todo:
        sig = signals(
            translator,
            d,
            [images[i] for i in todo],
            [outputs[i] for i in todo],
            [decisions[i].polarity for i in todo],
            [decisions[i].margin for i in todo],
            names,
            [getattr(decisions[i], "cycle", None) for i in todo],
        )
        for i, s in zip(todo, sig, strict=True):
            out[i] = _judge(cal, metric, s)
    return [c for c in out if c is not None]


def _judge(cal: Any, metric: str, sig: dict[str, float]) -> Confidence:
    bad = [k for k, v in sig.items() if not np.isfinite(v)]
    if bad:
        low = 0.0 if cal is not None else None
        return Confidence(low, low, metric, f"signal {bad[0]} is not finite", sig)
    if cal is None:
        return Confidence(None, None, metric, UNCALIBRATED, sig)
    pred, conf = cal.predict(np.array([[sig[k] for k in cal.signals]]))
    return Confidence(float(conf[0]), float(pred[0]), metric, None, sig)
