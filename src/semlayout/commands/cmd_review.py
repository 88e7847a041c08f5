"""`semlayout review ...`: the review queue of the monitoring store (issue 17)."""

from __future__ import annotations

from pathlib import Path

import typer

review_app = typer.Typer(
    help="The review queue: predictions to label next, least confident first.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(review_app, name="review")


@review_app.command("export")
def export(
    db: str = typer.Option(
        ...,
        "--db",
        envvar="SEMLAYOUT_MONITOR_DB",
        help="monitoring store: a SQLite path or a postgresql:// URL (env SEMLAYOUT_MONITOR_DB)",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="new (or empty) folder to write"),
    limit: int = typer.Option(20, "--limit", help="entries to export (1..500)"),
    direction: str = typer.Option("sem2layout", "--direction", help="sem2layout | layout2sem"),
    window: int = typer.Option(2000, "--window", min=1, help="most recent predictions considered"),
) -> None:
    """Write the queue's first LIMIT entries as a pair-folder skeleton: sem/ present, layout/
    to be drawn, draft/ the model's answer, manifest.csv and a README for labelers."""
    from semlayout.directions import Direction
    from semlayout.review import export_queue

    Direction.parse(direction)
    res = export_queue(db, out, limit, direction, window)
    print(
        f"exported {res['exported']} of {res['open']} open review entries to {res['out']} "
        f"({res['without_input']} without a kept input)"
    )
