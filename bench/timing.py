"""How every benchmark times its variants, so that no ratio can mislead.

- **Interleaved**: variants take turns round-robin inside one process, so a load change on the
  shared machine hits all of them alike; the starting variant rotates every round.
- **Warm-up per variant**: each timed call is preceded by an untimed call of the *same* variant,
  so a variant is never timed right after another one (a torch forward right after an ONNX
  Runtime call measured 2x slower: thread pools and caches belong to whoever ran last).
- **Medians and spread**: the median, the interquartile range and the number of samples.
- **Which CPU**: `cpu_info()` names the model and the instruction sets that decide the ratios
  (AVX2, AVX-512, AVX512-BF16, AMX).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench import cpu_model


@dataclass(frozen=True)
class Stats:
    """Milliseconds of one variant's timed calls."""

    median: float
    p25: float
    p75: float
    n: int

    @classmethod
    def of(cls, ms: list[float]) -> Stats:
        q = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) > 1 else [ms[0]] * 3
        return cls(statistics.median(ms), q[0], q[2], len(ms))

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median."""
        return (self.p75 - self.p25) / self.median if self.median else 0.0

    def to_dict(self) -> dict[str, float]:
        return {
            "ms": round(self.median, 3),
            "p25_ms": round(self.p25, 3),
            "p75_ms": round(self.p75, 3),
            "spread": round(self.spread, 3),
            "n": self.n,
        }


def interleaved(
    fns: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1
) -> dict[str, Stats]:
    """Time every variant `rounds` times, round-robin, each timed call right after `warmup`
    untimed calls of the same variant; the first variant of a round rotates."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn = fns[name]
            for _ in range(warmup):
                fn()
            t = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t) * 1000)
    return {n: Stats.of(ts) for n, ts in times.items()}


def cpu_info() -> dict[str, Any]:
    """The CPU the numbers come from: model, logical cores, and the vector units that matter."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    units = [u for u in ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16") if u in flags]
    return {"model": cpu_model(), "cores": os.cpu_count(), "units": units}


def describe_cpu() -> str:
    info = cpu_info()
    return f"{info['model']} ({info['cores']} cores; {', '.join(info['units']) or 'no AVX2'})"
