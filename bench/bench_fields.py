"""Whole-field benchmark: a 2048x2048 field translated in both directions, time and peak memory.

The model is the product checkpoint (`bench.bench_serving.product_checkpoint`). Each backend
runs in its own subprocess (so its peak memory is its own): the Translator is loaded, the
peak RSS counter reset (`/proc/self/clear_refs`), and then the two directions alternate for
`rounds` rounds, each timed call after a warm-up call of the same direction on a smaller field.
Reported: wall time per field (median and range), windows per field, and the peak RSS above
the loaded model (the field, its two float accumulators, one batch of windows, the output).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.timing import describe_cpu

SIDE = 2048

_CHILD = r"""
import json, sys, time
import numpy as np
from semlayout.inference import Translator
from semlayout.tiling import OVERLAP, WINDOW, windows

def rss(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
ckpt, backend, side, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
tr = Translator.load(ckpt, backend=backend)
yy, xx = np.mgrid[:side, :side]
rng = np.random.default_rng(0)
lay = np.where(((xx // 14) % 2 == 0) | (((yy // 40) % 5 == 0) & ((xx // 30) % 3 == 0)), 255, 0)
lay = lay.astype(np.uint8)
sem = np.clip(40 + 0.6 * lay + rng.normal(0, 12, lay.shape), 0, 255).astype(np.uint8)
fields = {"sem2layout": sem, "layout2sem": lay}
small = {d: f[:600, :600] for d, f in fields.items()}
for d in fields:
    tr.translate(d, [small[d]], polarity="bright")
base = rss("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
times = {d: [] for d in fields}
for r in range(rounds):
    order = list(fields) if r % 2 == 0 else list(fields)[::-1]
    for d in order:
        tr.translate(d, [small[d]], polarity="bright")
        t0 = time.perf_counter()
        [out] = tr.translate(d, [fields[d]], polarity="bright")
        times[d].append(time.perf_counter() - t0)
        assert out.shape == fields[d].shape
n_windows = len(list(windows((side, side), WINDOW, OVERLAP)))
print(json.dumps({"backend": tr.backend, "times": times, "base_mb": base,
                  "peak_mb": rss("VmHWM"), "windows": n_windows}))
"""


def _run(ckpt: Path, backend: str, rounds: int) -> dict[str, Any]:
    res = subprocess.run(
        [sys.executable, "-c", _CHILD, str(ckpt), backend, str(SIDE), str(rounds)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        raise RuntimeError(f"field bench ({backend}) failed: {res.stderr[-2000:]}")
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def main(quick: bool = False) -> dict[str, Any]:
    from bench.bench_serving import product_checkpoint
    from semlayout.backend_probe import candidates

    rounds = 2 if quick else 5
    with tempfile.TemporaryDirectory(prefix="bench-fields-") as tmp:
        ckpt, what = product_checkpoint(Path(tmp))
        rows = [_run(ckpt, b, rounds) for b in candidates()]
    print(f"fields bench: one {SIDE}x{SIDE} field per call, {rounds} rounds, on {what}")
    print(f"CPU {describe_cpu()}")
    print(
        f"{'backend':8} {'direction':11} {'median s':>9} {'range s':>14} {'windows':>8} "
        f"{'peak MB over model':>19}"
    )
    out: dict[str, Any] = {"checkpoint": what, "cpu": describe_cpu(), "side": SIDE, "rows": []}
    for r in rows:
        extra = r["peak_mb"] - r["base_mb"]
        for d, ts in r["times"].items():
            ts = sorted(ts)
            med = ts[len(ts) // 2]
            print(
                f"{r['backend']:8} {d:11} {med:9.2f} {ts[0]:6.2f}-{ts[-1]:6.2f} "
                f"{r['windows']:8d} {extra:19.0f}"
            )
            out["rows"].append(
                {
                    "backend": r["backend"],
                    "direction": d,
                    "median_s": med,
                    "min_s": ts[0],
                    "max_s": ts[-1],
                    "windows": r["windows"],
                    "peak_mb_over_model": extra,
                }
            )
    return out


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
