"""The reviewed pairs the loop learns from: where they are, which ones runs have used, and
collecting them into one pair folder for a fine-tune run.

Two sources: the API's feedback pair folder (`/v1/feedback`) and the complete batches of the
S3 intake bucket (`semlayout intake upload`). A pair is *pending* until a completed run has
consumed it; the ledger of consumed pairs is the `loop_consumed` table of the monitoring store.
"""

from __future__ import annotations

import csv
import hashlib
import io
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from semlayout.errors import SemlayoutError

if TYPE_CHECKING:
    from semlayout.continual import LoopConfig


def _parse_time(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(float(value), tz=UTC)
    try:
        t = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


@dataclass(frozen=True)
class ReviewedPair:
    """One reviewed pair where it lives, before it is collected into a run's pair folder."""

    source: str  # "feedback" (the API's pair folder) or "intake" (an S3 intake batch)
    # the ledger key: the feedback pair's id, or the intake pair's content hash (pair_sha256)
    key: str
    id: str  # its id in the source
    pattern_type: str
    sem: str  # feedback: a local file; intake: an object key under the intake URI
    layout: str
    sem_sha256: str = ""  # intake: checked on download
    layout_sha256: str = ""


class ConsumedLedger:
    """The reviewed pairs completed runs have used: table `loop_consumed` in the monitoring store.

    It lives beside the trigger decisions (the monitor volume survives the CronJob's pods; the
    loop's workdir does not). The table appears with the first completed run."""

    TABLE = """CREATE TABLE IF NOT EXISTS loop_consumed (
        source TEXT NOT NULL,
        key TEXT NOT NULL,
        pair_id TEXT NOT NULL,
        run_id TEXT NOT NULL,
        qc_failed INTEGER,
        ts REAL NOT NULL,
        PRIMARY KEY (source, key))"""

    def __init__(self, db: str | Path):
        self.db = Path(db)

    def _connect(self) -> sqlite3.Connection:
        from semlayout.monitoring.schema import BUSY_TIMEOUT_MS

        conn = sqlite3.connect(self.db, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        return conn

    def keys(self) -> set[tuple[str, str]]:
        if not self.db.is_file():  # connecting would create an empty database
            return set()
        conn = self._connect()
        try:
            if (
                conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'loop_consumed'"
                ).fetchone()
                is None
            ):
                return set()
            return {(r[0], r[1]) for r in conn.execute("SELECT source, key FROM loop_consumed")}
        finally:
            conn.close()

    def consume(
        self, pairs: dict[str, ReviewedPair], run_id: str, qc_failed: set[str] | None
    ) -> None:
        """Record the collected pairs (folder id -> pair) of one completed run, all or none."""
        now = time.time()
        rows = [
            (
                p.source,
                p.key,
                pid,
                run_id,
                None if qc_failed is None else int(pid in qc_failed),
                now,
            )
            for pid, p in pairs.items()
        ]
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(self.TABLE)
                conn.executemany(
                    "INSERT OR IGNORE INTO loop_consumed (source, key, pair_id, run_id, qc_failed,"
                    " ts) VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()


def reviewed_pairs(cfg: LoopConfig) -> Iterator[ReviewedPair]:
    """Every reviewed pair the loop can collect: the API feedback folder, then the complete intake
    batches oldest first (a pair uploaded in several batches once). Reads manifests only."""
    if cfg.feedback_dir and (Path(cfg.feedback_dir) / "manifest.csv").is_file():
        from semlayout.data.pairs import read_manifest

        try:
            records = read_manifest(cfg.feedback_dir)
        except SemlayoutError as err:
            if "no pairs listed" not in str(err):
                raise
            records = []
        for rec in records:
            yield ReviewedPair(
                "feedback",
                rec.id,
                rec.id,
                rec.pattern_type,
                str(rec.sem_path),
                str(rec.layout_path),
            )
    if cfg.intake_uri:
        from semlayout.intake import BATCHES
        from semlayout.intake_batches import list_batches
        from semlayout.storage import open_store

        store = open_store(cfg.intake_uri)
        seen: set[str] = set()
        for batch in list_batches(cfg.intake_uri):
            text = store.get_bytes(f"{BATCHES}/{batch['batch_id']}/manifest.csv").decode("utf-8")
            for row in csv.DictReader(io.StringIO(text)):
                key = row.get("pair_sha256") or ""
                if not key or key in seen:
                    continue
                seen.add(key)
                yield ReviewedPair(
                    "intake",
                    key,
                    row["id"],
                    row.get("pattern_type") or "unknown",
                    row["sem_path"],
                    row["layout_path"],
                    row.get("sem_sha256") or "",
                    row.get("layout_sha256") or "",
                )


def pending_pairs(cfg: LoopConfig) -> list[ReviewedPair]:
    """The reviewed pairs no completed run has consumed: what `check` counts and `run` collects."""
    consumed = ConsumedLedger(cfg.monitor_db).keys()
    return [p for p in reviewed_pairs(cfg) if (p.source, p.key) not in consumed]


def collect_reviewed(
    cfg: LoopConfig, dest: Path, pairs: list[ReviewedPair] | None = None
) -> dict[str, ReviewedPair]:
    """Write `pairs` (default: the pending ones) into one pair folder at `dest`, atomically.

    Returns {id in the folder: pair}; nothing is written when there are no pairs. Intake images
    are fetched one object at a time and checked against their content hash."""
    from semlayout.data.pairs import PairArrays, decode_gray8, read_gray8, write_pair_folder

    if pairs is None:
        pairs = pending_pairs(cfg)
    collected: dict[str, ReviewedPair] = {}
    for p in pairs:
        pid = p.id if p.id not in collected else f"{p.id[:100]}-{p.source}-{p.key[:12]}"
        collected[pid] = p
    if not collected:
        return collected
    intake = None
    if any(p.source == "intake" for p in pairs):
        from semlayout.storage import open_store

        intake = open_store(cfg.intake_uri)

    def image(p: ReviewedPair, role: str) -> Any:
        ref, sha = (p.sem, p.sem_sha256) if role == "sem" else (p.layout, p.layout_sha256)
        if intake is None or p.source != "intake":
            return read_gray8(ref)
        data = intake.get_bytes(ref)
        if hashlib.sha256(data).hexdigest() != sha:
            raise SemlayoutError(f"intake object {ref} (pair '{p.id}') does not match its hash")
        return decode_gray8(data, ref)

    write_pair_folder(
        dest,
        (
            PairArrays(
                id=pid,
                sem=image(p, "sem"),
                layout=image(p, "layout"),
                pattern_type=p.pattern_type,
                extra={"source": p.source, "source_id": p.id},
            )
            for pid, p in collected.items()
        ),
    )
    return collected


def qc_failed_ids(run_dir: Path, ids: set[str]) -> set[str] | None:
    """The collected pairs the run's alignment QC rejected, read from its align step's
    `alignment.csv` for exactly these ids (kfp.local keeps the artifacts in the run folder);
    None when the run's artifacts are elsewhere (a run submitted to a KFP host)."""
    from semlayout.data.alignment_table import ALIGNMENT_FILE, failed_ids, read_alignment_table

    for table in sorted(run_dir.rglob(ALIGNMENT_FILE)):
        rows = read_alignment_table(table)
        if {r.id for r in rows} == ids:
            return failed_ids(rows)
    return None
