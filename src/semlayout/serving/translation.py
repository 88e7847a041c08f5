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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import anyio.from_thread
import numpy as np
from fastapi import HTTPException
from starlette.concurrency import run_in_threadpool

from semlayout.confidence import Confidence
from semlayout.directions import Direction
from semlayout.monitoring.drift import DriftDetector, DriftResult
from semlayout.monitoring.inference_monitor import image_stats
from semlayout.monitoring.performance import new_prediction_id
from semlayout.monitoring.store import Prediction, TranslationRecord
from semlayout.polarity import PolarityChoice, name_of
from semlayout.polarity_auto import PolarityDecision
from semlayout.polarity_layer import DEFAULT_LAYER, LayerPrior, LayerState
from semlayout.serving import server_timing
from semlayout.serving.batcher import ImageResult, QueueFull
from semlayout.serving.deferred_work import confidences, defer_full, kept_input
from semlayout.serving.engine import LoadedModel
from semlayout.serving.layer_evidence import settled_decision
from semlayout.serving.schemas import DriftInfo
from semlayout.serving.settings import ServeSettings
from semlayout.serving.state import ServingState
from semlayout.serving.uploads import Encoded, decode_all
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
    # the image's own polarity evidence: read in the request ("image"), after the answer
    # ("deferred": a one-pass answer, `serving.layer_evidence`), or not at all (None)
    evidence: str | None = None
    raw: np.ndarray | None = None  # the network's own output (the deferred reading reuses it)


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
    evidence: str | None = None  # as `Forwarded.evidence`


def _busy(err: QueueFull) -> HTTPException:
    return HTTPException(503, detail=str(err), headers={"Retry-After": "1"})


@dataclass(frozen=True)
class _Before:
    """What a request knows before its forward (`_before`)."""

    images: list[np.ndarray]  # the request's images, decoded
    known: LayerState  # its layer, as the store has it
    prior: LayerPrior | None  # the layer's word for the batcher (None: a one-pass request)
    model: LoadedModel  # the model its input sides were judged for
    sides: list[InputSide]
    one: PolarityDecision | None  # the layer's settled polarity: one pass (`layer_evidence`)


def _before(
    state: ServingState,
    direction: Direction,
    uploads: Sequence[np.ndarray | Encoded],
    polarity: PolarityChoice,
    layer: str,
    start: Callable[[PolarityDecision | None, LayerPrior | None, list[np.ndarray]], None],
) -> _Before:
    """Worker thread, before the forward: the uploads decoded, the layer's state, the
    refusals (a polarity the
    model never learned, a field over the size limit, no room in the queue: before any
    work), whether the layer's polarity is settled, then `start` (the forward, with the
    settled decision and the batcher's prior) and the input sides while it runs."""
    images = decode_all(uploads, state.settings)
    known = state.layers.get(layer)
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
    expected = det.expected_polarity if det is not None else None
    translator = model.translator_for(model.profile_for(layer))
    one = settled_decision(translator, direction, polarity, known, fallback, expected, images)
    start(one, None if one else prior, images)  # a one-pass request batches with any layer's
    sides = [input_side(img, det) for img in images]  # while the model runs
    return _Before(images, known, None if one else prior, model, sides, one)


def _after(
    state: ServingState,
    direction: Direction,
    binarize: bool,
    layer: str,
    tier: str,
    pre: _Before,
    results: Sequence[ImageResult],
) -> list[Forwarded]:
    """Worker thread, after the forward: the confidences, the drift checks (a model swapped
    meanwhile judges by its own reference), `binarize`, the images' evidence pooled into the
    layer and each image's polarity judged against the one the layer should show."""
    images = pre.images
    if pre.one is not None:  # one pass in the layer's polarity: the evidence is deferred
        results = [replace(r, decision=pre.one) for r in results]
        # the confidence's signals as under a given polarity (the layer's margin is not this
        # image's); the full one follows with the image's own margin and cycle
        decisions = [replace(pre.one, margin=None)] * len(results)
    else:
        decisions = [r.decision for r in results]
    models = [r.model for r in results]
    outs, profiles = [r.output for r in results], [r.profile for r in results]
    confs = confidences(direction, images, outs, models, decisions, tier, profiles)
    checks: list[DriftResult | None] = [s.drift for s in pre.sides]
    for i, r in enumerate(results):
        if r.model is not pre.model:  # swapped meanwhile: judged by the new version's reference
            new_det = r.model.detectors.get(direction)
            checks[i] = new_det.check(images[i]) if new_det else None
    outs = [r.output for r in results]
    if binarize:  # the drawn layout, as the serving model's layout_fit config says
        outs = [r.model.translator.to_layout(r.output) for r in results]
    after = _pool(state, layer, pre.known, [r.decision for r in results])
    fallback = state.settings.layer_prior
    for i, r in enumerate(results):  # the image's polarity against the one expected
        det_i = r.model.detectors.get(direction)
        check = checks[i]
        if det_i is not None and check is not None:
            expected = after[i].expected(fallback or det_i.expected_polarity)
            flipped = after[i].flipped(expected)
            checks[i] = det_i.with_polarity(check, r.decision, expected, flipped)
    reading = "deferred" if pre.one is not None else None
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
            reading or ("image" if r.decision.evidence is not None else None),
            r.raw if reading else None,  # only a deferred reading needs it
        )  # fmt: skip
        for img, out, r, res, side, c in zip(
            images, outs, results, checks, pre.sides, confs, strict=True
        )
    ]


async def forward(
    state: ServingState,
    direction: Direction,
    images: Sequence[np.ndarray | Encoded],
    binarize: bool,
    polarity: PolarityChoice = PolarityChoice.auto,
    layer: str = DEFAULT_LAYER,
    tier: str = "inline",
    *,
    finish: Callable[[list[Forwarded]], Any] | None = None,
) -> Any:
    """Run `images` through the model (all or none: 503 when the queue has no room for all)
    in `polarity` (auto: with `layer`'s configured polarity and pooled evidence; one pass when
    the layer has settled it, `serving.layer_evidence`); the input side of the rows (hash,
    statistics, drift features) and the confidence in `tier` (inline | full). `images`: arrays,
    or uploads read but not decoded (`uploads.Encoded`). One worker-thread hop before the
    forward (`_before`: it decodes the uploads, starts the forward on the event loop and
    computes the input sides while the model runs) and one after (`_after`, then `finish`, e.g.
    `prepare`, in the same hop); returns `finish(items)`, the items without it."""
    task: list[asyncio.Future[list[ImageResult]]] = []

    def launch(
        one: PolarityDecision | None, prior: LayerPrior | None, decoded: list[np.ndarray]
    ) -> None:  # event loop
        ask = PolarityChoice(name_of(one.polarity)) if one is not None else polarity
        # the layer label selects its profile when the model learned one (the engine's call)
        task.append(
            asyncio.ensure_future(
                state.batcher.submit_many(direction, decoded, ask, prior, profile=layer)
            )
        )

    def start(
        one: PolarityDecision | None, prior: LayerPrior | None, decoded: list[np.ndarray]
    ) -> None:  # worker thread
        anyio.from_thread.run_sync(launch, one, prior, decoded)

    try:
        with server_timing.span("before"):
            pre = await run_in_threadpool(_before, state, direction, images, polarity, layer, start)
        with server_timing.span("model"):
            results = await task[0]
    except QueueFull as err:
        raise _busy(err) from None
    except BaseException:
        for t in task:  # a failure meanwhile: nothing left running unobserved
            t.cancel()
        raise

    def post() -> Any:
        items = _after(state, direction, binarize, layer, tier, pre, results)
        return finish(items) if finish is not None else items

    server_timing.add("forward", max(r.forward_ms for r in results))
    with server_timing.span("after"):
        return await run_in_threadpool(post)


def _pool(
    state: ServingState, layer: str, known: LayerState, decisions: Sequence[PolarityDecision]
) -> list[LayerState]:
    """Fold the images' own evidence into the layer (one transaction); the layer's state
    after each image (an image without evidence, e.g. a given polarity, leaves it as is)."""
    evidences = [d.evidence for d in decisions if d.evidence is not None]
    folded = iter(state.layers.fold(layer, evidences))
    after, cur = [], known
    for d in decisions:
        if d.evidence is not None:
            cur = next(folded)
        after.append(cur)
    return after


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
            pid,
            out,
            png,
            model,
            info,
            item.decision,
            item.confidence,
            item.layer,
            item.profile,
            item.evidence,
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
    images: Sequence[np.ndarray | Encoded],
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

    loop = asyncio.get_running_loop()
    committed: asyncio.Future[None] = loop.create_future()

    def then(items: list[Forwarded]) -> tuple[list[Forwarded], list[Any]]:
        prepared = [prepare(state, endpoint, direction, it, t0, cohort) for it in items]
        # handed to the record writer from this worker thread: the commit runs meanwhile
        state.writer.hand_over([rec for _, rec in prepared], committed, loop)
        return items, prepared

    items, prepared = await forward(
        state, direction, images, binarize, polarity, layer, tier, finish=then
    )
    with server_timing.span("record"):
        await committed  # committed (all rows or none): then the answer
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
