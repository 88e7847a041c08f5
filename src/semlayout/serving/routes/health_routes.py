"""GET /healthz (liveness), /readyz (readiness), /metrics (Prometheus)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from semlayout.serving.deps import MaybeStateDep, MetricsDep
from semlayout.serving.schemas import HealthResponse, ReadyResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse)
async def healthz() -> HealthResponse:
    """Liveness: the process answers."""
    return HealthResponse()


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse, "description": "not ready"}},
)
async def readyz(state: MaybeStateDep) -> Any:
    """Readiness: model loaded and a real write to the monitoring store committed just now.
    The feedback store gets a probe write too; its result is reported, not required."""
    reasons = []
    loaded = state is not None
    writable = False
    feedback_writable = None
    if state is None:
        reasons.append("model not loaded")
    else:
        try:
            await run_in_threadpool(state.store.check_writable)
            writable = True
        except Exception as err:  # noqa: BLE001 - reported, not raised
            reasons.append(f"monitoring database not writable: {err}")
        try:
            await run_in_threadpool(state.feedback.check_writable)
            feedback_writable = True
        except Exception as err:  # noqa: BLE001 - reported, not raised
            feedback_writable = False
            reasons.append(str(err))
    current = state.engine.current if state else None
    body = ReadyResponse(
        ready=loaded and writable,
        model_loaded=loaded,
        db_writable=writable,
        feedback_writable=feedback_writable,
        model_version=current.version if current else None,
        drift_reference=current.drift_source if current else None,
        profiles=sorted(current.profiles) if current else [],
        profile_note=current.profile_note if current else None,
        reasons=reasons,
    )
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus exposition"}},
)
async def prometheus(metrics: MetricsDep) -> Response:
    return Response(metrics.render(), media_type=metrics.content_type)
