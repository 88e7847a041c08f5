"""Prometheus metrics of one app instance (its own CollectorRegistry, so apps and tests don't
collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServingMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "semlayout_requests",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.translations = Counter(
            "semlayout_translations",
            "images translated by direction and outcome",
            ["direction", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "semlayout_request_latency_seconds",
            "request latency by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.translate_latency = Histogram(
            "semlayout_translate_latency_seconds",
            "end-to-end latency of translate requests by direction",
            ["direction"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.forward_latency = Histogram(
            "semlayout_forward_seconds",
            "model forward pass (one micro-batch)",
            ["direction"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "semlayout_forward_batch_size",
            "images per forward pass",
            buckets=(1, 2, 4, 8, 16, 32),
            registry=r,
        )
        self.errors = Counter(
            "semlayout_errors",
            "requests answered with an error, by route and status",
            ["route", "status"],
            registry=r,
        )
        self.drift_alerts = Counter(
            "semlayout_drift_alerts", "images flagged as drifted", ["direction"], registry=r
        )
        self.drift_score = Histogram(
            "semlayout_drift_score",
            "per-image drift score (>1 = drifted)",
            ["direction"],
            buckets=(0.25, 0.5, 0.75, 1.0, 1.5, 2, 5, 10),
            registry=r,
        )
        self.confidence = Histogram(  # issue 17; the low-confidence alert reads its buckets
            "semlayout_confidence",
            "per-prediction confidence: P(good) from the model's calibration",
            ["direction"],
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
            registry=r,
        )
        self.confidence_error = Histogram(
            "semlayout_confidence_abs_error",
            "|predicted - true| quality when a prediction's ground truth arrives",
            ["direction"],
            buckets=(0.02, 0.05, 0.08, 0.12, 0.2, 0.3, 0.5, 1.0),
            registry=r,
        )
        self.confidence_unknown = Counter(
            "semlayout_confidence_unknown",
            "predictions whose confidence is unknown (the model version has no calibration)",
            ["direction"],
            registry=r,
        )
        self.model_info = Gauge(
            "semlayout_model_info",
            "the model being served (value 1)",
            ["version", "source", "backend"],
            registry=r,
        )
        self.reloads = Counter(
            "semlayout_model_reloads", "model reload attempts by result", ["result"], registry=r
        )
        self.inflight = Gauge("semlayout_inflight_requests", "requests being handled", registry=r)
        self.queue_depth = Gauge(
            "semlayout_queue_depth", "images waiting for the model", registry=r
        )
        self.deferred_jobs = Gauge(
            "semlayout_deferred_jobs",
            "work after the answers (full confidence, one-pass polarity evidence) waiting or "
            "running in the deferred thread",
            registry=r,
        )
        self.ground_truth = Counter(
            "semlayout_ground_truth",
            "ground-truth submissions by direction",
            ["direction"],
            registry=r,
        )
        self.feedback = Counter("semlayout_feedback_pairs", "reviewed pairs received", registry=r)

    def set_model(self, version: str, source: str, backend: str) -> None:
        self.model_info.clear()
        self.model_info.labels(version=version, source=source, backend=backend).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
