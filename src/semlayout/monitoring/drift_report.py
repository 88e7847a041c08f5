"""Evidently drift report: a window of served traffic against the training reference.

Raw images are not something Evidently compares, so both sides are tables of
per-image scalar features (`semlayout.data.features.image_features`): the current
side from the monitoring store's drift events of one direction, the reference side
from `reference_stats.json`'s per-image train features of the matching kind (SEM for
sem2layout, layout for layout2sem). Numeric columns get Evidently's default test
(K-S for small samples); the data set counts as drifted when at least `drift_share`
of the columns drift (Evidently 0.7 has no boolean for it, so it is derived here).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

from semlayout.atomic import _umask
from semlayout.data.reference_stats import load_reference_stats
from semlayout.errors import SemlayoutError
from semlayout.monitoring.drift import DIRECTION_KIND
from semlayout.monitoring.store import MonitorStore


def drift_report(
    db: str | Path,
    reference: str | Path,
    out: str | Path,
    window: int = 500,
    direction: str = "sem2layout",
    drift_share: float = 0.3,
) -> dict[str, Any]:
    """Write an Evidently HTML report to `out`; returns the drift summary it shows."""
    import pandas as pd
    from evidently import Report
    from evidently.presets import DataDriftPreset

    if direction not in DIRECTION_KIND:
        raise SemlayoutError(
            f"unknown direction '{direction}'; expected one of {', '.join(DIRECTION_KIND)}"
        )
    kind = DIRECTION_KIND[direction]
    out = Path(out)
    if out.is_dir():
        raise SemlayoutError(f"--out {out} is a folder; expected the HTML file to write")
    out.parent.mkdir(parents=True, exist_ok=True)
    stats = load_reference_stats(reference)
    per_image = stats[kind].get("features")
    if not isinstance(per_image, dict) or not per_image:
        raise SemlayoutError(
            f"{reference}: '{kind}.features' (per-image reference features) is missing"
        )
    names = [f for f in stats.get("feature_names", list(per_image)) if f in per_image]
    ref_df = pd.DataFrame({f: per_image[f] for f in names}).astype(float)

    store = MonitorStore(db, create=False)
    try:
        rows = store.recent_drift_features(window, direction)
        from semlayout.monitoring.confidence_store import served_confidence

        confidence = served_confidence(store, direction, window)
    finally:
        store.close()
    if len(rows) < 2:
        raise SemlayoutError(
            f"{store.describe()}: {len(rows)} {direction} request(s) recorded; "
            "a drift report needs at least 2"
        )
    cur_df = pd.DataFrame([{f: r.get(f) for f in names} for r in rows]).astype(float)
    flagged = sum(1 for r in rows if r["drifted"])

    snap = Report([DataDriftPreset(drift_share=drift_share)], include_tests=True).run(
        current_data=cur_df, reference_data=ref_df
    )
    d = snap.dict()
    counts = next(m for m in d["metrics"] if m["metric_name"].startswith("DriftedColumnsCount"))[
        "value"
    ]
    per_column = {}
    for m in d["metrics"]:
        name = m["metric_name"]
        if name.startswith("ValueDrift("):
            col = name.split("column=", 1)[1].split(",", 1)[0].rstrip(")")
            per_column[col] = float(m["value"])
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.tmp-", suffix=".html", dir=out.parent)
    os.close(fd)
    try:  # Evidently writes the file itself: into a private temporary, renamed when complete
        snap.save_html(tmp_name)
        from semlayout.confidence_report import confidence_section

        section = confidence_section(confidence, "Confidence of the served predictions")
        _add_header(Path(tmp_name), _header(direction, window, rows) + _boxed(section))
        os.chmod(tmp_name, 0o666 & ~_umask())
        os.replace(tmp_name, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
    share = float(counts["share"])
    return {
        "direction": direction,
        "window": window,
        "n_current": len(rows),
        "n_reference": len(ref_df),
        "drifted_columns": int(counts["count"]),
        "drift_share": share,
        "dataset_drift": share >= drift_share,
        "per_column_pvalue": per_column,
        "detector_flagged_rate": flagged / len(rows),
        **_served(rows),
        "out": str(out),
    }


def _iso(ts: float | None) -> str | None:
    import datetime as dt

    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _versions(rows: list[dict[str, Any]]) -> list[str]:
    return sorted({str(r["model_version"]) for r in rows if r.get("model_version")})


def _served(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Which model version(s) served the window, and from when to when."""
    stamps = [r["ts"] for r in rows if r.get("ts") is not None]
    return {
        "model_versions": _versions(rows),
        "from": _iso(min(stamps)) if stamps else None,
        "to": _iso(max(stamps)) if stamps else None,
    }


def _header(direction: str, window: int, rows: list[dict[str, Any]]) -> str:
    """What the report is about, on top of Evidently's page: the direction, the model
    version(s) that served the window, and the time window."""
    import html

    served = _served(rows)
    when = f"{served['from']} to {served['to']}" if served["from"] else "unknown times"
    versions = ", ".join(served["model_versions"]) or "unknown"
    text = (
        f"semlayout drift report: {direction}, model version {versions}; the last {len(rows)} "
        f"images (window {window}) served from {when}, against the training reference"
    )
    return (
        '<div id="semlayout-header" style="font:600 15px system-ui,sans-serif;padding:10px 16px;'
        f'background:#eef3fb;border-bottom:1px solid #c5d3ea">{html.escape(text)}</div>'
    )


def _boxed(section: str) -> str:
    """The confidence section (issue 17) under the header, above Evidently's page."""
    return (
        '<div id="semlayout-confidence" style="font:13px system-ui,sans-serif;padding:8px 16px;'
        f'border-bottom:1px solid #c5d3ea">{section}</div>'
    )


def _add_header(path: Path, header: str) -> None:
    text = path.read_text(encoding="utf-8")
    at = text.find("<body")
    end = text.find(">", at) + 1 if at >= 0 else 0
    path.write_text(text[:end] + header + text[end:], encoding="utf-8")
