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
Two tiers (docs/confidence.md, "Latency"): the **full** confidence uses every kept signal
(the dihedral and, with a given polarity, the cycle cost a forward each); the **inline** one
uses only the signals an image has for free (`free_signals`: decided; the margin and the cycle
when `polarity=auto` computed them), with its own calibration (`Calibration.inline`). The API
answers with the inline one and computes the full one off the request path; `semlayout
predict` and evaluation use the full one. A calibration without inline tiers (fitted before
them) gives the full confidence in both tiers.

An input that defeats the signals — blank, saturated, one value (`input_defect`) — gets
confidence 0 and predicted quality 0 with the reason; a non-finite signal likewise. A model
version without a calibration answers `confidence=None` ("unknown") with its signals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from semlayout.confidence_calibration import METRIC, Calibration
from semlayout.directions import Direction

KEPT: dict[str, tuple[str, ...]] = {
    "sem2layout": ("decided", "cycle", "dihedral", "margin"),
    "layout2sem": ("cycle_iou", "dihedral"),
}
# the inline tiers fitted beside the full calibration, most signals first (each costs no forward)
INLINE: dict[str, tuple[tuple[str, ...], ...]] = {
    "sem2layout": (("decided", "cycle", "margin"), ("decided",)),
    "layout2sem": (("decided",),),
}
TIERS = ("inline", "full")
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
    source: str = "full"  # which tier: "inline" (free signals) | "full" (every kept signal)

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
    tier: str = "full",
) -> list[Confidence]:
    """The confidence of each prediction (see the module docstring). `outputs` are the grey
    outputs (before any binarization), `decisions` the `PolarityDecision` of each image;
    `tier` "inline": from the free signals only (the full one where the calibration has no
    inline tier for an image: the answer's `source` says which)."""
    d = Direction.parse(direction).value
    if tier not in TIERS:
        raise ValueError(f"confidence tier must be one of {', '.join(TIERS)}, got {tier!r}")
    if tier == "inline" and (calibration is None or calibration.inline.get(d)):
        return _assess_inline(translator, calibration, d, images, outputs, decisions)
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
        sig = _signals_of(translator, d, todo, images, outputs, decisions, names)
        for i, s in zip(todo, sig, strict=True):
            out[i] = _judge(cal, metric, s)
    return [c for c in out if c is not None]


def _signals_of(
    translator: Any,
    direction: str,
    idx: Sequence[int],
    images: Sequence[np.ndarray],
    outputs: Sequence[np.ndarray],
    decisions: Sequence[Any],
    names: Sequence[str],
) -> list[dict[str, float]]:
    """`signals` of the images at `idx`, each with its polarity decision's margin and cycle."""
    return signals(
        translator,
        direction,
        [images[i] for i in idx],
        [outputs[i] for i in idx],
        [decisions[i].polarity for i in idx],
        [decisions[i].margin for i in idx],
        names,
        [getattr(decisions[i], "cycle", None) for i in idx],
    )


def _judge(cal: Any, metric: str, sig: dict[str, float]) -> Confidence:
    bad = [k for k, v in sig.items() if not np.isfinite(v)]
    if bad:
        low = 0.0 if cal is not None else None
        return Confidence(low, low, metric, f"signal {bad[0]} is not finite", sig)
    if cal is None:
        return Confidence(None, None, metric, UNCALIBRATED, sig)
    pred, conf = cal.predict(np.array([[sig[k] for k in cal.signals]]))
    return Confidence(float(conf[0]), float(pred[0]), metric, None, sig)


def free_signals(direction: str, decision: Any) -> tuple[str, ...]:
    """The signals an image has without a forward: decided; for sem2layout the polarity
    margin and the cycle when `polarity=auto` decided it (and computed the cycle)."""
    if Direction.parse(direction) is not Direction.sem2layout:
        return ("decided",)
    have = ["decided"]
    if getattr(decision, "margin", None) is not None:
        have.append("margin")
    if getattr(decision, "cycle", None) is not None:
        have.append("cycle")
    return tuple(have)


def _assess_inline(
    translator: Any,
    calibration: Calibration | None,
    direction: str,
    images: Sequence[np.ndarray],
    outputs: Sequence[np.ndarray],
    decisions: Sequence[Any],
) -> list[Confidence]:
    """`assess` in the inline tier: each image by the first inline calibration whose signals
    it has for free (the full tier for an image none fits); uncalibrated: unknown, with the
    free signals."""
    metric = METRIC[direction]
    out: list[Confidence | None] = [None] * len(images)
    groups: dict[tuple[str, ...], list[int]] = {}
    full: list[int] = []
    for i, img in enumerate(images):
        why = input_defect(img)
        have = free_signals(direction, decisions[i])
        cal = calibration.inline_for(direction, have) if calibration is not None else None
        if why is not None:
            low = 0.0 if calibration is not None and calibration.get(direction) else None
            out[i] = Confidence(low, low, metric, why, source="inline")
        elif cal is None and calibration is not None:
            full.append(i)
        else:
            groups.setdefault(tuple(cal.signals) if cal else have, []).append(i)
    for names, idx in groups.items():
        sig = _signals_of(translator, direction, idx, images, outputs, decisions, names)
        cal = calibration.inline_for(direction, names) if calibration is not None else None
        for i, s in zip(idx, sig, strict=True):
            out[i] = replace(_judge(cal, metric, s), source="inline")
    if full:
        got = assess(
            translator,
            calibration,
            direction,
            [images[i] for i in full],
            [outputs[i] for i in full],
            [decisions[i] for i in full],
        )
        for i, c in zip(full, got, strict=True):
            out[i] = c
    return [c for c in out if c is not None]
