"""The translate path's record writer on a real SQLite store: a request returns once its rows
are committed, groups are all-or-none per request, a full writer refuses at once and says so,
and closing commits everything it took."""

from __future__ import annotations

import asyncio
import threading

import pytest
from test_monitoring_store import _record

from semlayout.monitoring.store import MonitorStore
from semlayout.serving.record_writer import RecordWriter, WriterFull


class GatedStore(MonitorStore):
    """A real store whose commits wait until the test opens the gate (to hold requests)."""

    def __init__(self, url: str):
        super().__init__(url)
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.commits: list[int] = []

    def record_translations(self, records):  # type: ignore[no-untyped-def]
        self.entered.set()
        self.gate.wait(30)
        super().record_translations(records)
        self.commits.append(len(records))


def _ids(store: MonitorStore) -> set[str]:
    with store.engine.connect() as conn:
        return {r[0] for r in conn.exec_driver_sql("SELECT id FROM predictions")}


def test_requests_wait_for_their_commit_and_a_full_writer_says_so(tmp_path) -> None:
    store = GatedStore(str(tmp_path / "m.db"))
    writer = RecordWriter(store, max_pending=3)

    async def main() -> None:
        first = asyncio.ensure_future(writer.record([_record("a")]))
        await asyncio.to_thread(store.entered.wait, 30)  # the writer holds "a" in a commit
        more = [asyncio.ensure_future(writer.record([_record(p)])) for p in ("b", "c")]
        await asyncio.sleep(0)
        assert writer.pending == 3 and not first.done()
        with pytest.raises(WriterFull, match="monitoring writer full: 3 requests waiting"):
            await writer.record([_record("d")])
        assert _ids(store) == set()  # nothing answered, nothing committed yet
        store.gate.set()
        await asyncio.gather(first, *more)
        assert _ids(store) == {"a", "b", "c"} and writer.pending == 0

    asyncio.run(main())
    # "b" and "c" arrived during the first commit: they went in together
    assert store.commits == [1, 2]
    writer.close()


def test_a_group_is_all_or_none_per_request(tmp_path) -> None:
    store = GatedStore(str(tmp_path / "m.db"))
    store.gate.set()
    store.record_translations([_record("taken")])
    store.gate.clear()
    store.entered.clear()
    writer = RecordWriter(store)

    async def main() -> list[object]:
        hold = asyncio.ensure_future(writer.record([_record("h")]))
        await asyncio.to_thread(store.entered.wait, 30)
        group = [
            asyncio.ensure_future(writer.record(rs))
            for rs in ([_record("x1"), _record("x2")], [_record("y"), _record("taken")])
        ]
        await asyncio.sleep(0)
        store.gate.set()
        return await asyncio.gather(hold, *group, return_exceptions=True)

    hold, ok, bad = asyncio.run(main())
    assert hold is None and ok is None and isinstance(bad, Exception)
    # the request with a duplicate id failed alone and left nothing; its group-mate is in
    assert _ids(store) == {"taken", "h", "x1", "x2"}
    writer.close()


def test_closing_commits_what_it_took_and_refuses_more(tmp_path) -> None:
    store = GatedStore(str(tmp_path / "m.db"))
    writer = RecordWriter(store)

    async def main() -> None:
        waiting = [asyncio.ensure_future(writer.record([_record(f"p{i}")])) for i in range(5)]
        await asyncio.to_thread(store.entered.wait, 30)
        closing = asyncio.ensure_future(asyncio.to_thread(writer.close))
        await asyncio.sleep(0.05)
        store.gate.set()
        await closing
        await asyncio.gather(*waiting)  # every request taken before close got its commit
        with pytest.raises(WriterFull, match="shutting down"):
            await writer.record([_record("late")])

    asyncio.run(main())
    assert _ids(store) == {f"p{i}" for i in range(5)}


def test_deferred_jobs_run_after_the_answer_a_full_queue_says_so_and_close_runs_them_all(
    tmp_path, caplog
) -> None:
    store = MonitorStore(str(tmp_path / "m.db"))
    writer = RecordWriter(store, max_deferred=2)
    gate, started, ran = threading.Event(), threading.Event(), []

    def held() -> None:
        started.set()
        gate.wait(30)
        ran.append("held")

    assert writer.defer(held)
    assert started.wait(30)  # the deferred thread holds "held": two more fill the queue
    assert writer.defer(lambda: ran.append("a")) and writer.defer(lambda: ran.append("b"))
    with caplog.at_level("WARNING", logger="semlayout.serving"):
        assert not writer.defer(lambda: ran.append("c"), "the full confidence")
    assert "deferred work full: 2 jobs holding 0 MiB waiting (limits 2, 256 MiB); the full " in (
        caplog.text
    )
    assert writer.stats["deferred_full"] == 1 and ran == []

    def boom() -> None:
        raise RuntimeError("a failing job is logged, not fatal")

    gate.set()
    while writer.deferred:  # the queue drains (no sleep-based timing: wait on the queue)
        started.wait(0.01)
    assert writer.defer(boom) and writer.defer(lambda: ran.append("d"))
    writer.close()  # runs every job taken before it, in order
    assert ran == ["held", "a", "b", "d"] and writer.stats["deferred_failed"] == 1
    assert not writer.defer(lambda: ran.append("e"))  # closed: the caller runs it
    store.close()


def test_deferred_jobs_are_bounded_by_the_images_they_hold(tmp_path) -> None:
    """Whole 2048^2 fields add up: a job that would take the waiting jobs over
    `max_deferred_bytes` runs on the request (the caller); one alone is always taken."""
    store = MonitorStore(str(tmp_path / "m.db"))
    writer = RecordWriter(store, max_deferred=100, max_deferred_bytes=10 * 2**20)
    gate, started, ran = threading.Event(), threading.Event(), []

    def held() -> None:
        started.set()
        gate.wait(30)

    assert writer.defer(held, nbytes=64 * 2**20)  # larger than the budget, but alone
    assert started.wait(30)
    assert writer.defer(lambda: ran.append("a"), nbytes=1 * 2**20) is False  # 65 MiB held
    gate.set()
    while writer.deferred:
        started.wait(0.01)
    writer.close()
    assert writer.stats["deferred_full"] == 1 and writer._deferred_bytes == 0
    store.close()
