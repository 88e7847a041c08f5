"""Monitoring store on both backends (a SQLite file; a real PostgreSQL server started by the
tests): the schema the migrations build, concurrent writers, the loop's query API, one
transaction per request, storage faults and recovery, the retention policy, bad `--db`s."""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import helpers_postgres as hp
import pytest
import sqlalchemy as sa

from semlayout.errors import SemlayoutError
from semlayout.monitoring.database import StoreUnavailable, parse_db
from semlayout.monitoring.retention import RetentionPolicy, enforce, prune_outputs
from semlayout.monitoring.store import MonitorStore, Prediction, TranslationRecord

postgres, pg_url = hp.postgres, hp.pg_url
LEGACY_DDL = Path(__file__).with_name("legacy_monitor_schema.sql")


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "m.db")
    return request.getfixturevalue("pg_url")


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


def _record(pid: str, drift: bool = True) -> TranslationRecord:
    return TranslationRecord(
        Prediction(pid, time.time(), "sem2layout", "1", "h", 4, 4, b"png"),
        {"endpoint": "/t", "status": "ok", "http_status": 200, "latency_ms": 1.0},
        {
            "direction": "sem2layout",
            "drifted": False,
            "max_abs_z": 1.0,
            "kl": 0.1,
            "score": 0.2,
            "z": {},
            "features": {"mean": 1.0},
            "prediction_id": pid,
        }
        if drift
        else None,
    )


def test_db_option_is_a_path_or_a_url(tmp_path):
    assert parse_db(tmp_path / "m.db").path == tmp_path / "m.db"
    assert parse_db("rel/m.db").kind == "sqlite"
    url = parse_db("postgresql://u:secret@db.example:5433/monitor")
    assert url.kind == "postgresql" and url.path is None
    assert url.url.drivername == "postgresql+psycopg" and url.url.database == "monitor"
    assert "secret" not in url.describe() and "db.example:5433/monitor" in url.describe()
    assert parse_db("postgres://h/d").kind == "postgresql"
    for bad, why in (
        ("postgresql://h", "names no database"),
        ("mysql://h/d", "unsupported scheme"),
        ("", "empty"),
    ):
        with pytest.raises(SemlayoutError, match=why):
            parse_db(bad)


def test_migrations_build_the_schema_the_code_uses(db):
    """What the Alembic revisions create is exactly `semlayout.monitoring.schema` (compared
    by Alembic's own autogenerate), on both backends."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from semlayout.monitoring import migrations, schema

    store = MonitorStore(db)
    with store.engine.connect() as conn:
        assert migrations.current(conn) == migrations.head()
        ctx = MigrationContext.configure(conn, opts={"compare_type": False})
        diff = [
            d
            for d in compare_metadata(ctx, schema.metadata)
            if not (d[0] == "remove_table" and d[1].name == migrations.VERSION_TABLE)
        ]
    assert diff == []
    assert store.journal_mode() == ("wal" if store.db.path else "postgresql")
    store.check_writable()
    store.close()


def test_an_older_sqlite_database_is_adopted_and_upgraded(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(LEGACY_DDL.read_text())
    conn.execute(
        "INSERT INTO predictions VALUES ('p1', 1.0, 'sem2layout', '3', 'h', 2, 2, x'0102')"
    )
    for fid, ts in (("fb-1", 1.0), ("fb-2", 2.0)):  # one SEM twice: an old version let it in
        conn.execute(
            "INSERT INTO feedback VALUES (?, ?, 'x', 'samesem', 'l', 's', 'l', 'f')", (fid, ts)
        )
    conn.commit()
    conn.close()
    store = MonitorStore(path, create=False)
    assert store.get_prediction("p1").output_png == b"\x01\x02"
    with store.reading() as c:
        assert c.execute(sa.text("SELECT output_bytes FROM predictions")).scalar() == 2
        assert c.execute(sa.text("SELECT id FROM feedback")).scalars().all() == ["fb-1"]
    with pytest.raises(sa.exc.IntegrityError):  # one row per SEM from now on
        store.add_feedback(
            id="fb-3",
            pattern_type="x",
            sem_sha256="samesem",
            layout_sha256="l",
            sem_path="s",
            layout_path="l",
            folder="f",
        )
    store.close()


def test_replicas_opening_a_new_database_together_migrate_it_once(db):
    stores: list[MonitorStore] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            stores.append(MonitorStore(db))
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors and len(stores) == 4
    stores[0].check_writable()
    for s in stores:
        s.close()


def test_concurrent_writers_lose_nothing(db):
    store = MonitorStore(db)
    other = MonitorStore(db)  # a second replica (its own pool)
    n_threads, per = 8, 32
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            s = store if i % 2 else other
            for k in range(per):
                s.record_translations([_record(f"p{i}-{k}", drift=(k % 4 == 0))])
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    total = n_threads * per
    assert store.count("inference_events") == store.count("predictions") == total
    assert store.count("drift_events") == total // 4
    store.close()
    other.close()


def test_loop_api(db):
    store = MonitorStore(db)
    assert store.drift_rate(100) is None
    assert store.rolling_ssim("sem2layout", 10) is None
    assert store.last_trigger_time() is None
    for i in range(10):
        _drift(store, "sem2layout", drifted=i >= 6)  # last 4 drifted
    _drift(store, "layout2sem", drifted=True)
    # newest: l2s + s2l 9, 8, 7, 6 drifted, 5 not
    assert store.drift_rate(6) == pytest.approx(5 / 6)
    assert store.drift_rate(5, "sem2layout") == pytest.approx(4 / 5)
    assert store.drift_stats(1000) == (pytest.approx(5 / 11), 11)
    for i, s in enumerate([0.9, 0.8, 0.7, 0.6]):
        store.add_ground_truth(
            f"p{i}", "sem2layout", "1", {"l1": 0.1, "ssim": s, "psnr": 20, "iou": 0.5}, ts=1e3 + i
        )
    store.add_ground_truth("p0", "sem2layout", "1", {"l1": 0, "ssim": 0.9, "psnr": 1, "iou": 1})
    assert store.count("ground_truth") == 4  # a second truth replaces the first
    assert store.rolling_ssim("sem2layout", 2) == pytest.approx(0.75)  # p0 (newest) and p3
    assert store.rolling_ssim_stats("sem2layout", 100) == (pytest.approx(0.75), 4)
    assert store.rolling_ssim("layout2sem", 10) is None
    t0 = datetime.now(UTC)
    for fid, sem, ts in (("a", "1", (t0 - timedelta(hours=2)).timestamp()), ("b", "2", None)):
        store.add_feedback(
            id=fid,
            pattern_type="x",
            sem_sha256=sem,
            layout_sha256="2",
            sem_path="s",
            layout_path="l",
            folder="f",
            ts=ts,
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


def test_a_request_is_recorded_whole_or_not_at_all(db):
    """A batch whose second prediction collides fails as a whole: no prediction, drift or
    inference row of it remains (one transaction per request)."""
    store = MonitorStore(db)
    store.record_translations([_record("taken")])
    before = {t: store.count(t) for t in ("predictions", "drift_events", "inference_events")}
    with pytest.raises(sa.exc.IntegrityError):
        store.record_translations([_record("fresh"), _record("taken")])
    after = {t: store.count(t) for t in before}
    assert after == before and store.get_prediction("fresh") is None
    store.close()


def test_a_read_only_sqlite_file_is_unavailable_then_recovers(tmp_path):
    """Faults surface as StoreUnavailable with SQLite's reason; once the file is writable again
    the very next write succeeds (no connection opened during the fault survives it). Root
    ignores file modes, so the fault here is SQLite's own query_only switch on every pooled
    connection; the service tests make the file system itself read-only."""
    store = MonitorStore(tmp_path / "m.db")
    store.record_translations([_record("a")])
    from sqlalchemy import event

    def read_only(dbapi_conn, _rec):  # every connection from now on refuses writes
        dbapi_conn.execute("PRAGMA query_only = ON")

    store.engine.dispose()
    event.listen(store.engine, "connect", read_only)
    for i in range(5):
        with pytest.raises(StoreUnavailable, match="readonly|read-only|query_only"):
            store.record_translations([_record(f"x{i}")])
    assert store.get_prediction("a") is not None  # reads still work
    event.remove(store.engine, "connect", read_only)
    store.record_translations([_record("b")])  # at once: the stale connections were retired
    store.check_writable()
    assert store.count("predictions") == 2
    store.close()


def test_postgres_faults_are_unavailable_and_recover(postgres, pg_url):
    """Read-only server, then a restart: StoreUnavailable with the server's reason while the
    fault lasts; the first write after it clears succeeds on a fresh connection."""
    store = MonitorStore(pg_url)
    store.record_translations([_record("a")])
    postgres.sql("ALTER SYSTEM SET default_transaction_read_only = on")
    postgres.sql("SELECT pg_reload_conf()")
    time.sleep(0.5)
    try:
        with pytest.raises(StoreUnavailable, match="read-only transaction"):
            store.record_translations([_record("ro")])
        with pytest.raises(StoreUnavailable):
            store.check_writable()
    finally:
        postgres.sql("ALTER SYSTEM RESET default_transaction_read_only")
        postgres.sql("SELECT pg_reload_conf()")
    time.sleep(0.5)
    store.record_translations([_record("b")])
    postgres.stop()
    try:
        with pytest.raises(StoreUnavailable, match="unavailable"):
            store.record_translations([_record("down")])
    finally:
        postgres.start()
    t0 = time.monotonic()
    store.record_translations([_record("c")])
    assert time.monotonic() - t0 < 5
    assert store.count("predictions") == 3
    store.close()


def test_retention_keeps_rows_and_bytes_within_the_policy(db):
    store = MonitorStore(db)
    for i in range(10):
        rec = _record(f"p{i}")
        pred = Prediction(f"p{i}", 1000.0 + i, "sem2layout", "1", "h", 2, 2, b"x" * 100)
        store.record_translations([TranslationRecord(pred, rec.event, rec.drift)])
    assert prune_outputs(store, keep=7) == 3
    kept = [i for i in range(10) if store.get_prediction(f"p{i}").output_png is not None]
    assert kept == list(range(3, 10))
    report = enforce(store, RetentionPolicy(max_rows=8, max_outputs=100, max_output_bytes=450))
    assert report.deleted["predictions"] == 2 and report.deleted["inference_events"] == 2
    assert store.count("predictions") == 8 and store.count("drift_events") == 8
    kept = [i for i in range(10) if (p := store.get_prediction(f"p{i}")) and p.output_png]
    assert kept == [6, 7, 8, 9]  # newest first, 4 x 100 bytes fit in 450
    assert enforce(store, RetentionPolicy(8, 100, 450)).outputs_dropped == 0  # idempotent
    store.close()


def test_bad_paths(tmp_path):
    with pytest.raises(SemlayoutError, match="not found"):
        MonitorStore(tmp_path / "missing.db", create=False)
    with pytest.raises(SemlayoutError, match="folder"):
        MonitorStore(tmp_path)
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(SemlayoutError, match="not a usable SQLite"):
        MonitorStore(tmp_path / "junk.db")
    assert not (tmp_path / "postgresql:").exists()


def test_an_unreachable_server_is_one_line(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable) as err:
        MonitorStore(f"postgresql://u:topsecret@127.0.0.1:{port}/monitor")
    assert time.monotonic() - t0 < 10
    assert "\n" not in str(err.value) and "topsecret" not in str(err.value)
    assert "127.0.0.1" in str(err.value)


def test_layer_evidence_from_two_replicas_loses_nothing(db):
    """Folds of one layer's evidence from two stores (replicas) at once: every image counted,
    the pooled sum what one process folding them all would hold (SQLite BEGIN IMMEDIATE,
    PostgreSQL SELECT ... FOR UPDATE); the configured polarity survives the folds."""
    from semlayout.monitoring.layer_book import LayerBook
    from semlayout.polarity_layer import LayerState

    a, b = MonitorStore(db), MonitorStore(db)
    books = (LayerBook(a), LayerBook(b))
    books[0].configure("L", -1)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(20):
                books[i % 2].fold("L", [0.25])  # s_bright (no cap) sums them all
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    got = books[1].get("L")
    want = LayerState().fold_all([0.25] * 120)
    assert (got.n, got.configured) == (120, -1)
    assert got.pooled == pytest.approx(want.pooled) and got.s_bright == pytest.approx(want.s_bright)
    assert [s.layer for s in books[0].all()] == ["L"]
    assert books[0].get("unknown") == LayerState("unknown")  # nothing recorded: a fresh state
    assert books[1].configure("L", None).configured is None
    a.close()
    b.close()
