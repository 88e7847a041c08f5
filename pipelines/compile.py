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
        integer_defaults(tmp)
        os.replace(tmp, path)
        written[name] = path
    return written


def integer_defaults(path: Path) -> int:
    """KFP writes the default of an `int` parameter as a float (`n_synth: 200.0`), which reads
    like a fractional setting in the UI and the YAML: write it back as the integer it is.
    Returns the number of values changed. The rest of the file is kept as compiled."""
    import yaml

    docs = list(yaml.safe_load_all(path.read_text()))
    changed = 0

    def visit(node: Any) -> None:
        nonlocal changed
        if isinstance(node, dict):
            if node.get("parameterType") == "NUMBER_INTEGER":
                value = node.get("defaultValue")
                if isinstance(value, float) and value.is_integer():
                    node["defaultValue"] = int(value)
                    changed += 1
            for child in node.values():
                visit(child)
        elif isinstance(node, list):
            for child in node:
                visit(child)

    for doc in docs:
        visit(doc)
    if changed:
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return changed
