"""Request metrics: pure ASGI middleware around the whole app (the body limit is in
`serving.uploads`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from semlayout.directions import DIRECTIONS
from semlayout.serving import server_timing
from semlayout.serving.prometheus import ServingMetrics


class RequestMetricsMiddleware:
    """Pure ASGI: counts every request by route template and status, times it (and says where
    its time went in the `Server-Timing` header, `serving.server_timing`), and records
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
        timing = server_timing.begin()

        async def send_wrapper(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers") or [])
                headers.append((b"server-timing", timing.header().encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        self.metrics.inflight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.inflight.dec()
            await self._count(scope, status, timing.since_start() / 1000)

    async def _count(self, scope: Any, status: int, dt: float) -> None:
        m = self.metrics
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
        direction = direction if direction in DIRECTIONS else None
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

        for candidate in _routes(self.owner.router.routes):
            match, child = candidate.matches(scope)
            if match == Match.FULL:
                return candidate, child.get("path_params") or {}
        return None, {}


def _routes(routes: list[Any]) -> Iterator[Any]:
    """The app's routes, routers' included: FastAPI (0.16x) keeps an included router as one
    entry that matches for all its routes but names none; its routes are its router's (the
    serving routers are included without a prefix, so their paths are the served ones)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _routes(inner.routes)
        else:
            yield route
