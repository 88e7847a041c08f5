"""What the monitoring store answers about confidence (issue 17): low-confidence rates per
direction and cohort, calibration error over time (predicted vs true quality once the truth
arrived), the population-drift window, and the review queue's candidates.

Every function takes a `MonitorStore` and runs its own statements through `store.reading()`.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from semlayout.monitoring import schema as t
from semlayout.monitoring.store import MonitorStore

LOW_CONFIDENCE = 0.5  # a prediction below this P(good) counts as low-confidence


def confidence_summary(
    store: MonitorStore, window: int = 1000, low: float = LOW_CONFIDENCE
) -> dict[str, Any]:
    """Over the last `window` predictions, per direction and per cohort (the caller's label;
    "unlabelled" without one): predictions, how many had a known confidence, the share of
    those below `low`, and the mean confidence."""
    p = t.predictions
    recent = (
        sa.select(p.c.direction, p.c.cohort, p.c.confidence)
        .order_by(p.c.ts.desc())
        .limit(int(window))
        .subquery()
    )
    with store.reading() as conn:
        rows: list[Any] = list(conn.execute(sa.select(recent)).all())
    out: dict[str, Any] = {"window": window, "low_threshold": low, "directions": {}}
    for direction, cohort, conf in rows:
        block = out["directions"].setdefault(direction, {"all": _empty(), "cohorts": {}})
        for agg in (block["all"], block["cohorts"].setdefault(cohort or "unlabelled", _empty())):
            agg["n"] += 1
            if conf is not None:
                agg["known"] += 1
                agg["low"] += conf < low
                agg["sum"] += conf
    for block in out["directions"].values():
        for agg in (block["all"], *block["cohorts"].values()):
            known = agg["known"]
            agg["low_confidence_rate"] = agg["low"] / known if known else None
            agg["mean_confidence"] = agg.pop("sum") / known if known else None
    return out


def _empty() -> dict[str, Any]:
    return {"n": 0, "known": 0, "low": 0, "sum": 0.0}


def low_confidence_rate(
    store: MonitorStore, window: int, low: float = LOW_CONFIDENCE
) -> tuple[float | None, int]:
    """(share of the last `window` predictions with a known confidence below `low`, how many
    had a known confidence)."""
    p = t.predictions
    recent = sa.select(p.c.confidence).order_by(p.c.ts.desc()).limit(int(window)).subquery()
    query = sa.select(
        sa.func.count(recent.c.confidence),
        sa.func.sum(sa.case((recent.c.confidence < low, 1), else_=0)),
    )
    with store.reading() as conn:
        row = conn.execute(query).one()
    n, n_low = int(row[0] or 0), int(row[1] or 0)
    return (n_low / n if n else None), n


def calibration_error(store: MonitorStore, direction: str, window: int = 200) -> dict[str, Any]:
    """Mean |predicted - true| quality (IoU for sem2layout, SSIM for layout2sem) over the last
    `window` ground truths that carried a prediction, and the mean of each."""
    g = t.ground_truth
    true_col = g.c.iou if direction == "sem2layout" else g.c.ssim
    recent = (
        sa.select(g.c.predicted_quality.label("pred"), true_col.label("truth"))
        .where(g.c.direction == direction, g.c.predicted_quality.is_not(None))
        .order_by(g.c.ts.desc())
        .limit(int(window))
        .subquery()
    )
    query = sa.select(
        sa.func.count(),
        sa.func.avg(sa.func.abs(recent.c.pred - recent.c.truth)),
        sa.func.avg(recent.c.pred),
        sa.func.avg(recent.c.truth),
    )
    with store.reading() as conn:
        row: Any = conn.execute(query).one()
    n, err, pred, true = row
    return {
        "n": int(n or 0),
        "mean_abs_error": None if err is None else float(err),
        "mean_predicted": None if pred is None else float(pred),
        "mean_true": None if true is None else float(true),
    }


def population_window(
    store: MonitorStore, direction: str, window: int
) -> list[tuple[str | None, dict[str, float]]]:
    """(cohort, per-image features and confidence signals) of the last `window` predictions of
    `direction` (oldest first)."""
    d, p = t.drift_events, t.predictions
    query = (
        sa.select(d.c.features, p.c.cohort, p.c.confidence_signals)
        .select_from(p.outerjoin(d, p.c.id == d.c.prediction_id))
        .where(p.c.direction == direction)
        .order_by(p.c.ts.desc())
        .limit(int(window))
    )
    with store.reading() as conn:
        rows = conn.execute(query).all()
    out = []
    for r in reversed(rows):
        feats = json.loads(r.features) if r.features else {}
        sig = json.loads(r.confidence_signals) if r.confidence_signals else {}
        out.append((r.cohort, {**feats, **sig}))
    return out


def review_candidates(
    store: MonitorStore, direction: str | None = None, window: int = 2000
) -> list[dict[str, Any]]:
    """The last `window` predictions whose truth has not come back: no ground truth row for
    the prediction, no feedback pair with the same input (SEM) pixels, no reviewed pair of
    that id consumed by the loop (an exported entry labelled and uploaded to intake)."""
    p, g, f, d = t.predictions, t.ground_truth, t.feedback, t.drift_events
    consumed = sa.select(t.loop_consumed.c.pair_id).scalar_subquery()
    query = (
        sa.select(
            p.c.id,
            p.c.ts,
            p.c.direction,
            p.c.model_version,
            p.c.confidence,
            p.c.predicted_quality,
            p.c.confidence_reason,
            p.c.cohort,
            p.c.input_png.is_not(None).label("has_input"),
            p.c.output_png,
            d.c.features,
        )
        .select_from(
            p.outerjoin(g, g.c.prediction_id == p.c.id)
            .outerjoin(f, f.c.sem_sha256 == p.c.input_sha256)
            .outerjoin(d, d.c.prediction_id == p.c.id)
        )
        .where(g.c.prediction_id.is_(None), f.c.id.is_(None), p.c.id.not_in(consumed))
        .order_by(p.c.ts.desc())
        .limit(int(window))
    )
    if direction is not None:
        query = query.where(p.c.direction == direction)
    with store.reading() as conn:
        rows = conn.execute(query).all()
    out = []
    for r in rows:
        row = dict(r._mapping)
        feats = row.pop("features")
        row["features"] = json.loads(feats) if feats else {}
        out.append(row)
    return out


def input_png(store: MonitorStore, prediction_id: str) -> tuple[bytes | None, str | None]:
    """(the kept input PNG or None, the prediction's input sha256 or None if unknown)."""
    p = t.predictions
    with store.reading() as conn:
        row = conn.execute(
            sa.select(p.c.input_png, p.c.input_sha256).where(p.c.id == prediction_id)
        ).first()
    return (None, None) if row is None else (row.input_png, row.input_sha256)


def served_confidence(
    store: MonitorStore, direction: str, window: int = 500, examples: int = 6
) -> dict[str, Any]:
    """The drift report's confidence section, in `confidence_report.confidence_section`'s
    shape: predicted vs true for the recent ground truths that carried a prediction (with the
    `judge` numbers once there are 3), and the least confident recent predictions with their
    kept input and stored output."""
    import numpy as np

    from semlayout.confidence_calibration import GOOD_IOU, METRIC
    from semlayout.confidence_fit import judge
    from semlayout.data.pairs import decode_gray8

    g, p = t.ground_truth, t.predictions
    metric = METRIC[direction]
    true_col = g.c.iou if metric == "iou" else g.c.ssim
    with store.reading() as conn:
        pts = conn.execute(
            sa.select(g.c.predicted_quality, g.c.confidence, true_col)
            .where(g.c.direction == direction, g.c.predicted_quality.is_not(None))
            .order_by(g.c.ts.desc())
            .limit(int(window))
        ).all()
        low = conn.execute(
            sa.select(p.c.id, p.c.confidence, p.c.predicted_quality, p.c.input_png, p.c.output_png)
            .where(p.c.direction == direction, p.c.confidence.is_not(None))
            .order_by(p.c.confidence.asc(), p.c.ts.desc())
            .limit(int(examples))
        ).all()
    block: dict[str, Any] = {"metric": metric, "points": [[r[0], r[2]] for r in pts]}
    if len(pts) >= 3:
        arr = np.array([[r[0], r[1] if r[1] is not None else r[0], r[2]] for r in pts], float)
        block |= judge(arr[:, 0], arr[:, 1], arr[:, 2], GOOD_IOU if metric == "iou" else 0.0)
    block["least_confident"] = [
        {
            "id": r.id,
            "family": "served",
            "confidence": r.confidence,
            "predicted": r.predicted_quality,
            "true": None,
            "input": None if r.input_png is None else decode_gray8(r.input_png, "input"),
            "output": None if r.output_png is None else decode_gray8(r.output_png, "output"),
        }
        for r in low
    ]
    return {direction: block}


def update_confidence(store: MonitorStore, updates: list[tuple[str, Any, bytes | None]]) -> int:
    """Replace the confidence of recorded predictions by the full one computed off the
    request path: (prediction id, `Confidence`, the input PNG to keep or None to leave the
    kept input as is); a ground truth already recorded for one takes the new numbers too.
    One transaction; returns the predictions updated (one pruned meanwhile is skipped)."""
    p, g = t.predictions, t.ground_truth
    done = 0
    with store.transaction() as conn:
        for pid, c, png in updates:
            values: dict[str, Any] = {
                "confidence": c.confidence,
                "predicted_quality": c.predicted,
                "confidence_reason": c.reason,
                "confidence_signals": json.dumps(c.signals) if c.signals else None,
            }
            if png is not None:
                values["input_png"] = png
            done += conn.execute(sa.update(p).where(p.c.id == pid).values(**values)).rowcount
            conn.execute(
                sa.update(g)
                .where(g.c.prediction_id == pid)
                .values(confidence=c.confidence, predicted_quality=c.predicted)
            )
    return done
