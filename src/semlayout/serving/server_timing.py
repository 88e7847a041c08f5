"""Where a request's time went, as the W3C `Server-Timing` response header.

The request middleware opens a `Timing` for every HTTP request (a context variable: the
request's task and the worker threads it hands work to, which copy the context, see the same
one); the translate path marks its stages with `span` / `add`; the middleware writes them,
and `app` (the request's time in the app until its answer starts), into the answer's
headers. A client subtracts `app` from what it measured to get the transport's share (HTTP,
the socket, its own parsing). Stages of a translate request: `parse` (the body read and the
multipart form parsed before the handler runs), `decode` (the uploads to pixels, the first
thing `before` does), `before` (the worker-thread hop before the forward, including the wait
for a free worker), `model` (the wait for the micro-batcher after that hop: the forward
started inside it), `forward` (the forward pass of the micro-batch that carried the
request), `after` (the hop after it: the confidence, the layer's evidence, the answer's PNG
and the rows), `record` (the awaited commit of the rows, handed to the record writer at the
end of `after`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar


class Timing:
    """The stages of one request, in milliseconds, in the order they were marked."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.stages: list[tuple[str, float]] = []

    def add(self, name: str, ms: float) -> None:
        self.stages.append((name, ms))

    def since_start(self) -> float:
        return (time.perf_counter() - self.t0) * 1000

    def header(self) -> str:
        """`name;dur=ms, ...` with `app` (the time so far) last."""
        parts = [f"{name};dur={ms:.2f}" for name, ms in self.stages]
        parts.append(f"app;dur={self.since_start():.2f}")
        return ", ".join(parts)


_CURRENT: ContextVar[Timing | None] = ContextVar("semlayout_server_timing", default=None)


def begin() -> Timing:
    """A new request's timing, current in this context from now on."""
    timing = Timing()
    _CURRENT.set(timing)
    return timing


def add(name: str, ms: float) -> None:
    """Mark a stage measured elsewhere (e.g. the batcher's forward); no request: nothing."""
    timing = _CURRENT.get()
    if timing is not None:
        timing.add(name, ms)


def mark_since_start(name: str) -> None:
    """Mark a stage that ran from the request's start until now (e.g. the body's parse)."""
    timing = _CURRENT.get()
    if timing is not None:
        timing.add(name, timing.since_start())


@contextlib.contextmanager
def span(name: str) -> Iterator[None]:
    """Time the block as stage `name` of the current request (nothing outside a request)."""
    t = time.perf_counter()
    try:
        yield
    finally:
        add(name, (time.perf_counter() - t) * 1000)
