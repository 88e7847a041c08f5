"""The translate path of a request, in steps that can be called (and extended) one by one.

1. decode: `serving.uploads.read_image`, per upload field (the routes call it);
2. `forward`: the request's layer (its configured polarity and pooled evidence, from the
   store: `monitoring.layer_book`), the polarity check (a polarity the model never learned is
   refused before any work; so is a field over the size limit), queue room check, the
   micro-batcher, and meanwhile `input_side` (the input's hash, statistics and drift features,
   in one worker-thread hop: they need only the input; drift is judged against the reference
   of the model that translated the image), the confidence of every image
   (`semlayout.confidence.assess`, one call per model, computed while the input sides finish;
   the **inline** tier by default: free signals only, no forward),
   then the images' evidence is pooled into the layer (its own transaction) and each image's
   polarity judged against the one the layer should show (`polarity_layer`: configured > the
   server's > established), `binarize`; no prediction is recorded yet;
3. `prepare` (worker thread): the PNG answer and the rows to record (the stored output as
   configured: none, a thumbnail or the full image);
4. `record`: every row of the request handed to the record writer (`serving.record_writer`:
   one thread, group commits), awaited — all rows or none; a store that cannot take them (or a
   full writer) answers 503 and the request leaves no trace;
5. the answer: `as_response` (JSON) or `png_headers` (PNG);
6. `defer_full`: for images answered with the inline confidence, the **full** one (its
   dihedral / cycle forwards) is computed in the record writer's deferred thread, after the
   answer, and replaces the inline one in the store (what the review queue, the summary and
   the calibration over time read) and in the Prometheus histogram. The answer says which it
   carries (`X-Confidence-Source`, `confidence_source`); `confidence=full` asks for the full
   one inline.

`translate` is 2 + 3 + 4 for a list of images: nothing is recorded unless every image was
translated. Everything heavy runs in worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from fastapi import HTTPException
from starlette.concurrency import run_in_threadpool

from semlayout.confidence import Confidence, assess
from semlayout.directions import Direction
from semlayout.monitoring.drift import DriftDetector, DriftResult
from semlayout.monitoring.inference_monitor import image_stats
from semlayout.monitoring.performance import new_prediction_id
from semlayout.monitoring.store import Prediction, TranslationRecord
from semlayout.polarity import PolarityChoice
from semlayout.polarity_auto import PolarityDecision
from semlayout.polarity_layer import DEFAULT_LAYER, LayerState
from semlayout.serving.engine import LoadedModel, QueueFull
from semlayout.serving.schemas import DriftInfo
from semlayout.serving.settings import ServeSettings
from semlayout.serving.state import ServingState
from semlayout.tiling import check_field, is_field


@dataclass(frozen=True)
class InputSide:
    """What the rows need from an input alone, computed while the model runs."""

    sha256: str
    stats: dict[str, float]
    drift: DriftResult | None  # None without a drift reference for the direction


def input_side(img: np.ndarray, det: DriftDetector | None) -> InputSide:
    """The input's hash, statistics and drift features (one worker-thread hop per image)."""
    from semlayout.monitoring.performance import sha256

    return InputSide(
        sha256(np.ascontiguousarray(img)), image_stats(img), det.check(img) if det else None
    )


@dataclass(frozen=True)
class Forwarded:
    """One image after the model: what `prepare` turns into rows."""

    image: np.ndarray  # the decoded input
    output: np.ndarray  # the model's output (binarized when asked)
    model: LoadedModel  # the model that computed it
    forward_ms: float  # its micro-batch's forward pass
    batch_size: int  # images in that forward pass
    drift: DriftResult | None  # None without a drift reference for the direction
    decision: PolarityDecision  # the polarity it was translated in
    side: InputSide  # hash and statistics of the input
    confidence: Confidence  # how sure the model is (confidence None: unknown)
    layer: str = DEFAULT_LAYER  # the layer it was read as part of
    grey: np.ndarray | None = None  # the model's grey output (before any binarization)
    profile: str | None = None  # the tool / layer profile that answered (None: shared network)


@dataclass(frozen=True)
class Translated:
    """One recorded prediction: what the response is built from."""

    prediction_id: str
    output: np.ndarray
    png: bytes
    model: LoadedModel
    drift: DriftInfo | None
    decision: PolarityDecision
    confidence: Confidence
    layer: str = DEFAULT_LAYER
    profile: str | None = None  # the tool / layer profile that answered (None: shared network)


def _busy(err: QueueFull) -> HTTPException:
    return HTTPException(503, detail=str(err), headers={"Retry-After": "1"})


async def forward(
    state: ServingState,
    direction: Direction,
    images: Sequence[np.ndarray],
    binarize: bool,
    polarity: PolarityChoice = PolarityChoice.auto,
    layer: str = DEFAULT_LAYER,
    tier: str = "inline",
) -> list[Forwarded]:
    """Run `images` through the model (all or none: 503 when the queue has no room for all)
    in `polarity` (auto: with `layer`'s configured polarity and pooled evidence); the input
    side of the rows (hash, statistics, drift features) is computed meanwhile, and the
    confidence in `tier` (inline | full)."""
    known = await run_in_threadpool(state.layers.get, layer)
    fallback = state.settings.layer_prior  # the server's layer polarity, for every layer
    prior = replace(known, configured=known.configured or fallback).prior()
    # refused now (422) rather than answered inverted: a polarity the model never learned
    state.engine.current.translator.fixed_polarity(direction, polarity, prior)
    for img in images:  # a field over the size limit: refused before any work too
        if is_field(img.shape):
            check_field(img, state.settings.max_field_side)
    try:
        state.batcher.check_room(len(images))  # before any work: a refused batch costs nothing
    except QueueFull as err:
        raise _busy(err) from None
    model = state.engine.current
    det = model.detectors.get(direction)
    sides = [asyncio.ensure_future(run_in_threadpool(input_side, img, det)) for img in images]
    conf_task: asyncio.Future[list[Confidence]] | None = None
    try:
        try:
            # the layer label selects its profile when the model learned one (the engine's call)
            results = await state.batcher.submit_many(
                direction, images, polarity, prior, profile=layer
            )
        except QueueFull as err:
            raise _busy(err) from None
        # the confidence needs only the inputs and outputs: computed while the input sides
        # finish and the layouts are drawn
        conf_task = _confidence_task(direction, images, results, tier)
        done: list[InputSide] = list(await asyncio.gather(*sides))
        checks: list[Any] = [d.drift for d in done]
        for i, r in enumerate(results):
            if r.model is not model:  # swapped meanwhile: judged by the new version's reference
                new_det = r.model.detectors.get(direction)
                checks[i] = await run_in_threadpool(new_det.check, images[i]) if new_det else None
        outs = [r.output for r in results]
        if binarize:  # the drawn layout, as the serving model's layout_fit config says
            outs = list(
                await asyncio.gather(
                    *[run_in_threadpool(r.model.translator.to_layout, r.output) for r in results]
                )
            )
    except BaseException:
        if conf_task is not None:  # a failure above: nothing left running unobserved
            conf_task.cancel()
        raise
    finally:
        for side in sides:  # a failure above: nothing left running unobserved
            side.cancel()
    after = await _pool(state, layer, known, [r.decision for r in results])
    for i, r in enumerate(results):  # the image's polarity against the one expected
        det_i = r.model.detectors.get(direction)
        if det_i is not None and checks[i] is not None:
            expected = after[i].expected(fallback or det_i.expected_polarity)
            flipped = after[i].flipped(expected)
            checks[i] = det_i.with_polarity(checks[i], r.decision, expected, flipped)
    confs = await conf_task if conf_task is not None else []
    return [
        Forwarded(
            img,
            out,
            r.model,
            r.forward_ms,
            r.batch_size,
            res,
            r.decision,
            side,
            c,
            layer,
            r.output,
            r.profile,
        )
        for img, out, r, res, side, c in zip(
            images, outs, results, checks, done, confs, strict=True
        )
    ]


def _confidence_task(
    direction: Direction, images: Sequence[np.ndarray], results: Sequence[Any], tier: str
) -> asyncio.Future[list[Confidence]]:
    """`confidences` of the batcher's results in a worker thread, as a future."""
    outs, models = [r.output for r in results], [r.model for r in results]
    decisions, profiles = [r.decision for r in results], [r.profile for r in results]
    return asyncio.ensure_future(
        run_in_threadpool(confidences, direction, images, outs, models, decisions, tier, profiles)
    )


async def _pool(
    state: ServingState, layer: str, known: LayerState, decisions: Sequence[PolarityDecision]
) -> list[LayerState]:
    """Fold the images' own evidence into the layer (one transaction); the layer's state
    after each image (an image without evidence, e.g. a given polarity, leaves it as is)."""
    evidences = [d.evidence for d in decisions if d.evidence is not None]
    folded = iter(await run_in_threadpool(state.layers.fold, layer, evidences))
    after, cur = [], known
    for d in decisions:
        if d.evidence is not None:
            cur = next(folded)
        after.append(cur)
    return after


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


def _kept(item: Forwarded, settings: ServeSettings) -> bool:
    conf, limit = item.confidence.confidence, settings.review_keep_below
    return limit > 0 and (conf is None or conf < limit)


async def defer_full(
    state: ServingState, direction: Direction, items: Sequence[Forwarded], ids: Sequence[str]
) -> None:
    """Hand the full confidence of the images answered with the inline one to the record
    writer's deferred thread; when its queue is full (it says so), computed here instead."""
    todo = [i for i, it in enumerate(items) if it.confidence.source == "inline"]
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


def stored_output(out: np.ndarray, png: bytes, settings: ServeSettings) -> bytes | None:
    """What the store keeps of an output: nothing, a thumbnail (at most thumbnail_side px a
    side, INTER_AREA) or the answer's PNG itself."""
    if settings.keep_outputs == "none":
        return None
    side = settings.thumbnail_side
    if settings.keep_outputs == "full" or max(out.shape) <= side:
        return png
    import cv2

    from semlayout.data.pairs import encode_png

    scale = side / max(out.shape)
    size = (max(1, round(out.shape[1] * scale)), max(1, round(out.shape[0] * scale)))
    return encode_png(cv2.resize(out, size, interpolation=cv2.INTER_AREA))


def prepare(
    state: ServingState,
    endpoint: str,
    direction: Direction,
    item: Forwarded,
    t0: float,
    cohort: str | None = None,
) -> tuple[Translated, TranslationRecord]:
    """The answer and the rows of one image (worker thread); nothing is written yet.

    `t0` is when the request started (`time.perf_counter()`), for the recorded latency."""
    from semlayout.data.pairs import encode_png

    img, out, model, res = item.image, item.output, item.model, item.drift
    png = encode_png(out)
    pid = new_prediction_id()
    prediction = Prediction(
        id=pid,
        ts=time.time(),
        direction=direction,
        model_version=model.version,
        input_sha256=item.side.sha256,
        width=int(img.shape[1]),
        height=int(img.shape[0]),
        output_png=stored_output(out, png, state.settings),
        polarity=item.decision.polarity,
        confidence=item.confidence.confidence,
        predicted_quality=item.confidence.predicted,
        confidence_reason=item.confidence.reason,
        confidence_signals=json.dumps(item.confidence.signals) if item.confidence.signals else None,
        cohort=cohort,
        input_png=kept_input(item, state.settings),
        profile=item.profile,
    )
    event = {
        "endpoint": endpoint,
        "status": "ok",
        "http_status": 200,
        "direction": direction,
        "prediction_id": pid,
        "model_version": model.version,
        "latency_ms": (time.perf_counter() - t0) * 1000,
        "forward_ms": item.forward_ms,
        "batch_size": item.batch_size,
        "input_stats": item.side.stats,
        "output_stats": image_stats(out),
    }
    drift = None
    if res is not None:
        drift = {
            "direction": direction,
            "drifted": res.drifted,
            "max_abs_z": res.max_abs_z,
            "kl": res.kl,
            "score": res.score,
            "z": res.z,
            "features": res.features,
            "prediction_id": pid,
        }
    info = drift_info(res, model.detectors.get(direction))
    return (
        Translated(
            pid, out, png, model, info, item.decision, item.confidence, item.layer, item.profile
        ),
        TranslationRecord(prediction, event, drift),
    )


def _observe(state: ServingState, direction: Direction, done: Sequence[Translated]) -> None:
    """The request's metrics, once its rows are committed."""
    m = state.metrics
    for d in done:
        m.translations.labels(direction, "ok").inc()
        c = d.confidence
        if c.confidence is None:  # unknown in both tiers (no calibration): counted now
            m.confidence_unknown.labels(direction).inc()
        elif c.source == "full":  # an inline one: observed when the full one is in
            m.confidence.labels(direction).observe(c.confidence)
        if d.drift is not None:
            m.drift_score.labels(direction).observe(d.drift.score)
            if d.drift.drifted:
                m.drift_alerts.labels(direction).inc()


async def translate(
    state: ServingState,
    endpoint: str,
    direction: Direction,
    images: Sequence[np.ndarray],
    binarize: bool,
    t0: float,
    polarity: PolarityChoice = PolarityChoice.auto,
    layer: str = DEFAULT_LAYER,
    cohort: str | None = None,
    tier: str = "inline",
) -> list[Translated]:
    """`forward`, `prepare` each image, then hand the request's rows to the record writer
    (committed, all or none, before the answer);
    `endpoint` is the route template, for the events; `layer` the data set the images belong
    to (polarity pooling), `cohort` the caller's label (pattern family, tool or client) the
    monitors slice by; `tier` the confidence the answer carries (the full one follows in the
    store when it is the inline one: `defer_full`)."""
    items = await forward(state, direction, images, binarize, polarity, layer, tier)
    prepared = await asyncio.gather(
        *[run_in_threadpool(prepare, state, endpoint, direction, it, t0, cohort) for it in items]
    )
    await state.writer.record([rec for _, rec in prepared])  # committed: then the answer
    done = [tr for tr, _ in prepared]
    _observe(state, direction, done)
    await defer_full(state, direction, items, [tr.prediction_id for tr in done])
    return done


# --------------------------------------------------------------------------- answers
def drift_info(res: DriftResult | None, det: DriftDetector | None) -> DriftInfo | None:
    if res is None or det is None:
        return None
    return DriftInfo(
        drifted=res.drifted,
        score=res.score,
        max_abs_z=res.max_abs_z,
        worst_feature=res.worst_feature,
        kl=res.kl,
        z_threshold=det.z_threshold,
        kl_threshold=det.kl_threshold,
        expected_polarity=det.expected_polarity,
    )
