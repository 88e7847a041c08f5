"""The review queue: which predictions a person should label next (issue 17, active learning).

Candidates are recent predictions whose truth has not come back (no ground truth for the
prediction, no feedback pair with the same SEM). `select(candidates, limit)` orders them least
confident first, diversity-aware: greedily, the next pick maximises
`(1 - confidence) * min(1, distance to the nearest pick / spread)`, where distance is taken
over the image's standardised drift features and `spread` is half the median distance between
candidates, so a burst of near-identical images from one bad batch yields one or two picks and
leaves room for other kinds of failure. A confidence that is unknown counts as 0.5; a pick's
reason says why it is there.

`export_queue` writes the first entries as a pair-folder skeleton for labelers (SEM present,
layout to be drawn, manifest); it never writes into a non-empty folder or over its own store.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from semlayout.errors import SemlayoutError

MAX_LIMIT = 500
UNKNOWN_CONFIDENCE = 0.5


@dataclass(frozen=True)
class Candidate:
    prediction_id: str
    ts: float
    direction: str
    model_version: str
    confidence: float | None
    predicted_quality: float | None
    reason: str | None
    cohort: str | None
    features: dict[str, float] = field(default_factory=dict)
    has_input: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "prediction_id": self.prediction_id,
            "ts": self.ts,
            "direction": self.direction,
            "model_version": self.model_version,
            "confidence": self.confidence,
            "predicted_quality": self.predicted_quality,
            "reason": self.reason,
            "cohort": self.cohort,
            "input_kept": self.has_input,
        }


def _feature_matrix(cands: Sequence[Candidate]) -> np.ndarray:
    names = sorted({k for c in cands for k in c.features})
    if not names:
        return np.zeros((len(cands), 0))
    m = np.array([[float(c.features.get(k, math.nan)) for k in names] for c in cands], np.float64)
    m = np.where(np.isfinite(m), m, np.nanmean(np.where(np.isfinite(m), m, np.nan), axis=0))
    m = np.nan_to_num(m)
    return (m - m.mean(axis=0)) / (m.std(axis=0) + 1e-9)


def urgency(c: Candidate) -> float:
    conf = UNKNOWN_CONFIDENCE if c.confidence is None else float(c.confidence)
    return 1.0 - min(max(conf, 0.0), 1.0)


def select(candidates: Sequence[Candidate], limit: int) -> list[Candidate]:
    """Up to `limit` candidates, least confident first, diversity-aware (module docstring)."""
    cands = list(candidates)
    if not cands or limit < 1:
        return []
    base = np.array([urgency(c) for c in cands])
    x = _feature_matrix(cands)
    if x.shape[1] == 0 or len(cands) < 3:
        order = np.argsort(-base, kind="stable")[:limit]
        return [cands[i] for i in order]
    sq = (x * x).sum(1)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0))
    spread = 0.5 * float(np.median(dist[np.triu_indices(len(cands), 1)])) or 1.0
    nearest = np.full(len(cands), np.inf)
    picked: list[int] = []
    free = np.ones(len(cands), bool)
    while len(picked) < min(limit, len(cands)):
        score = base * np.minimum(1.0, nearest / spread)
        score = np.where(free, score, -np.inf)
        # ties (e.g. nothing picked yet): the least confident, then the most recent
        best = int(np.lexsort((-np.array([c.ts for c in cands]), -base, -score))[0])
        picked.append(best)
        free[best] = False
        nearest = np.minimum(nearest, dist[best])
    return [cands[i] for i in picked]


def export_queue(
    db: str,
    out: Path,
    limit: int,
    direction: str = "sem2layout",
    window: int = 2000,
) -> dict[str, Any]:
    """Write the queue's first `limit` exportable entries (those whose input was kept) as a
    pair-folder skeleton for labelers (`EXPORT_README`); returns what was written."""
    from semlayout.atomic import atomic_dir
    from semlayout.monitoring.confidence_store import input_png, review_candidates
    from semlayout.monitoring.database import parse_db
    from semlayout.monitoring.store import MonitorStore

    if not 1 <= limit <= MAX_LIMIT:
        raise SemlayoutError(f"--limit {limit}: expected 1..{MAX_LIMIT}")
    check_export_destination(out, db)
    parse_db(db)
    store = MonitorStore(db, create=False)
    try:
        rows = review_candidates(store, direction, window)
        exportable = [r for r in rows if r.get("has_input")]
        picked = select(candidates_from_rows(exportable), limit)
        with atomic_dir(out) as tmp:
            for sub in ("sem", "layout", "draft"):
                (tmp / sub).mkdir()
            lines = []
            for c in picked:
                png, _ = input_png(store, c.prediction_id)
                if png is None:  # dropped by retention meanwhile
                    continue
                (tmp / "sem" / f"{c.prediction_id}.png").write_bytes(png)
                draft = next(r for r in exportable if r["id"] == c.prediction_id)["output_png"]
                if draft is not None:
                    (tmp / "draft" / f"{c.prediction_id}.png").write_bytes(draft)
                lines.append(_manifest_row(c))
            (tmp / "manifest.csv").write_text(_manifest_text(lines))
            (tmp / "README.txt").write_text(EXPORT_README)
    finally:
        store.close()
    return {
        "out": str(out),
        "exported": len(lines),
        "open": len(rows),
        "without_input": len(rows) - len(exportable),
    }


EXPORT_README = """Review export (semlayout review export): predictions to label, least
confident first.

sem/<id>.png      the SEM the model translated (as received)
draft/<id>.png    the model's answer, for reference (a thumbnail when the server kept one)
layout/<id>.png   TO DRAW: the true layout, 8-bit, values 0 and 255, the SEM's size
manifest.csv      id,sem_path,layout_path,pattern_type, then the prediction's id, direction,
                  model version, confidence, predicted quality and why it is queued

Set pattern_type when you know it. A labelled pair returns through POST /v1/feedback (the
same SEM file) or an intake upload of this folder; either closes its queue entry.
"""
MANIFEST_COLUMNS = (
    "id",
    "sem_path",
    "layout_path",
    "pattern_type",
    "prediction_id",
    "direction",
    "model_version",
    "confidence",
    "predicted_quality",
    "reason",
)


def _manifest_row(c: Candidate) -> dict[str, str]:
    def fmt(v: float | None) -> str:
        return "unknown" if v is None else f"{v:.4f}"

    return {
        "id": c.prediction_id,
        "sem_path": f"sem/{c.prediction_id}.png",
        "layout_path": f"layout/{c.prediction_id}.png",
        "pattern_type": c.cohort or "unknown",
        "prediction_id": c.prediction_id,
        "direction": c.direction,
        "model_version": c.model_version,
        "confidence": fmt(c.confidence),
        "predicted_quality": fmt(c.predicted_quality),
        "reason": c.reason or "",
    }


def _manifest_text(rows: list[dict[str, str]]) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(MANIFEST_COLUMNS), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def check_export_destination(out: Path, db: str) -> None:
    """Refuse a destination that exists and is not an empty folder, or that is (or holds) the
    monitoring store itself."""
    from semlayout.monitoring.database import parse_db

    target = parse_db(db)
    store_path = getattr(target, "path", None)
    if store_path is not None:
        sp = Path(store_path).resolve()
        o = out.resolve()
        if o == sp or o in sp.parents:
            raise SemlayoutError(f"--out {out} is (or holds) the monitoring store {store_path}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SemlayoutError(f"--out {out} exists and is not an empty folder; choose a new one")


def candidates_from_rows(rows: Sequence[Mapping[str, Any]]) -> list[Candidate]:
    """Candidates from the store's rows (`MonitorStore.review_candidates`)."""
    return [
        Candidate(
            prediction_id=str(r["id"]),
            ts=float(r["ts"]),
            direction=str(r["direction"]),
            model_version=str(r["model_version"]),
            confidence=None if r.get("confidence") is None else float(r["confidence"]),
            predicted_quality=(
                None if r.get("predicted_quality") is None else float(r["predicted_quality"])
            ),
            reason=r.get("confidence_reason"),
            cohort=r.get("cohort"),
            features=dict(r.get("features") or {}),
            has_input=bool(r.get("has_input")),
        )
        for r in rows
    ]
