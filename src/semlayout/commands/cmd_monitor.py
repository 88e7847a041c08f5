"""`semlayout monitor ...`: reports on the serving monitoring database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

monitor_app = typer.Typer(
    help="Drift report, health summary and the feedback store check, from the monitoring store.",
    no_args_is_help=True,
)
DB_HELP = (
    "monitoring store written by `semlayout serve`: a SQLite path or a postgresql:// URL "
    "(env SEMLAYOUT_MONITOR_DB)"
)


def _db_option() -> Any:
    return typer.Option(..., "--db", envvar="SEMLAYOUT_MONITOR_DB", help=DB_HELP)


def register(app: typer.Typer) -> None:
    app.add_typer(monitor_app, name="monitor")


@monitor_app.command("drift-report")
def drift_report(
    db: str = _db_option(),
    reference: Path = typer.Option(
        ..., "--reference", help="SHARDS folder or its reference_stats.json"
    ),
    window: int = typer.Option(
        500, "--window", min=2, help="most recent requests of the direction"
    ),
    out: Path = typer.Option(Path("drift.html"), "--out", help="the HTML report to write"),
    direction: str = typer.Option("sem2layout", "--direction", help="sem2layout | layout2sem"),
    drift_share: float = typer.Option(
        0.3,
        "--drift-share",
        min=0.0,
        max=1.0,
        help="share of drifted features = data set drift (0..1)",
    ),
) -> None:
    """Evidently data-drift report (HTML): a window of traffic against the training reference."""
    import json

    from semlayout.monitoring.drift_report import drift_report as run

    res = run(db, reference, out, window=window, direction=direction, drift_share=drift_share)
    print(json.dumps({k: v for k, v in res.items() if k != "per_column_pvalue"}))


@monitor_app.command("summary")
def summary(
    db: str = _db_option(),
    window: int = typer.Option(500, "--window", min=1, help="most recent requests summarised"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Inference health, drift rate, rolling SSIM and feedback count."""
    import json

    from semlayout.directions import DIRECTIONS
    from semlayout.monitoring.inference_monitor import InferenceMonitor
    from semlayout.monitoring.store import MonitorStore

    store = MonitorStore(db, create=False)
    try:
        directions = DIRECTIONS
        rate, n = store.drift_stats(window)
        out: dict[str, Any] = {
            "db": store.describe(),
            "inference": InferenceMonitor(store).summary(window),
            "drift": {
                "window": window,
                "rate": rate,
                "n": n,
                "by_direction": {d: store.drift_rate(window, d) for d in directions},
            },
            "quality": {
                d: dict(zip(("ssim", "n"), store.rolling_ssim_stats(d, window), strict=True))
                for d in directions
            },
            "feedback_count": store.feedback_count(),
            "last_trigger": (t.isoformat() if (t := store.last_trigger_time()) else None),
        }
    finally:
        store.close()
    if as_json:
        print(json.dumps(out, indent=2))
        return

    def f(v: float | None, fmt: str = ".3f") -> str:
        return "-" if v is None else format(v, fmt)

    inf = out["inference"]
    lat = inf["latency_ms"]
    print(
        f"requests (last {window}): {inf['requests']}  errors: {inf['errors']} "
        f"({f(inf['error_rate'], '.1%')})  latency ms p50/p95/p99: {f(lat['p50'], '.1f')}/"
        f"{f(lat['p95'], '.1f')}/{f(lat['p99'], '.1f')}"
    )
    dr = out["drift"]
    print(
        f"drift rate: {f(dr['rate'], '.1%')} of {dr['n']} images  "
        + "  ".join(f"{d}: {f(v, '.1%')}" for d, v in dr["by_direction"].items())
    )
    for d, q in out["quality"].items():
        print(f"rolling SSIM {d}: {f(q['ssim'])} over {q['n']} reviewed predictions")
    print(
        f"feedback pairs: {out['feedback_count']}  "
        f"last fine-tune trigger: {out['last_trigger'] or '-'}"
    )


@monitor_app.command("fsck")
def fsck(
    db: str = _db_option(),
    feedback_uri: str = typer.Option(
        ..., "--feedback-uri", help="the server's feedback store: a folder or s3://BUCKET/PREFIX"
    ),
    repair: bool = typer.Option(
        False, "--repair", help="delete rows without images and old orphans; add legacy rows"
    ),
    grace: float = typer.Option(
        3600.0, "--grace", min=0, help="seconds an orphan object may belong to a post in flight"
    ),
    deep: bool = typer.Option(False, "--deep", help="also decode every object, check its hash"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Check that the feedback rows and the feedback object store agree (exit 1 when they do
    not and --repair was not given)."""
    import json

    from semlayout.monitoring.feedback_fsck import fsck as run
    from semlayout.monitoring.store import MonitorStore

    store = MonitorStore(db, create=False)
    try:
        report = run(store, feedback_uri, repair=repair, grace_s=grace, deep=deep)
    finally:
        store.close()
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(
            f"{report.uri}: {report.rows} rows, {report.objects} objects; "
            f"rows without images: {len(report.rows_missing_images)}, orphan objects: "
            f"{len(report.orphan_objects)} (+{report.young_orphans} younger than {grace:g} s), "
            f"legacy manifest rows not recorded: {len(report.legacy_unrecorded)}"
        )
        if report.repaired:
            print("repaired: " + ", ".join(f"{k} {v}" for k, v in report.repaired.items()))
    if not report.clean and not repair:
        raise typer.Exit(1)
