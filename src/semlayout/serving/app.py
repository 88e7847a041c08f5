"""The HTTP API: `create_app(settings, engine=None)` builds a FastAPI app around one
InferenceEngine.

Endpoints (OpenAPI at /openapi.json; /docs and /redoc from packaged assets, offline), one
router per area in `serving.routes`:
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
A storage fault (the monitoring database or the feedback store full, read-only or down) is
a JSON 503 with the reason and `Retry-After`, and nothing of the request is stored.
The heavy work (decode, forward, drift features, database writes) runs in worker threads,
never on the event loop. The OpenAPI schema lists every status a route answers, each with
the one error body `{"detail": str}` (`serving.openapi`).

Composition: settings and metrics are fixed here (`app.state`); the model, stores and
micro-batcher open in the lifespan (`serving.state`); endpoints get them injected
(`serving.deps`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from semlayout.errors import SemlayoutError, describe_errors
from semlayout.monitoring.database import StoreUnavailable
from semlayout.monitoring.performance import UnknownPrediction
from semlayout.serving.batcher import QueueFull
from semlayout.serving.engine import InferenceEngine
from semlayout.serving.middleware import RequestMetricsMiddleware
from semlayout.serving.openapi import install_openapi
from semlayout.serving.prometheus import ServingMetrics
from semlayout.serving.routes import (
    admin_routes,
    align_routes,
    docs_routes,
    feedback_routes,
    health_routes,
    layer_routes,
    monitoring_routes,
    review_routes,
    translate_routes,
)
from semlayout.serving.schemas import SERVER_ERROR
from semlayout.serving.settings import ServeSettings
from semlayout.serving.state import enforce_retention, open_state, poll_registry
from semlayout.serving.uploads import BodyLimitMiddleware

log = logging.getLogger("semlayout.serving")


def create_app(
    settings: ServeSettings | None = None, engine: InferenceEngine | None = None
) -> FastAPI:
    """Build the app; the model (unless `engine` is given), store and monitors load at startup."""
    settings = settings or ServeSettings()
    metrics = ServingMetrics()
    app = FastAPI(
        title="semlayout",
        version=_version(),
        description="SEM <-> layout translation with drift, health and quality monitoring.",
        lifespan=lifespan(engine),
        responses=SERVER_ERROR,
        docs_url=None,  # /docs and /redoc come from docs_routes: packaged assets, no CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.svc = None
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics, owner=app)
    install_error_handlers(app)
    for module in (
        health_routes,
        translate_routes,
        align_routes,
        feedback_routes,
        monitoring_routes,
        layer_routes,
        review_routes,
        admin_routes,
        docs_routes,
    ):
        app.include_router(module.router)
    install_openapi(app)
    return app


def lifespan(
    engine: InferenceEngine | None = None,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Startup and shutdown of the service; `engine` given: serve it instead of loading one."""

    @contextlib.asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        settings: ServeSettings = app.state.settings
        state = await open_state(settings, app.state.metrics, engine)
        app.state.svc = state
        loop = asyncio.get_running_loop()
        tasks = []
        if state.engine.follows_alias and settings.poll_interval_s > 0:
            tasks.append(loop.create_task(poll_registry(state), name="semlayout-poller"))
        if settings.retention_interval_s > 0:
            tasks.append(loop.create_task(enforce_retention(state), name="semlayout-retention"))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await state.batcher.stop()
            await run_in_threadpool(state.writer.close)  # commits what it took, says so
            app.state.svc = None
            state.store.close()

    return run


def _version() -> str:
    from semlayout import __version__

    return __version__


def install_error_handlers(app: FastAPI) -> None:
    """Library errors and refusals as `{"detail": "<one line>"}` with their status."""

    @app.exception_handler(UnknownPrediction)
    async def unknown(_: Request, err: UnknownPrediction) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=404)

    @app.exception_handler(QueueFull)
    async def busy(_: Request, err: QueueFull) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(StoreUnavailable)
    async def storage_fault(_: Request, err: StoreUnavailable) -> JSONResponse:
        log.warning("503: %s", err)
        return JSONResponse(
            {"detail": str(err)},
            status_code=503,
            headers={"Retry-After": str(err.retry_after_s)},
        )

    @app.exception_handler(SemlayoutError)
    async def user_error(_: Request, err: SemlayoutError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        # one readable line instead of pydantic's list, as every other 4xx
        detail = describe_errors(err.errors(), skip=("body",)) or "invalid request"
        return JSONResponse({"detail": detail}, status_code=422)
