"""Group commit of the translate path's monitoring rows, in one background thread.

A request hands its rows over (`RecordWriter.record`) and awaits their commit: a 200 is
answered only once its rows are in the store, so a replica killed right after answering has
them (issue 18's guarantee), and a store fault is the request's JSON 503. What moves off the
request is the work: one thread owns the writes, and the rows of every request that arrived
while a commit ran go into the next one together (one transaction, one WAL append), so under
load the store costs a request a share of a commit instead of a commit, and request threads
never queue on the database's write lock.

- **All or none per request**: a group is one transaction; when it fails, each request of the
  group is retried alone, so one request's bad rows (a constraint) fail that request only,
  and a store fault fails every request it touched (none is half-written).
- **Bounded**: at most `max_pending` requests wait; one more is refused at once with a 503
  that says so (`WriterFull`: "monitoring writer full: N requests waiting for the store").
- **Nothing lost on shutdown**: `close()` stops taking rows, commits everything already taken
  (each request is still waiting for its answer) and says in the log how many it wrote and how
  many the store refused.

**Deferred work** (`defer`): a second thread runs jobs handed over after a request's rows are
committed and its answer is on its way — the full confidence (issue 17: its dihedral / cycle
forwards and the update of the rows), off the request path. Bounded (`max_deferred` jobs):
when full, `defer` says so (returns False, logs it, counts `stats["deferred_full"]`) and the
caller runs the job itself; `close()` runs every job taken before it stops (nothing lost).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from semlayout.monitoring.store import MonitorStore, TranslationRecord
from semlayout.serving.batcher import QueueFull

log = logging.getLogger("semlayout.serving")

_STOP = object()


class WriterFull(QueueFull):
    """The writer holds `max_pending` requests already: 503, retry later."""


@dataclass
class _Pending:
    records: list[TranslationRecord]
    future: asyncio.Future[None]
    loop: asyncio.AbstractEventLoop


class RecordWriter:
    """One thread that commits requests' rows in groups (see the module docstring)."""

    def __init__(
        self,
        store: MonitorStore,
        max_pending: int = 256,
        max_group: int = 64,
        max_deferred: int = 256,
        max_deferred_bytes: int = 256 * 2**20,
    ):
        self.store = store
        self.max_pending = max_pending
        self.max_group = max_group
        self.max_deferred = max_deferred
        self.max_deferred_bytes = max_deferred_bytes  # the images the waiting jobs hold
        self._deferred_bytes = 0
        self._queue: queue.Queue[Any] = queue.Queue()
        self._jobs: queue.Queue[Any] = queue.Queue()
        self._pending = 0  # requests taken and not answered yet
        self._lock = threading.Lock()
        self._closed = False
        self.stats = {
            "groups": 0,
            "requests": 0,
            "failed": 0,
            "deferred": 0,
            "deferred_failed": 0,
            "deferred_full": 0,
        }
        self._thread = threading.Thread(target=self._run, name="semlayout-writer", daemon=True)
        self._thread.start()
        self._worker = threading.Thread(
            target=self._run_jobs, name="semlayout-deferred", daemon=True
        )
        self._worker.start()

    @property
    def deferred(self) -> int:
        """Jobs taken and not run yet."""
        return self._jobs.qsize()

    def defer(self, job: Callable[[], None], what: str = "job", nbytes: int = 0) -> bool:
        """Run `job` in the deferred thread; False (logged) when `max_deferred` jobs wait
        already, the jobs hold `max_deferred_bytes` (`nbytes`: what this one holds: whole
        2048^2 fields add up; one job alone always fits), or the writer is closed: the caller
        then runs it itself."""
        with self._lock:
            held = self._deferred_bytes  # by the jobs waiting and the one running
            fits = held + nbytes <= self.max_deferred_bytes or held == 0
            if not self._closed and self._jobs.qsize() < self.max_deferred and fits:
                self._deferred_bytes += nbytes
                self._jobs.put((job, nbytes))
                return True
            self.stats["deferred_full"] += 1
            closed = self._closed
        if closed:
            log.warning("deferred work: writer closed; %s runs on the request", what)
        else:
            log.warning(
                "deferred work full: %d jobs holding %.0f MiB waiting (limits %d, %.0f MiB); "
                "%s runs on the request",
                self._jobs.qsize(),
                self._deferred_bytes / 2**20,
                self.max_deferred,
                self.max_deferred_bytes / 2**20,
                what,
            )
        return False

    @property
    def outstanding(self) -> int:
        """Deferred jobs taken and not finished (waiting or running)."""
        return self._jobs.unfinished_tasks

    def drain(self, timeout: float = 60.0) -> bool:
        """Wait until every deferred job handed over so far has run (tests, benches: the
        monitors' numbers once the work after the answers is done); False when `timeout`
        seconds passed first."""
        done = self._jobs.all_tasks_done
        with done:
            return done.wait_for(lambda: self._jobs.unfinished_tasks == 0, timeout)

    def _run_jobs(self) -> None:
        while True:
            item = self._jobs.get()
            if item is _STOP:
                self._jobs.task_done()
                return
            job, nbytes = item
            try:
                job()
                self.stats["deferred"] += 1
            except Exception:  # noqa: BLE001 - logged; the request was answered already
                self.stats["deferred_failed"] += 1
                log.exception("deferred work failed")
            finally:
                with self._lock:
                    self._deferred_bytes -= nbytes
                self._jobs.task_done()

    @property
    def pending(self) -> int:
        return self._pending

    async def record(self, records: Sequence[TranslationRecord]) -> None:
        """Commit one request's rows (all or none); returns once they are in the store."""
        if not records:
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self.hand_over(records, fut, loop)
        await fut

    def hand_over(
        self,
        records: Sequence[TranslationRecord],
        fut: asyncio.Future[None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """Queue one request's rows; `fut` (of `loop`) is settled once they are committed
        (or with the error that refused them). Callable from any thread, so that the worker
        thread that prepared the rows hands them over itself (the request then awaits `fut`:
        the commit runs while the hop returns to the event loop); WriterFull at once when the
        writer is closed or holds `max_pending` requests already."""
        with self._lock:
            if self._closed:
                raise WriterFull("monitoring writer closed: the server is shutting down")
            if self._pending >= self.max_pending:
                raise WriterFull(
                    f"monitoring writer full: {self._pending} requests waiting for the store "
                    f"(limit {self.max_pending})"
                )
            self._pending += 1
            self._queue.put(_Pending(list(records), fut, loop))

    def close(self, timeout: float = 60.0) -> None:
        """Take no more rows; commit what was taken; say what happened."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            left = self._pending
            jobs = self._jobs.qsize()
        self._jobs.put(_STOP)  # after every job taken: they run first
        self._worker.join(timeout)
        log.info(
            "deferred work closed: %d job(s) were waiting at shutdown; %d run, %d failed, "
            "%d ran on their request (queue full) in all",
            jobs,
            self.stats["deferred"],
            self.stats["deferred_failed"],
            self.stats["deferred_full"],
        )
        self._queue.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error(
                "monitoring writer: %d request(s) still waiting for the store after %.0f s "
                "at shutdown; their clients get no 200",
                self._pending,
                timeout,
            )
        else:
            log.info(
                "monitoring writer closed: %d request(s) were waiting at shutdown, all "
                "answered; %d groups, %d requests written, %d refused by the store in all",
                left,
                self.stats["groups"],
                self.stats["requests"],
                self.stats["failed"],
            )

    # ------------------------------------------------------------------ the thread
    def _take(self) -> tuple[list[_Pending], bool]:
        """The next group: one blocking get, then whatever else is waiting."""
        first = self._queue.get()
        if first is _STOP:
            return [], True
        group, stop = [first], False
        while len(group) < self.max_group:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                stop = True
                break
            group.append(item)
        return group, stop

    def _run(self) -> None:
        while True:
            group, stop = self._take()
            if group:
                self._commit(group)
            if stop:
                while not self._queue.empty():  # taken before close(): still answered
                    item = self._queue.get_nowait()
                    if item is not _STOP:
                        self._commit([item])
                return

    def _commit(self, group: list[_Pending]) -> None:
        try:
            self.store.record_translations([r for p in group for r in p.records])
            results: list[BaseException | None] = [None] * len(group)
        except Exception as err:  # noqa: BLE001 - each request gets its own outcome below
            results = [err] if len(group) == 1 else [self._alone(p) for p in group]
        self.stats["groups"] += 1
        for p, res in zip(group, results, strict=True):
            self.stats["requests" if res is None else "failed"] += 1
            with self._lock:
                self._pending -= 1
            p.loop.call_soon_threadsafe(_settle, p.future, res)

    def _alone(self, p: _Pending) -> BaseException | None:
        try:
            self.store.record_translations(p.records)
        except Exception as err:  # noqa: BLE001 - handed to the request
            return err
        return None


def _settle(fut: asyncio.Future[None], err: BaseException | None) -> None:
    if fut.done():  # the request was cancelled (client gone): its rows are written regardless
        return
    if err is None:
        fut.set_result(None)
    else:
        fut.set_exception(err)
