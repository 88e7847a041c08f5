"""Step 5: evaluate on the test shard, judge the promotion gate, publish metrics and the HTML
report.

The gate per direction: SSIM >= an absolute floor and >= the current champion's SSIM
on the SAME test shard minus a tolerance (no champion yet: the floor only). A failed
gate is an outcome, not an error: the step succeeds and says why.
"""

from typing import NamedTuple

from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output


def evaluate(
    model: Input[Model],
    shards: Input[Dataset],
    mlflow_uri: str,
    model_name: str,
    floor_sem2layout: float,
    floor_layout2sem: float,
    tolerance: float,
    metrics: Output[Metrics],
    report: Output[HTML],
    evaluation: Output[Artifact],
) -> NamedTuple("Outputs", [("gate_passed", bool), ("gate_reasons", str)]):
    import json
    from collections import namedtuple
    from pathlib import Path

    from semlayout.confidence_fit import calibrate_and_judge, json_ready
    from semlayout.directions import DIRECTIONS
    from semlayout.evaluation import evaluate_model
    from semlayout.evaluation_report import write_report_html
    from semlayout.gate import gate_config, judge
    from semlayout_components.common import Stopwatch, read_json, write_json

    with Stopwatch() as sw:
        result = evaluate_model(Path(model.path), Path(shards.path), split="test")
        samples = result.pop("samples", [])
        # issue 17: the confidence calibration, fitted on the val split, judged on the test one
        calibration, judged = calibrate_and_judge(Path(model.path), Path(shards.path))
        champion, champion_version = None, None
        if mlflow_uri and model_name:
            from semlayout.model_uri import ModelUri
            from semlayout.registry import CHAMPION, Registry

            registry = Registry.existing(mlflow_uri)  # None on a first run: no champion yet
            champion_version = registry.champion_version(model_name) if registry else None
            if registry is not None and champion_version is not None:
                # the champion judged on this run's test shard, not on the numbers it was
                # promoted with (the version just looked up, even if the alias moves meanwhile)
                champ = ModelUri(model_name, alias=CHAMPION).pinned(champion_version)
                champ_dir = registry.fetch(champ)
                champion = evaluate_model(champ_dir, Path(shards.path), split="test")
                champion.pop("samples", None)
        cfg = gate_config(
            floors={"sem2layout": floor_sem2layout, "layout2sem": floor_layout2sem},
            tolerance=tolerance,
        )
        gate = judge(result, champion, cfg)
    history = Path(model.path) / "history.json"
    curves = read_json(history) if history.is_file() else None
    write_report_html(
        Path(report.path), result, samples, curves=curves, gate=gate, confidence=judged or {}
    )
    if judged is not None:
        result["confidence"] = json_ready(judged)
        for direction in DIRECTIONS:
            block = judged.get(direction) or {}
            for key in ("spearman", "capture_20", "calibration_error"):
                if isinstance(block.get(key), float):
                    metrics.log_metric(f"{direction}_confidence_{key}", block[key])
    for direction in DIRECTIONS:
        for key, value in result[direction].items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                metrics.log_metric(f"{direction}_{key}", float(value))
        ceiling = result[direction].get("ceiling", {})
        if "ssim" in ceiling:
            metrics.log_metric(f"{direction}_ssim_ceiling", float(ceiling["ssim"]))
    write_json(
        evaluation.path,
        {
            "metrics": result,
            "champion_metrics": champion,
            "champion_version": champion_version,
            "gate": json.loads(gate.to_json()),
            "gate_config": cfg.model_dump(),
            "confidence_calibration": None if calibration is None else calibration.to_dict(),
        },
    )
    evaluation.metadata.update({"gate_passed": gate.passed, "seconds": sw.seconds})
    return namedtuple("Outputs", ["gate_passed", "gate_reasons"])(
        gate.passed, json.dumps(gate.reasons)
    )
