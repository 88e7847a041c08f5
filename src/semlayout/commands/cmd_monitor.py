"""`semlayout monitor ...`: reports on the serving monitoring database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

monitor_app = typer.Typer(
    help="Drift report and health summary from the monitoring database.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(monitor_app, name="monitor")


@monitor_app.command("drift-report")
def drift_report(
    db: Path = typer.Option(
        ..., "--db", help="monitoring SQLite file written by `semlayout serve`"
    ),
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
    db: Path = typer.Option(
        ..., "--db", help="monitoring SQLite file written by `semlayout serve`"
    ),
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
            "db": str(db),
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
