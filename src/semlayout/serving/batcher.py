"""`MicroBatcher` (asyncio): the queue between the requests and the `InferenceEngine`.

It queues single images and runs them in batches of up to `max_batch` per direction, polarity
request and profile in a worker thread: one forward pass at a time (2 cores are better used
by one batched pass than by two competing ones). Requests that arrive while a forward runs
wait in the queue and go together into the next one, so a lone request pays no batching delay
(`max_wait_ms` > 0 adds an explicit wait for company).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from semlayout.errors import SemlayoutError
from semlayout.tiling import is_field

if TYPE_CHECKING:
    from semlayout.polarity_auto import PolarityDecision
    from semlayout.serving.engine import InferenceEngine, LoadedModel, Prior


@dataclass(frozen=True)
class ImageResult:
    """One image's share of a micro-batch forward."""

    output: np.ndarray
    model: LoadedModel  # the model that computed `output` (a swap meanwhile does not change it)
    forward_ms: float  # the whole batch's forward pass
    batch_size: int  # images in that forward pass
    decision: PolarityDecision  # the polarity it was translated in
    profile: str | None = None  # the tool / layer profile that answered (None: shared network)
    raw: np.ndarray | None = None  # the network's own output (`inference.Translation.raw`)


@dataclass
class _Job:
    direction: str
    image: np.ndarray
    future: asyncio.Future[ImageResult]
    polarity: str = "auto"  # auto | bright | dark
    prior: Prior = None  # the layer's word
    profile: str | None = None  # the tool / layer profile asked for (the request's layer)

    @property
    def field(self) -> bool:
        return is_field(self.image.shape)


class QueueFull(SemlayoutError):
    """More images are waiting than the server accepts; the client should retry later (503)."""


class MicroBatcher:
    """Collects single images for up to `max_wait_ms` and runs them as one forward per direction."""

    def __init__(
        self,
        engine: InferenceEngine,
        max_batch: int = 8,
        max_wait_ms: float = 0.0,
        max_queue: int = 256,
        on_batch: Callable[[str, int, float], None] | None = None,
    ):
        self.engine = engine
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task[None] | None = None
        # ONE thread runs every forward: torch's OpenMP pool is per calling thread, so forwards
        # spread over a thread pool would start one spinning team per thread and oversubscribe
        # the cores
        self._executor: ThreadPoolExecutor | None = None

    @property
    def depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="semlayout-forward")
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="semlayout-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def check_room(self, n: int) -> None:
        """QueueFull unless `n` more images fit in the queue now."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        if self._queue.qsize() + n > self.max_queue:
            raise QueueFull(
                f"server busy: {self._queue.qsize()} images queued, {n} more "
                f"would pass the limit of {self.max_queue}"
            )

    async def submit_many(
        self,
        direction: str,
        images: Sequence[np.ndarray],
        polarity: str = "auto",
        prior: Prior = None,
        profile: str | None = None,
    ) -> list[ImageResult]:
        """One result per image, in order, translated with the tool / layer `profile` when the
        served model learned it (else the shared network). All of `images` or none: QueueFull
        before any is queued when they do not all fit."""
        self.check_room(len(images))
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[ImageResult]] = []
        for image in images:  # no await between the check and the puts: nothing else can queue
            futures.append(loop.create_future())
            job = _Job(direction, image, futures[-1], polarity, prior, profile)
            self._queue.put_nowait(job)
        try:
            return list(await asyncio.gather(*futures))
        finally:
            for fut in futures:  # a cancelled request: its images are skipped, not run
                fut.cancel()

    async def _run(self) -> None:
        assert self._queue is not None and self._executor is not None
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._queue.get()]
            deadline = time.perf_counter() + self.max_wait
            while len(jobs) < self.max_batch:
                remaining = deadline - time.perf_counter()
                try:
                    jobs.append(
                        self._queue.get_nowait()
                        if remaining <= 0
                        else await asyncio.wait_for(self._queue.get(), remaining)
                    )
                except (asyncio.QueueEmpty, TimeoutError):
                    break
            # one forward per (direction, polarity request, profile that answers): they run
            # different networks; a field (tiles, `semlayout.tiling`) runs alone, after the
            # windows it came with
            kind = self._kind(self.engine.current)
            kinds = dict.fromkeys(kind(j) for j in jobs)
            groups = [[j for j in jobs if kind(j) == k and not j.field] for k in kinds] + [
                [j] for j in jobs if j.field
            ]
            for group in groups:
                group = [j for j in group if not j.future.cancelled()]
                if group:  # the profile that answers, as grouped (a swap meanwhile: honest)
                    await self._forward(loop, group, kind(group[0])[3])

    @staticmethod
    def _kind(current: LoadedModel) -> Callable[[_Job], tuple[Any, ...]]:
        """A job's forward group: (direction, polarity request, prior, the profile of `current`
        that answers its label)."""
        return lambda j: (j.direction, j.polarity, j.prior, current.profile_for(j.profile))

    async def _forward(
        self, loop: asyncio.AbstractEventLoop, group: list[_Job], profile: str | None
    ) -> None:
        """One forward of `group` (one direction, polarity request and `profile`) in the worker
        thread; each job's future gets its result."""
        first = group[0]
        direction = first.direction
        try:
            res = await loop.run_in_executor(
                self._executor,
                self.engine.translate,
                direction,
                [j.image for j in group],
                first.polarity,
                first.prior,
                profile,
            )
        except Exception as err:  # noqa: BLE001 - handed to every waiting request
            for j in group:
                if not j.future.done():
                    j.future.set_exception(err)
            return
        if self.on_batch is not None:
            self.on_batch(direction, len(group), res.forward_ms)
        raws = res.raws or [None] * len(group)
        for j, out, dec, raw in zip(group, res.outputs, res.decisions, raws, strict=True):
            if not j.future.done():
                j.future.set_result(
                    ImageResult(out, res.model, res.forward_ms, len(group), dec, res.profile, raw)
                )
