"""Student generators for latency: how much faster could a smaller SEM->Layout network be?

The issue's bar for keeping a student: >= 1.5x faster than the teacher's *best* backend, with
SEM->Layout IoU loss <= 0.005 on the test split and the independent simulator. This bench
measures the speed half on the architecture alone (random weights: the forward's cost does
not depend on the values): the teacher (configs/small.yaml's generator, the product) and
students made from it by halving the filters, dropping attention, or both; every network on
every backend it can run (eager fp32, ONNX Runtime, bf16 where the CPU has bf16 units),
batch 1, all interleaved round-robin with a warm-up call of the same variant before each
timed call (`bench.timing.interleaved`). A student whose best backend is not 1.5x faster
than the teacher's best needs no training to be dropped.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.timing import describe_cpu, interleaved

STUDENTS: dict[str, dict[str, Any]] = {
    "teacher": {},
    "half_filters": {"generator.base_filters": 8, "generator.max_filters": 64},
    "no_attention": {"generator.attention": False},
    "half_no_attention": {
        "generator.base_filters": 8,
        "generator.max_filters": 64,
        "generator.attention": False,
    },
}


def _checkpoint(dest: Path, overrides: dict[str, Any]) -> Path:
    import torch

    from semlayout.config import apply_overrides, load_config
    from semlayout.train.checkpoint import build_networks, save_checkpoint

    cfg = apply_overrides(load_config("small"), overrides)
    torch.manual_seed(0)
    return Path(save_checkpoint(dest, cfg, build_networks(cfg), step=0, epoch=0))


def main(quick: bool = False) -> dict[str, Any]:
    from semlayout.backend_probe import candidates
    from semlayout.inference import Translator

    rounds = 10 if quick else 40
    x = np.random.default_rng(0).uniform(-1, 1, (1, 1, 256, 256)).astype(np.float32)
    fns = {}
    with tempfile.TemporaryDirectory(prefix="bench-student-") as tmp:
        for name, over in STUDENTS.items():
            ckpt = _checkpoint(Path(tmp) / name, over)
            for backend in candidates():
                tr = Translator.load(ckpt, backend=backend)
                fns[f"{name}/{backend}"] = lambda tr=tr: tr.run_batch("sem2layout", x, 1)
        stats = interleaved(fns, rounds)
    best = {
        name: min((s.median, k.split("/")[1]) for k, s in stats.items() if k.startswith(name + "/"))
        for name in STUDENTS
    }
    teacher_ms = best["teacher"][0]
    print(f"student bench: SEM->Layout forward at batch 1, {rounds} rounds; CPU {describe_cpu()}")
    for k, s in stats.items():
        print(f"  {k:28} {s.median:7.2f} ms [{s.p25:.2f}-{s.p75:.2f}]")
    out: dict[str, Any] = {"cpu": describe_cpu(), "ms": {k: s.to_dict() for k, s in stats.items()}}
    for name, (ms, backend) in best.items():
        speedup = teacher_ms / ms
        verdict = "meets the speed bar" if speedup >= 1.5 else "drop: under 1.5x"
        print(
            f"  best {name:18} {ms:6.2f} ms ({backend}): {speedup:.2f}x the teacher's best; "
            f"{verdict if name != 'teacher' else 'the reference'}"
        )
        out[name] = {"best_ms": ms, "backend": backend, "speedup": speedup}
    return out


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
