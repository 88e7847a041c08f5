"""Step 6: log the run to MLflow — params, metrics, config, checkpoint, report — gate passed or
not."""

from typing import NamedTuple

from kfp.dsl import HTML, Artifact, Dataset, Input, Model


def track(
    pairs: Input[Dataset],
    model: Input[Model],
    evaluation: Input[Artifact],
    report: Input[HTML],
    mlflow_uri: str,
    experiment: str,
    config: str,
    pipeline_run: str,
) -> NamedTuple("Outputs", [("run_id", str), ("lineage", str)]):
    import hashlib
    import json
    from collections import namedtuple
    from pathlib import Path

    from semlayout.registry import Registry
    from semlayout_components.common import git_commit, read_json

    ev = read_json(evaluation.path)
    ckpt_cfg = read_json(Path(model.path) / "config.json")["config"]
    lineage = {
        "data_uri": pairs.metadata.get("source", ""),
        "data_sha256": pairs.metadata.get("content_sha256", ""),
        "config": config,
        "config_sha256": hashlib.sha256(json.dumps(ckpt_cfg, sort_keys=True).encode()).hexdigest(),
        "git_commit": git_commit(),
        "pipeline_run": pipeline_run,
    }
    run_id = Registry(mlflow_uri, create=True).log_run(
        experiment,
        Path(model.path),
        ev["metrics"],
        params={
            "config": config,
            "step": model.metadata.get("step"),
            "gate_passed": ev["gate"]["passed"],
            **{f"lineage.{k}": v for k, v in lineage.items()},
        },
        config=ckpt_cfg,
        report_html=Path(report.path),
        tags={"gate_passed": str(ev["gate"]["passed"]).lower(), "pipeline_run": pipeline_run},
    )
    return namedtuple("Outputs", ["run_id", "lineage"])(run_id, json.dumps(lineage))
