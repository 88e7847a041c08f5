"""The HTTP API: `create_app(settings, engine=None)` builds a FastAPI app around one InferenceEngine.

Endpoints (OpenAPI at /docs and /openapi.json):
- `POST /v1/translate/{direction}` -> image/png (headers X-Prediction-Id, X-Model-Version,
  X-Drift-Score — the latter only when the server has a drift reference);
  `/json` -> TranslateResponse; `/batch` -> list[TranslateResponse].
- `POST /v1/align` -> AlignResponse (SEM 304x304 + template 250x250, optional translation).
- `GET /healthz`, `GET /readyz`, `GET /metrics` (Prometheus), `GET /v1/monitoring/summary`.
- `POST /v1/ground-truth/{prediction_id}`, `POST /v1/feedback` (bearer API token),
  `POST /v1/admin/reload` (bearer admin token).

Every user mistake is a 4xx `{"detail": ...}`: uploads are checked from their header
before decoding (`serving.uploads`), the body size while it streams in, and any
`SemlayoutError` from the library maps to 422 (404 for an unknown prediction id).
The heavy work (decode, forward, drift features, SQLite writes) runs in worker threads,
never on the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from semlayout.errors import SemlayoutError
from semlayout.monitoring.drift import DriftDetector, DriftResult, detectors_from_reference
from semlayout.monitoring.feedback import DuplicatePair, FeedbackStore
from semlayout.monitoring.inference_monitor import InferenceMonitor, image_stats
from semlayout.monitoring.performance import (
    PerformanceTracker,
    UnknownPrediction,
    new_prediction_id,
)
from semlayout.monitoring.store import MonitorStore
from semlayout.serving.engine import InferenceEngine, LoadedModel, MicroBatcher, QueueFull
from semlayout.serving.prometheus import ServingMetrics
from semlayout.serving.schemas import (
    AlignResponse,
    Direction,
    DriftInfo,
    DriftSummary,
    ErrorResponse,
    FeedbackResponse,
    GroundTruthResponse,
    HealthResponse,
    InferenceSummary,
    MonitoringSummary,
    QualitySummary,
    ReadyResponse,
    ReloadResponse,
    TranslateResponse,
)
from semlayout.serving.security import require
from semlayout.serving.settings import ServeSettings
from semlayout.serving.uploads import BodyLimitMiddleware, UploadRejected, decode_upload

log = logging.getLogger("semlayout.serving")

_ERR = {"model": ErrorResponse}
UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    413: {**_ERR, "description": "body or image dimensions over the limit"},
    415: {**_ERR, "description": "not a PNG, TIFF or JPEG"},
    422: {**_ERR, "description": "not an 8-bit grayscale image, truncated, or a missing field"},
    503: {**_ERR, "description": "server busy or model not loaded"},
}
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {**_ERR, "description": "missing bearer token"},
    403: {**_ERR, "description": "wrong token"},
    503: {**_ERR, "description": "endpoint disabled: token not configured"},
}


@dataclass
class ServingState:
    settings: ServeSettings
    engine: InferenceEngine
    store: MonitorStore
    monitor: InferenceMonitor
    tracker: PerformanceTracker
    feedback: FeedbackStore
    detectors: dict[str, DriftDetector]
    metrics: ServingMetrics
    batcher: MicroBatcher
    n_predictions: int = 0


def _state(request: Request) -> ServingState:
    state = getattr(request.app.state, "svc", None)
    if state is None:
        raise HTTPException(503, detail="server is starting: model not loaded yet")
    return state


State = Annotated[ServingState, Depends(_state)]


async def _read(upload: UploadFile, settings: ServeSettings) -> bytes:
    # Starlette has already spooled the part; the body limit middleware bounded its size.
    data = await upload.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise UploadRejected(
            413, f"'{upload.filename}' exceeds the {settings.max_upload_bytes} byte limit"
        )
    return data


def _decode(data: bytes, name: str, settings: ServeSettings) -> np.ndarray:
    return decode_upload(data, name, settings.max_pixels, settings.min_side)


def _png(img: np.ndarray) -> bytes:
    from semlayout.data.pairs import encode_png

    return encode_png(img)


def _drift_info(res: DriftResult | None, det: DriftDetector | None) -> DriftInfo | None:
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
    )


@dataclass
class _Done:
    prediction_id: str
    output: np.ndarray
    png: bytes
    model: LoadedModel
    drift: DriftInfo | None


def _record(
    state: ServingState,
    endpoint: str,
    direction: str,
    img: np.ndarray,
    out: np.ndarray,
    model: LoadedModel,
    forward_ms: float,
    batch: int,
    t0: float,
    res: DriftResult | None,
) -> _Done:
    """After the forward: prediction registry, drift and inference events (worker thread)."""
    det = state.detectors.get(direction)
    png = _png(out)
    pid = new_prediction_id()
    from semlayout.monitoring.performance import sha256
    from semlayout.monitoring.store import Prediction

    state.store.add_prediction(
        Prediction(
            id=pid,
            ts=time.time(),
            direction=direction,
            model_version=model.version,
            input_sha256=sha256(np.ascontiguousarray(img)),
            width=int(img.shape[1]),
            height=int(img.shape[0]),
            output_png=png if state.settings.keep_outputs else None,
        )
    )
    if res is not None:
        state.store.add_drift_event(
            direction=direction,
            drifted=res.drifted,
            max_abs_z=res.max_abs_z,
            kl=res.kl,
            score=res.score,
            z=res.z,
            features=res.features,
            prediction_id=pid,
        )
        state.metrics.drift_score.labels(direction).observe(res.score)
        if res.drifted:
            state.metrics.drift_alerts.labels(direction).inc()
    state.monitor.record_ok(
        endpoint=endpoint,
        direction=direction,
        prediction_id=pid,
        model_version=model.version,
        latency_ms=(time.perf_counter() - t0) * 1000,
        forward_ms=forward_ms,
        batch_size=batch,
        input_stats=image_stats(img),
        output_stats=image_stats(out),
    )
    state.metrics.translations.labels(direction, "ok").inc()
    state.n_predictions += 1  # approximate under threads; only paces the pruning below
    if state.n_predictions % 1000 == 0:
        state.store.prune_outputs(state.settings.max_stored_outputs)
    return _Done(pid, out, png, model, _drift_info(res, det))


async def _translate(
    state: ServingState,
    endpoint: str,
    direction: str,
    images: list[np.ndarray],
    binarize_output: bool,
    t0: float,
) -> list[_Done]:
    """Translate and record `images`: nothing is recorded unless every image was translated."""
    try:
        state.batcher.check_room(len(images))  # before any work: a refused batch costs nothing
    except QueueFull as err:
        raise HTTPException(503, detail=str(err), headers={"Retry-After": "1"}) from None
    det = state.detectors.get(direction)
    # the drift features are computed while the model runs (they need only the input)
    drifts = (
        [asyncio.ensure_future(run_in_threadpool(det.check, img)) for img in images]
        if det is not None
        else []
    )
    try:
        try:
            results = await state.batcher.submit_many(direction, images)
        except QueueFull as err:
            raise HTTPException(503, detail=str(err), headers={"Retry-After": "1"}) from None
        checks: list[Any] = list(await asyncio.gather(*drifts)) if drifts else [None] * len(images)
        outs = [out for out, *_ in results]
        if binarize_output:  # the drawn layout, as the serving model's layout_fit config says
            outs = list(
                await asyncio.gather(
                    *[
                        run_in_threadpool(m.translator.to_layout, out)
                        for out, (_, m, *_) in zip(outs, results, strict=True)
                    ]
                )
            )
    finally:
        for drift in drifts:  # a failure above: nothing left running unobserved
            drift.cancel()
    return list(
        await asyncio.gather(
            *[
                run_in_threadpool(
                    _record, state, endpoint, direction, img, out, model, forward_ms, batch, t0, res
                )
                for img, out, (_, model, forward_ms, batch), res in zip(
                    images, outs, results, checks, strict=True
                )
            ]
        )
    )


async def _translate_one(
    state: ServingState,
    endpoint: str,
    direction: str,
    img: np.ndarray,
    binarize_output: bool,
    t0: float,
) -> _Done:
    return (await _translate(state, endpoint, direction, [img], binarize_output, t0))[0]


def _check_binarize(direction: Direction, binarize_output: bool) -> None:
    if binarize_output and direction != Direction.sem2layout:
        raise HTTPException(422, detail="binarize=true applies to sem2layout only")


def _as_response(done: _Done, direction: str) -> TranslateResponse:
    return TranslateResponse(
        prediction_id=done.prediction_id,
        direction=Direction(direction),
        model_version=done.model.version,
        width=int(done.output.shape[1]),
        height=int(done.output.shape[0]),
        image_png_base64=base64.b64encode(done.png).decode("ascii"),
        drift=done.drift,
    )


# --------------------------------------------------------------------------- app factory
def create_app(
    settings: ServeSettings | None = None, engine: InferenceEngine | None = None
) -> FastAPI:
    """Build the app; the model (unless `engine` is given), store and monitors load at startup."""
    settings = settings or ServeSettings()
    metrics = ServingMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        eng: InferenceEngine = (
            engine
            if engine is not None
            else await run_in_threadpool(
                InferenceEngine.load, settings.model, settings.backend, settings.tracking_uri
            )
        )
        store = await run_in_threadpool(MonitorStore, settings.monitor_db)
        detectors: dict[str, DriftDetector] = {}
        if settings.reference is not None:
            detectors = await run_in_threadpool(
                detectors_from_reference,
                settings.reference,
                settings.drift_z_threshold,
                settings.drift_kl_threshold,
                settings.drift_target_rate,
            )
        baseline = dict(eng.current.baseline_ssim)
        for d in ("sem2layout", "layout2sem"):
            v = getattr(settings, f"baseline_ssim_{d}")
            if v is not None:
                baseline[d] = v

        def on_batch(direction: str, n: int, forward_ms: float) -> None:
            metrics.forward_latency.labels(direction).observe(forward_ms / 1000)
            metrics.batch_size.observe(n)

        batcher = MicroBatcher(
            eng,
            settings.micro_batch,
            settings.micro_batch_wait_ms,
            settings.max_queue,
            on_batch=on_batch,
        )
        batcher.start()
        state = ServingState(
            settings,
            eng,
            store,
            InferenceMonitor(store),
            PerformanceTracker(store, baseline),
            FeedbackStore(settings.feedback_dir, store),
            detectors,
            metrics,
            batcher,
        )
        cur = eng.current
        metrics.set_model(cur.version, cur.source, cur.backend)
        app.state.svc = state
        poller = None
        if eng.follows_alias and settings.poll_interval_s > 0:
            poller = asyncio.get_running_loop().create_task(_poll(state), name="semlayout-poller")
        try:
            yield
        finally:
            if poller is not None:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            await batcher.stop()
            app.state.svc = None
            store.close()

    app = FastAPI(
        title="semlayout",
        version=_version(),
        description="SEM <-> layout translation with drift, health and quality monitoring.",
        lifespan=lifespan,
        responses={500: {**_ERR, "description": "server bug (never a user mistake)"}},
    )
    app.state.settings = settings
    app.state.svc = None
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics, owner=app)
    _install_error_handlers(app)
    _routes(app, settings, metrics)
    return app


def _version() -> str:
    from semlayout import __version__

    return __version__


async def _poll(state: ServingState) -> None:
    """Follow the registry alias: every poll_interval_s, reload when it has moved."""
    while True:
        await asyncio.sleep(state.settings.poll_interval_s)
        try:
            res = await run_in_threadpool(state.engine.reload)
        except Exception as err:  # noqa: BLE001 - the registry may be briefly unreachable; keep serving
            state.metrics.reloads.labels("error").inc()
            log.warning("registry poll failed: %s", err)
            continue
        if res["changed"]:
            cur = state.engine.current
            state.metrics.set_model(cur.version, cur.source, cur.backend)
            state.metrics.reloads.labels("swapped").inc()


class RequestMetricsMiddleware:
    """Pure ASGI: counts every request by route template and status, times it, and records
    refused translate/align requests as error events in the monitoring store (after the
    response has gone out, so the client does not wait for the write)."""

    monitored = ("/v1/translate", "/v1/align")

    def __init__(self, app: Any, metrics: ServingMetrics, owner: FastAPI):
        self.app = app
        self.metrics = metrics
        self.owner = owner

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        t0 = time.perf_counter()

        async def send_wrapper(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        m = self.metrics
        m.inflight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            m.inflight.dec()
            dt = time.perf_counter() - t0
            route = scope.get("route")  # set by the router on this same scope dict
            params = scope.get("path_params") or {}
            if route is None:  # answered before routing (the body limit's 413): match it here
                route, params = self._match(scope)
            path = getattr(route, "path", "unmatched")
            m.requests.labels(scope.get("method", ""), path, str(status)).inc()
            m.latency.labels(path).observe(dt)
            state = getattr(self.owner.state, "svc", None)
            if state is not None:
                m.queue_depth.set(state.batcher.depth)
            direction = params.get("direction") if route is not None else None
            direction = direction if direction in ("sem2layout", "layout2sem") else None
            if path.startswith(self.monitored) and status == 200 and direction:
                m.translate_latency.labels(direction).observe(dt)
            if status >= 400:
                m.errors.labels(path, str(status)).inc()
                if path.startswith(self.monitored) and state is not None:
                    with contextlib.suppress(Exception):
                        await run_in_threadpool(
                            state.monitor.record_error,
                            endpoint=path,
                            http_status=status,
                            error=f"HTTP {status}",
                            latency_ms=dt * 1000,
                            direction=direction,
                        )

    def _match(self, scope: Any) -> tuple[Any, dict[str, Any]]:
        from starlette.routing import Match

        for candidate in self.owner.router.routes:
            match, child = candidate.matches(scope)
            if match == Match.FULL:
                return candidate, child.get("path_params") or {}
        return None, {}


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(UnknownPrediction)
    async def unknown(_: Request, err: UnknownPrediction) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=404)

    @app.exception_handler(QueueFull)
    async def busy(_: Request, err: QueueFull) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(SemlayoutError)
    async def user_error(_: Request, err: SemlayoutError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        # one readable line instead of pydantic's list, as every other 4xx
        parts = []
        for e in err.errors():
            loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
            parts.append(f"{loc}: {e.get('msg')}")
        return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)


# --------------------------------------------------------------------------- routes
def _routes(app: FastAPI, settings: ServeSettings, metrics: ServingMetrics) -> None:
    png: dict[int | str, dict[str, Any]] = {
        200: {"content": {"image/png": {}}, "description": "the translated image, the input's size"}
    }

    @app.get("/healthz", response_model=HealthResponse, tags=["health"])
    async def healthz() -> HealthResponse:
        """Liveness: the process answers."""
        return HealthResponse()

    @app.get(
        "/readyz",
        response_model=ReadyResponse,
        tags=["health"],
        responses={503: {"model": ReadyResponse, "description": "not ready"}},
    )
    async def readyz(request: Request) -> Any:
        """Readiness: model loaded and the monitoring database writable."""
        state: ServingState | None = getattr(request.app.state, "svc", None)
        reasons = []
        loaded = state is not None
        writable = False
        if state is None:
            reasons.append("model not loaded")
        else:
            try:
                await run_in_threadpool(state.store.check_writable)
                writable = True
            except Exception as err:  # noqa: BLE001 - reported, not raised
                reasons.append(f"monitoring database not writable: {err}")
        body = ReadyResponse(
            ready=loaded and writable,
            model_loaded=loaded,
            db_writable=writable,
            model_version=state.engine.current.version if state else None,
            reasons=reasons,
        )
        return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)

    @app.get(
        "/metrics",
        tags=["health"],
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus exposition"}},
    )
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.post(
        "/v1/translate/{direction}",
        tags=["translate"],
        response_class=Response,
        responses={**png, **UPLOAD_ERRORS},
    )
    async def translate_png(
        state: State,
        direction: Direction,
        image: UploadFile = File(...),
        binarize: bool = Query(
            False,
            description="sem2layout: the drawn layout in {0, 255} (threshold + Manhattan fit)",
        ),
    ) -> Response:
        """Translate one image; answers a PNG of the input's size."""
        t0 = time.perf_counter()
        _check_binarize(direction, binarize)
        data = await _read(image, settings)
        img = await run_in_threadpool(_decode, data, "image", settings)
        done = await _translate_one(
            state, "/v1/translate/{direction}", direction.value, img, binarize, t0
        )
        headers = {"X-Prediction-Id": done.prediction_id, "X-Model-Version": done.model.version}
        if done.drift is not None:
            headers["X-Drift-Score"] = f"{done.drift.score:.4f}"
            headers["X-Drifted"] = "true" if done.drift.drifted else "false"
        return Response(done.png, media_type="image/png", headers=headers)

    @app.post(
        "/v1/translate/{direction}/json",
        tags=["translate"],
        response_model=TranslateResponse,
        responses=UPLOAD_ERRORS,
    )
    async def translate_json(
        state: State,
        direction: Direction,
        image: UploadFile = File(...),
        binarize: bool = Query(False),
    ) -> TranslateResponse:
        """Translate one image; answers JSON with the PNG in base64 and the drift verdict."""
        t0 = time.perf_counter()
        _check_binarize(direction, binarize)
        data = await _read(image, settings)
        img = await run_in_threadpool(_decode, data, "image", settings)
        done = await _translate_one(
            state, "/v1/translate/{direction}/json", direction.value, img, binarize, t0
        )
        return _as_response(done, direction.value)

    @app.post(
        "/v1/translate/{direction}/batch",
        tags=["translate"],
        response_model=list[TranslateResponse],
        responses=UPLOAD_ERRORS,
    )
    async def translate_batch(
        state: State,
        direction: Direction,
        images: list[UploadFile] = File(...),
        binarize: bool = Query(False),
    ) -> list[TranslateResponse]:
        """Translate several `images` fields (up to SEMLAYOUT_MAX_BATCH_IMAGES) in one request."""
        t0 = time.perf_counter()
        _check_binarize(direction, binarize)
        if not images:
            raise HTTPException(422, detail="images: at least one image is required")
        if len(images) > settings.max_batch_images:
            raise HTTPException(
                413,
                detail=f"{len(images)} images in one batch; the limit is "
                f"{settings.max_batch_images}",
            )
        decoded = []
        for i, up in enumerate(images):
            data = await _read(up, settings)
            decoded.append(await run_in_threadpool(_decode, data, f"images[{i}]", settings))
        done = await _translate(
            state, "/v1/translate/{direction}/batch", direction.value, decoded, binarize, t0
        )
        return [_as_response(d, direction.value) for d in done]

    @app.post(
        "/v1/align", tags=["translate"], response_model=AlignResponse, responses=UPLOAD_ERRORS
    )
    async def align(
        state: State,
        sem: UploadFile = File(..., description="raw SEM, 304x304"),
        template: UploadFile = File(..., description="layout template, 250x250"),
        translate: bool = Query(False, description="also translate the aligned SEM crop"),
    ) -> AlignResponse:
        """Find where the template lies in the raw SEM (NCC with QC); optionally translate the crop."""
        from semlayout.data.pairs import SEM_RAW_SHAPE, TEMPLATE_SHAPE

        t0 = time.perf_counter()
        sem_img = await run_in_threadpool(_decode, await _read(sem, settings), "sem", settings)
        tpl_img = await run_in_threadpool(
            _decode, await _read(template, settings), "template", settings
        )
        for name, img, shape in (
            ("sem", sem_img, SEM_RAW_SHAPE),
            ("template", tpl_img, TEMPLATE_SHAPE),
        ):
            if img.shape != shape:
                raise HTTPException(
                    422,
                    detail=f"{name}: expected {shape[1]}x{shape[0]} px, got "
                    f"{img.shape[1]}x{img.shape[0]}",
                )
        res = await run_in_threadpool(_align, sem_img, tpl_img)
        translated = None
        if translate and res["x"] is not None and res["y"] is not None:
            crop = np.ascontiguousarray(
                sem_img[
                    res["y"] : res["y"] + tpl_img.shape[0], res["x"] : res["x"] + tpl_img.shape[1]
                ]
            )
            done = await _translate_one(state, "/v1/align", "sem2layout", crop, False, t0)
            translated = _as_response(done, "sem2layout")
        return AlignResponse(**res, translated=translated)

    @app.post(
        "/v1/ground-truth/{prediction_id}",
        tags=["monitoring"],
        response_model=GroundTruthResponse,
        dependencies=[Depends(require("api"))],
        responses={
            **AUTH_ERRORS,
            404: {**_ERR, "description": "unknown prediction id"},
            409: {**_ERR, "description": "the prediction's output is no longer stored"},
            **{k: v for k, v in UPLOAD_ERRORS.items() if k != 503},
        },
    )
    async def ground_truth(state: State, prediction_id: str, image: UploadFile = File(...)) -> Any:
        """The true image for an earlier prediction -> its L1 / SSIM / PSNR / IoU (stored for rolling SSIM)."""
        if len(prediction_id) > 64:
            raise HTTPException(404, detail="unknown prediction id")
        pred = await run_in_threadpool(state.store.get_prediction, prediction_id)
        if pred is None:
            raise HTTPException(404, detail=f"unknown prediction id '{prediction_id}'")
        if pred.output_png is None:
            raise HTTPException(
                409,
                detail=f"the output of prediction '{prediction_id}' is no longer stored "
                "(SEMLAYOUT_KEEP_OUTPUTS / SEMLAYOUT_MAX_STORED_OUTPUTS)",
            )
        data = await _read(image, settings)
        truth = await run_in_threadpool(_decode, data, "image", settings)
        res = await run_in_threadpool(state.tracker.add_ground_truth, prediction_id, truth)
        metrics.ground_truth.labels(res["direction"]).inc()
        return res

    @app.post(
        "/v1/feedback",
        tags=["monitoring"],
        response_model=FeedbackResponse,
        dependencies=[Depends(require("api"))],
        responses={
            **AUTH_ERRORS,
            **{k: v for k, v in UPLOAD_ERRORS.items() if k != 503},
            409: {**_ERR, "description": "this SEM was already received (a pair counts once)"},
        },
    )
    async def feedback(
        state: State,
        sem: UploadFile = File(..., description="raw SEM, 304x304, 8-bit"),
        layout: UploadFile = File(..., description="layout, 250x250, values 0 and 255"),
        pattern_type: str = Form(..., max_length=64),
    ) -> FeedbackResponse:
        """Store a human-reviewed pair (SQLite + the feedback pair folder) for fine-tuning.

        Refused, with nothing stored: sizes other than 304x304 / 250x250, a layout with values
        other than 0 and 255, a template that fails alignment QC against the SEM (422), and a
        SEM already received (409)."""
        sem_img = await run_in_threadpool(_decode, await _read(sem, settings), "sem", settings)
        lay_img = await run_in_threadpool(
            _decode, await _read(layout, settings), "layout", settings
        )
        try:
            row = await run_in_threadpool(state.feedback.add, sem_img, lay_img, pattern_type)
        except DuplicatePair as err:
            raise HTTPException(409, detail=str(err)) from None
        metrics.feedback.inc()
        count = await run_in_threadpool(state.store.feedback_count, None)
        return FeedbackResponse(
            id=row["id"],
            pattern_type=row["pattern_type"],
            sem_path=row["sem_path"],
            layout_path=row["layout_path"],
            feedback_count=count,
        )

    @app.get("/v1/monitoring/summary", tags=["monitoring"], response_model=MonitoringSummary)
    async def summary(
        state: State, window: int | None = Query(None, ge=1, le=100_000)
    ) -> MonitoringSummary:
        """Inference health, drift rate, rolling SSIM against the baseline, feedback count."""
        return await run_in_threadpool(build_summary, state, window or settings.summary_window)

    @app.post(
        "/v1/admin/reload",
        tags=["admin"],
        response_model=ReloadResponse,
        dependencies=[Depends(require("admin"))],
        responses=AUTH_ERRORS,
    )
    async def reload(state: State, force: bool = Query(False)) -> ReloadResponse:
        """Load the version the registry alias names now (or the model again with force=true)."""
        try:
            res = await run_in_threadpool(state.engine.reload, force)
        except SemlayoutError:
            metrics.reloads.labels("error").inc()
            raise
        if res["changed"]:
            cur = state.engine.current
            metrics.set_model(cur.version, cur.source, cur.backend)
            metrics.reloads.labels("swapped").inc()
        else:
            metrics.reloads.labels("unchanged").inc()
        return ReloadResponse(**res)


def _align(sem: np.ndarray, template: np.ndarray) -> dict[str, Any]:
    from semlayout.data.align import AlignConfig, align_pair

    r = align_pair(sem, template, AlignConfig())

    def num(v: Any, kind: type) -> Any:
        return None if v is None else kind(v)

    return {
        "x": num(r.x, int),
        "y": num(r.y, int),
        "x_sub": num(r.x_sub, float),
        "y_sub": num(r.y_sub, float),
        "score": num(r.score, float),
        "confidence": num(r.confidence, float),
        "polarity": num(r.polarity, int),
        "n_equivalent": num(r.n_equivalent, int),
        "qc_pass": bool(r.qc_pass),
        "reason": str(r.reason or ""),
    }


def build_summary(state: ServingState, window: int) -> MonitoringSummary:
    rate, n = state.store.drift_stats(window)
    by_dir = {d: state.store.drift_rate(window, d) for d in ("sem2layout", "layout2sem")}
    quality = {
        d: QualitySummary(**state.tracker.rolling(d, window)) for d in ("sem2layout", "layout2sem")
    }
    return MonitoringSummary(
        model_version=state.engine.current.version,
        inference=InferenceSummary(**state.monitor.summary(window)),
        drift=DriftSummary(
            window=window,
            rate=rate,
            n=n,
            by_direction=by_dir,
            thresholds={d: det.thresholds() for d, det in state.detectors.items()},
        ),
        quality=quality,
        feedback_count=state.store.feedback_count(None),
    )
