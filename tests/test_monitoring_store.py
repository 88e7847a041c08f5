"""Monitoring store: WAL mode, concurrent writers, the loop's query API, bad paths."""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from semlayout.errors import SemlayoutError
from semlayout.monitoring.store import MonitorStore, Prediction


def _drift(store: MonitorStore, direction: str, drifted: bool) -> None:
    store.add_drift_event(
        direction=direction,
        drifted=drifted,
        max_abs_z=1.0,
        kl=0.1,
        score=0.5,
        z={"mean": 1.0},
        features={"mean": 0.3},
    )


def test_wal_mode_and_schema(tmp_path):
    store = MonitorStore(tmp_path / "m.db")
    assert store.journal_mode() == "wal"
    names = {
        r[0]
        for r in sqlite3.connect(tmp_path / "m.db").execute(
            "SELECT name FROM sqlite_master WHERE type='table'"
        )
    }
    assert {
        "predictions",
        "inference_events",
        "drift_events",
        "ground_truth",
        "feedback",
        "trigger_decisions",
    } <= names
    store.check_writable()
    store.close()


def test_concurrent_writers_lose_nothing(tmp_path):
    store = MonitorStore(tmp_path / "m.db")
    other = MonitorStore(tmp_path / "m.db")  # a second "process" (separate connections)
    n_threads, per = 8, 40
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            s = store if i % 2 else other
            for k in range(per):
                s.add_inference_event(
                    endpoint="/t",
                    status="ok",
                    http_status=200,
                    latency_ms=1.0,
                    direction="sem2layout",
                )
                _drift(s, "sem2layout", drifted=(k % 4 == 0))
                s.add_prediction(
                    Prediction(f"p{i}-{k}", time.time(), "sem2layout", "1", "h", 2, 2, b"x")
                )
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    total = n_threads * per
    assert store.count("inference_events") == total
    assert store.count("predictions") == total
    rate, n = store.drift_stats(window=total)
    assert n == total and rate == pytest.approx(0.25)
    store.close()
    other.close()


def test_loop_api(tmp_path):
    store = MonitorStore(tmp_path / "m.db")
    assert store.drift_rate(100) is None
    assert store.rolling_ssim("sem2layout", 10) is None
    assert store.last_trigger_time() is None
    for i in range(10):
        _drift(store, "sem2layout", drifted=i >= 6)  # last 4 drifted
    _drift(store, "layout2sem", drifted=True)
    assert store.drift_rate(6) == pytest.approx(
        5 / 6
    )  # newest: l2s + s2l 9, 8, 7, 6 drifted, 5 not
    assert store.drift_rate(5, "sem2layout") == pytest.approx(4 / 5)
    assert store.drift_stats(1000) == (pytest.approx(5 / 11), 11)
    for i, s in enumerate([0.9, 0.8, 0.7, 0.6]):
        store.add_ground_truth(
            f"p{i}",
            "sem2layout",
            "1",
            {"l1": 0.1, "ssim": s, "psnr": 20, "iou": 0.5},
            ts=1000.0 + i,
        )
    assert store.rolling_ssim("sem2layout", 2) == pytest.approx(0.65)  # newest two
    assert store.rolling_ssim_stats("sem2layout", 100) == (pytest.approx(0.75), 4)
    assert store.rolling_ssim("layout2sem", 10) is None
    t0 = datetime.now(UTC)
    store.add_feedback(
        id="a",
        pattern_type="x",
        sem_sha256="1",
        layout_sha256="2",
        sem_path="s",
        layout_path="l",
        folder="f",
        ts=(t0 - timedelta(hours=2)).timestamp(),
    )
    store.add_feedback(
        id="b",
        pattern_type="x",
        sem_sha256="1",
        layout_sha256="2",
        sem_path="s",
        layout_path="l",
        folder="f",
    )
    assert store.feedback_count() == 2
    assert store.feedback_count(t0 - timedelta(hours=1)) == 1
    assert store.feedback_count((t0 - timedelta(hours=1)).replace(tzinfo=None)) == 1  # naive = UTC
    store.record_trigger_decision(False, {"reasons": []}, at=t0 - timedelta(minutes=5))
    assert store.last_trigger_time() is None
    store.record_trigger_decision(True, {"reasons": ["drift"]}, run_id="run-1", at=t0)
    store.record_trigger_decision(False, {"reasons": []})
    assert abs((store.last_trigger_time() - t0).total_seconds()) < 1e-3
    assert store.trigger_decisions(1)[0]["fired"] is False
    store.close()


def test_bad_paths(tmp_path):
    with pytest.raises(SemlayoutError, match="not found"):
        MonitorStore(tmp_path / "missing.db", create=False)
    with pytest.raises(SemlayoutError, match="folder"):
        MonitorStore(tmp_path)
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(SemlayoutError, match="not a usable SQLite"):
        MonitorStore(tmp_path / "junk.db")


def test_prune_outputs_keeps_the_newest(tmp_path):
    store = MonitorStore(tmp_path / "m.db")
    for i in range(10):
        store.add_prediction(Prediction(f"p{i}", time.time(), "sem2layout", "1", "h", 2, 2, b"png"))
    assert store.prune_outputs(keep=3) == 7
    kept = [i for i in range(10) if store.get_prediction(f"p{i}").output_png is not None]
    assert kept == [7, 8, 9]
    assert store.count("predictions") == 10
    assert store.prune_outputs(keep=3) == 0
    store.close()
