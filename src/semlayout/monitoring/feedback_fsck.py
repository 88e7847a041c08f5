"""`semlayout monitor fsck`: do the feedback rows and the feedback object store agree?

Three kinds of mismatch, each reported, and repaired with `repair=True`:
- **a row without its images** (an object deleted or lost outside semlayout; `deep=True` also
  decodes every object and checks its pixel hash): the pair cannot be trained on, so its row
  is deleted (and its remaining image with the orphans) and the SEM may be posted again;
- **an orphan object** (a post that died between its objects and its row): harmless, nothing
  counts it, and re-posting the pair completes it; repair deletes orphans older than
  `grace_s` (younger ones may belong to a post in flight), checking each again just before;
- **a pair folder listed in a `manifest.csv` of an older semlayout but not in the database**
  (the older version wrote the manifest first and the row second, so a crash between the two
  left them one row apart): repair adds the row, pointing at the folder's `sem/` and `layout/`
  images, once they are checked.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from semlayout.data.pairs import ImageRejected, decode_gray8
from semlayout.errors import SemlayoutError
from semlayout.monitoring import schema as t
from semlayout.monitoring.feedback import (
    OBJECTS,
    FeedbackRow,
    feedback_rows,
    feedback_uri,
)
from semlayout.monitoring.performance import sha256
from semlayout.monitoring.store import MonitorStore
from semlayout.storage import Store, open_store

GRACE_S = 3600.0


@dataclass
class FsckReport:
    uri: str
    rows: int = 0
    objects: int = 0
    rows_missing_images: list[str] = field(default_factory=list)
    orphan_objects: list[str] = field(default_factory=list)
    young_orphans: int = 0
    legacy_unrecorded: list[str] = field(default_factory=list)
    repaired: dict[str, int] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not (self.rows_missing_images or self.orphan_objects or self.legacy_unrecorded)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "clean": self.clean}


def fsck(
    store: MonitorStore,
    uri: str,
    repair: bool = False,
    grace_s: float = GRACE_S,
    deep: bool = False,
    now: float | None = None,
) -> FsckReport:
    """Compare the `feedback` rows naming `uri` with the objects under it."""
    uri = feedback_uri(uri)
    objects = open_store(uri)
    now = time.time() if now is None else now
    rows = feedback_rows(store, uri)
    stored = objects.modified(f"{OBJECTS}/")
    report = FsckReport(uri, rows=len(rows), objects=len(stored))
    referenced = {k for r in rows for k in (r.sem_path, r.layout_path)}
    report.rows_missing_images = [
        r.id for r in rows if not _complete(objects, stored, r, deep=deep)
    ]
    for key, mtime in sorted(stored.items()):
        if key not in referenced:
            if now - mtime >= grace_s:
                report.orphan_objects.append(key)
            else:
                report.young_orphans += 1
    legacy = _legacy_rows(objects, {r.sem_sha256 for r in feedback_rows(store)}, uri)
    report.legacy_unrecorded = [r.id for r in legacy]
    if repair:
        deleted = _delete_rows(store, report.rows_missing_images)
        # the images the deleted rows still had are orphans now: collected in the same pass
        named = {k for r in feedback_rows(store, uri) for k in (r.sem_path, r.layout_path)}
        orphans = sorted(k for k, m in stored.items() if k not in named and now - m >= grace_s)
        report.repaired = {
            "rows_deleted": deleted,
            "orphans_deleted": _delete_orphans(store, objects, orphans, grace_s),
            "legacy_rows_added": _add_rows(store, legacy),
        }
    return report


def _complete(objects: Store, stored: dict[str, float], row: FeedbackRow, deep: bool) -> bool:
    for key, digest in ((row.sem_path, row.sem_sha256), (row.layout_path, row.layout_sha256)):
        if key.startswith(f"{OBJECTS}/"):
            if key not in stored:
                return False
        elif not objects.exists(key):  # a row of an older version: sem/<id>.png
            return False
        if deep:
            try:
                if sha256(decode_gray8(objects.get_bytes(key), key)) != digest:
                    return False
            except (ImageRejected, SemlayoutError):
                return False
    return True


def _delete_rows(store: MonitorStore, ids: list[str]) -> int:
    if not ids:
        return 0
    with store.transaction() as conn:
        return int(conn.execute(t.feedback.delete().where(t.feedback.c.id.in_(ids))).rowcount)


def _delete_orphans(store: MonitorStore, objects: Store, keys: list[str], grace_s: float) -> int:
    """Delete orphans that are still orphans and still old, checked again one by one."""
    n = 0
    f = t.feedback
    for key in keys:
        with store.reading() as conn:
            named = conn.execute(
                sa.select(f.c.id).where((f.c.sem_path == key) | (f.c.layout_path == key)).limit(1)
            ).first()
        mtime = objects.modified(key).get(key)
        if named is None and mtime is not None and time.time() - mtime >= grace_s:
            objects.delete(key)
            n += 1
    return n


def _legacy_rows(objects: Store, recorded: set[str], uri: str) -> list[FeedbackRow]:
    """Pairs of an older version's `manifest.csv` whose SEM has no row, with their images
    checked (an unreadable pair is left out: it could not be trained on)."""
    if not objects.exists("manifest.csv"):
        return []
    text = objects.get_bytes("manifest.csv").decode("utf-8", errors="replace")
    out: list[FeedbackRow] = []
    for rec in csv.DictReader(io.StringIO(text)):
        try:
            sem = decode_gray8(objects.get_bytes(rec["sem_path"]), rec["sem_path"])
            lay = decode_gray8(objects.get_bytes(rec["layout_path"]), rec["layout_path"])
        except (KeyError, SemlayoutError):
            continue
        sem_h = sha256(sem)
        if sem_h in recorded:
            continue
        recorded.add(sem_h)
        out.append(
            FeedbackRow(
                id=rec["id"],
                ts=_received(rec.get("received_at", "")),
                pattern_type=rec.get("pattern_type") or "unknown",
                sem_sha256=sem_h,
                layout_sha256=sha256(lay),
                sem_path=rec["sem_path"],
                layout_path=rec["layout_path"],
                folder=uri,
            )
        )
    return out


def _received(value: str) -> float:
    from datetime import UTC, datetime

    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return time.time()
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


def _add_rows(store: MonitorStore, rows: list[FeedbackRow]) -> int:
    if not rows:
        return 0
    with store.transaction() as conn:
        conn.execute(t.feedback.insert(), [r.__dict__ for r in rows])
    return len(rows)
