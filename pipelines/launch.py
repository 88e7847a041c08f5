"""Launchers for the continuous-learning loop (`semlayout loop run`): run the fine-tune pipeline.

`launcher_for(cfg)` -> a callable `LaunchRequest -> LaunchResult` (see `semlayout.continual`):
- no `kfp_host`: the fine-tune pipeline under kfp.local, pipeline root in the loop's run folder;
- `kfp_host`: submitted to Kubeflow Pipelines. The reviewed pairs are a local folder in the
  loop's pod, so they are first uploaded to `$SEMLAYOUT_STAGING_URI/<run>/reviewed`
  (s3://...), or, with no feedback store, the S3 intake prefix is passed as is.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
from collections.abc import Callable
from typing import Any, TextIO, cast

from semlayout.errors import SemlayoutError


def pipeline_arguments(cfg: Any, reviewed_uri: str) -> dict[str, Any]:
    """The fine-tune pipeline's parameters from a `semlayout.continual.LoopConfig`."""
    from semlayout.gate import DEFAULT_FLOORS

    floors = {**DEFAULT_FLOORS, **(cfg.floors or {})}
    tracking = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not tracking:
        raise SemlayoutError(
            "no MLflow tracking URI: set tracking_uri in the loop config or MLFLOW_TRACKING_URI "
            "(the fine-tune starts from the registry's champion)"
        )
    return {
        "reviewed_uri": reviewed_uri,
        "original_data_uri": cfg.original_data_uri,
        "replay_n": cfg.replay_n,
        "config": cfg.config,
        "config_overrides": json.dumps(cfg.finetune_overrides),
        "adaptation": cfg.adaptation.model_dump_json(),
        "mlflow_uri": tracking,
        "model_name": cfg.model_name,
        "floor_sem2layout": floors["sem2layout"],
        "floor_layout2sem": floors["layout2sem"],
        "tolerance": cfg.tolerance,
        "min_improvement": cfg.min_improvement,
    }


_STEP_ERROR = re.compile(r"(?:SemlayoutError|ImageRejected|BatchRefused): (.+)$")


class _ErrorTap(io.TextIOBase):
    """Passes the task logs through (kfp.local prints them) and keeps the steps' user errors,
    so a failed run says WHY a step failed, not only which one."""

    def __init__(self, through: Any) -> None:
        self.through = through
        self.step_errors: list[str] = []
        self._partial = ""

    def write(self, text: str) -> int:
        self.through.write(text)
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            if m := _STEP_ERROR.search(line.strip()):
                self.step_errors.append(m.group(1).strip())
        return len(text)

    def flush(self) -> None:
        self.through.flush()


def local_launcher(req: Any) -> Any:
    from semlayout.continual import LaunchResult
    from semlayout_components.common import read_json
    from semlayout_pipelines import validate
    from semlayout_pipelines.cluster import ClusterSettings
    from semlayout_pipelines.finetuning import build_finetune_pipeline
    from semlayout_pipelines.local import run_pipeline

    args = pipeline_arguments(req.cfg, str(req.reviewed_dir.resolve()))
    validate.check_data_uri(args["reviewed_uri"], 0)
    validate.check_config(args["config"], args["config_overrides"])
    if args["original_data_uri"]:
        validate.check_data_uri(args["original_data_uri"], 1)
    # no retries locally: a failure here is deterministic
    tap = _ErrorTap(sys.stdout)
    with contextlib.redirect_stdout(cast(TextIO, tap)):
        run = run_pipeline(
            build_finetune_pipeline(ClusterSettings.from_env(retries=0)),
            req.run_dir / "pipeline",
            **args,
        )
    if run.error:
        why = tap.step_errors[-1] if tap.step_errors else run.error
        raise SemlayoutError(f"fine-tune pipeline failed at step '{run.failed_task}': {why}")
    out = run.outputs
    evaluation = read_json(out["evaluation"].path)
    return LaunchResult(
        run_id=str(out.get("run_id") or ""),
        gate_passed=bool(out.get("gate_passed")),
        model_version=out.get("model_version") or None,
        gate_reasons=evaluation["gate"]["reasons"],
        details={
            "report": out["report"].path,
            "checkpoint": out["model"].path,
            "timings": {n: t.seconds for n, t in run.tasks.items()},
        },
    )


def kfp_launcher(host: str) -> Callable[[Any], Any]:
    def launch(req: Any) -> Any:
        from semlayout.continual import LaunchResult
        from semlayout_pipelines.client import submit

        staging = os.environ.get("SEMLAYOUT_STAGING_URI", "")
        if staging:
            from semlayout.storage import open_store

            prefix = f"{req.run_dir.name}/reviewed"
            open_store(staging).upload_tree(req.reviewed_dir, prefix)
            reviewed_uri = f"{staging.rstrip('/')}/{prefix}"
        elif req.cfg.intake_uri and not req.cfg.feedback_uri:
            reviewed_uri = req.cfg.intake_uri
        else:
            raise SemlayoutError(
                "the reviewed pairs are local to this pod: set SEMLAYOUT_STAGING_URI=s3://... "
                "so they can be uploaded for the cluster run"
            )
        run_id = submit(
            host,
            "finetune",
            pipeline_arguments(req.cfg, reviewed_uri),
            experiment="semlayout-finetune",
            run_name=f"loop-{req.run_dir.name}",
        )
        # the gate is judged inside the cluster run: its verdict appears in MLflow / KFP later
        return LaunchResult(run_id=run_id, details={"kfp_host": host, "reviewed_uri": reviewed_uri})

    return launch


def launcher_for(cfg: Any) -> Callable[[Any], Any]:
    return kfp_launcher(cfg.kfp_host) if cfg.kfp_host else local_launcher
