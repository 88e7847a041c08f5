"""Polarity as the layer's pooled evidence, measured (bench_quality's helpers; not an area).

`read_all` translates every image in both polarities (the drawn layout) and reads its own
polarity evidence (`polarity_auto.hypotheses`, once) under two heads: the checkpoint's and a
head refitted on fresh synthetic pairs of both polarities (`train.polarity_head.synth_head`,
what training now fits). From those, without translating again:
- `given`: the true polarity's output (a caller who knows the layer);
- `auto`: the image alone decides (the mixed per-image case, no pooling);
- `pooled`: streams of one layer each, per family and polarity, images in random order, the
  layer's evidence starting from nothing and the first images included: image i is translated
  in sign(clip(e_i) + pooled_{i-1}) (`polarity_layer`), as the server does;
- drift: `stream_flags`, the share of a stream the layer's CUSUM flags against bright.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def read_all(
    tr: Any, sems: list[np.ndarray], heads: dict[str, Any], translate: bool = True
) -> dict[str, Any]:
    """{"out": {+1: [layout], -1: [layout]} (empty unless `translate`), "e": {head name: (N,)
    log-odds of bright}}."""
    from semlayout.polarity_auto import evidence, hypotheses

    out = (
        {p: tr.translate("sem2layout", sems, binarize=True, polarity=p) for p in (1, -1)}
        if translate
        else {}
    )
    feats = []
    for lo in range(0, len(sems), 16):
        batch = np.stack([tr.preprocess(s) for s in sems[lo : lo + 16]])[:, None]
        feats.append(hypotheses(tr._runners["sem2layout"], tr._runners["layout2sem"], batch)[1])
    f = np.concatenate(feats)
    return {"out": out, "e": {name: evidence(f, h) for name, h in heads.items()}}


def pooled_choices(e: np.ndarray, groups: np.ndarray, seed: int = 0) -> np.ndarray:
    """Per image, the polarity a layer stream chooses: each group (one layer) in a random
    order, its pooled evidence starting from nothing."""
    from semlayout.polarity_layer import LayerState, clip

    rng = np.random.default_rng(seed)
    chosen = np.zeros(len(e), int)
    for g in sorted(set(groups.tolist())):
        state = LayerState()
        for i in rng.permutation(np.flatnonzero(groups == g)):
            chosen[i] = 1 if clip(e[i]) + state.pooled >= 0 else -1
            state = state.fold(e[i])
    return chosen


def stream_flags(e: np.ndarray, expected: int = 1) -> np.ndarray:
    """Per image of one stream (in order), whether the layer's CUSUM flags it."""
    from semlayout.polarity_layer import LayerState

    state, flags = LayerState(), []
    for v in e:
        state = state.fold(v)
        flags.append(state.flipped(expected))
    return np.array(flags)


def scores(
    read: dict[str, Any], layouts: list[np.ndarray], pol: np.ndarray, fam: np.ndarray, head: str
) -> dict[str, np.ndarray]:
    """Per image: IoU given / auto / pooled, and whether auto / pooled chose the truth."""
    from semlayout import metrics as M

    iou = {p: np.array([M.iou(o, t) for o, t in zip(read["out"][p], layouts, strict=True)])
           for p in (1, -1)}  # fmt: skip
    idx = np.arange(len(pol))

    def by(choice: np.ndarray) -> np.ndarray:
        return np.where(choice == 1, iou[1][idx], iou[-1][idx])

    e = read["e"][head]
    auto = np.where(e >= 0, 1, -1)
    groups = np.array([f"{f}|{p}" for f, p in zip(fam, pol, strict=True)])
    pooled = pooled_choices(e, groups)
    return {
        "given": by(pol),
        "auto": by(auto),
        "auto_ok": (auto == pol).astype(float),
        "pooled": by(pooled),
        "pooled_ok": (pooled == pol).astype(float),
    }
