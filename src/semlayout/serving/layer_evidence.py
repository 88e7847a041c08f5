"""One generator pass when a request's layer has settled its polarity (issue 20).

`polarity=auto` for SEM -> Layout reads each image's own evidence (`polarity_auto`: both
readings through G_A, each rendered back through G_B: four generator passes) and adds the
layer's pooled evidence. When the layer has **settled** its polarity the image cannot change
the polarity it is translated in, so the request needs one pass, in that polarity
(`settled_decision`):

- **configured** (an admin's `PUT /v1/layers/{layer}/polarity`, or the server's
  `--layer-polarity`): auto translates in it whatever the image reads (source `layer`);
- **pooled** beyond what one image can move: auto decides on `clip(e, +-CLIP) + pooled`, so
  `|pooled| > CLIP` fixes the sign of the sum whatever `e` is (source `pooled`; the answer's
  margin is then the layer's `|pooled|`, not yet the image's `|clip(e) + pooled|`);

and in both cases only while the layer is **not flipped** (its CUSUM of contrary evidence is
under `CUSUM_H`): a layer whose images read the other way goes back to the full decision
(four passes, the drift verdict in the answer) until its evidence settles again. Fields
(images larger than the network's window) keep the full decision.

The image's own evidence is not dropped: it is read **after the answer**, in the record
writer's deferred thread (`settle_deferred`, bounded by jobs and bytes, inline with a log
line when full, drained on close), folded into the layer (pooling and CUSUM, as the full path
folds it), the image judged against the layer's expected polarity, and the stored drift row
updated (drifted, score) - what the monitors report arrives later, never lost. The same
reading gives the cycle and the margin the full confidence uses, so that one follows in the
same job. The answer says which path it took: `polarity_evidence` / `X-Polarity-Evidence`
`image` (read in the request) or `deferred` (read after the answer).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from semlayout.directions import Direction
from semlayout.polarity import BRIGHT, DARK, PolarityChoice
from semlayout.polarity_auto import FEATURES, PolarityDecision, evidence, hypotheses
from semlayout.polarity_layer import CLIP, LayerState, clip
from semlayout.tiling import is_field

if TYPE_CHECKING:
    from semlayout.serving.state import ServingState
    from semlayout.serving.translation import Forwarded

log = logging.getLogger("semlayout.serving")


def settled_decision(
    translator: Any,
    direction: str,
    polarity: PolarityChoice,
    known: LayerState,
    fallback: int | None,
    det_expected: int | None,
    images: Sequence[np.ndarray],
) -> PolarityDecision | None:
    """The decision a request under `polarity=auto` gets in one pass when its layer (`known`,
    with the server's `fallback` polarity) has settled its polarity; None: decide per image
    (four passes). `det_expected`: the drift reference's expected polarity, if any."""
    if polarity is not PolarityChoice.auto or direction != Direction.sem2layout:
        return None
    if len(translator.polarities) < 2 or any(is_field(im.shape) for im in images):
        return None
    configured = known.configured or fallback
    if known.flipped(known.expected(fallback or det_expected)):
        return None  # contrary evidence: the full decision, image by image
    if configured is not None:
        return PolarityDecision(configured, "layer")
    if known.n > 0 and abs(known.pooled) > CLIP:
        return PolarityDecision(BRIGHT if known.pooled > 0 else DARK, "pooled", abs(known.pooled))
    return None


def read_images(
    translator: Any,
    images: Sequence[np.ndarray],
    answered: tuple[int, Sequence[np.ndarray]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(each SEM's evidence of bright (N,), its cycle correlation under bright and dark
    (N, 2)): auto's reading (`polarity_auto.hypotheses`), four generator passes; three when
    `answered` = (polarity, each image's network output in it) gives the answer's own pass."""
    batch = np.stack([translator.preprocess(im) for im in images])[:, None]
    known = None
    if answered is not None:
        known = {answered[0]: np.stack(list(answered[1]))[:, None].astype(np.float32, copy=False)}

    def run_a(b: np.ndarray, p: np.ndarray) -> np.ndarray:
        return np.asarray(translator.run_batch(Direction.sem2layout, b, p))

    def run_b(b: np.ndarray, p: np.ndarray) -> np.ndarray:
        return np.asarray(translator.run_batch(Direction.layout2sem, b, p))

    _, feats = hypotheses(run_a, run_b, batch, known)
    cyc = feats[:, [FEATURES.index("corr_bright_s0.75"), FEATURES.index("corr_dark_s0.75")]]
    return evidence(feats, translator.config.polarity.auto_head), cyc


def _read(items: Sequence[Forwarded]) -> list[PolarityDecision]:
    """Each item's decision completed with its image's own evidence, cycle and margin (what
    the full decision would have carried; the polarity stays the one it was answered in)."""
    out: list[PolarityDecision | None] = [None] * len(items)

    def key(it: Forwarded) -> tuple[Any, ...]:  # one reading per model, profile and polarity
        return (id(it.model), it.profile, it.decision.polarity, it.raw is not None)

    keys = {key(it): it for it in items}
    for k_, first in keys.items():  # the profile that answered reads it
        idx = [i for i, it in enumerate(items) if key(it) == k_]
        # the answer's own pass, reused: three passes instead of four (the key groups the
        # items that kept it)
        raws = [r for r in (items[i].raw for i in idx) if r is not None]
        answered = (first.decision.polarity, raws) if first.raw is not None else None
        translator = first.model.translator_for(first.profile)
        e, cyc = read_images(translator, [items[i].image for i in idx], answered)
        for k, i in enumerate(idx):
            d = items[i].decision
            margin = None
            if d.source == "pooled":  # the sum auto decides on: clip(e) + pooled
                margin = abs(clip(e[k]) + d.polarity * (d.margin or 0.0))
            cycle = float(cyc[k, 0 if d.polarity == BRIGHT else 1])
            out[i] = replace(d, evidence=float(e[k]), cycle=cycle, margin=margin)
    return [d for d in out if d is not None]


def settle_deferred(
    state: ServingState, direction: Direction, items: Sequence[Forwarded], ids: Sequence[str]
) -> None:
    """Deferred thread: the one-pass images' own evidence, folded into their layer (one
    transaction, in order), each image judged against the polarity the layer expects (the
    stored drift row updated when the verdict changes), then their full confidence."""
    from semlayout.monitoring.layer_book import update_drift
    from semlayout.serving.deferred_work import full_confidence

    decisions = _read(items)
    layer = items[0].layer
    after = state.layers.fold(layer, [d.evidence or 0.0 for d in decisions])
    fallback = state.settings.layer_prior
    updates = []
    for it, pid, d, st in zip(items, ids, decisions, after, strict=True):
        det = it.model.detectors.get(direction)
        if det is None or it.drift is None:
            continue
        expected = st.expected(fallback or det.expected_polarity)
        res = det.with_polarity(it.drift, d, expected, st.flipped(expected))
        if (res.drifted, res.score) != (it.drift.drifted, it.drift.score):
            updates.append((pid, res))
            if res.drifted and not it.drift.drifted:
                state.metrics.drift_alerts.labels(direction).inc()
    if updates:
        update_drift(state.store, updates)
        log.info(
            "deferred polarity evidence: %d drift row(s) of layer %s updated", len(updates), layer
        )
    full = [
        (replace(it, decision=d), pid) for it, d, pid in zip(items, decisions, ids, strict=True)
    ]
    todo = [(it, pid) for it, pid in full if it.confidence.source == "inline"]
    if todo:
        full_confidence(state, direction, [it for it, _ in todo], [pid for _, pid in todo])
