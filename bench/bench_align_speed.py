"""Alignment speed: `semlayout align` on a pair folder against a plain `cv2.matchTemplate`
loop over the same pairs, and its scaling with workers.

Data: two folders of `n` synthetic pairs each (default mix, 30 % reversed contrast; 2,000
full, 200 quick), written first (not timed): `undistorted`, and `mixed`, whose second half is
drawn with bench_align's field distortion (rotation within +-1 deg, magnification within
+-2 %, bright particles on 20 % of those images) and first half without. Variants, each over
the whole folder, in rounds with the order rotating (the machine is shared: a load change hits
all of them alike):

- `plain`: one process, OpenCV on one thread: read both PNGs, `TM_CCOEFF_NORMED` on float32,
  argmax, write the cropped SEM PNG (and the cropped clean image, as the aligner does, when
  the folder has one) and copy the layout: the least an aligner does per pair, same I/O;
- `align_1`, `align_2`: `align_folder` with 1 and 2 worker processes (what `semlayout align
  --workers N` runs: reading, matching, QC, polarity prior and second pass, field distortion,
  writing the aligned folder and alignment.csv atomically).

Reported: wall seconds per run (median and range over rounds), ms per pair, wall and CPU (this
process and its worker pools; on a shared machine the CPU ratio is the one load does not
distort), align_1 / plain, and align_1 / align_2 (2.0 = linear scaling).
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.timing import describe_cpu


def _cpu() -> float:
    """CPU seconds of this process and of its finished children (the worker pools): on a
    shared machine what a variant costs, where wall time also counts other jobs' load."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _load() -> str:
    import os

    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def plain_loop(pairs_dir: Path, out: Path) -> int:
    """The baseline aligner: matchTemplate argmax and the crop, pair by pair."""
    import cv2
    import numpy as np

    from semlayout.data.pairs import read_manifest

    cv2.setNumThreads(1)
    (out / "sem").mkdir(parents=True)
    (out / "layout").mkdir()
    (out / "clean").mkdir()
    n = 0
    for rec in read_manifest(pairs_dir):
        sem = cv2.imread(str(rec.sem_path), cv2.IMREAD_UNCHANGED)
        lay = cv2.imread(str(rec.layout_path), cv2.IMREAD_UNCHANGED)
        r = cv2.matchTemplate(sem.astype(np.float32), lay.astype(np.float32), cv2.TM_CCOEFF_NORMED)
        y, x = np.unravel_index(int(np.argmax(r)), r.shape)
        h, w = lay.shape
        fast = [cv2.IMWRITE_PNG_COMPRESSION, 1]  # as align_folder writes its crops
        cv2.imwrite(str(out / "sem" / f"{rec.id}.png"), sem[y : y + h, x : x + w], fast)
        shutil.copyfile(rec.layout_path, out / "layout" / f"{rec.id}.png")
        if rec.clean_path is not None:
            clean = cv2.imread(str(rec.clean_path), cv2.IMREAD_UNCHANGED)
            cv2.imwrite(str(out / "clean" / f"{rec.id}.png"), clean[y : y + h, x : x + w], fast)
        n += 1
    return n


def _mixed_folder(work: Path, n: int) -> Path:
    """A pair folder whose first half is undistorted and second half distorted (bench_align's
    DISTORTION), made by merging two synthesized folders (ids and files prefixed)."""
    import csv

    from bench.bench_align import DISTORTION
    from semlayout.data.sem_physics import PhysicsRanges
    from semlayout.data.synth import synthesize

    plain = PhysicsRanges(reverse_fraction=0.3)
    bent = PhysicsRanges(reverse_fraction=0.3, **DISTORTION)  # type: ignore[arg-type]
    out, rows, fields = work / "mixed", [], None
    for sub in ("sem", "layout", "clean"):
        (out / sub).mkdir(parents=True)
    for tag, ranges, k, seed in (("u", plain, n // 2, 8), ("d", bent, n - n // 2, 9)):
        src = synthesize(work / f"half-{tag}", k, seed=seed, ranges=ranges, progress=False)
        with open(src / "manifest.csv", newline="") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames
            for row in reader:
                row["id"] = f"{tag}{row['id']}"
                for col in ("sem_path", "layout_path", "clean_path"):
                    if row.get(col):
                        rel = Path(row[col])
                        new = rel.parent / f"{tag}{rel.name}"
                        shutil.move(src / rel, out / new)
                        row[col] = new.as_posix()
                rows.append(row)
    with open(out / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields or []), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return out


def main(quick: bool = False) -> dict[str, Any]:
    from semlayout.data.sem_physics import PhysicsRanges
    from semlayout.data.synth import synthesize

    n, rounds = (200, 1) if quick else (2000, 2)
    out: dict[str, Any] = {"cpu": describe_cpu()}
    with tempfile.TemporaryDirectory(prefix="bench-align-speed-") as tmp:
        work = Path(tmp)
        folders = {
            "undistorted": synthesize(
                work / "pairs",
                n,
                seed=7,
                ranges=PhysicsRanges(reverse_fraction=0.3),
                progress=False,
            ),
            "mixed": _mixed_folder(work, n),
        }
        for name, pairs in folders.items():
            out[name] = _time_folder(name, pairs, work, n, rounds)
    return out


def _time_folder(label: str, pairs: Path, work: Path, n: int, rounds: int) -> dict[str, Any]:
    """The three variants over one pair folder, in rounds with the order rotating."""
    from semlayout.data.align_folder import align_folder

    variants = {
        "plain": lambda out: plain_loop(pairs, out),
        "align_1": lambda out: align_folder(pairs, out, workers=1),
        "align_2": lambda out: align_folder(pairs, out, workers=2),
    }
    names = list(variants)
    secs: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    passed, reasons = 0, {}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            out = work / f"out-{label}-{name}-{r}"
            c0, t0 = _cpu(), time.perf_counter()
            res = variants[name](out)
            secs[name].append(time.perf_counter() - t0)
            cpu[name].append(_cpu() - c0)
            if name == "align_2":
                passed, reasons = res.n_passed, res.reasons
            shutil.rmtree(out, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in secs.items()}
    per_pair = {k: 1000 * v / n for k, v in med.items()}
    cpu_pair = {k: 1000 * statistics.median(v) / n for k, v in cpu.items()}
    ratio, scaling = med["align_1"] / med["plain"], med["align_1"] / med["align_2"]
    cpu_ratio = cpu_pair["align_1"] / cpu_pair["plain"]
    est = _estimated_share(pairs)
    print(
        f"align speed, {label}: {n} synthetic pairs, {rounds} round(s), CPU {describe_cpu()}; "
        f"patch estimate ran on {100 * est['estimated']:.1f} % of the pairs, a distortion was "
        f"undone on {100 * est['corrected']:.1f} %"
    )
    print(f"  load average at the end: {_load()}")
    for k in names:
        lo, hi = min(secs[k]), max(secs[k])
        print(
            f"  {k:8} {med[k]:7.1f} s [{lo:.1f}-{hi:.1f}]  {per_pair[k]:6.2f} ms/pair wall, "
            f"{cpu_pair[k]:6.2f} ms/pair CPU (all processes)"
        )
    print(
        f"  align_1 / plain = {ratio:.2f}x wall, {cpu_ratio:.2f}x CPU (goal <= 1.5); "
        f"align_1 / align_2 = {scaling:.2f}x (2.0 = linear); {n} pairs with 2 workers: "
        f"{med['align_2']:.1f} s (goal <= 10 s for 2,000); QC passed {passed}/{n}"
    )
    print(f"  QC reasons: {reasons}")
    return {
        "n": n,
        "rounds": rounds,
        **est,
        "seconds": secs,
        "ms_per_pair": per_pair,
        "cpu_ms_per_pair": cpu_pair,
        "cpu_ratio": cpu_ratio,
        "align_over_plain": ratio,
        "scaling_2_workers": scaling,
        "n_passed": passed,
    }


def _estimated_share(pairs: Path) -> dict[str, float]:
    """Shares of the folder's pairs on which the patch estimate ran and a distortion was undone
    (first pass, read from `AlignResult`; not timed)."""
    import cv2

    from semlayout.data.align import align_pair
    from semlayout.data.pairs import read_manifest

    res = [
        align_pair(
            cv2.imread(str(r.sem_path), cv2.IMREAD_UNCHANGED),
            cv2.imread(str(r.layout_path), cv2.IMREAD_UNCHANGED),
        )
        for r in read_manifest(pairs)
    ]
    n = max(len(res), 1)
    return {
        "estimated": sum(bool(r.distortion_estimated) for r in res) / n,
        "corrected": sum(r.corrected for r in res) / n,
    }


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
