"""FastAPI dependencies: endpoints declare what they need (`state: StateDep`) instead of
capturing it.

- `StateDep`: the running service (`serving.state.ServingState`). The model loads in the
  lifespan, so until it is up (and after shutdown) this answers 503.
- `MaybeStateDep`: the same or None, for `/readyz`, which reports "not loaded" itself.
- `SettingsDep`, `MetricsDep`: fixed when the app is built (`create_app`), so they are
  there before startup too (`/metrics`, the token checks).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from semlayout.serving.prometheus import ServingMetrics
from semlayout.serving.settings import ServeSettings
from semlayout.serving.state import ServingState


def get_state_or_none(request: Request) -> ServingState | None:
    return getattr(request.app.state, "svc", None)


def get_state(request: Request) -> ServingState:
    state = get_state_or_none(request)
    if state is None:
        raise HTTPException(503, detail="server is starting: model not loaded yet")
    return state


def get_settings(request: Request) -> ServeSettings:
    settings: ServeSettings = request.app.state.settings
    return settings


def get_metrics(request: Request) -> ServingMetrics:
    metrics: ServingMetrics = request.app.state.metrics
    return metrics


StateDep = Annotated[ServingState, Depends(get_state)]
MaybeStateDep = Annotated[ServingState | None, Depends(get_state_or_none)]
SettingsDep = Annotated[ServeSettings, Depends(get_settings)]
MetricsDep = Annotated[ServingMetrics, Depends(get_metrics)]
