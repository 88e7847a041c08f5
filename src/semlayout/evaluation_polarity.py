"""Evaluation with contrast polarity: each pair translated in its own polarity, and `auto`.

A pair's polarity is data (the shards carry it), so the evaluation translates every pair in
its recorded polarity (`translate_in`), as a caller who knows the layer would; a pair whose
polarity the model never learned gets what the model would answer (its only polarity),
counted as `unserved`. `auto_block` scores the same SEMs with `polarity=auto` (decided per
image, no layer prior): the difference to the given-polarity IoU is what not knowing the
polarity costs, and `accuracy` is how often auto chose the recorded polarity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from semlayout import metrics as M
from semlayout.polarity import POLARITIES, key


def used_polarities(tr: Any, polarities: Sequence[int]) -> np.ndarray:
    """The polarity each pair is translated in: its own if the model serves it, else the
    model's first (a model that learned one polarity answers in it)."""
    served = tuple(tr.polarities)
    return np.array([p if p in served else served[0] for p in polarities], dtype=np.int8)


def translate_in(
    tr: Any,
    direction: str,
    images: Sequence[np.ndarray],
    polarities: Sequence[int],
    batch_size: int = 16,
) -> np.ndarray:
    """(N, H, W) uint8 outputs, each image translated in its polarity (see `used_polarities`)."""
    used = used_polarities(tr, polarities)
    out: list[np.ndarray | None] = [None] * len(images)
    for p in POLARITIES:
        idx = np.flatnonzero(used == p)
        if len(idx):
            res = tr.translate(
                direction, [images[int(i)] for i in idx], batch_size=batch_size, polarity=int(p)
            )
            for i, r in zip(idx, res, strict=True):
                out[i] = r
    return np.stack(out)  # type: ignore[arg-type]


def per_polarity(
    scores: dict[str, list[float]], polarities: Sequence[int], keys: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """{"+1": {metric: mean, "n"}, "-1": {...}} for the polarities present."""
    pol = np.asarray(polarities)
    out: dict[str, dict[str, Any]] = {}
    for p in POLARITIES:
        m = pol == p
        if m.any():
            row: dict[str, Any] = {}
            for k in keys:
                vals = np.asarray(scores[k], dtype=float)[m]
                finite = vals[np.isfinite(vals)]
                row[k] = float(finite.mean()) if len(finite) else None
            row["n"] = int(m.sum())
            out[key(p)] = row
    return out


def auto_block(
    tr: Any,
    sem: Sequence[np.ndarray] | np.ndarray,
    layout: Sequence[np.ndarray] | np.ndarray,
    polarities: Sequence[int],
    given_iou: Sequence[float],
    batch_size: int = 16,
) -> dict[str, Any]:
    """SEM -> Layout with `polarity=auto` on the same pairs: IoU of the drawn layout, the
    IoU with the given polarity beside it, and how often auto chose the recorded polarity."""
    done = tr.translate_detailed(
        "sem2layout", list(sem), binarize=True, batch_size=batch_size, polarity="auto"
    )
    iou = np.array([M.iou(t.output, lay) for t, lay in zip(done, layout, strict=True)])
    chosen = np.array([t.decision.polarity for t in done])
    pol = np.asarray(polarities)
    given = np.asarray(given_iou, dtype=float)
    rows: dict[str, dict[str, Any]] = {}
    for p in POLARITIES:
        m = pol == p
        if m.any():
            rows[key(p)] = {
                "iou": float(iou[m].mean()),
                "iou_given": float(given[m].mean()),
                "accuracy": float((chosen[m] == p).mean()),
                "n": int(m.sum()),
            }
    margins = [t.decision.margin for t in done if t.decision.margin is not None]
    return {
        "iou": float(iou.mean()),
        "iou_given": float(given.mean()),
        "accuracy": float((chosen == pol).mean()),
        "median_margin": float(np.median(margins)) if margins else None,
        "per_polarity": rows,
    }
