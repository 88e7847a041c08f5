"""`make run` / `semlayout pipeline run`: the training pipeline end to end on this machine,
under kfp.local.

    semlayout pipeline run [--data URI] [--config small] [--n-synth N] [--out outputs] [-v]

Writes `outputs/runs/<timestamp>/` (the kfp pipeline root, summary.json, report.html,
evaluation.json) and then points `outputs/latest` at it (a symlink swapped with one
rename). MLflow: `sqlite:///<abs>/outputs/mlflow/mlflow.db`, artifacts in
`outputs/mlflow/artifacts`. Exit codes: 0 finished (gate passed or not), 1 a step
failed, 2 bad input refused before the first step.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from semlayout.atomic import atomic_symlink
from semlayout.directions import DIRECTIONS
from semlayout.errors import SemlayoutError
from semlayout.gate import DEFAULT_FLOORS, DEFAULT_TOLERANCE

SUMMARY_METRIC_KEYS = (
    "l1",
    "ssim",
    "psnr",
    "iou",
    "epe_px",
    "cd_error_px",
    "ssim_vs_clean",
    "l1_vs_clean",
    "psnr_vs_clean",
)


def mlflow_locations(out: Path) -> tuple[str, Path]:
    """-> (tracking URI, artifact folder) under `out/mlflow/`."""
    root = (out / "mlflow").resolve()
    return f"sqlite:///{root / 'mlflow.db'}", root / "artifacts"


def ensure_experiment(tracking_uri: str, name: str, artifact_root: Path) -> None:
    """Create the experiment with a local artifact folder (MLflow would default to ./mlruns):
    `artifact_root` is the `artifacts/` folder beside the SQLite database, where
    `Registry.experiment_id` puts a new experiment's artifacts."""
    from semlayout.registry import Registry

    artifact_root.mkdir(parents=True, exist_ok=True)
    Registry(tracking_uri, create=True).experiment_id(name)


def new_run_dir(out: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    for i in range(100):
        cand = runs / (stamp if i == 0 else f"{stamp}-{i}")
        try:
            cand.mkdir()
            return cand
        except FileExistsError:
            continue
    raise SemlayoutError(f"cannot create a run folder under {runs}")


def point_latest(out: Path, run_dir: Path) -> Path:
    """Atomically make `out/latest` a symlink to `run_dir` (relative, so the tree can move)."""
    return atomic_symlink(out / "latest", run_dir)  # replaces an older copy-style 'latest' too


def summarize(
    run: Any, evaluation: dict[str, Any], params: dict[str, Any], run_dir: Path, mlflow_uri: str
) -> dict[str, Any]:
    out = run.outputs
    metrics = evaluation["metrics"]
    gate = evaluation["gate"]
    summary_metrics: dict[str, Any] = {}
    for direction in DIRECTIONS:
        block = metrics.get(direction, {})
        summary_metrics[direction] = {k: block[k] for k in SUMMARY_METRIC_KEYS if k in block}
        for extra in ("ceiling", "baseline_otsu"):
            if isinstance(block.get(extra), dict):
                summary_metrics[direction][extra] = {
                    k: v for k, v in block[extra].items() if not isinstance(v, dict)
                }
    version = out.get("model_version") or None
    return {
        "gate_passed": bool(out.get("gate_passed")),
        "gate_reasons": gate.get("reasons", []),
        "model_uri": out.get("model_uri") or None,
        "model_version": version,
        "checkpoint": str(Path(out["model"].path).resolve()),
        "metrics": summary_metrics,
        "champion_metrics": evaluation.get("champion_metrics"),
        "champion_version": evaluation.get("champion_version"),
        "gate_config": evaluation.get("gate_config"),
        "n_test": metrics.get("n"),
        "mlflow": {
            "tracking_uri": mlflow_uri,
            "run_id": out.get("run_id"),
            "experiment": params["experiment"],
            "model_name": params["model_name"],
        },
        "params": params,
        "timings": {
            "total_seconds": run.seconds,
            "steps": {n: {"seconds": t.seconds, "status": t.status} for n, t in run.tasks.items()},
        },
        "run_dir": str(run_dir.resolve()),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


@dataclass
class RunOptions:
    """`semlayout pipeline run` / `make run` options (semlayout_pipelines.cmd_pipeline)."""

    data: str = ""
    config: str = "small"
    overrides: list[str] = field(default_factory=list)
    # 1070: with a quarter reversed, as many normal-contrast pairs as the 800 of before
    n_synth: int = 1070
    seed: int = 0
    out: Path = Path("outputs")
    tracking_uri: str = ""
    experiment: str = "semlayout"
    model_name: str = "semlayout"
    floor_sem2layout: float = DEFAULT_FLOORS["sem2layout"]
    floor_layout2sem: float = DEFAULT_FLOORS["layout2sem"]
    tolerance: float = DEFAULT_TOLERANCE
    min_qc_pass: float = 0.5
    verbose: bool = False


def overrides_json(pairs: list[str]) -> str:
    import yaml

    out: dict[str, Any] = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SemlayoutError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=2")
        out[key] = yaml.safe_load(value)
    return json.dumps(out) if out else ""


def run(args: RunOptions) -> int:
    from semlayout_pipelines import validate
    from semlayout_pipelines.cluster import ClusterSettings
    from semlayout_pipelines.local import run_pipeline
    from semlayout_pipelines.training import build_training_pipeline

    t0 = time.perf_counter()
    out = Path(args.out).resolve()
    cfg_overrides = overrides_json(args.overrides)
    # refuse bad input before the first step
    data_info = validate.check_data_uri(args.data, args.n_synth)
    cfg = validate.check_config(args.config, cfg_overrides)
    validate.check_floors(
        {"sem2layout": args.floor_sem2layout, "layout2sem": args.floor_layout2sem}, args.tolerance
    )
    data_uri = data_info["path"] if data_info["kind"] == "folder" else args.data

    if not args.verbose:  # MLflow's database set-up notes are not the user's business
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
    mlflow_uri, artifact_root = mlflow_locations(out)
    mlflow_uri = args.tracking_uri or mlflow_uri
    if not args.tracking_uri:
        ensure_experiment(mlflow_uri, args.experiment, artifact_root)
    run_dir = new_run_dir(out)
    params = {
        "data_uri": data_uri,
        "n_synth": args.n_synth,
        "seed": args.seed,
        "config": args.config,
        "config_overrides": cfg_overrides,
        "mlflow_uri": mlflow_uri,
        "experiment": args.experiment,
        "model_name": args.model_name,
        "floor_sem2layout": args.floor_sem2layout,
        "floor_layout2sem": args.floor_layout2sem,
        "tolerance": args.tolerance,
        "min_qc_pass": args.min_qc_pass,
        # both contrast polarities, in the mix the config names (polarity.synth_reverse_fraction)
        "synth_reverse_fraction": cfg.polarity.synth_reverse_fraction,
    }
    print(f"semlayout: training pipeline under kfp.local -> {run_dir}", flush=True)
    if not args.verbose:
        print(f"  (each step's log: {run_dir / 'logs'}/<step>.log; --verbose streams them)")
    t_start = time.perf_counter()
    # retries are for a cluster's transient failures; here a failure is deterministic: fail fast
    local_settings = ClusterSettings.from_env(retries=0)
    result = run_pipeline(
        build_training_pipeline(local_settings),
        run_dir / "pipeline",
        log_dir=run_dir / "logs",
        verbose=args.verbose,
        **params,
    )
    if result.error:
        _report_failure(result, run_dir, args.verbose)
        return 1

    from semlayout_components.common import read_json, write_json

    evaluation = read_json(result.outputs["evaluation"].path)
    summary = summarize(result, evaluation, params, run_dir, mlflow_uri)
    summary["timings"]["wall_seconds"] = round(time.perf_counter() - t0, 3)
    summary["timings"]["before_pipeline_seconds"] = round(t_start - t0, 3)
    shutil.copy2(result.outputs["report"].path, run_dir / "report.html")
    write_json(run_dir / "evaluation.json", evaluation)
    write_json(
        run_dir / "summary.json", summary
    )  # last: a run folder with summary.json is complete
    for name in ("report.html", "evaluation.json", "summary.json"):
        (run_dir / name).chmod(0o644)
    latest = point_latest(out, run_dir)
    _print_where(summary, latest, mlflow_uri, artifact_root)
    return 0


def _report_failure(result: Any, run_dir: Path, verbose: bool) -> None:
    """The failed step, the end of its log (the whole log is a path away) and RUN/FAILED."""
    failed = result.failed_task or "?"
    log = run_dir / "logs" / f"{failed}.log"
    if not verbose and log.is_file():
        tail = log.read_text(errors="replace").rstrip().splitlines()[-20:]
        print("\n".join(f"  | {line}" for line in tail), file=sys.stderr)
    where = "above" if verbose else str(log)
    print(
        f"error: the pipeline failed at step '{failed}' (its log: {where}): {result.error}",
        file=sys.stderr,
    )
    (run_dir / "FAILED").write_text(f"step {failed}: {result.error}\n")


def _print_where(
    summary: dict[str, Any], latest: Path, mlflow_uri: str, artifact_root: Path
) -> None:
    verdict = "PASSED" if summary["gate_passed"] else "FAILED (nothing registered)"
    print("\n== semlayout run finished ==")
    print(f"gate: {verdict}")
    for reason in summary["gate_reasons"]:
        print(f"  - {reason}")
    for direction, m in summary["metrics"].items():
        nums = ", ".join(f"{k}={v:.4f}" for k, v in m.items() if isinstance(v, int | float))
        print(f"{direction}: {nums}")
    if summary["model_uri"]:
        print(
            f"model:      {summary['model_uri']} (alias challenger; approve with "
            f"`semlayout registry approve {summary['mlflow']['model_name']} "
            f"{summary['model_version']} "
            f"--by YOU --reason ...`)"
        )
    print(f"checkpoint: {summary['checkpoint']}")
    print(f"summary:    {latest / 'summary.json'}")
    print(f"report:     {latest / 'report.html'}")
    steps = ", ".join(f"{n} {t['seconds']}s" for n, t in summary["timings"]["steps"].items())
    print(f"timings:    {steps}; total {summary['timings']['wall_seconds']}s")
    print(
        f"MLflow UI:  mlflow ui --backend-store-uri {mlflow_uri} "
        f"--default-artifact-root {artifact_root.as_uri()} --host 127.0.0.1 --port 5000"
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m semlayout_pipelines.run_local ARGS` = `semlayout pipeline run ARGS`."""
    from semlayout.cli import main as cli_main

    return cli_main(["pipeline", "run", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
