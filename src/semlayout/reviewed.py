"""The reviewed pairs the loop learns from: where they are, which ones runs have used, and
collecting them into one pair folder for a fine-tune run.

Two sources: the API's feedback (`/v1/feedback`: rows of the monitoring store, images in the
feedback object store) and the complete batches of the S3 intake bucket (`semlayout intake
upload`). A pair is *pending* until a completed run has
consumed it; the ledger of consumed pairs is the `loop_consumed` table of the monitoring store.
"""

from __future__ import annotations

import csv
import hashlib
import io
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from semlayout.errors import SemlayoutError
from semlayout.monitoring import schema as t
from semlayout.monitoring.store import MonitorStore, insert_ignore

if TYPE_CHECKING:
    from semlayout.continual import LoopConfig


@dataclass(frozen=True)
class ReviewedPair:
    """One reviewed pair where it lives, before it is collected into a run's pair folder."""

    source: str  # "feedback" (the API's feedback store) or "intake" (an S3 intake batch)
    # the ledger key: the feedback pair's id, or the intake pair's content hash (pair_sha256)
    key: str
    id: str  # its id in the source
    pattern_type: str
    sem: str  # an object key under the feedback or the intake URI
    layout: str
    sem_sha256: str = ""  # checked on download (intake: of the PNG file; feedback: of the pixels)
    layout_sha256: str = ""
    # +1 / -1 as its source recorded it (the aligner's, at intake or feedback); "" unknown
    polarity: str = ""


class ConsumedLedger:
    """The reviewed pairs completed runs have used: table `loop_consumed` of the monitoring store
    (SQLite or PostgreSQL, through `MonitorStore`).

    It lives beside the trigger decisions (the monitoring store survives the CronJob's pods; the
    loop's workdir does not)."""

    def __init__(self, store: MonitorStore):
        self.store = store

    def keys(self) -> set[tuple[str, str]]:
        c = t.loop_consumed.c
        with self.store.reading() as conn:
            return {(r[0], r[1]) for r in conn.execute(sa.select(c.source, c.key))}

    def consume(
        self, pairs: dict[str, ReviewedPair], run_id: str, qc_failed: set[str] | None
    ) -> None:
        """Record the collected pairs (folder id -> pair) of one completed run, all or none."""
        now = time.time()
        rows = [
            {
                "source": p.source,
                "key": p.key,
                "pair_id": pid,
                "run_id": run_id,
                "qc_failed": None if qc_failed is None else int(pid in qc_failed),
                "ts": now,
            }
            for pid, p in pairs.items()
        ]
        with self.store.transaction() as conn:
            insert_ignore(conn, t.loop_consumed, rows)


def reviewed_pairs(cfg: LoopConfig, store: MonitorStore) -> Iterator[ReviewedPair]:
    """Every reviewed pair the loop can collect: the rows of the API's feedback store (those
    naming the loop's `feedback_uri`), then the complete intake batches oldest first (a pair
    uploaded in several batches once). Reads rows and manifests only."""
    if cfg.feedback_uri:
        from semlayout.monitoring.feedback import feedback_rows, feedback_uri

        for fb in feedback_rows(store, feedback_uri(cfg.feedback_uri)):
            yield ReviewedPair(
                "feedback",
                fb.id,
                fb.id,
                fb.pattern_type,
                fb.sem_path,
                fb.layout_path,
                fb.sem_sha256,
                fb.layout_sha256,
                "" if fb.polarity is None else str(fb.polarity),
            )
    if cfg.intake_uri:
        from semlayout.intake import BATCHES
        from semlayout.intake_batches import list_batches
        from semlayout.storage import open_store

        objects = open_store(cfg.intake_uri)
        seen: set[str] = set()
        for batch in list_batches(cfg.intake_uri):
            text = objects.get_bytes(f"{BATCHES}/{batch['batch_id']}/manifest.csv").decode("utf-8")
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
                    row.get("polarity") or "",
                )


def pending_pairs(cfg: LoopConfig, store: MonitorStore) -> list[ReviewedPair]:
    """The reviewed pairs no completed run has consumed: what `check` counts and `run` collects."""
    consumed = ConsumedLedger(store).keys()
    return [p for p in reviewed_pairs(cfg, store) if (p.source, p.key) not in consumed]


def collect_reviewed(
    cfg: LoopConfig, store: MonitorStore, dest: Path, pairs: list[ReviewedPair] | None = None
) -> dict[str, ReviewedPair]:
    """Write `pairs` (default: the pending ones) into one pair folder at `dest`, atomically.

    Returns {id in the folder: pair}; nothing is written when there are no pairs. The folder's
    manifest carries each pair's `source`, `source_id` and recorded `polarity`. Images are
    fetched one object at a time and checked against their hash (intake: of the PNG file;
    feedback: of the decoded pixels)."""
    from semlayout.data.pairs import PairArrays, write_pair_folder

    if pairs is None:
        pairs = pending_pairs(cfg, store)
    collected: dict[str, ReviewedPair] = {}
    for p in pairs:
        pid = p.id if p.id not in collected else f"{p.id[:100]}-{p.source}-{p.key[:12]}"
        collected[pid] = p
    if not collected:
        return collected
    fetch = _Fetcher(cfg)

    write_pair_folder(
        dest,
        (
            PairArrays(
                id=pid,
                sem=fetch.image(p, "sem"),
                layout=fetch.image(p, "layout"),
                pattern_type=p.pattern_type,
                # the pair's recorded polarity: the align step keeps it as declared_polarity
                extra={"source": p.source, "source_id": p.id, "polarity": p.polarity},
            )
            for pid, p in collected.items()
        ),
    )
    return collected


class _Fetcher:
    """The images of reviewed pairs, from the feedback or the intake object store."""

    def __init__(self, cfg: LoopConfig):
        from semlayout.storage import open_store

        self.feedback = open_store(cfg.feedback_uri) if cfg.feedback_uri else None
        self.intake = open_store(cfg.intake_uri) if cfg.intake_uri else None

    def image(self, p: ReviewedPair, role: str) -> Any:
        from semlayout.data.pairs import decode_gray8
        from semlayout.monitoring.performance import sha256

        ref, sha = (p.sem, p.sem_sha256) if role == "sem" else (p.layout, p.layout_sha256)
        objects = self.intake if p.source == "intake" else self.feedback
        assert objects is not None, "a pair of a source the config does not name"
        data = objects.get_bytes(ref)
        if p.source == "intake":
            if hashlib.sha256(data).hexdigest() != sha:
                raise SemlayoutError(f"intake object {ref} (pair '{p.id}') does not match its hash")
            return decode_gray8(data, ref)
        img = decode_gray8(data, ref)
        if sha and sha256(img) != sha:
            raise SemlayoutError(f"feedback object {ref} (pair '{p.id}') does not match its hash")
        return img


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
