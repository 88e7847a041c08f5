"""The work of a translate request that follows its answer, and the confidence it shares
with the request path (`serving.translation`'s step 6).

`confidences` computes the confidence of a request's images in a tier (the request path
calls it with the inline tier); `defer_full` hands the **full** confidence of the images
answered with the inline one (`full_confidence`) and the polarity evidence of one-pass
answers (`serving.layer_evidence.settle_deferred`) to the record writer's deferred thread;
`kept_input` is the input kept for the review queue.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
from starlette.concurrency import run_in_threadpool

from semlayout.confidence import Confidence, assess
from semlayout.directions import Direction
from semlayout.polarity_auto import PolarityDecision
from semlayout.serving.engine import LoadedModel
from semlayout.serving.layer_evidence import settle_deferred
from semlayout.serving.settings import ServeSettings
from semlayout.serving.state import ServingState

if TYPE_CHECKING:
    from semlayout.serving.translation import Forwarded


def confidences(
    direction: Direction,
    images: Sequence[np.ndarray],
    outputs: Sequence[np.ndarray],
    models: Sequence[LoadedModel],
    decisions: Sequence[PolarityDecision],
    tier: str = "full",
    profiles: Sequence[str | None] | None = None,
) -> list[Confidence]:
    """The confidence of each image in `tier`, by the model (and calibration) that translated
    it, from its grey output (before any binarization); its forwards run the tool / layer
    profile that answered (`profiles`; None: the shared network)."""
    out: list[Confidence | None] = [None] * len(images)
    profs = list(profiles) if profiles is not None else [None] * len(images)
    keys = {(id(m), p): (m, p) for m, p in zip(models, profs, strict=True)}
    for model, profile in keys.values():
        idx = [i for i, m in enumerate(models) if m is model and profs[i] == profile]
        got = assess(
            model.translator_for(profile),
            model.calibration,
            direction,
            [images[i] for i in idx],
            [outputs[i] for i in idx],
            [decisions[i] for i in idx],
            tier,
        )
        for i, c in zip(idx, got, strict=True):
            out[i] = c
    return [c for c in out if c is not None]


def full_confidence(
    state: ServingState, direction: Direction, items: Sequence[Forwarded], ids: Sequence[str]
) -> None:
    """The full confidence of answered predictions (deferred thread): computed, written over
    the inline one in the store (with the input kept when it is now below the review limit)
    and observed by the Prometheus histogram."""
    confs = confidences(
        direction,
        [it.image for it in items],
        [it.grey if it.grey is not None else it.output for it in items],
        [it.model for it in items],
        [it.decision for it in items],
        profiles=[it.profile for it in items],
    )
    from semlayout.monitoring.confidence_store import update_confidence

    updates = []
    for it, pid, c in zip(items, ids, confs, strict=True):  # an input kept stays kept
        png = (
            None
            if _kept(it, state.settings)
            else kept_input(replace(it, confidence=c), state.settings)
        )
        updates.append((pid, c, png))
    update_confidence(state.store, updates)
    for c in confs:  # an unknown one was counted with its answer
        if c.confidence is not None:
            state.metrics.confidence.labels(direction).observe(c.confidence)


def _held(item: Forwarded) -> int:
    """The bytes a deferred job keeps of an item: its input, its output, the network's own
    output when the reading reuses it."""
    raw = item.raw.nbytes if item.raw is not None else 0
    return item.image.nbytes + item.output.nbytes + raw


def _kept(item: Forwarded, settings: ServeSettings) -> bool:
    conf, limit = item.confidence.confidence, settings.review_keep_below
    return limit > 0 and (conf is None or conf < limit)


async def defer_full(
    state: ServingState, direction: Direction, items: Sequence[Forwarded], ids: Sequence[str]
) -> None:
    """Hand the full confidence of the images answered with the inline one to the record
    writer's deferred thread; when its queue is full (it says so), computed here instead.
    One-pass answers (`Forwarded.evidence` "deferred") hand over their polarity evidence
    with it (`layer_evidence.settle_deferred`: the layer's pooling, the drift verdict and the
    full confidence, in one job)."""
    settle = [i for i, it in enumerate(items) if it.evidence == "deferred"]
    if settle:
        sargs = (state, direction, [items[i] for i in settle], [ids[i] for i in settle])
        held = sum(_held(items[i]) for i in settle)
        if not state.writer.defer(lambda: settle_deferred(*sargs), "the polarity evidence", held):
            await run_in_threadpool(settle_deferred, *sargs)
    todo = [
        i
        for i, it in enumerate(items)
        if it.confidence.source == "inline" and it.evidence != "deferred"
    ]
    if not todo:
        return
    args = (state, direction, [items[i] for i in todo], [ids[i] for i in todo])
    held = sum(items[i].image.nbytes + items[i].output.nbytes for i in todo)
    if not state.writer.defer(lambda: full_confidence(*args), "the full confidence", held):
        await run_in_threadpool(full_confidence, *args)


def kept_input(item: Forwarded, settings: ServeSettings) -> bytes | None:
    """The input as PNG when the review queue may need it: its confidence is below
    `settings.review_keep_below` or unknown (`review_keep_below` 0 keeps none)."""
    from semlayout.data.pairs import encode_png

    if not _kept(item, settings):
        return None
    return encode_png(item.image)
