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
    host: str = typer.Option(..., help="KFP API URL"),
    pipeline: str = typer.Option("training", help="training or finetune"),
    param: list[str] = typer.Option(
        [], "--param", help="pipeline parameter NAME=VALUE (repeatable)"
    ),
    experiment: str = typer.Option("semlayout"),
    image: str = typer.Option(""),
) -> None:
    """Start one run on a Kubeflow Pipelines server."""
    from semlayout_pipelines.client import submit

    run_id = submit(
        host,
        _check_pipeline(pipeline),
        parse_assignments(param, "--param", "data_uri=s3://bucket/pairs"),
        experiment=experiment,
        image=image or None,
    )
    print(json.dumps({"run_id": run_id}))


@pipeline_app.command("schedule")
def schedule_cmd(
    host: str = typer.Option(..., help="KFP API URL"),
    cron: str = typer.Option(..., help="six fields, seconds first, e.g. '0 0 2 * * *'"),
    pipeline: str = typer.Option("training", help="training or finetune"),
    param: list[str] = typer.Option(
        [], "--param", help="pipeline parameter NAME=VALUE (repeatable)"
    ),
    experiment: str = typer.Option("semlayout"),
    image: str = typer.Option(""),
    max_concurrency: int = typer.Option(1),
) -> None:
    """Create a recurring run (cron) on a Kubeflow Pipelines server."""
    from semlayout_pipelines.client import schedule, validate_cron

    validate_cron(cron)  # before any network call
    job_id = schedule(
        host,
        _check_pipeline(pipeline),
        cron,
        parse_assignments(param, "--param", "data_uri=s3://bucket/pairs"),
        experiment=experiment,
        image=image or None,
        max_concurrency=max_concurrency,
    )
    print(json.dumps({"recurring_run_id": job_id}))


@pipeline_app.command(
    "run",
    context_settings={
        "allow_extra_args": True,
        "ignore_unknown_options": True,
        "help_option_names": [],
    },
)
def run_cmd(ctx: typer.Context) -> None:
    """Run the training pipeline locally under kfp.local (same as `make run`; --help for \
options)."""
    from semlayout_pipelines.run_local import main

    code = main(list(ctx.args))
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.add_typer(pipeline_app, name="pipeline")
