"""`semlayout train --config C --data SHARDS --out RUN`: train both directions, checkpoint,
resume."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from semlayout.errors import SemlayoutError


def train(
    config: Annotated[
        Path,
        typer.Option("--config", "-c", help="experiment config (YAML), e.g. configs/small.yaml"),
    ],
    data: Annotated[Path, typer.Option("--data", help="shard folder written by `semlayout shard`")],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="run folder: checkpoints/, last, final/, history.json"),
    ],
    resume: Annotated[
        bool, typer.Option("--resume", help="continue exactly from RUN/last")
    ] = False,
    set_: Annotated[
        list[str],
        typer.Option("--set", help="override a config key, e.g. train.epochs=2 (repeatable)"),
    ] = [],  # noqa: B006
    init_from: Annotated[
        Path | None,
        typer.Option("--init-from", help="start from this checkpoint's weights (fine-tuning)"),
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            "--tracking-uri",
            help="MLflow tracking URI: log params and per-step curves there (none: no logging)",
        ),
    ] = None,
    experiment: Annotated[
        str | None, typer.Option("--experiment", help="MLflow experiment name")
    ] = None,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="tqdm progress bar")
    ] = True,
) -> None:
    """Train G_A (SEM->layout) and G_B (layout->SEM) with their discriminators; print the final \
checkpoint."""
    from semlayout.config import apply_overrides, load_config
    from semlayout.keyvalue import parse_assignments
    from semlayout.train.loop import train as run

    cfg = load_config(config)
    if set_:
        cfg = apply_overrides(cfg, parse_assignments(set_, "--set", "train.epochs=2"))
    if not data.is_dir():
        raise SemlayoutError(f"--data {data}: shard folder not found")
    final = run(
        cfg,
        data,
        out,
        resume=resume,
        mlflow_uri=tracking_uri,
        init_from=init_from,
        experiment=experiment,
        progress=progress,
    )
    typer.echo(f"final checkpoint: {final}")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
