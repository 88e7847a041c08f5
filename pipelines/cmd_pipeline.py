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
        None,
        envvar="SEMLAYOUT_GPUS",
        help="GPUs per train/fine-tune task, default 1 (>1: torchrun inside the task; 0: CPU)",
    ),
    accelerator: str = typer.Option(
        None,
        envvar="SEMLAYOUT_GPU_ACCELERATOR",
        help="accelerator resource, default nvidia.com/gpu",
    ),
    node_selector: str = typer.Option(
        None,
        envvar="SEMLAYOUT_GPU_NODE_SELECTOR",
        help="GPU pool node label KEY=VALUE the train tasks are pinned to; default "
        "cloud.google.com/gke-accelerator=nvidia-l4 (GKE's L4 pool); '' for none",
    ),
    toleration_key: str = typer.Option(
        None,
        envvar="SEMLAYOUT_GPU_TOLERATION_KEY",
        help="taint key the GPU pool carries; default nvidia.com/gpu; '' for none",
    ),
    retries: int = typer.Option(
        None, envvar="SEMLAYOUT_RETRIES", help="retries per task, default 2"
    ),
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
    written = compile_pipelines(out, names, image=image or None, settings=settings)
    for name, path in written.items():
        print(f"{name}: {path}")
    pool = settings.node_selector or "any node (no node selector)"
    print(
        f"cluster settings: image {image or settings.image}; train tasks: {settings.gpus} x "
        f"{settings.accelerator} on {pool}, toleration {settings.toleration_key or 'none'}; "
        f"{settings.retries} retries"
    )


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
    dry_run: bool = typer.Option(
        False, "--dry-run", help="check and compile, print what would be submitted; send nothing"
    ),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of text"),
) -> None:
    """Start one run on a Kubeflow Pipelines server."""
    from semlayout_pipelines.client import plan, submit

    name = _check_pipeline(pipeline)
    arguments = parse_assignments(param, "--param", "data_uri=s3://bucket/pairs")
    if dry_run:
        _echo({**plan(kfp_host, name, arguments, image or None), "experiment": experiment},
              as_json)  # fmt: skip
        return
    run_id = submit(kfp_host, name, arguments, experiment=experiment, image=image or None)
    _echo({"run_id": run_id, "pipeline": name, "kfp_host": kfp_host}, as_json)


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
    dry_run: bool = typer.Option(
        False, "--dry-run", help="check and compile, print what would be scheduled; send nothing"
    ),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of text"),
) -> None:
    """Create a recurring run (cron) on a Kubeflow Pipelines server."""
    from semlayout_pipelines.client import plan, schedule, validate_cron

    cron = validate_cron(cron)  # before any network call
    name = _check_pipeline(pipeline)
    arguments = parse_assignments(param, "--param", "data_uri=s3://bucket/pairs")
    if dry_run:
        _echo({**plan(kfp_host, name, arguments, image or None), "cron": cron,
               "experiment": experiment}, as_json)  # fmt: skip
        return
    job_id = schedule(
        kfp_host,
        name,
        cron,
        arguments,
        experiment=experiment,
        image=image or None,
        max_concurrency=max_concurrency,
    )
    _echo({"recurring_run_id": job_id, "pipeline": name, "cron": cron, "kfp_host": kfp_host},
          as_json)  # fmt: skip


def _echo(result: dict, as_json: bool) -> None:
    """JSON with --json; otherwise one `key: value` line each."""
    if as_json:
        print(json.dumps(result, indent=2))
        return
    if result.get("dry_run"):
        print("dry run, nothing sent:")
    for key, value in result.items():
        if key != "dry_run":
            print(f"{key}: {json.dumps(value) if isinstance(value, dict | list) else value}")


@pipeline_app.command("run")
def run_cmd(
    data: str = typer.Option(
        "", "--data", help="pair folder or s3:// URI (empty: synthesise --n-synth pairs)"
    ),
    config: str = typer.Option("small", "--config", help="a config name or a config file"),
    set_: list[str] = typer.Option(
        [], "--set", help="config override KEY=VALUE, e.g. train.epochs=2 (repeatable)"
    ),
    n_synth: int = typer.Option(
        1070, "--n-synth", help="pairs to synthesise without --data (a quarter reversed: config)"
    ),
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
