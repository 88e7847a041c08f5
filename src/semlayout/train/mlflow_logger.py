"""A run's MLflow record: the flattened config as params, each logged step's losses as
`train/<loss>` curves (step = global step), each epoch's history record as metrics
(step = epoch) with its sample grid, history.json and the final checkpoint's path at the end.
Logs only when a tracking URI is given or MLFLOW_TRACKING_URI is set, and only on the main
process."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from semlayout.config import ExperimentConfig


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1}} -> {"train.lr": 1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def step_metrics(record: dict[str, Any]) -> dict[str, float]:
    """A `steps.jsonl` record -> {"train/<loss>": value, "train/lr": lr} (per-step curves)."""
    return {
        f"train/{k}": float(v)
        for k, v in record.items()
        if k not in ("step", "time") and isinstance(v, int | float) and not isinstance(v, bool)
    }


class MlflowLogger:
    """Logs to MLflow only when a tracking URI is given or MLFLOW_TRACKING_URI is set."""

    def __init__(
        self, uri: str | None, experiment: str | None, cfg: ExperimentConfig, enabled: bool
    ):
        self.active = enabled and bool(uri or os.environ.get("MLFLOW_TRACKING_URI"))
        self.own_run = False
        if not self.active:
            return
        import mlflow

        self.mlflow = mlflow
        if uri:
            mlflow.set_tracking_uri(uri)
        if mlflow.active_run() is None:
            if experiment:
                mlflow.set_experiment(experiment)
            mlflow.start_run(run_name=cfg.name)
            self.own_run = True
        self.params(flatten(cfg.to_dict()))

    def params(self, values: dict[str, Any]) -> None:
        if not self.active:
            return
        try:
            self.mlflow.log_params({k: str(v)[:500] for k, v in values.items()})
        except self.mlflow.exceptions.MlflowException as err:  # e.g. a caller's run holds others
            print(f"warning: MLflow params not logged: {err}")

    def step(self, record: dict[str, Any]) -> None:
        """One `steps.jsonl` record as `train/<key>` metrics at its global step."""
        if not self.active:
            return
        self.mlflow.log_metrics(step_metrics(record), step=int(record["step"]))

    def epoch(self, record: dict[str, Any], grid_path: Path | None) -> None:
        if not self.active:
            return
        metrics = {
            k: float(v) for k, v in record.items() if isinstance(v, int | float) and k != "epoch"
        }
        self.mlflow.log_metrics(metrics, step=int(record["epoch"]))
        if grid_path is not None:
            self.mlflow.log_artifact(str(grid_path), artifact_path="samples")

    def finish(self, run_dir: Path, final: Path, failed: bool = False) -> None:
        if not self.active:
            return
        if (run_dir / "history.json").is_file():
            self.mlflow.log_artifact(str(run_dir / "history.json"))
        if not failed:
            self.mlflow.set_tag("semlayout.checkpoint", str(final))
        if self.own_run:
            self.mlflow.end_run(status="FAILED" if failed else "FINISHED")
