"""Feedback store: objects first (content-addressed, a local folder or moto's S3 over HTTP),
the row last; a SEM counts once; an orphan is completed by re-posting it; `fsck` reports and
repairs every mismatch, including the manifest/row split an older version could leave."""

from __future__ import annotations

import csv
import os
import threading
import time

import helpers_postgres as hp
import helpers_servers as hs
import numpy as np
import pytest
from helpers_serving import alignable_pair

from semlayout.data.pairs import ImageRejected, decode_gray8, encode_png
from semlayout.errors import SemlayoutError
from semlayout.monitoring.database import StoreUnavailable
from semlayout.monitoring.feedback import (
    DuplicatePair,
    FeedbackStore,
    feedback_rows,
    object_key,
)
from semlayout.monitoring.feedback_fsck import fsck
from semlayout.monitoring.performance import sha256
from semlayout.monitoring.store import MonitorStore
from semlayout.storage import open_store

moto_server, s3_env, s3_bucket = hs.moto_server, hs.s3_env, hs.s3_bucket
postgres, pg_url = hp.postgres, hp.pg_url


def _pair(seed: int) -> tuple[np.ndarray, np.ndarray]:
    return alignable_pair(seed)


@pytest.fixture(params=["folder", "s3"])
def feedback_uri(request, tmp_path) -> str:
    if request.param == "folder":
        return str(tmp_path / "fb")
    return f"s3://{request.getfixturevalue('s3_bucket')}/feedback"


def test_pairs_land_as_objects_then_rows(tmp_path, feedback_uri):
    store = MonitorStore(tmp_path / "m.db")
    fb = FeedbackStore(feedback_uri, store)
    written = {}
    errors = []

    def add(i: int) -> None:
        try:
            sem, lay = _pair(i)
            row = fb.add(sem, lay, "line_space" if i % 2 else "via_array")
            written[row["id"]] = (sem, lay)
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    rows = feedback_rows(store, fb.uri)
    assert len(rows) == 8 == fb.count() == store.feedback_count()
    objects = open_store(feedback_uri)
    for r in rows:
        sem, lay = written[r.id]
        assert r.sem_path == object_key(sha256(sem)) and r.folder == fb.uri
        assert np.array_equal(decode_gray8(objects.get_bytes(r.sem_path)), sem)
        assert np.array_equal(decode_gray8(objects.get_bytes(r.layout_path)), lay)
    assert len(objects.list("objects/")) == 16
    assert fsck(store, feedback_uri).clean
    store.close()


def test_validation_writes_nothing(tmp_path):
    store = MonitorStore(tmp_path / "m.db")
    fb = FeedbackStore(tmp_path / "fb", store)
    sem, lay = _pair(0)
    with pytest.raises(ImageRejected, match="304x304"):
        fb.add(sem[:250, :250], lay, "x")
    with pytest.raises(ImageRejected, match="only 0 and 255"):
        fb.add(sem, (lay // 2), "x")
    with pytest.raises(SemlayoutError, match="pattern_type"):
        fb.add(sem, lay, "../etc")
    with pytest.raises(SemlayoutError, match="pattern_type"):
        fb.add(sem, lay, "via\n")  # "$" would have matched before the final newline
    noise = np.random.default_rng(0).integers(0, 256, (304, 304), dtype=np.uint8)
    with pytest.raises(ImageRejected, match="does not align") as err:
        fb.add(noise, lay, "via")
    assert err.value.reason.startswith("align:")
    assert not (tmp_path / "fb").exists() and store.feedback_count() == 0
    unchecked = FeedbackStore(tmp_path / "fb2", store, check_alignment=False)
    assert unchecked.add(noise, lay, "via")["id"]
    store.close()


def test_a_sem_counts_once_even_across_replicas(pg_url, tmp_path):
    """Two replicas (two stores, one PostgreSQL database) racing with the same SEM: one row,
    the others refused 409, whichever the order."""
    replicas = [FeedbackStore(tmp_path / "fb", MonitorStore(pg_url)) for _ in range(2)]
    sem, lay = _pair(1)
    first = replicas[0].add(sem, lay, "via")
    with pytest.raises(DuplicatePair, match=f"same pair was already received as '{first['id']}'"):
        replicas[1].add(sem, lay, "via")
    corrected = lay.copy()
    corrected[100:110, 100:110] = 255 - corrected[100:110, 100:110]
    with pytest.raises(DuplicatePair, match="this SEM"):
        replicas[1].add(sem, corrected, "via")  # a corrected layout for the same SEM: one SEM
    outcomes: list[str] = []
    barrier = threading.Barrier(8)
    sem2, lay2 = _pair(2)

    def race(i: int) -> None:
        barrier.wait()
        try:
            replicas[i % 2].add(sem2, lay2, "via")
            outcomes.append("stored")
        except DuplicatePair:
            outcomes.append("409")

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["409"] * 7 + ["stored"]
    assert replicas[0].store.feedback_count() == 2


def test_an_orphan_is_harmless_and_reposting_completes_it(tmp_path, feedback_uri):
    """A post that died after its objects (here: the database refused the row) leaves an
    orphan nothing counts; posting the pair again completes it."""
    store = MonitorStore(tmp_path / "m.db")
    fb = FeedbackStore(feedback_uri, store)
    sem, lay = _pair(7)

    def refuse(**_row):
        raise StoreUnavailable("monitoring store unavailable: database or disk is full")

    real = store.add_feedback
    store.add_feedback = refuse  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailable):
        fb.add(sem, lay, "via")
    store.add_feedback = real  # type: ignore[method-assign]
    assert store.feedback_count() == 0
    assert open_store(feedback_uri).exists(object_key(sha256(sem)))
    report = fsck(store, feedback_uri, grace_s=0)
    assert report.orphan_objects == sorted([object_key(sha256(sem)), object_key(sha256(lay))])
    row = fb.add(sem, lay, "via")  # re-posted: completed, not refused
    assert store.feedback_count() == 1 and row["sem_path"] == object_key(sha256(sem))
    assert fsck(store, feedback_uri, grace_s=0).clean
    store.close()


def test_a_full_object_store_is_unavailable_not_a_bug(tmp_path):
    store = MonitorStore(tmp_path / "m.db")
    (tmp_path / "fb").mkdir()
    (tmp_path / "fb" / "objects").write_text("a file where the objects folder belongs")
    with pytest.raises(StoreUnavailable, match="feedback store unavailable"):
        FeedbackStore(tmp_path / "fb", store).add(*_pair(3), "via")
    assert store.feedback_count() == 0
    store.close()


def test_fsck_reports_and_repairs(tmp_path, feedback_uri):
    store = MonitorStore(tmp_path / "m.db")
    fb = FeedbackStore(feedback_uri, store)
    objects = open_store(feedback_uri)
    kept = fb.add(*_pair(10), "via")
    lost = fb.add(*_pair(11), "via")
    objects.delete(lost["sem_path"])  # lost outside semlayout
    corrupt = fb.add(*_pair(12), "via")
    objects.put_bytes(corrupt["layout_path"], encode_png(np.zeros((250, 250), np.uint8)))
    objects.put_bytes(object_key("0" * 64), b"orphan")  # a post that died before its row

    report = fsck(store, feedback_uri, grace_s=3600)
    assert report.rows_missing_images == [lost["id"]] and report.young_orphans == 1
    assert not report.orphan_objects and not report.clean
    deep = fsck(store, feedback_uri, grace_s=0, deep=True)
    assert set(deep.rows_missing_images) == {lost["id"], corrupt["id"]}
    assert deep.orphan_objects == [object_key("0" * 64)]

    fixed = fsck(store, feedback_uri, repair=True, grace_s=0, deep=True)
    # the orphan, and the 3 images the deleted rows left (the lost SEM is gone already)
    assert fixed.repaired == {"rows_deleted": 2, "orphans_deleted": 4, "legacy_rows_added": 0}
    after = fsck(store, feedback_uri, grace_s=0, deep=True)
    assert after.clean and after.rows == 1
    assert [r.id for r in feedback_rows(store)] == [kept["id"]]
    store.close()


def test_fsck_adopts_pairs_an_older_version_left_in_the_manifest_only(tmp_path):
    """semlayout 0.1.0 wrote the folder's manifest first and the row second: a kill -9 between
    them left a pair in the manifest and not in the database, refused with 409 for good. fsck
    finds it and --repair records it."""
    folder = tmp_path / "fb"
    for sub in ("sem", "layout"):
        (folder / sub).mkdir(parents=True)
    store = MonitorStore(tmp_path / "m.db")
    rows = []
    for i, pid in enumerate(("fb-old-1", "fb-old-2")):
        sem, lay = _pair(20 + i)
        (folder / "sem" / f"{pid}.png").write_bytes(encode_png(sem))
        (folder / "layout" / f"{pid}.png").write_bytes(encode_png(lay))
        rows.append(
            {
                "id": pid,
                "sem_path": f"sem/{pid}.png",
                "layout_path": f"layout/{pid}.png",
                "pattern_type": "via",
                "source": "api_feedback",
                "received_at": "2026-01-01T00:00:00+00:00",
            }
        )
        if i == 0:  # the first one did get its row
            store.add_feedback(
                id=pid,
                pattern_type="via",
                sem_sha256=sha256(sem),
                layout_sha256=sha256(lay),
                sem_path=f"sem/{pid}.png",
                layout_path=f"layout/{pid}.png",
                folder=str(folder),
            )
    with open(folder / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    report = fsck(store, str(folder))
    assert report.legacy_unrecorded == ["fb-old-2"] and not report.clean
    assert fsck(store, str(folder), repair=True).repaired["legacy_rows_added"] == 1
    assert fsck(store, str(folder)).clean and store.feedback_count() == 2
    with pytest.raises(DuplicatePair, match="fb-old-2"):
        FeedbackStore(folder, store).add(*_pair(21), "via")
    store.close()


def test_fsck_leaves_young_orphans_and_rechecks_before_deleting(tmp_path):
    store = MonitorStore(tmp_path / "m.db")
    objects = open_store(str(tmp_path / "fb"))
    objects.put_bytes(object_key("1" * 64), b"old")
    old = time.time() - 7200
    os.utime(tmp_path / "fb" / object_key("1" * 64), (old, old))
    objects.put_bytes(object_key("2" * 64), b"new")
    report = fsck(store, str(tmp_path / "fb"), repair=True)
    assert report.repaired["orphans_deleted"] == 1 and report.young_orphans == 1
    assert objects.list("objects/") == [object_key("2" * 64)]
    store.close()
