"""Step 6: log the run to MLflow — params, metrics, config, checkpoint, report — gate passed or
not.

A run a person can read: named after the pipeline, the data and the config; the data and the
test split as MLflow dataset inputs; the training's per-step and per-epoch curves; its start
and end those of the training; `report.html`; the champion's scores on this run's test split
(`champion_metrics.json`, what the gate compared with).
"""

from typing import NamedTuple

from kfp.dsl import HTML, Artifact, Dataset, Input, Model


def track(
    pairs: Input[Dataset],
    shards: Input[Dataset],
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
    from semlayout_components.common import git_commit, read_json, run_name, tree_sha256

    ev = read_json(evaluation.path)
    ckpt_cfg = read_json(Path(model.path) / "config.json")["config"]
    data_uri = pairs.metadata.get("source", "")
    data_sha = pairs.metadata.get("content_sha256", "")
    lineage = {
        "data_uri": data_uri,
        "data_sha256": data_sha,
        "shards_uri": shards.uri,
        "shards_sha256": tree_sha256(shards.path),
        "config": config,
        "config_sha256": hashlib.sha256(json.dumps(ckpt_cfg, sort_keys=True).encode()).hexdigest(),
        "git_commit": git_commit(),
        "pipeline_run": pipeline_run,
    }
    started, ended = model.metadata.get("started_ms"), model.metadata.get("ended_ms")
    extra = {}
    if ev.get("champion_metrics"):
        extra["champion_metrics.json"] = {
            "champion_version": ev.get("champion_version"),
            "metrics": ev["champion_metrics"],
        }
    # the confidence calibration fitted at evaluate time travels beside the weights
    from semlayout.confidence_calibration import staged_with_calibration

    with staged_with_calibration(Path(model.path), ev.get("confidence_calibration")) as ckpt:
        run_id = Registry(mlflow_uri, create=True).log_run(
            experiment,
            ckpt,
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
            run_name=run_name(pipeline_run, data_uri, data_sha, config),
            datasets=[
                {
                    "name": "pairs",
                    "source": pairs.uri if data_uri.startswith("synth:") else data_uri,
                    "digest": data_sha,
                    "context": "training",
                },
                {
                    "name": "test split",
                    "source": shards.uri,
                    "digest": lineage["shards_sha256"],
                    "context": "test",
                },
            ],  # fmt: skip
            training_window_ms=(int(started), int(ended)) if started and ended else None,
            extra_json=extra,
        )
    return namedtuple("Outputs", ["run_id", "lineage"])(run_id, json.dumps(lineage))
