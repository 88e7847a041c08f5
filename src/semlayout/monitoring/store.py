"""The monitoring store: one database shared by every serving replica, the CLI and the loop.

`MonitorStore(db)` opens a SQLite file or a PostgreSQL server (`semlayout.monitoring.database`:
what `--db` accepts, the pool, what a storage fault becomes), migrates it to the newest
schema (`semlayout.monitoring.migrations`; tables in `semlayout.monitoring.schema`), and is
the one interface to it: the translate path writes a request's rows in ONE transaction
(`record_translations`: predictions, drift and inference events, all or none), the loop reads
its windows (`drift_rate(window)`, `rolling_ssim(direction, window)`, `feedback_count(since)`,
`record_trigger_decision(...)`, `last_trigger_time()`; the `*_stats` variants also return how
many samples a number rests on), and other modules run their own statements through
`transaction()` / `reading()` (the feedback rows, the loop's ledger, the retention policy).
Every database error but a constraint violation surfaces as `StoreUnavailable`.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from semlayout.errors import SemlayoutError
from semlayout.monitoring import schema as t
from semlayout.monitoring.database import (
    READ_OPTION,
    Database,
    StoreUnavailable,
    open_engine,
    parse_db,
    unavailable,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection


@dataclass(frozen=True)
class Prediction:
    id: str
    ts: float
    direction: str
    model_version: str
    input_sha256: str
    width: int
    height: int
    output_png: bytes | None
    polarity: int | None = None  # +1 / -1: the contrast polarity it was translated in
    # issue 17: P(good) (None: unknown), predicted IoU / SSIM, why lowest or unknown, the
    # caller's cohort label, the input PNG kept for review (semlayout.confidence)
    confidence: float | None = None
    predicted_quality: float | None = None
    confidence_reason: str | None = None
    confidence_signals: str | None = None  # JSON {signal: value}
    cohort: str | None = None
    input_png: bytes | None = None
    profile: str | None = None  # the tool / layer profile that answered (None: shared network)


@dataclass(frozen=True)
class TranslationRecord:
    """Everything one translated image writes: its prediction, its inference event (the
    keywords of `event_row`) and, with a drift reference, its drift event (of `drift_row`)."""

    prediction: Prediction
    event: dict[str, Any]
    drift: dict[str, Any] | None = None


def _epoch(value: datetime | float | int | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:  # naive datetimes are taken as UTC, as everywhere in the project
            value = value.replace(tzinfo=UTC)
        return value.timestamp()
    return float(value)


def _json(value: Mapping[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(dict(value), default=str)


def event_row(
    *,
    endpoint: str,
    status: str,
    http_status: int,
    latency_ms: float,
    direction: str | None = None,
    prediction_id: str | None = None,
    model_version: str | None = None,
    error: str | None = None,
    forward_ms: float | None = None,
    batch_size: int | None = None,
    input_stats: Mapping[str, float] | None = None,
    output_stats: Mapping[str, float] | None = None,
    ts: float | None = None,
) -> dict[str, Any]:
    """An `inference_events` row."""
    return {
        "ts": ts or time.time(),
        "endpoint": endpoint,
        "direction": direction,
        "prediction_id": prediction_id,
        "model_version": model_version,
        "status": status,
        "http_status": http_status,
        "error": error,
        "latency_ms": latency_ms,
        "forward_ms": forward_ms,
        "batch_size": batch_size,
        "input_stats": _json(input_stats),
        "output_stats": _json(output_stats),
    }


def drift_row(
    *,
    direction: str,
    drifted: bool,
    max_abs_z: float,
    kl: float,
    score: float,
    z: Mapping[str, float],
    features: Mapping[str, float],
    prediction_id: str | None = None,
    ts: float | None = None,
) -> dict[str, Any]:
    """A `drift_events` row."""
    return {
        "ts": ts or time.time(),
        "prediction_id": prediction_id,
        "direction": direction,
        "drifted": int(drifted),
        "max_abs_z": max_abs_z,
        "kl": kl,
        "score": score,
        "z": json.dumps(dict(z)),
        "features": json.dumps(dict(features)),
    }


def prediction_row(pred: Prediction) -> dict[str, Any]:
    row = {k: getattr(pred, k) for k in Prediction.__dataclass_fields__}
    kept = [b for b in (pred.output_png, pred.input_png) if b is not None]
    row["output_bytes"] = sum(len(b) for b in kept) if kept else None  # the retention budget
    return row


class MonitorStore:
    """Thread-safe access to the monitoring database `db` (a SQLite path or a postgresql://
    URL). A SQLite file is created on first use unless `create=False`."""

    def __init__(self, db: str | Path | Database, create: bool = True):
        from semlayout.monitoring.migrations import upgrade

        self.db = parse_db(db)
        if self.db.path is not None:
            _check_sqlite_path(self.db.path, create)
        self.engine = open_engine(self.db)
        try:
            upgrade(self.engine)
        except sa.exc.DatabaseError as err:
            self.engine.dispose()
            if self.db.path is not None and "file is not a database" in str(err.orig):
                raise SemlayoutError(
                    f"{self.db.path} is not a usable SQLite monitoring database: {err.orig}"
                ) from None
            raise unavailable(err, f"monitoring store {self.db.describe()}") from None
        except BaseException:
            self.engine.dispose()
            raise

    def describe(self) -> str:
        return self.db.describe()

    # ------------------------------------------------------------ units of work
    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One write transaction: committed when the block ends, rolled back on an error.
        Database faults leave as `StoreUnavailable`; `IntegrityError` is left to the caller."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except (sa.exc.IntegrityError, StoreUnavailable):
            raise
        except (sa.exc.DBAPIError, sa.exc.TimeoutError) as err:
            raise unavailable(err) from None

    @contextlib.contextmanager
    def reading(self) -> Iterator[Connection]:
        """A read-only unit of work (SQLite: a deferred transaction beside the writer)."""
        try:
            with self.engine.connect().execution_options(**{READ_OPTION: True}) as conn:
                yield conn
        except (sa.exc.DBAPIError, sa.exc.TimeoutError) as err:
            raise unavailable(err) from None

    def close(self) -> None:
        self.engine.dispose()

    def journal_mode(self) -> str:
        """SQLite's journal mode ("wal"); "postgresql" for a server."""
        if self.db.path is None:
            return "postgresql"
        with self.reading() as conn:
            return str(conn.exec_driver_sql("PRAGMA journal_mode").scalar())

    def check_writable(self) -> None:
        """Commit a real write now, or raise `StoreUnavailable` (the readiness probe)."""
        with self.transaction() as conn:
            upsert(conn, t.meta, {"key": "last_ready_check", "value": str(time.time())}, ["key"])

    # ------------------------------------------------------------ writes
    def record_translations(self, records: Sequence[TranslationRecord]) -> None:
        """A translate request's rows, all images, in one transaction: all rows or none."""
        if not records:
            return
        drifts = [r.drift for r in records if r.drift is not None]
        with self.transaction() as conn:
            conn.execute(t.predictions.insert(), [prediction_row(r.prediction) for r in records])
            if drifts:
                conn.execute(t.drift_events.insert(), [drift_row(**d) for d in drifts])
            conn.execute(t.inference_events.insert(), [event_row(**r.event) for r in records])

    def add_inference_event(self, **event: Any) -> None:
        """One `inference_events` row (keywords of `event_row`)."""
        with self.transaction() as conn:
            conn.execute(t.inference_events.insert(), [event_row(**event)])

    def add_drift_event(self, **drift: Any) -> None:
        """One `drift_events` row (keywords of `drift_row`)."""
        with self.transaction() as conn:
            conn.execute(t.drift_events.insert(), [drift_row(**drift)])

    def add_ground_truth(
        self,
        prediction_id: str,
        direction: str,
        model_version: str,
        metrics: Mapping[str, float],
        ts: float | None = None,
        predicted_quality: float | None = None,
        confidence: float | None = None,
    ) -> None:
        """Store the quality of one prediction (and what its confidence predicted); a second
        truth for the same id replaces the first."""
        row = {
            "prediction_id": prediction_id,
            "ts": ts or time.time(),
            "direction": direction,
            "model_version": model_version,
            **{k: float(metrics[k]) for k in ("l1", "ssim", "psnr", "iou")},
            "predicted_quality": predicted_quality,
            "confidence": confidence,
        }
        with self.transaction() as conn:
            upsert(conn, t.ground_truth, row, ["prediction_id"])

    def add_feedback(
        self,
        *,
        id: str,
        pattern_type: str,
        sem_sha256: str,
        layout_sha256: str,
        sem_path: str,
        layout_path: str,
        folder: str,
        ts: float | None = None,
        polarity: int | None = None,
        polarity_margin: float | None = None,
        polarity_source: str | None = None,
    ) -> int:
        """One `feedback` row; returns how many there are now (the same transaction).
        `sa.exc.IntegrityError` when this SEM already has one. The polarity fields: as the
        aligner recorded them (`semlayout.data.alignment_table`), None when not checked."""
        row = {
            "id": id,
            "ts": ts or time.time(),
            "pattern_type": pattern_type,
            "sem_sha256": sem_sha256,
            "layout_sha256": layout_sha256,
            "sem_path": sem_path,
            "layout_path": layout_path,
            "folder": folder,
            "polarity": polarity,
            "polarity_margin": polarity_margin,
            "polarity_source": polarity_source,
        }
        with self.transaction() as conn:
            conn.execute(t.feedback.insert(), [row])
            return int(
                conn.execute(sa.select(sa.func.count()).select_from(t.feedback)).scalar_one()
            )

    def record_trigger_decision(
        self,
        fired: bool,
        details: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        at: datetime | float | None = None,
    ) -> int:
        """Record one decision of the loop (fired or not); returns its row id.

        `details` is any JSON-serialisable mapping (e.g. `TriggerDecision.to_dict()`)."""
        row = {
            "ts": _epoch(at) or time.time(),
            "fired": int(bool(fired)),
            "run_id": run_id,
            "details": _json(details or {}),
        }
        with self.transaction() as conn:
            res = conn.execute(
                t.trigger_decisions.insert().returning(t.trigger_decisions.c.id), row
            )
            return int(res.scalar_one())

    # ------------------------------------------------------------ reads
    def get_prediction(self, prediction_id: str) -> Prediction | None:
        cols = [t.predictions.c[k] for k in Prediction.__dataclass_fields__]
        with self.reading() as conn:
            row = conn.execute(sa.select(*cols).where(t.predictions.c.id == prediction_id)).first()
        return None if row is None else Prediction(**row._mapping)

    def count(self, table: str) -> int:
        if table not in t.COUNTED:
            raise SemlayoutError(f"unknown monitoring table '{table}'")
        with self.reading() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).select_from(t.metadata.tables[table])
                ).scalar_one()
            )

    def drift_stats(self, window: int, direction: str | None = None) -> tuple[float | None, int]:
        """(share of drifted images among the last `window` translated images,
        how many there were)."""
        d = t.drift_events
        recent = sa.select(d.c.drifted).order_by(d.c.id.desc()).limit(int(window))
        if direction is not None:
            recent = recent.where(d.c.direction == direction)
        return self._mean_and_count(recent.subquery().c.drifted)

    def polarity_mix(self, window: int) -> dict[str, int]:
        """{"+1": n, "-1": n, "unknown": n} over the last `window` predictions."""
        p = t.predictions
        recent = sa.select(p.c.polarity).order_by(p.c.ts.desc()).limit(int(window)).subquery()
        q = sa.select(recent.c.polarity, sa.func.count()).group_by(recent.c.polarity)
        with self.reading() as conn:
            got = {r[0]: int(r[1]) for r in conn.execute(q)}
        return {"+1": got.get(1, 0), "-1": got.get(-1, 0), "unknown": got.get(None, 0)}

    def drift_rate(self, window: int, direction: str | None = None) -> float | None:
        """Share of drifted images among the last `window` (None when there is no traffic)."""
        return self.drift_stats(window, direction)[0]

    def rolling_ssim_stats(self, direction: str, window: int) -> tuple[float | None, int]:
        """(mean SSIM of the last `window` predictions of `direction` that received
        ground truth, n)."""
        g = t.ground_truth
        sub = (
            sa.select(g.c.ssim)
            .where(g.c.direction == direction)
            .order_by(g.c.ts.desc())
            .limit(int(window))
            .subquery()
        )
        return self._mean_and_count(sub.c.ssim)

    def _mean_and_count(self, column: Any) -> tuple[float | None, int]:
        with self.reading() as conn:
            row: Any = conn.execute(sa.select(sa.func.avg(column), sa.func.count())).one()
        count = int(row[1])
        return (float(row[0]) if count else None), count

    def rolling_ssim(self, direction: str, window: int) -> float | None:
        return self.rolling_ssim_stats(direction, window)[0]

    def feedback_count(self, since: datetime | float | None = None) -> int:
        """Reviewed pairs received since `since`
        (datetime, naive = UTC, or UNIX seconds; None = all)."""
        query = sa.select(sa.func.count()).select_from(t.feedback)
        after = _epoch(since)
        if after is not None:
            query = query.where(t.feedback.c.ts > after)
        with self.reading() as conn:
            return int(conn.execute(query).scalar_one())

    def last_trigger_time(self) -> datetime | None:
        """When the loop last fired a fine-tune run (UTC), or None if it never did."""
        d = t.trigger_decisions
        with self.reading() as conn:
            ts = conn.execute(sa.select(sa.func.max(d.c.ts)).where(d.c.fired == 1)).scalar()
        return None if ts is None else datetime.fromtimestamp(float(ts), tz=UTC)

    def trigger_decisions(self, limit: int = 20) -> list[dict[str, Any]]:
        d = t.trigger_decisions
        with self.reading() as conn:
            rows = conn.execute(sa.select(d).order_by(d.c.id.desc()).limit(int(limit))).all()
        return [
            {
                "id": r.id,
                "ts": r.ts,
                "fired": bool(r.fired),
                "run_id": r.run_id,
                "details": json.loads(r.details),
            }
            for r in rows
        ]

    def recent_drift_features(
        self, window: int, direction: str | None = None
    ) -> list[dict[str, Any]]:
        """Per-image features of the last `window` translated images (oldest first), with
        when (`ts`) and by which model version (`model_version`) each was served."""
        d, p = t.drift_events, t.predictions
        query = sa.select(
            d.c.direction, d.c.drifted, d.c.features, d.c.ts, p.c.model_version
        ).select_from(d.outerjoin(p, p.c.id == d.c.prediction_id))
        if direction is not None:
            query = query.where(d.c.direction == direction)
        with self.reading() as conn:
            rows = conn.execute(query.order_by(d.c.id.desc()).limit(int(window))).all()
        return [
            {
                **json.loads(r.features),
                "direction": r.direction,
                "drifted": bool(r.drifted),
                "ts": r.ts,
                "model_version": r.model_version,
            }
            for r in reversed(rows)
        ]

    def inference_window(self, window: int) -> list[dict[str, Any]]:
        """The last `window` inference events (newest first) as dicts."""
        e = t.inference_events
        cols = ("ts", "endpoint", "direction", "status", "http_status", "error", "latency_ms")
        query = sa.select(*[e.c[c] for c in cols], e.c.forward_ms)
        with self.reading() as conn:
            rows = conn.execute(query.order_by(e.c.id.desc()).limit(int(window))).all()
        return [dict(r._mapping) for r in rows]


def upsert(conn: Connection, table: sa.Table, row: dict[str, Any], keys: list[str]) -> None:
    """INSERT, or UPDATE the row with the same `keys` (the dialect's ON CONFLICT)."""
    insert = _dialect_insert(conn, table).values(**row)
    conn.execute(
        insert.on_conflict_do_update(
            index_elements=keys, set_={k: v for k, v in row.items() if k not in keys}
        )
    )


def insert_ignore(conn: Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """INSERT the rows whose primary key is not there yet (ON CONFLICT DO NOTHING)."""
    if rows:
        conn.execute(_dialect_insert(conn, table).on_conflict_do_nothing(), rows)


def _dialect_insert(conn: Connection, table: sa.Table) -> Any:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    return insert(table)


def _check_sqlite_path(path: Path, create: bool) -> None:
    if path.is_dir():
        raise SemlayoutError(f"monitoring database path is a folder, expected a file: {path}")
    if not path.is_file():
        if not create:
            raise SemlayoutError(f"monitoring database not found: {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
