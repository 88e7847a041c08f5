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

Trained weights: with `SEMLAYOUT_BENCH_STUDENTS` (checkpoint folders separated by `:`, e.g.
the students `semlayout train --set loss.lambda_distill=... --set train.teacher=...` made)
the networks timed are those checkpoints and the trained teacher (`SEMLAYOUT_BENCH_MODEL`,
else the last `make run`'s checkpoint), loaded with `Translator.load` as a server would, each
on every backend, interleaved the same way. The quality half is `python -m bench quality` on
each checkpoint (docs/performance.md section 5); with `SEMLAYOUT_BENCH_SHARDS` too, this bench
adds the paired view of it: per-image SEM->Layout IoU (given polarity, the drawn layout) of the
teacher and each student on the same test-split and independent-simulator pairs, and the mean
loss with a 95 % bootstrap interval (is a gap to the 0.005 bar more than sampling noise?).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bench.timing import Stats, describe_cpu, interleaved

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


def _trained() -> dict[str, str] | None:
    """{"teacher": checkpoint, <student folder name>: checkpoint, ...} from the environment,
    or None (random weights of the architectures in STUDENTS)."""
    students = [p for p in os.environ.get("SEMLAYOUT_BENCH_STUDENTS", "").split(":") if p]
    if not students:
        return None
    teacher = os.environ.get("SEMLAYOUT_BENCH_MODEL")
    summary = Path(__file__).resolve().parents[1] / "outputs" / "latest" / "summary.json"
    if not teacher and summary.is_file():
        teacher = json.loads(summary.read_text()).get("checkpoint")
    if not teacher:
        raise SystemExit("SEMLAYOUT_BENCH_STUDENTS needs the teacher: set SEMLAYOUT_BENCH_MODEL")
    named = {"teacher": teacher}
    for path in students:
        p = Path(path)
        named[p.parent.name if p.name in ("final", "model") else p.name] = path
    return named


def _time(models: dict[str, Any], rounds: int) -> dict[str, Stats]:
    """Every (network, backend) timed interleaved on one 256 px SEM at batch 1."""
    from semlayout.backend_probe import candidates
    from semlayout.inference import Translator

    x = np.random.default_rng(0).uniform(-1, 1, (1, 1, 256, 256)).astype(np.float32)
    fns: dict[str, Callable[[], Any]] = {}
    for name, ckpt in models.items():
        for backend in candidates():
            tr = Translator.load(ckpt, backend=backend)
            fns[f"{name}/{backend}"] = partial(tr.run_batch, "sem2layout", x, 1)
    return interleaved(fns, rounds)


def _pairs(shards: str, n: int) -> dict[str, tuple[list[np.ndarray], list[np.ndarray], Any]]:
    """{"test split": (sems, layouts, polarities), "independent": (...)}: bench quality's pairs."""
    from semlayout.data.shards import load_split_arrays
    from semlayout.evaluation import select_indices

    d = load_split_arrays(shards, "test")
    idx = select_indices(d["families"], n)
    out = {"test split": (list(d["sem"][idx]), list(d["layout"][idx]), d["polarity"][idx])}
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import independent_sim as sim

    rng = np.random.default_rng(123)  # bench quality's seed: the same 300 pairs
    made = [sim.make_pair(i, rng, p_unalignable=0.0) for i in range(n)]
    sems = [p.sem[p.y : p.y + sim.TPL, p.x : p.x + sim.TPL] for p in made]
    out["independent"] = (sems, [p.layout for p in made], np.array([p.polarity for p in made]))
    return out


def paired_quality(models: dict[str, str], shards: str, n: int) -> dict[str, Any]:
    """Per source, each student's mean IoU loss against the teacher on identical pairs, with a
    95 % bootstrap interval over the pairs (2,000 resamples)."""
    from semlayout import metrics as M
    from semlayout.inference import Translator

    pairs, out = _pairs(shards, n), {}
    for source, (sems, lays, pol) in pairs.items():
        iou = {}
        for name, ckpt in models.items():
            tr, scores = Translator.load(ckpt), np.full(len(sems), np.nan)
            for p in (1, -1):
                at = np.flatnonzero(pol == p)
                drawn = tr.translate("sem2layout", [sems[i] for i in at], binarize=True, polarity=p)
                scores[at] = [M.iou(o, lays[i]) for o, i in zip(drawn, at, strict=True)]
            iou[name] = scores
        rng = np.random.default_rng(0)
        for name in list(models)[1:]:
            loss = iou["teacher"] - iou[name]
            boot = [loss[rng.integers(0, len(loss), len(loss))].mean() for _ in range(2000)]
            lo, hi = np.percentile(boot, [2.5, 97.5])
            out[f"{source}/{name}"] = {
                "n": len(loss),
                "teacher": float(iou["teacher"].mean()),
                "student": float(iou[name].mean()),
                "loss": float(loss.mean()),
                "ci95": [float(lo), float(hi)],
            }
            print(
                f"  {source:12} {name:10} n={len(loss)} IoU teacher {iou['teacher'].mean():.4f} "
                f"student {iou[name].mean():.4f}: loss {loss.mean():+.4f} "
                f"[{lo:+.4f}, {hi:+.4f}] (bar <= 0.005)"
            )
    return out


def main(quick: bool = False) -> dict[str, Any]:
    rounds = 10 if quick else 40
    trained = _trained()
    if trained is not None:
        stats = _time(trained, rounds)
        names = list(trained)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-student-") as tmp:
            stats = _time(
                {n: _checkpoint(Path(tmp) / n, over) for n, over in STUDENTS.items()}, rounds
            )
        names = list(STUDENTS)
    best = {
        name: min((s.median, k.split("/")[1]) for k, s in stats.items() if k.startswith(name + "/"))
        for name in names
    }
    teacher_ms = best["teacher"][0]
    weights = "trained checkpoints" if trained else "random weights"
    print(
        f"student bench ({weights}): SEM->Layout forward at batch 1, {rounds} rounds; "
        f"CPU {describe_cpu()}; load average {os.getloadavg()[0]:.2f}"
    )
    for k, s in stats.items():
        print(f"  {k:28} {s.median:7.2f} ms [{s.p25:.2f}-{s.p75:.2f}]")
    out: dict[str, Any] = {
        "cpu": describe_cpu(),
        "weights": trained or "random",
        "ms": {k: s.to_dict() for k, s in stats.items()},
    }
    for name, (ms, backend) in best.items():
        speedup = teacher_ms / ms
        verdict = "meets the speed bar" if speedup >= 1.5 else "drop: under 1.5x"
        print(
            f"  best {name:18} {ms:6.2f} ms ({backend}): {speedup:.2f}x the teacher's best; "
            f"{verdict if name != 'teacher' else 'the reference'}"
        )
        out[name] = {"best_ms": ms, "backend": backend, "speedup": speedup}
    shards = os.environ.get("SEMLAYOUT_BENCH_SHARDS")
    if trained is not None and shards:
        print("paired SEM->Layout IoU, given polarity (mean loss vs the teacher [95 % bootstrap]):")
        out["paired_quality"] = paired_quality(trained, shards, 60 if quick else 300)
    return out


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
