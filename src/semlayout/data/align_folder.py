"""Align a whole pair folder: `align_pair` on every pair (optionally in worker processes),
then the aligned pair folder of the QC-passed pairs (SEM and clean image cropped to the
template, resampled when a field distortion was undone) and `alignment.csv` with one row
per input pair, written atomically.

Polarity: unless the caller fixes it (`prior`), the data set's polarity is estimated from
the first pass's confident pairs, per pattern type (`align_polarity.estimate_priors`), and
the pairs it can help (`align_polarity.needs_prior`) are aligned a second time with it.
The aligned manifest carries `polarity`, `polarity_margin` and `polarity_source`; an input
column `polarity` (e.g. synth's drawn physics) is kept as `declared_polarity`."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.pool import Pool
from pathlib import Path

import numpy as np

from semlayout.atomic import atomic_dir, check_not_over_inputs
from semlayout.data.align import AlignConfig, AlignResult, align_pair, aligned_crop
from semlayout.data.align_polarity import PolarityPrior, PriorTable, estimate_priors, needs_prior
from semlayout.data.alignment_table import (
    ALIGNMENT_FILE,
    DECLARED_POLARITY,
    POLARITY_COLUMNS,
    polarity_columns,
    result_row,
    write_alignment_table,
)
from semlayout.data.pairs import (
    REQUIRED_COLUMNS,
    ImageRejected,
    PairRecord,
    read_gray8,
    read_manifest,
)
from semlayout.errors import SemlayoutError

Job = tuple[PairRecord, Path, AlignConfig, PolarityPrior | None]


@dataclass
class AlignSummary:
    out_dir: str
    n_pairs: int
    n_passed: int
    reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    pairs_per_s: float = 0.0
    polarity_prior: str = ""  # the data set's polarity as used (estimated or fixed)
    n_prior: int = 0  # pairs placed or labelled with that prior


def align_folder(
    pairs_dir: str | Path,
    out_dir: str | Path,
    cfg: AlignConfig | None = None,
    workers: int = 1,
    progress: bool = False,
    prior: PriorTable | None = None,
) -> AlignSummary:
    """Align every pair of `pairs_dir`; `out_dir` becomes the pair folder of QC-passed pairs.

    `out_dir/alignment.csv` has one row per input pair (rejected ones with a reason).
    `prior`: the data set's polarity fixed by the caller (`align_polarity.prior_table`);
    None estimates it from the pairs. Nothing appears at `out_dir` unless the whole run
    succeeds.
    """
    cfg = cfg or AlignConfig()
    pairs_dir, out_dir = Path(pairs_dir), Path(out_dir)
    records = read_manifest(pairs_dir)
    check_not_over_inputs(out_dir, input_pair_folder=pairs_dir)
    if workers < 1:
        raise SemlayoutError(f"workers must be >= 1, got {workers}")
    has_clean = any(r.clean_path is not None for r in records)
    t0 = time.perf_counter()
    with atomic_dir(out_dir) as tmp:
        for sub in ("sem", "layout") + (("clean",) if has_clean else ()):
            (tmp / sub).mkdir()
        jobs: list[Job] = [
            (r, tmp, cfg, prior.for_pattern(r.pattern_type) if prior is not None else None)
            for r in records
        ]
        with _worker_pool(workers, len(jobs)) as pool:  # one pool for both passes
            results = _run_jobs(jobs, pool, progress)
            table = prior
            if table is None:
                table = _with_estimated_prior(records, results, tmp, cfg, pool, progress)
        _write_outputs(tmp, records, results, has_clean)
    seconds = time.perf_counter() - t0
    reasons = Counter(r.reason for r in results)
    return AlignSummary(
        out_dir=str(out_dir),
        n_pairs=len(results),
        n_passed=sum(r.qc_pass for r in results),
        reasons=dict(sorted(reasons.items())),
        seconds=seconds,
        pairs_per_s=len(results) / seconds if seconds > 0 else 0.0,
        polarity_prior=table.describe(),
        n_prior=sum(r.qc_pass and r.polarity_source == "prior" for r in results),
    )


def _with_estimated_prior(
    records: list[PairRecord],
    results: list[AlignResult],
    tmp: Path,
    cfg: AlignConfig,
    pool: Pool | None,
    progress: bool,
) -> PriorTable:
    """The data set's polarity from the first pass's confident pairs; the pairs it can help
    are aligned again with it (their results replaced in `results`)."""
    table = estimate_priors(
        ((r.pattern_type, res) for r, res in zip(records, results, strict=True)),
        cfg.min_polarity_margin,
        cfg.prior_min_pairs,
        cfg.prior_min_share,
    )
    again = [
        i
        for i, (r, res) in enumerate(zip(records, results, strict=True))
        if needs_prior(res, table.for_pattern(r.pattern_type))
    ]
    jobs: list[Job] = [
        (records[i], tmp, cfg, table.for_pattern(records[i].pattern_type)) for i in again
    ]
    for i, res in zip(again, _run_jobs(jobs, pool, progress), strict=True):
        results[i] = res
    return table


# ----------------------------------------------------------------------------- one pair


def _align_record(
    rec: PairRecord, tmp: Path, cfg: AlignConfig, prior: PolarityPrior | None
) -> AlignResult:
    """Read and align one pair; if QC passes, write its cropped images into `tmp`."""
    try:
        sem = read_gray8(rec.sem_path)
        layout = read_gray8(rec.layout_path)  # align_pair rejects non-binary ones (not_binary)
    except ImageRejected as err:
        return AlignResult(reason=err.reason)
    res = align_pair(sem, layout, cfg, prior)
    clean = None
    if res.qc_pass and rec.clean_path is not None:
        try:
            clean = read_gray8(rec.clean_path, expected_shape=sem.shape)
        except ImageRejected as err:
            res.qc_pass, res.reason = False, err.reason
    if res.qc_pass:
        _write_crops(rec, tmp, res, sem, layout.shape, clean)
    return res


def _write_crops(
    rec: PairRecord,
    tmp: Path,
    res: AlignResult,
    sem: np.ndarray,
    shape: tuple[int, ...],
    clean: np.ndarray | None,
) -> None:
    """The SEM (and clean image) cropped to the template (`aligned_crop`: resampled into the
    layout's frame when a distortion was undone), and the layout."""
    import cv2

    fast = [cv2.IMWRITE_PNG_COMPRESSION, 1]  # lossless either way; level 1 is ~2x faster
    cv2.imwrite(str(tmp / "sem" / f"{rec.id}.png"), aligned_crop(sem, res, shape), fast)
    shutil.copyfile(rec.layout_path, tmp / "layout" / f"{rec.id}.png")
    if clean is not None:
        cv2.imwrite(str(tmp / "clean" / f"{rec.id}.png"), aligned_crop(clean, res, shape), fast)


# ----------------------------------------------------------------------------- workers


def _worker_init() -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core; cv2's own threads would oversubscribe


def _worker_run(job: Job) -> AlignResult:
    return _align_record(*job)


def _drop_crops(tmp: Path, pair_id: str) -> None:
    """Remove a pair's crops (written in the first pass, refused in the second)."""
    for sub in ("sem", "layout", "clean"):
        (tmp / sub / f"{pair_id}.png").unlink(missing_ok=True)


MIN_POOL_JOBS = 64  # fewer pairs than this are aligned in this process


@contextlib.contextmanager
def _worker_pool(workers: int, n_jobs: int) -> Iterator[Pool | None]:
    """`workers` processes (None: align in this process), started once for the whole run."""
    if workers == 1 or n_jobs < MIN_POOL_JOBS:
        yield None
        return
    import multiprocessing as mp

    # spawn, not fork: forking a process whose OpenCV thread pool is already running
    # can deadlock the children (seen here: workers stuck in a futex wait forever).
    # One thread per worker for numpy's BLAS too (read when the child imports numpy, before
    # any initializer runs): N workers on N cores, not N x BLAS threads
    saved = {k: os.environ.get(k) for k in _ONE_THREAD}
    os.environ.update(_ONE_THREAD)
    try:
        started = mp.get_context("spawn").Pool(workers, initializer=_worker_init)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    with started as pool:
        yield pool


_ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _run_jobs(jobs: list[Job], pool: Pool | None, progress: bool) -> list[AlignResult]:
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), unit="pair", desc="align", disable=not progress, leave=False)
    try:
        if pool is None or len(jobs) < MIN_POOL_JOBS:
            results = []
            for j in jobs:
                results.append(_worker_run(j))
                bar.update()
            return results
        results = []
        for res in pool.imap(_worker_run, jobs, chunksize=16):
            results.append(res)
            bar.update()
        return results
    finally:
        bar.close()


# ----------------------------------------------------------------------------- outputs


def _write_outputs(
    tmp: Path, records: list[PairRecord], results: list[AlignResult], has_clean: bool
) -> None:
    """alignment.csv (every pair) and manifest.csv (the QC-passed ones, paths into `tmp`)."""
    for rec, res in zip(records, results, strict=True):
        if not res.qc_pass:
            _drop_crops(tmp, rec.id)
    write_alignment_table(
        tmp / ALIGNMENT_FILE,
        [result_row(rec.id, res) for rec, res in zip(records, results, strict=True)],
    )
    extra_cols: list[str] = []
    for r in records:
        for k in r.extra:
            name = DECLARED_POLARITY if k == "polarity" else k
            if name not in extra_cols and name not in POLARITY_COLUMNS:
                extra_cols.append(name)
    columns = list(REQUIRED_COLUMNS) + (["clean_path"] if has_clean else []) + extra_cols
    columns += list(POLARITY_COLUMNS)
    buf = io.StringIO()
    mw = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    mw.writeheader()
    for rec, res in zip(records, results, strict=True):
        if not res.qc_pass:
            continue
        out = {
            "id": rec.id,
            "sem_path": f"sem/{rec.id}.png",
            "layout_path": f"layout/{rec.id}.png",
            "pattern_type": rec.pattern_type,
        }
        if has_clean:
            out["clean_path"] = f"clean/{rec.id}.png" if rec.clean_path is not None else ""
        for k in extra_cols:
            out[k] = rec.extra.get("polarity" if k == DECLARED_POLARITY else k, "")
        out.update(polarity_columns(res))
        mw.writerow(out)
    (tmp / "manifest.csv").write_text(buf.getvalue())
