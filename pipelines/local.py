"""Helpers to run the pipelines under `kfp.local` (SubprocessRunner, no containers, no network).

`run_pipeline(pipeline, pipeline_root, **params)` runs a compiled-in-memory pipeline
in this machine's Python environment and returns its outputs plus the wall time
of every task, measured from the local orchestrator's own log records.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_START = re.compile(r"^Executing task '([^']+)'")
_END = re.compile(r"^Task '([^']+)' finished with status (\w+)")


@dataclass
class TaskTiming:
    name: str
    seconds: float | None = None
    status: str = "RUNNING"
    _t0: float = field(default=0.0, repr=False)


class _TaskTimer:
    """Turns "Executing task 'x'" / "Task 'x' finished with status S" log records into timings.

    kfp.local swaps the root logger's handlers for every task, so this hooks the log
    record factory (called for every record, whatever the handlers) instead of a handler.
    """

    def __init__(self) -> None:
        self.tasks: dict[str, TaskTiming] = {}
        self._previous = logging.getLogRecordFactory()

    def _factory(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self._previous(*args, **kwargs)
        with contextlib.suppress(Exception):  # timing must never break a run
            self._observe(_ANSI.sub("", record.getMessage()))
        return record

    def _observe(self, msg: str) -> None:
        if m := _START.match(msg):
            self.tasks[m.group(1)] = TaskTiming(m.group(1), _t0=time.perf_counter())
        elif (m := _END.match(msg)) and m.group(1) in self.tasks:
            t = self.tasks[m.group(1)]
            if t.seconds is None:
                t.seconds = round(time.perf_counter() - t._t0, 3)
                t.status = m.group(2)

    def __enter__(self) -> _TaskTimer:
        logging.setLogRecordFactory(self._factory)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.setLogRecordFactory(self._previous)


@dataclass
class LocalRun:
    outputs: dict[str, Any]
    tasks: dict[str, TaskTiming]
    seconds: float
    error: str | None = None

    @property
    def failed_task(self) -> str | None:
        return next((t.name for t in self.tasks.values() if t.status != "SUCCESS"), None)


def init_local(pipeline_root: str | Path) -> None:
    from kfp import local

    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True
    )


@contextmanager
def _quiet_cluster_settings() -> Iterator[None]:
    # GPU requests, node selectors, secrets and the image name mean nothing to the
    # SubprocessRunner; kfp warns once per task about each. They are exercised by compile tests.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(ignored|image|Python environment).*")
        warnings.filterwarnings("ignore", category=RuntimeWarning, module="kfp")
        yield


def run_pipeline(pipeline: Any, pipeline_root: str | Path, **params: Any) -> LocalRun:
    """Run `pipeline(**params)` locally. Never raises for a failed task: see `LocalRun.error`."""
    init_local(pipeline_root)
    t0 = time.perf_counter()
    error = None
    outputs: dict[str, Any] = {}
    with _TaskTimer() as timer:
        try:
            with _quiet_cluster_settings():
                task = pipeline(**params)
            outputs = dict(task.outputs) if hasattr(task, "outputs") else {}
        except RuntimeError as err:  # kfp.local: "Pipeline ... finished with status FAILURE"
            error = _ANSI.sub("", str(err))
    return LocalRun(
        outputs=outputs, tasks=timer.tasks, seconds=round(time.perf_counter() - t0, 3), error=error
    )
