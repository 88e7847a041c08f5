"""GET /v1/monitoring/summary: inference health, drift rate, rolling SSIM, feedback count,
the polarity mix of recent predictions beside the training reference's, the confidence
(low-confidence rates per direction and cohort, calibration error, population drift), and the
predictions per tool / layer profile (counts and quality with ground truth)."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from semlayout.directions import DIRECTIONS
from semlayout.serving.deps import SettingsDep, StateDep
from semlayout.serving.schemas import (
    STORE_ERROR,
    ConfidenceSummary,
    DriftSummary,
    InferenceSummary,
    MonitoringSummary,
    PolaritySummary,
    ProfileSummary,
    QualitySummary,
)
from semlayout.serving.state import ServingState

router = APIRouter(tags=["monitoring"])


@router.get("/v1/monitoring/summary", response_model=MonitoringSummary, responses=STORE_ERROR)
async def summary(
    state: StateDep,
    settings: SettingsDep,
    window: Annotated[int | None, Query(ge=1, le=100_000)] = None,
) -> MonitoringSummary:
    """Inference health, drift rate, rolling SSIM against the baseline, feedback count."""
    return await run_in_threadpool(build_summary, state, window or settings.summary_window)


def build_summary(state: ServingState, window: int) -> MonitoringSummary:
    """The summary over the last `window` events (store reads: a worker thread)."""
    rate, n = state.store.drift_stats(window)
    by_dir: dict[str, float | None] = {d: state.store.drift_rate(window, d) for d in DIRECTIONS}
    quality: dict[str, QualitySummary] = {
        d: QualitySummary(**state.tracker.rolling(d, window)) for d in DIRECTIONS
    }
    return MonitoringSummary(
        model_version=state.engine.current.version,
        inference=InferenceSummary(**state.monitor.summary(window)),
        drift=DriftSummary(
            window=window,
            rate=rate,
            n=n,
            by_direction=by_dir,
            thresholds={d: det.thresholds() for d, det in state.engine.current.detectors.items()},
        ),
        quality=quality,
        feedback_count=state.store.feedback_count(None),
        polarity=polarity_summary(state, window),
        confidence=confidence_summary(state, window),
        profiles=profile_summary(state, window),
    )


def profile_summary(state: ServingState, window: int) -> ProfileSummary:
    """The recent predictions per profile that answered them (issue 21)."""
    from semlayout.monitoring import profile_store

    return ProfileSummary(
        window=window,
        served=sorted(state.engine.current.profiles),
        profiles=profile_store.profile_summary(state.store, window),
    )


def confidence_summary(state: ServingState, window: int) -> ConfidenceSummary:
    from semlayout.monitoring import confidence_store as cs
    from semlayout.monitoring.population import by_cohort

    model = state.engine.current
    tests = population_tests(model)
    population = {
        d: [r.to_dict() for r in by_cohort(det, cs.population_window(state.store, d, 100))]
        for d, det in tests.items()
    }
    return ConfidenceSummary(
        **cs.confidence_summary(state.store, window),
        calibrated={
            d: model.calibration is not None and model.calibration.get(d) is not None
            for d in DIRECTIONS
        },
        calibration_error={d: cs.calibration_error(state.store, d, window) for d in DIRECTIONS},
        population=population,
    )


def population_tests(model: Any) -> dict[str, Any]:
    """The served model's population tests (built once per loaded model)."""
    from semlayout.monitoring.population import detectors_for

    key = id(model)
    if _POPULATION.get("key") != key:
        stats = None
        if model.drift_reference is not None:
            from semlayout.data.reference_stats import load_reference_stats

            with contextlib.suppress(Exception):  # no usable reference: features-only skipped
                stats = load_reference_stats(model.drift_reference)
        _POPULATION.update(key=key, tests=detectors_for(model.calibration, stats))
    return dict(_POPULATION["tests"])


_POPULATION: dict[str, Any] = {}


def polarity_summary(state: ServingState, window: int) -> PolaritySummary:
    mix = state.store.polarity_mix(window)
    known = mix["+1"] + mix["-1"]
    det = state.engine.current.detectors.get("sem2layout")
    return PolaritySummary(
        window=window,
        mix=mix,
        share_dark=mix["-1"] / known if known else None,
        reference=det.reference_polarity if det is not None else None,
        expected=det.expected_polarity if det is not None else state.settings.layer_prior,
    )
