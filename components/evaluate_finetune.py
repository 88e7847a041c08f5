"""Judge a fine-tuned model: better on the new pairs, not worse on the original test shard.

The champion is evaluated on the same two splits, so the comparison is like for like
(`semlayout.finetune_eval`: per-pair scores, a paired bootstrap in
`semlayout.gate.judge_finetune`, which says how sure it is).
"""

from typing import NamedTuple

from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output


def evaluate_finetune(
    model: Input[Model],
    new_shards: Input[Dataset],
    original_shards: Input[Dataset],
    mlflow_uri: str,
    model_name: str,
    base_model: str,
    floor_sem2layout: float,
    floor_layout2sem: float,
    tolerance: float,
    min_improvement: float,
    metrics: Output[Metrics],
    report: Output[HTML],
    evaluation: Output[Artifact],
) -> NamedTuple("Outputs", [("gate_passed", bool), ("gate_reasons", str)]):
    import json
    from collections import namedtuple
    from pathlib import Path

    from semlayout.directions import DIRECTIONS
    from semlayout.evaluation import metrics_json_ready
    from semlayout.evaluation_report import write_report_html
    from semlayout.finetune_eval import evaluate_pair_of_models, judge_evaluations
    from semlayout.gate import gate_config
    from semlayout.model_uri import ModelUri
    from semlayout.registry import CHAMPION, Registry
    from semlayout.registry.profile_tags import profile_record
    from semlayout_components.common import Stopwatch, read_json, write_json

    champ = Registry.local_checkpoint(
        base_model or str(ModelUri(model_name, alias=CHAMPION)), mlflow_uri or None
    )
    # a profile fine-tune (issue 21): the new pairs are judged with that profile
    adaptation = Path(model.path) / "adaptation.json"
    profile = (
        (read_json(adaptation).get("config") or {}).get("profile") if adaptation.is_file() else None
    )
    with Stopwatch() as sw:
        evals = evaluate_pair_of_models(
            Path(model.path),
            champ,
            Path(new_shards.path),
            Path(original_shards.path),
            profile=profile,
        )
        samples = evals["new"].pop("samples", [])
        cfg = gate_config(
            floors={"sem2layout": floor_sem2layout, "layout2sem": floor_layout2sem},
            tolerance=tolerance,
            min_improvement=min_improvement,
        )
        gate = judge_evaluations(evals, cfg)
        # issue 17: the challenger's own confidence calibration (original data's val split)
        from semlayout.confidence_fit import calibrate_and_judge

        calibration, _ = calibrate_and_judge(Path(model.path), Path(original_shards.path))
    new, new_champ, orig, orig_champ = (
        metrics_json_ready(evals[k]) for k in ("new", "new_champion", "orig", "orig_champion")
    )
    history = Path(model.path) / "history.json"
    write_report_html(
        Path(report.path),
        new,
        samples,
        curves=read_json(history) if history.is_file() else None,
        gate=gate,
    )
    for tag, block in (
        ("new", new),
        ("new_champion", new_champ),
        ("orig", orig),
        ("orig_champion", orig_champ),
    ):
        for direction in DIRECTIONS:
            for key in ("ssim", "l1", "psnr", "iou"):
                if isinstance(block[direction].get(key), int | float):
                    metrics.log_metric(f"{tag}_{direction}_{key}", float(block[direction][key]))
    # "metrics" are what the version is registered with and later promoted against: the original
    # test shard (general traffic), not the new family alone; the new pairs' scores travel
    # beside them
    write_json(
        evaluation.path,
        {
            "metrics": orig,
            "champion_metrics": orig_champ,
            "new_pairs_metrics": new,
            "new_pairs_champion_metrics": new_champ,
            "gate": json.loads(gate.to_json()),
            "gate_config": cfg.model_dump(),
            "confidence_calibration": None if calibration is None else calibration.to_dict(),
            # what the version was adapted to: its profile and that profile's metrics
            "profile": None if profile is None else profile_record(profile, new, new_champ),
            # the fine-tune's learning curve on the held-out reviewed pairs (and original ones)
            "learning_curve": (read_json(history) if history.is_file() else {}).get("epochs", []),
        },
    )
    evaluation.metadata.update({"gate_passed": gate.passed, "seconds": sw.seconds})
    return namedtuple("Outputs", ["gate_passed", "gate_reasons"])(
        gate.passed, json.dumps(gate.reasons)
    )
