"""InferenceMonitor: latency, errors and input/output statistics of every request.

Rows go to the `inference_events` table of the monitoring store; `summary(window)`
reduces the most recent ones to what an operator checks first (request and error
counts, error rate, latency percentiles).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from semlayout.monitoring.store import MonitorStore


def image_stats(img: np.ndarray) -> dict[str, float]:
    """Cheap per-image statistics kept with every request (not the drift features)."""
    a = np.asarray(img)
    return {
        "mean": float(a.mean()),
        "std": float(a.std()),
        "width": float(a.shape[1]),
        "height": float(a.shape[0]),
    }


class InferenceMonitor:
    def __init__(self, store: MonitorStore):
        self.store = store

    def record_error(
        self,
        *,
        endpoint: str,
        http_status: int,
        error: str,
        latency_ms: float,
        direction: str | None = None,
        model_version: str | None = None,
    ) -> None:
        self.store.add_inference_event(
            endpoint=endpoint,
            status="error",
            http_status=http_status,
            latency_ms=latency_ms,
            direction=direction,
            model_version=model_version,
            error=error[:500],
        )

    def summary(self, window: int) -> dict[str, Any]:
        rows = self.store.inference_window(window)
        n = len(rows)
        errors = [r for r in rows if r["status"] != "ok"]
        lat = np.array([r["latency_ms"] for r in rows if r["status"] == "ok"], dtype=np.float64)
        by_dir: dict[str, int] = {}
        for r in rows:
            if r["status"] == "ok" and r["direction"]:
                by_dir[r["direction"]] = by_dir.get(r["direction"], 0) + 1
        reasons: dict[str, int] = {}
        for r in errors:
            key = str(r["http_status"])
            reasons[key] = reasons.get(key, 0) + 1

        def pct(q: float) -> float | None:
            return float(np.percentile(lat, q)) if lat.size else None

        return {
            "window": window,
            "requests": n,
            "errors": len(errors),
            "error_rate": (len(errors) / n) if n else None,
            "errors_by_status": reasons,
            "requests_by_direction": by_dir,
            "latency_ms": {"p50": pct(50), "p95": pct(95), "p99": pct(99)},
        }
