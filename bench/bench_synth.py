"""Synthesis benchmark: cost per pair in memory, per stage, and on disk with 1 vs 2 processes.

Goal (brief): 2,000 pairs well under a minute on 2 cores. Prints medians (in-memory numbers
are CPU ms of one thread, so they hold on a busy machine); the on-disk table is wall clock,
and its ratio column compares 2 processes against 1 measured in the same run.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _median_ms(fn, reps: int) -> float:
    # CPU time of this process: stable when other jobs share the cores
    # (cv2 runs single-threaded here)
    times = []
    for i in range(reps):
        t = time.process_time()
        fn(i)
        times.append((time.process_time() - t) * 1000)
    return statistics.median(times)


def main(quick: bool = False) -> dict:
    import cv2

    from semlayout.data import sem_physics as sp
    from semlayout.data.layouts import FAMILIES, draw_layout
    from semlayout.data.synth import generate_pair, synthesize

    cv2.setNumThreads(1)
    reps = 5 if quick else 30
    n_disk = 64 if quick else 400
    out: dict = {"per_family_ms": {}, "stage_ms": {}, "disk": {}}
    for fam in FAMILIES:
        out["per_family_ms"][fam] = _median_ms(lambda i, f=fam: generate_pair(i, f), reps)

    rng = np.random.default_rng(0)
    field = draw_layout("l_shape", rng)
    p = sp.sample_params(rng)
    cov, printed = sp.print_pattern(field, p, rng)
    clean = sp.render_clean(field, p, rng)
    stages = {
        "draw_layout": lambda i: draw_layout("l_shape", np.random.default_rng(i)),
        "print_pattern": lambda i: sp.print_pattern(field, p, np.random.default_rng(i)),
        "edge_rim": lambda i: sp.edge_rim(printed, p, field.shape),
        "beam_blur": lambda i: sp.beam_blur(cov, p),
        "background": lambda i: sp.background_field(field.shape, cov, p, np.random.default_rng(i)),
        "render_clean": lambda i: sp.render_clean(field, p, np.random.default_rng(i)),
        "add_noise": lambda i: sp.add_noise(clean, p, np.random.default_rng(i)),
    }
    for name, fn in stages.items():
        out["stage_ms"][name] = _median_ms(fn, reps)

    tmp = Path(tempfile.mkdtemp(prefix="bench-synth-"))
    try:
        for workers in (1, 2):
            t = time.perf_counter()
            synthesize(tmp / f"w{workers}", n_disk, seed=0, workers=workers, progress=False)
            dt = time.perf_counter() - t
            out["disk"][workers] = {"n": n_disk, "s": dt, "pairs_per_s": n_disk / dt}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    speedup = out["disk"][2]["pairs_per_s"] / out["disk"][1]["pairs_per_s"]
    out["speedup_2_vs_1"] = speedup
    out["est_2000_pairs_s"] = 2000 / out["disk"][2]["pairs_per_s"]

    print("synth: in-memory generate_pair, median ms per pair")
    for fam, ms in out["per_family_ms"].items():
        print(f"  {fam:<18} {ms:7.1f}")
    print("synth: stages (l_shape), median ms")
    for name, ms in out["stage_ms"].items():
        print(f"  {name:<18} {ms:7.1f}")
    print(f"synth: on disk, {n_disk} pairs")
    print(f"  {'workers':<8} {'s':>7} {'pairs/s':>8} {'ratio':>6}")
    for w, d in out["disk"].items():
        ratio = d["pairs_per_s"] / out["disk"][1]["pairs_per_s"]
        print(f"  {w:<8} {d['s']:7.2f} {d['pairs_per_s']:8.1f} {ratio:6.2f}")
    print(f"  -> 2,000 pairs ~ {out['est_2000_pairs_s']:.0f} s with 2 processes")
    return out


if __name__ == "__main__":
    main()
