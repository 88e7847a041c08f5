"""The running service: what the app opens at startup and the one way to reload its model.

`open_state` loads the model (unless one is given) with its drift detectors, opens the
monitoring store (with the layers' polarity book) and the feedback store, and starts the
micro-batcher; the app's lifespan holds the result as `app.state.svc` and endpoints get it
injected (`serving.deps.StateDep`).
`reload_model` is the reload with its bookkeeping (model gauge, reload counter), shared by
the registry poller (`poll_registry`) and `POST /v1/admin/reload`. `enforce_retention` runs
the store's retention policy every `retention_interval_s`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool

from semlayout.directions import DIRECTIONS
from semlayout.monitoring.drift import DriftOptions
from semlayout.monitoring.feedback import FeedbackStore
from semlayout.monitoring.inference_monitor import InferenceMonitor
from semlayout.monitoring.layer_book import LayerBook
from semlayout.monitoring.performance import PerformanceTracker
from semlayout.monitoring.store import MonitorStore
from semlayout.serving.batcher import MicroBatcher
from semlayout.serving.engine import InferenceEngine
from semlayout.serving.prometheus import ServingMetrics
from semlayout.serving.record_writer import RecordWriter
from semlayout.serving.settings import ServeSettings

log = logging.getLogger("semlayout.serving")


@dataclass
class ServingState:
    settings: ServeSettings
    engine: InferenceEngine
    store: MonitorStore
    monitor: InferenceMonitor
    tracker: PerformanceTracker
    feedback: FeedbackStore
    metrics: ServingMetrics
    batcher: MicroBatcher
    layers: LayerBook  # the layers' polarity (configured, pooled evidence) in the store
    writer: RecordWriter  # the translate path's rows, committed in groups


def drift_options(settings: ServeSettings) -> DriftOptions:
    return DriftOptions(
        settings.reference,
        settings.drift_z_threshold,
        settings.drift_kl_threshold,
        settings.drift_target_rate,
        layer_polarity=settings.layer_prior,
    )


async def open_state(
    settings: ServeSettings, metrics: ServingMetrics, engine: InferenceEngine | None = None
) -> ServingState:
    """Everything a request needs, loaded in worker threads; the batcher and the record writer
    are running.

    The caller stops the batcher, closes the writer and then the store (the app's lifespan)."""
    eng: InferenceEngine = (
        engine
        if engine is not None
        else await run_in_threadpool(
            InferenceEngine.load,
            settings.model,
            settings.backend,
            settings.tracking_uri,
            drift_options(settings),
        )
    )
    eng.max_field_side = settings.max_field_side
    store = await run_in_threadpool(MonitorStore, settings.monitor_db)
    baseline = _baseline_ssim(eng, settings)
    batcher = MicroBatcher(
        eng,
        settings.micro_batch,
        settings.micro_batch_wait_ms,
        settings.max_queue,
        on_batch=_observe_batch(metrics),
    )
    batcher.start()
    state = ServingState(
        settings,
        eng,
        store,
        InferenceMonitor(store),
        PerformanceTracker(store, baseline),
        FeedbackStore(settings.feedback_uri, store),
        metrics,
        batcher,
        LayerBook(store),
        RecordWriter(store, settings.max_queue),
    )
    cur = eng.current
    metrics.set_model(cur.version, cur.source, cur.backend)
    metrics.deferred_jobs.set_function(lambda: state.writer.outstanding)
    return state


def _baseline_ssim(engine: InferenceEngine, settings: ServeSettings) -> dict[str, float]:
    """The SSIM each direction was promoted on: the registry's, unless the settings name one."""
    baseline = dict(engine.current.baseline_ssim)
    for d in DIRECTIONS:
        v = getattr(settings, f"baseline_ssim_{d}")
        if v is not None:
            baseline[d] = v
    return baseline


def _observe_batch(metrics: ServingMetrics) -> Callable[[str, int, float], None]:
    def on_batch(direction: str, n: int, forward_ms: float) -> None:
        metrics.forward_latency.labels(direction).observe(forward_ms / 1000)
        metrics.batch_size.observe(n)

    return on_batch


# --------------------------------------------------------------------------- reload
async def reload_model(
    state: ServingState, force: bool = False, *, poll: bool = False
) -> dict[str, Any]:
    """`engine.reload` in a worker thread, then the model gauge and the reload counter.

    A failure counts as "error" and is re-raised. A poll that finds the alias where it was
    is no reload attempt and is not counted (it happens every poll_interval_s)."""
    try:
        res = await run_in_threadpool(state.engine.reload, force)
    except Exception:
        state.metrics.reloads.labels("error").inc()
        raise
    if res["changed"]:
        cur = state.engine.current
        state.metrics.set_model(cur.version, cur.source, cur.backend)
        state.metrics.reloads.labels("swapped").inc()
    elif not poll:
        state.metrics.reloads.labels("unchanged").inc()
    return res


async def enforce_retention(state: ServingState) -> None:
    """Every retention_interval_s: the store's retention policy (rows and bytes)."""
    from semlayout.monitoring.retention import RetentionPolicy, enforce

    s = state.settings
    policy = RetentionPolicy(s.max_rows, s.max_stored_outputs, s.max_stored_output_bytes)
    while True:
        await asyncio.sleep(s.retention_interval_s)
        try:
            report = await run_in_threadpool(enforce, state.store, policy)
        except Exception as err:  # noqa: BLE001 - the store may be down for a while; keep serving
            log.warning("retention policy not applied: %s", err)
            continue
        if report.outputs_dropped or any(report.deleted.values()):
            log.info("retention: %s", report.to_dict())


async def poll_registry(state: ServingState) -> None:
    """Follow the registry alias: every poll_interval_s, reload when it has moved."""
    while True:
        await asyncio.sleep(state.settings.poll_interval_s)
        try:
            await reload_model(state, poll=True)
        except Exception as err:  # noqa: BLE001 - the registry may be briefly unreachable; keep serving
            log.warning("registry poll failed: %s", err)
