"""Helpers to run the pipelines under `kfp.local` (SubprocessRunner, no containers, no network).

`run_pipeline(pipeline, pipeline_root, **params)` runs a compiled-in-memory pipeline
in this machine's Python environment and returns its outputs plus the wall time
of every task, measured from the local orchestrator's own log records.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

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
    `on_start(name)` / `on_end(timing)` hear about each task as it starts and ends.
    """

    def __init__(
        self,
        on_start: Callable[[str], None] | None = None,
        on_end: Callable[[TaskTiming], None] | None = None,
    ) -> None:
        self.tasks: dict[str, TaskTiming] = {}
        self._previous = logging.getLogRecordFactory()
        self._on_start, self._on_end = on_start, on_end

    def _factory(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self._previous(*args, **kwargs)
        with contextlib.suppress(Exception):  # timing must never break a run
            self._observe(_ANSI.sub("", record.getMessage()))
        return record

    def _observe(self, msg: str) -> None:
        if m := _START.match(msg):
            self.tasks[m.group(1)] = TaskTiming(m.group(1), _t0=time.perf_counter())
            if self._on_start is not None:
                self._on_start(m.group(1))
        elif (m := _END.match(msg)) and m.group(1) in self.tasks:
            t = self.tasks[m.group(1)]
            if t.seconds is None:
                t.seconds = round(time.perf_counter() - t._t0, 3)
                t.status = m.group(2)
                if self._on_end is not None:
                    self._on_end(t)

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


def run_pipeline(
    pipeline: Any,
    pipeline_root: str | Path,
    log_dir: str | Path | None = None,
    verbose: bool = True,
    **params: Any,
) -> LocalRun:
    """Run `pipeline(**params)` locally. Never raises for a failed task: see `LocalRun.error`.

    `verbose`: kfp.local's own output (every step's executor log) on stdout, as kfp prints it.
    Otherwise a step table on stdout (`[n/N] step ... seconds`), the executor output in
    `log_dir/<step>.log` (and `log_dir/pipeline.log`, everything in order).
    """
    init_local(pipeline_root)
    t0 = time.perf_counter()
    error = None
    outputs: dict[str, Any] = {}
    table = None if verbose else StepTable(count_steps(pipeline), sys.stdout)
    logs = StepLogs(log_dir, echo=sys.stdout if verbose else None) if log_dir else None
    on_start = _both(table and table.start, logs and logs.start)
    on_end = _both(table and table.end, logs and logs.end)
    with _TaskTimer(on_start, on_end) as timer, _captured(logs if logs else None, verbose):
        try:
            with _quiet_cluster_settings():
                task = pipeline(**params)
            outputs = dict(task.outputs) if hasattr(task, "outputs") else {}
        except RuntimeError as err:  # kfp.local: "Pipeline ... finished with status FAILURE"
            error = _ANSI.sub("", str(err))
    if logs is not None:
        logs.close()
    return LocalRun(
        outputs=outputs, tasks=timer.tasks, seconds=round(time.perf_counter() - t0, 3), error=error
    )


def _both(*callbacks: Any) -> Callable[[Any], None] | None:
    live = [c for c in callbacks if c]
    if not live:
        return None

    def call(arg: Any) -> None:
        for c in live:
            c(arg)

    return call


@contextmanager
def _captured(logs: StepLogs | None, verbose: bool) -> Iterator[None]:
    """kfp.local prints executor output and its own log lines on stdout: into the step logs."""
    if logs is None and verbose:
        yield
        return
    sink: Any = logs if logs is not None else io.StringIO()
    with contextlib.redirect_stdout(sink):
        yield


def count_steps(pipeline: Any) -> int | None:
    """How many steps a run of `pipeline` executes: its tasks, one per group of alternative
    branches (`dsl.If` / `dsl.Else`), recursing into nested DAGs."""
    with contextlib.suppress(Exception):
        spec = pipeline.pipeline_spec
        components = spec.components

        def count(dag: Any) -> int:
            n = 0
            for task in dag.tasks.values():
                comp = components.get(task.component_ref.name)
                if comp is not None and comp.HasField("dag"):
                    branches = task.component_ref.name.startswith("comp-condition-branches")
                    n += 1 if branches else count(comp.dag)
                else:
                    n += 1
            return n

        return count(spec.root.dag)
    return None


class StepTable:
    """`[3/7] shard            2.1 s` lines, one per step, as the steps finish."""

    def __init__(self, total: int | None, out: TextIO) -> None:
        self.total, self.out, self.done = total, out, 0
        self.tty = out.isatty()

    def start(self, name: str) -> None:
        self.done += 1
        if self.tty:
            self.out.write(f"  {self._counter()} {name:<14} running ...")
            self.out.flush()

    def end(self, t: TaskTiming) -> None:
        mark = "ok" if t.status == "SUCCESS" else t.status
        line = f"  {self._counter()} {t.name:<14} {t.seconds or 0:>7.1f} s  {mark}"
        self.out.write(("\r\x1b[K" if self.tty else "") + line + "\n")
        self.out.flush()

    def _counter(self) -> str:
        total = "?" if self.total is None else str(max(self.total, self.done))
        return f"[{self.done}/{total}]"


class StepLogs(io.TextIOBase):
    """A text stream: everything into `folder/pipeline.log`, each step's part also into
    `folder/<step>.log`, and to `echo` when given."""

    def __init__(self, folder: str | Path, echo: TextIO | None = None) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.echo = echo
        self.all = open(self.folder / "pipeline.log", "a", encoding="utf-8")  # noqa: SIM115
        self.step: TextIO | None = None

    def start(self, name: str) -> None:
        self._close_step()
        self.step = open(self.folder / f"{name}.log", "a", encoding="utf-8")  # noqa: SIM115

    def end(self, t: TaskTiming) -> None:
        self._close_step()

    def write(self, text: str) -> int:
        clean = _ANSI.sub("", text)
        self.all.write(clean)
        if self.step is not None:
            self.step.write(clean)
        if self.echo is not None:
            self.echo.write(text)
        return len(text)

    def flush(self) -> None:
        self.all.flush()
        if self.step is not None:
            self.step.flush()
        if self.echo is not None:
            self.echo.flush()

    def _close_step(self) -> None:
        if self.step is not None:
            self.step.close()
            self.step = None

    def close(self) -> None:
        self._close_step()
        self.all.close()
