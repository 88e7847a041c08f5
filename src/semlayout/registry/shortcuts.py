"""One-call forms of the common `Registry` operations, for scripts and tests: each opens the
registry for that call only. Code that makes several calls holds one `Registry` instead."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from semlayout.registry.release import Registry
from semlayout.registry.run_logging import checkpoint_config

if TYPE_CHECKING:
    from semlayout.gate import GateResult


def log_training_run(
    tracking_uri: str | None,
    experiment: str,
    checkpoint_dir: str | os.PathLike[str],
    metrics: dict[str, Any],
    params: dict[str, Any] | None = None,
    config: Any = None,
    report_html: str | os.PathLike[str] | None = None,
    sample_grid_png: str | os.PathLike[str] | None = None,
    tags: dict[str, str] | None = None,
    include_train_state: bool = False,
) -> str:
    """`Registry(tracking_uri, create=True).log_run(...)` (a bad checkpoint is reported
    before the registry is opened); returns the run id."""
    checkpoint_config(Path(checkpoint_dir), config)
    return Registry(tracking_uri, create=True).log_run(
        experiment,
        checkpoint_dir,
        metrics,
        params=params,
        config=config,
        report_html=report_html,
        sample_grid_png=sample_grid_png,
        tags=tags,
        include_train_state=include_train_state,
    )


def register_version(
    tracking_uri: str | None,
    name: str,
    run_id: str,
    gate: GateResult,
    lineage: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> int:
    """`Registry(tracking_uri).register(...)`; returns the new version number."""
    return Registry(tracking_uri).register(name, run_id, gate, lineage, metrics)


def approve(
    tracking_uri: str | None, name: str, version: int | str, by: str, reason: str
) -> dict[str, Any]:
    """`Registry(tracking_uri).approve(...)`."""
    return Registry(tracking_uri).approve(name, version, by, reason)


def rollback(tracking_uri: str | None, name: str, by: str, reason: str) -> dict[str, Any]:
    """`Registry(tracking_uri).rollback(...)`."""
    return Registry(tracking_uri).rollback(name, by, reason)
