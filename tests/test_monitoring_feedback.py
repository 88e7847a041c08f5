"""Feedback store: pair folder readable by read_manifest, concurrent appends, validation."""

from __future__ import annotations

import csv
import io
import threading

import numpy as np
import pytest
from helpers_serving import alignable_pair

from semlayout.data.pairs import ImageRejected, read_gray8, read_manifest
from semlayout.errors import SemlayoutError
from semlayout.monitoring.feedback import DuplicatePair, FeedbackStore
from semlayout.monitoring.store import MonitorStore


def _pair(seed: int) -> tuple[np.ndarray, np.ndarray]:
    return alignable_pair(seed)


def test_pairs_land_in_a_readable_pair_folder_and_the_store(tmp_path):
    store = MonitorStore(tmp_path / "m.db")
    fb = FeedbackStore(tmp_path / "fb", store)
    written = {}
    errors = []

    def add(i: int) -> None:
        try:
            sem, lay = _pair(i)
            row = fb.add(sem, lay, "line_space" if i % 2 else "via_array")
            written[row["id"]] = (sem, lay)
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    recs = read_manifest(tmp_path / "fb")
    assert len(recs) == 12 == fb.count() == store.feedback_count()
    for r in recs:
        sem, lay = written[r.id]
        assert np.array_equal(read_gray8(r.sem_path), sem)
        assert np.array_equal(read_gray8(r.layout_path), lay)
        assert r.extra["source"] == "api_feedback"
    assert not [p for p in (tmp_path / "fb").rglob("*tmp*")]
    store.close()


def test_validation(tmp_path):
    fb = FeedbackStore(tmp_path / "fb")
    sem, lay = _pair(0)
    with pytest.raises(ImageRejected, match="304x304"):
        fb.add(sem[:250, :250], lay, "x")
    with pytest.raises(ImageRejected, match="only 0 and 255"):
        fb.add(sem, (lay // 2), "x")
    with pytest.raises(SemlayoutError, match="pattern_type"):
        fb.add(sem, lay, "../etc")
    assert not (tmp_path / "fb" / "manifest.csv").exists()


def test_a_sem_counts_once_and_an_unaligned_pair_is_refused(tmp_path):
    store = MonitorStore(tmp_path / "m.db")
    fb = FeedbackStore(tmp_path / "fb", store)
    sem, lay = _pair(1)
    first = fb.add(sem, lay, "via")
    with pytest.raises(DuplicatePair, match=f"same pair was already received as '{first['id']}'"):
        fb.add(sem, lay, "via")
    with pytest.raises(DuplicatePair, match="this SEM"):
        corrected = lay.copy()
        corrected[100:110, 100:110] = 255 - corrected[100:110, 100:110]
        fb.add(sem, corrected, "via")  # a corrected layout for the same SEM: still one SEM
    noise = np.random.default_rng(0).integers(0, 256, (304, 304), dtype=np.uint8)
    with pytest.raises(ImageRejected, match="does not align") as err:
        fb.add(noise, lay, "via")
    assert err.value.reason.startswith("align:")
    with pytest.raises(SemlayoutError, match="pattern_type"):
        fb.add(*_pair(3), "via\n")  # "$" would have matched before the final newline
    assert len(read_manifest(tmp_path / "fb")) == 1 == store.feedback_count()
    assert len(list((tmp_path / "fb" / "sem").glob("*.png"))) == 1
    # the same SEM in a manifest written before the hash columns existed is found by its pixels
    manifest = tmp_path / "fb" / "manifest.csv"
    head, row = manifest.read_text().splitlines()
    cols = head.split(",")
    keep = [i for i, c in enumerate(cols) if not c.endswith("_pixel_sha256")]
    manifest.write_text(
        "\n".join(",".join(line.split(",")[i] for i in keep) for line in (head, row)) + "\n"
    )
    with pytest.raises(DuplicatePair):
        fb.add(sem, lay, "via")
    # the next accepted pair writes the old row's hash back (it is hashed once)
    fb.add(*_pair(4), "via")
    recs = list(csv.DictReader(io.StringIO(manifest.read_text())))
    assert [r["id"] for r in recs][0] == first["id"] and all(r["sem_pixel_sha256"] for r in recs)
    # an old row whose image is unreadable blocks nothing
    manifest.write_text(manifest.read_text().replace(recs[0]["sem_pixel_sha256"], ""))
    (tmp_path / "fb" / recs[0]["sem_path"]).write_bytes(b"x")
    fb.add(*_pair(5), "via")
    assert len(read_manifest(tmp_path / "fb")) == 3
    unchecked = FeedbackStore(tmp_path / "fb2", check_alignment=False)
    assert unchecked.add(noise, lay, "via")["id"]
    store.close()
