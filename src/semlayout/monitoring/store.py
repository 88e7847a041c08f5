"""The monitoring store: one SQLite file (WAL) shared by the server, the CLI and the loop.

The tables are in `semlayout.monitoring.schema`.
Concurrency: the server writes from a threadpool while the CLI or the loop read.
Each thread gets its own connection (sqlite3 connections must not be shared
between threads mid-statement), WAL lets readers run beside the one writer, and
`busy_timeout` makes a second writer wait instead of failing with "database is locked".
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from semlayout.errors import SemlayoutError
from semlayout.monitoring.schema import BUSY_TIMEOUT_MS, SCHEMA, SCHEMA_VERSION


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


def _epoch(t: datetime | float | int | None) -> float | None:
    if t is None:
        return None
    if isinstance(t, datetime):
        if t.tzinfo is None:  # naive datetimes are taken as UTC, as everywhere in the project
            t = t.replace(tzinfo=UTC)
        return t.timestamp()
    return float(t)


class MonitorStore:
    """Thread-safe access to the monitoring database at `path` (created on first use).

    Python API for the continuous-learning loop: `drift_rate(window)`,
    `rolling_ssim(direction, window)`, `feedback_count(since)`,
    `record_trigger_decision(...)`, `last_trigger_time()`; the `*_stats` variants
    also return how many samples the number rests on.
    """

    def __init__(self, path: str | Path, create: bool = True):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise SemlayoutError(f"monitoring database not found: {self.path}")
        if self.path.exists() and self.path.is_dir():
            raise SemlayoutError(
                f"monitoring database path is a folder, expected a file: {self.path}"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        try:
            # executescript commits on its own, so the transaction is spelled out in the script
            self._conn().executescript(
                "BEGIN IMMEDIATE;" + SCHEMA + "INSERT OR IGNORE INTO meta (key, value) VALUES "
                f"('schema_version', '{SCHEMA_VERSION}'); COMMIT;"
            )
        except sqlite3.DatabaseError as err:
            raise SemlayoutError(
                f"{self.path} is not a usable SQLite monitoring database: {err}"
            ) from None

    # ------------------------------------------------------------ connections
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # check_same_thread=False only so close() may close every thread's connection;
            # each connection is still used by the one thread that opened it.
            conn = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; BEGIN IMMEDIATE takes the write lock up front
        (no upgrade deadlock)."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        with self._all_lock:
            for conn in self._all:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._all.clear()
        self._local = threading.local()

    def journal_mode(self) -> str:
        return str(self._conn().execute("PRAGMA journal_mode").fetchone()[0])

    def check_writable(self) -> None:
        """Raise if a write transaction cannot be taken now (used by /readyz)."""
        with self._tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_ready_check', ?)",
                (str(time.time()),),
            )

    # ------------------------------------------------------------ writes
    def add_prediction(self, pred: Prediction) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO predictions (id, ts, direction, model_version, input_sha256, width,"
                " height, output_png) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    pred.id,
                    pred.ts,
                    pred.direction,
                    pred.model_version,
                    pred.input_sha256,
                    pred.width,
                    pred.height,
                    pred.output_png,
                ),
            )

    def add_inference_event(
        self,
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
    ) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO inference_events (ts, endpoint, direction, prediction_id,"
                " model_version, status, http_status, error, latency_ms, forward_ms, batch_size,"
                " input_stats, output_stats) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    ts or time.time(),
                    endpoint,
                    direction,
                    prediction_id,
                    model_version,
                    status,
                    http_status,
                    error,
                    latency_ms,
                    forward_ms,
                    batch_size,
                    json.dumps(dict(input_stats)) if input_stats is not None else None,
                    json.dumps(dict(output_stats)) if output_stats is not None else None,
                ),
            )

    def add_drift_event(
        self,
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
    ) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO drift_events (ts, prediction_id, direction, drifted, max_abs_z, kl,"
                " score, z, features) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    ts or time.time(),
                    prediction_id,
                    direction,
                    int(drifted),
                    max_abs_z,
                    kl,
                    score,
                    json.dumps(dict(z)),
                    json.dumps(dict(features)),
                ),
            )

    def add_ground_truth(
        self,
        prediction_id: str,
        direction: str,
        model_version: str,
        metrics: Mapping[str, float],
        ts: float | None = None,
    ) -> None:
        """Store the quality of one prediction; a second truth for the same id replaces the
        first."""
        with self._tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO ground_truth (prediction_id, ts, direction, model_version,"
                " l1, ssim, psnr, iou) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    prediction_id,
                    ts or time.time(),
                    direction,
                    model_version,
                    float(metrics["l1"]),
                    float(metrics["ssim"]),
                    float(metrics["psnr"]),
                    float(metrics["iou"]),
                ),
            )

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
    ) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO feedback (id, ts, pattern_type, sem_sha256, layout_sha256, sem_path,"
                " layout_path, folder) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    id,
                    ts or time.time(),
                    pattern_type,
                    sem_sha256,
                    layout_sha256,
                    sem_path,
                    layout_path,
                    folder,
                ),
            )

    def record_trigger_decision(
        self,
        fired: bool,
        details: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        at: datetime | float | None = None,
    ) -> int:
        """Record one decision of the loop (fired or not); returns its row id.

        `details` is any JSON-serialisable mapping (e.g. `TriggerDecision.to_dict()`).
        """
        ts = _epoch(at) or time.time()
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT INTO trigger_decisions (ts, fired, run_id, details) VALUES (?, ?, ?, ?)",
                (ts, int(bool(fired)), run_id, json.dumps(dict(details or {}), default=str)),
            )
            return int(cur.lastrowid or 0)

    def prune_outputs(self, keep: int) -> int:
        """Drop the output PNGs of all but the newest `keep` predictions (the rows stay, so drift
        and quality history is kept; only late ground truth for old ids becomes impossible)."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE predictions SET output_png = NULL "
                "WHERE output_png IS NOT NULL AND rowid <= "
                "(SELECT rowid FROM predictions ORDER BY rowid DESC LIMIT 1 OFFSET ?)",
                (int(keep),),
            )
            return int(cur.rowcount)

    # ------------------------------------------------------------ reads
    def get_prediction(self, prediction_id: str) -> Prediction | None:
        row = (
            self._conn()
            .execute(
                "SELECT id, ts, direction, model_version, input_sha256, width, height, output_png"
                " FROM predictions WHERE id = ?",
                (prediction_id,),
            )
            .fetchone()
        )
        return None if row is None else Prediction(**dict(row))

    def count(self, table: str) -> int:
        if table not in {
            "predictions",
            "inference_events",
            "drift_events",
            "ground_truth",
            "feedback",
            "trigger_decisions",
        }:
            raise SemlayoutError(f"unknown monitoring table '{table}'")
        return int(self._conn().execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    def drift_stats(self, window: int, direction: str | None = None) -> tuple[float | None, int]:
        """(share of drifted images among the last `window` translated images,
        how many there were)."""
        sql = "SELECT drifted FROM drift_events"
        args: tuple[Any, ...] = ()
        if direction is not None:
            sql += " WHERE direction = ?"
            args = (direction,)
        rows = (
            self._conn()
            .execute(
                f"SELECT AVG(drifted), COUNT(*) FROM ({sql} ORDER BY id DESC" " LIMIT ?)",
                (*args, int(window)),
            )
            .fetchone()
        )
        n = int(rows[1])
        return (float(rows[0]) if n else None), n

    def drift_rate(self, window: int, direction: str | None = None) -> float | None:
        """Share of drifted images among the last `window` (None when there is no traffic)."""
        return self.drift_stats(window, direction)[0]

    def rolling_ssim_stats(self, direction: str, window: int) -> tuple[float | None, int]:
        """(mean SSIM of the last `window` predictions of `direction` that received
        ground truth, n)."""
        row = (
            self._conn()
            .execute(
                "SELECT AVG(ssim), COUNT(*) FROM (SELECT ssim FROM ground_truth WHERE direction = ?"
                " ORDER BY ts DESC LIMIT ?)",
                (direction, int(window)),
            )
            .fetchone()
        )
        n = int(row[1])
        return (float(row[0]) if n else None), n

    def rolling_ssim(self, direction: str, window: int) -> float | None:
        return self.rolling_ssim_stats(direction, window)[0]

    def feedback_count(self, since: datetime | float | None = None) -> int:
        """Reviewed pairs received since `since`
        (datetime, naive = UTC, or UNIX seconds; None = all)."""
        t = _epoch(since)
        if t is None:
            return self.count("feedback")
        return int(
            self._conn().execute("SELECT COUNT(*) FROM feedback WHERE ts > ?", (t,)).fetchone()[0]
        )

    def last_trigger_time(self) -> datetime | None:
        """When the loop last fired a fine-tune run (UTC), or None if it never did."""
        row = (
            self._conn().execute("SELECT MAX(ts) FROM trigger_decisions WHERE fired = 1").fetchone()
        )
        return None if row[0] is None else datetime.fromtimestamp(float(row[0]), tz=UTC)

    def trigger_decisions(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = (
            self._conn()
            .execute(
                "SELECT id, ts, fired, run_id, details FROM trigger_decisions"
                " ORDER BY id DESC LIMIT ?",
                (int(limit),),
            )
            .fetchall()
        )
        return [
            {
                "id": r["id"],
                "ts": r["ts"],
                "fired": bool(r["fired"]),
                "run_id": r["run_id"],
                "details": json.loads(r["details"]),
            }
            for r in rows
        ]

    def recent_drift_features(
        self, window: int, direction: str | None = None
    ) -> list[dict[str, Any]]:
        """Per-image features of the last `window` translated images (oldest first), with
        when (`ts`) and by which model version (`model_version`) each was served."""
        sql = (
            "SELECT d.direction, d.drifted, d.features, d.ts, p.model_version FROM drift_events d"
            " LEFT JOIN predictions p ON p.id = d.prediction_id"
        )
        args: tuple[Any, ...] = ()
        if direction is not None:
            sql += " WHERE d.direction = ?"
            args = (direction,)
        rows = (
            self._conn()
            .execute(sql + " ORDER BY d.id DESC LIMIT ?", (*args, int(window)))
            .fetchall()
        )
        return [
            {
                **json.loads(r["features"]),
                "direction": r["direction"],
                "drifted": bool(r["drifted"]),
                "ts": r["ts"],
                "model_version": r["model_version"],
            }
            for r in reversed(rows)
        ]

    def inference_window(self, window: int) -> list[dict[str, Any]]:
        """The last `window` inference events (newest first) as dicts."""
        rows = (
            self._conn()
            .execute(
                "SELECT ts, endpoint, direction, status, http_status, error, latency_ms, forward_ms"
                " FROM inference_events ORDER BY id DESC LIMIT ?",
                (int(window),),
            )
            .fetchall()
        )
        return [dict(r) for r in rows]
