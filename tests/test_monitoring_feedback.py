"""Feedback store: pair folder readable by read_manifest, concurrent appends, validation."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from semlayout.data.pairs import ImageRejected, read_gray8, read_manifest
from semlayout.errors import SemlayoutError
from semlayout.monitoring.feedback import FeedbackStore
from semlayout.monitoring.store import MonitorStore


def _pair(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sem = rng.integers(0, 256, (304, 304), dtype=np.uint8)
    layout = np.where(rng.random((250, 250)) > 0.5, 255, 0).astype(np.uint8)
    return sem, layout


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
