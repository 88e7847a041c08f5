"""`semlayout pipeline compile|submit|schedule|run` — the KFP pipelines from the command line.

A plugin of the `semlayout` command: registered through the `semlayout.commands` entry point
(pyproject.toml), so the library never imports this package. kfp is imported inside the
commands only, so `semlayout --help` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from semlayout.errors import SemlayoutError
from semlayout.gate import DEFAULT_FLOORS, DEFAULT_TOLERANCE
from semlayout.keyvalue import parse_assignments

pipeline_app = typer.Typer(
    help="KFP pipelines: compile for the cluster, submit, schedule, run locally.",
    no_args_is_help=True,
)


def _check_pipeline(name: str) -> str:
    from semlayout_pipelines.compile import PIPELINES

    if name not in PIPELINES:
        raise SemlayoutError(f"unknown pipeline '{name}': expected one of {list(PIPELINES)}")
    return name


@pipeline_app.command("compile")
def compile_cmd(
    out: Path = typer.Option(..., "--out", help="folder for <pipeline>.yaml"),
    pipeline: str = typer.Option("all", help="training, finetune or all"),
    image: str = typer.Option(
        "",
        help="component image (default: $SEMLAYOUT_IMAGE or ghcr.io/semlayout/semlayout:<version>)",
    ),
    gpus: int = typer.Option(
        None, help="GPUs per train/fine-tune task (>1: torchrun inside the task)"
    ),
    accelerator: str = typer.Option(None, help="accelerator resource, e.g. nvidia.com/gpu"),
    node_selector: str = typer.Option(None, help="GPU pool label KEY=VALUE ('' for none)"),
    toleration_key: str = typer.Option(None, help="taint key the GPU pool carries ('' for none)"),
    retries: int = typer.Option(None, help="retries per task"),
) -> None:
    """Compile the pipelines to KFP IR YAML (GPU requests, node selector, tolerations, secrets)."""
    from semlayout_pipelines.cluster import ClusterSettings
    from semlayout_pipelines.compile import PIPELINES, compile_pipelines

    names = PIPELINES if pipeline == "all" else (_check_pipeline(pipeline),)
    settings = ClusterSettings.from_env(
        gpus=gpus,
        accelerator=accelerator,
        node_selector=node_selector,
        toleration_key=toleration_key,
        retries=retries,
    )
    for name, path in compile_pipelines(out, names, image=image or None, settings=settings).items():
        print(f"{name}: {path}")


@pipeline_app.command("submit")
def submit_cmd(
    kfp_host: str = typer.Option(
        ..., "--kfp-host", help="KFP API URL, e.g. http://ml-pipeline.kubeflow:8888"
    ),
    pipeline: str = typer.Option("training", help="training or finetune"),
    param: list[str] = typer.Option(
        [], "--param", help="pipeline parameter NAME=VALUE (repeatable)"
    ),
    experiment: str = typer.Option("semlayout", help="KFP experiment the run is filed under"),
    image: str = typer.Option(
        "", help="component image (default: ghcr.io/semlayout/semlayout:<version>)"
    ),
) -> None:
    """Start one run on a Kubeflow Pipelines server."""
    from semlayout_pipelines.client import submit

    run_id = submit(
        kfp_host,
        _check_pipeline(pipeline),
        parse_assignments(param, "--param", "data_uri=s3://bucket/pairs"),
        experiment=experiment,
        image=image or None,
    )
    print(json.dumps({"run_id": run_id}))


@pipeline_app.command("schedule")
def schedule_cmd(
    kfp_host: str = typer.Option(
        ..., "--kfp-host", help="KFP API URL, e.g. http://ml-pipeline.kubeflow:8888"
    ),
    cron: str = typer.Option(..., help="six fields, seconds first, e.g. '0 0 2 * * *'"),
    pipeline: str = typer.Option("training", help="training or finetune"),
    param: list[str] = typer.Option(
        [], "--param", help="pipeline parameter NAME=VALUE (repeatable)"
    ),
    experiment: str = typer.Option("semlayout", help="KFP experiment the run is filed under"),
    image: str = typer.Option(
        "", help="component image (default: ghcr.io/semlayout/semlayout:<version>)"
    ),
    max_concurrency: int = typer.Option(1, help="most runs of this schedule at once"),
) -> None:
    """Create a recurring run (cron) on a Kubeflow Pipelines server."""
    from semlayout_pipelines.client import schedule, validate_cron

    validate_cron(cron)  # before any network call
    job_id = schedule(
        kfp_host,
        _check_pipeline(pipeline),
        cron,
        parse_assignments(param, "--param", "data_uri=s3://bucket/pairs"),
        experiment=experiment,
        image=image or None,
        max_concurrency=max_concurrency,
    )
    print(json.dumps({"recurring_run_id": job_id}))


@pipeline_app.command("run")
def run_cmd(
    data: str = typer.Option(
        "", "--data", help="pair folder or s3:// URI (empty: synthesise --n-synth pairs)"
    ),
    config: str = typer.Option("small", "--config", help="a config name or a config file"),
    set_: list[str] = typer.Option(
        [], "--set", help="config override KEY=VALUE, e.g. train.epochs=2 (repeatable)"
    ),
    n_synth: int = typer.Option(800, "--n-synth", help="pairs to synthesise without --data"),
    seed: int = typer.Option(0, "--seed", help="synthesis and split seed"),
    out: Path = typer.Option(
        Path("outputs"), "--out", help="output root: runs/, latest -> runs/<newest>, mlflow/"
    ),
    tracking_uri: str = typer.Option(
        "", "--tracking-uri", help="MLflow tracking URI (default: sqlite:///OUT/mlflow/mlflow.db)"
    ),
    experiment: str = typer.Option("semlayout", "--experiment", help="MLflow experiment"),
    model_name: str = typer.Option("semlayout", "--model-name", help="registered model name"),
    floor_sem2layout: float = typer.Option(
        DEFAULT_FLOORS["sem2layout"], "--floor-sem2layout", help="gate: least SEM->layout SSIM"
    ),
    floor_layout2sem: float = typer.Option(
        DEFAULT_FLOORS["layout2sem"], "--floor-layout2sem", help="gate: least layout->SEM SSIM"
    ),
    tolerance: float = typer.Option(
        DEFAULT_TOLERANCE, "--tolerance", help="gate: SSIM the challenger may lose to the champion"
    ),
    min_qc_pass: float = typer.Option(
        0.5, "--min-qc-pass", help="least share of pairs that must pass alignment QC"
    ),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="stream every step's log (always in RUN/logs/<step>.log)"
    ),
) -> None:
    """Run the training pipeline locally under kfp.local (what `make run` does)."""
    from semlayout_pipelines.run_local import RunOptions, run

    options = RunOptions(
        data=data,
        config=config,
        overrides=list(set_),
        n_synth=n_synth,
        seed=seed,
        out=out,
        tracking_uri=tracking_uri,
        experiment=experiment,
        model_name=model_name,
        floor_sem2layout=floor_sem2layout,
        floor_layout2sem=floor_layout2sem,
        tolerance=tolerance,
        min_qc_pass=min_qc_pass,
        verbose=verbose,
    )
    code = run(options)
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.add_typer(pipeline_app, name="pipeline")
