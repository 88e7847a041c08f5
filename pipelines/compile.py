"""Compile the pipelines to KFP IR YAML for the cluster: one file per pipeline.

semlayout pipeline compile --out DIR [--image IMG] [--gpus N] [--node-selector K=V] ...
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from semlayout.errors import SemlayoutError

PIPELINES = ("training", "finetune", "drift_monitor")


def build(name: str, settings: Any = None) -> Any:
    if name == "training":
        from semlayout_pipelines.training import build_training_pipeline

        return build_training_pipeline(settings)
    if name == "finetune":
        from semlayout_pipelines.finetuning import build_finetune_pipeline

        return build_finetune_pipeline(settings)
    if name == "drift_monitor":
        from semlayout_pipelines.finetuning import build_drift_monitor_pipeline

        return build_drift_monitor_pipeline(settings)
    raise SemlayoutError(f"unknown pipeline '{name}': expected one of {list(PIPELINES)}")


def compile_pipelines(
    out_dir: str | Path,
    names: tuple[str, ...] = PIPELINES,
    image: str | None = None,
    settings: Any = None,
) -> dict[str, Path]:
    """Write `<out_dir>/<name>.yaml` for each pipeline; returns the paths."""
    from kfp import compiler

    from semlayout_pipelines.cluster import ClusterSettings

    # the image is a compile-time choice: it goes into the settings the steps are built from
    settings = settings or ClusterSettings.from_env()
    if image:
        settings = dataclasses.replace(settings, image=image)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in names:
        path = out / f"{name}.yaml"
        tmp = out / f".{name}.tmp.yaml"
        compiler.Compiler().compile(build(name, settings), str(tmp))
        os.replace(tmp, path)
        written[name] = path
    return written
