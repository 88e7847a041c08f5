"""`backend="auto"`: the fastest backend whose outputs match eager fp32, measured at start-up.

Candidates: eager fp32 (the reference, always eligible), ONNX Runtime (fp32) when
onnxruntime imports, and eager bf16 only where the CPU has native bf16 units (AVX512-BF16 or
AMX-BF16: elsewhere bf16 is emulated and slower). Each candidate translates the same probe
batch (synthetic line/via SEM crops for sem2layout, their layouts for layout2sem) and is
eligible only if its outputs are within its bound of eager's (`BOUNDS`, in the network's
[-1, 1] output units); then the eligible ones are timed at batch 1, interleaved round-robin
with a warm-up call of the same candidate before each timed call, and the lowest median wins.

The bounds are the measured behaviour, not hopes (docs/performance.md):
- ONNX Runtime: max |difference| <= 1e-3 (measured ~1e-5: the same fp32 arithmetic in another
  order);
- bf16: the mean |difference| <= 0.002 (a quarter of a grey level), its 99th percentile
  <= 0.03 (4 grey levels) and at most 0.1 % of pixels that fp32 puts clearly (`CLEAR`) on one
  side of 0 (the layout's threshold) on the other. Its maximum is NOT small: on the product
  checkpoint it reaches 0.09 (11 grey levels) at isolated pixels on pattern edges, which is
  why no max bound is claimed for it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from semlayout.directions import DIRECTIONS

CLEAR = 0.02  # |output| beyond which fp32 decides a pixel's side clearly (2.5 grey levels)


@dataclass(frozen=True)
class Bound:
    max_abs: float = np.inf  # largest |difference|
    mean_abs: float = np.inf  # mean |difference|
    p99_abs: float = np.inf  # 99th percentile of |difference|
    sign_flips: float = 1.0  # share of pixels clearly on the other side of 0 (the threshold)

    def judge(self, got: np.ndarray, ref: np.ndarray) -> tuple[bool, dict[str, float]]:
        d = np.abs(got - ref)
        seen = {
            "max_abs": float(d.max()),
            "mean_abs": float(d.mean()),
            "p99_abs": float(np.quantile(d, 0.99)),
            # pixels fp32 puts clearly on one side of the layout threshold (0) and the
            # candidate on the other
            "sign_flips": float(np.mean(((got > 0) != (ref > 0)) & (np.abs(ref) > CLEAR))),
        }
        ok = all(seen[k] <= getattr(self, k) for k in seen)
        return ok, seen


BOUNDS = {
    "onnx": Bound(max_abs=1e-3),
    "bf16": Bound(mean_abs=0.002, p99_abs=0.03, sign_flips=0.001),
}


def native_bf16(flags: set[str] | None = None) -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX-BF16)."""
    if flags is None:
        flags = set()
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                for line in f:
                    if line.startswith("flags"):
                        flags = set(line.split(":", 1)[1].split())
                        break
        except OSError:
            return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def candidates(flags: set[str] | None = None) -> list[str]:
    """The backends worth probing on this machine, eager first."""
    out = ["eager"]
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        pass
    else:
        out.append("onnx")
    if native_bf16(flags):
        out.append("bf16")
    return out


def probe_batch(size: int, n: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """(n, 1, size, size) float32 in [-1, 1] per direction: noisy line/via SEM crops, and
    binary layouts of the same patterns."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    sems, lays = [], []
    for i in range(n):
        pitch = 8 + 4 * i
        lay = ((xx + 3 * i) // pitch) % 2 == 0
        if i % 2:
            lay = lay | ((((yy // pitch) % 4) == 0) & (((xx // pitch) % 3) == 1))
        lays.append(np.where(lay, 1.0, -1.0))
        sem = np.where(lay, 0.4, -0.5) + rng.normal(0, 0.15, (size, size))
        sems.append(np.clip(sem, -1, 1))
    as_batch = lambda a: np.asarray(a, np.float32)[:, None]  # noqa: E731
    return {"sem2layout": as_batch(sems), "layout2sem": as_batch(lays)}


def _time(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Median ms per candidate: round-robin, rotating start, a warm-up call before each."""
    names = list(fns)
    ms: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fns[name]()
            t = time.perf_counter()
            fns[name]()
            ms[name].append((time.perf_counter() - t) * 1000)
    return {n: float(np.median(v)) for n, v in ms.items()}


def choose(translators: dict[str, Any], rounds: int = 7) -> tuple[str, dict[str, Any]]:
    """(chosen backend, report) among loaded `translators` ({backend: Translator}, "eager"
    required): the fastest whose outputs match eager's within `BOUNDS`."""
    eager = translators["eager"]
    batches = probe_batch(eager.image_size)
    report: dict[str, Any] = {}
    eligible = ["eager"]
    for name, tr in translators.items():
        if name == "eager":
            continue
        seen: dict[str, Any] = {}
        ok = True
        for d in DIRECTIONS:
            good, seen[d] = BOUNDS[name].judge(
                tr.run_batch(d, batches[d]), eager.run_batch(d, batches[d])
            )
            ok = ok and good
        report[name] = {"matches_eager": ok, "difference": seen}
        if ok:
            eligible.append(name)
    one = batches["sem2layout"][:1]
    fns: dict[str, Callable[[], Any]] = {
        n: functools.partial(translators[n].run_batch, "sem2layout", one) for n in eligible
    }
    timed = _time(fns, rounds) if len(eligible) > 1 else {"eager": float("nan")}
    for n, v in timed.items():
        report.setdefault(n, {})["batch1_ms"] = round(v, 3)
    chosen = min(timed, key=lambda n: timed[n]) if len(eligible) > 1 else "eager"
    return chosen, report
