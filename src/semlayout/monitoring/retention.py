"""The retention policy of the monitoring store: what it keeps, in rows and in bytes.

- **rows**: the newest `max_rows` of each event table (predictions, inference events, drift
  events, ground truth); feedback, trigger decisions and the loop's ledger are kept whole
  (they are small and they are the loop's memory);
- **stored outputs** (the predictions' output images, kept for late ground truth): the newest
  `max_outputs` of them and at most `max_output_bytes` in all; an older prediction keeps its
  row (drift and quality history) without its image, and ground truth for it answers 409.

`enforce` applies it in one transaction; the server runs it every `interval_s` in the
background (`serving.state`), any replica may (it is idempotent). Deleted rows free pages
that SQLite and PostgreSQL reuse; the files do not shrink without a VACUUM.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from semlayout.monitoring import schema as t

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from semlayout.monitoring.store import MonitorStore


@dataclass(frozen=True)
class RetentionPolicy:
    max_rows: int = 1_000_000
    max_outputs: int = 100_000
    max_output_bytes: int = 256 * 1024 * 1024


@dataclass
class RetentionReport:
    deleted: dict[str, int] = field(default_factory=dict)
    outputs_dropped: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"deleted": self.deleted, "outputs_dropped": self.outputs_dropped}


def enforce(store: MonitorStore, policy: RetentionPolicy) -> RetentionReport:
    """Apply `policy` now; returns what it removed."""
    report = RetentionReport()
    with store.transaction() as conn:
        for table in (t.predictions, t.ground_truth):
            report.deleted[table.name] = _keep_newest(conn, table, table.c.ts, policy.max_rows)
        for table in (t.inference_events, t.drift_events):
            report.deleted[table.name] = _keep_newest(conn, table, table.c.id, policy.max_rows)
        report.outputs_dropped = _drop_outputs_beyond_count(conn, policy.max_outputs)
        report.outputs_dropped += _drop_outputs_beyond_bytes(conn, policy.max_output_bytes)
    return report


def prune_outputs(store: MonitorStore, keep: int) -> int:
    """Drop the stored outputs of all but the newest `keep` predictions (their rows stay)."""
    with store.transaction() as conn:
        return _drop_outputs_beyond_count(conn, keep)


def _keep_newest(conn: Connection, table: sa.Table, order: Any, keep: int) -> int:
    """Delete the rows older than the newest `keep` (by `order`)."""
    cutoff = conn.execute(sa.select(order).order_by(order.desc()).offset(keep).limit(1)).scalar()
    if cutoff is None:
        return 0
    return int(conn.execute(table.delete().where(order <= cutoff)).rowcount)


def _kept(p: sa.Table) -> Any:
    """A prediction that still keeps an image: its output or (for review) its input."""
    return sa.or_(p.c.output_png.is_not(None), p.c.input_png.is_not(None))


def _drop(conn: Connection, cutoff_ts: float) -> int:
    p = t.predictions
    res = conn.execute(
        p.update()
        .where(_kept(p), p.c.ts <= cutoff_ts)
        .values(output_png=None, input_png=None, output_bytes=None)
    )
    return int(res.rowcount)


def _drop_outputs_beyond_count(conn: Connection, keep: int) -> int:
    p = t.predictions
    cutoff = conn.execute(
        sa.select(p.c.ts).where(_kept(p)).order_by(p.c.ts.desc()).offset(keep).limit(1)
    ).scalar()
    return 0 if cutoff is None else _drop(conn, float(cutoff))


def _drop_outputs_beyond_bytes(conn: Connection, budget: int) -> int:
    """Newest first, the outputs fit in `budget` bytes until the first one that does not; it
    and every older one are dropped."""
    p = t.predictions
    total = conn.execute(sa.select(sa.func.sum(p.c.output_bytes))).scalar()
    if total is None or int(total) <= budget:
        return 0
    running = (
        sa.select(
            p.c.ts,
            sa.func.sum(p.c.output_bytes)
            .over(order_by=(p.c.ts.desc(), p.c.id.desc()))
            .label("cum"),
        )
        .where(_kept(p))
        .subquery()
    )
    cutoff = conn.execute(
        sa.select(running.c.ts).where(running.c.cum > budget).order_by(running.c.ts.desc()).limit(1)
    ).scalar()
    return 0 if cutoff is None else _drop(conn, float(cutoff))
