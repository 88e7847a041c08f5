"""Small shared fixtures: one tiny data set per session, built once, read-only for tests.

- `tiny_pairs`   ~24 raw pairs (304x304 SEM, truth.csv) from `semlayout synth`, or, if synth
                 is missing or broken, simple numpy rectangles (tests/helpers_shards.py).
- `tiny_aligned` the aligned folder (250x250 SEM + alignment.csv) from `semlayout align`, or
                 cropped at the truth offsets if align is missing or broken.
- `tiny_shards`  `write_shards(tiny_aligned)` with val 0.15 / test 0.25, seed 0.
Treat them as read-only: copy before modifying (`shutil.copytree`).
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pytest

TINY_N = 24


def _fallback_pairs(dest: Path) -> Path:
    from helpers_shards import make_pairs

    return make_pairs(
        dest,
        {"line_space": 10, "via_array": 5, "random_routing": 3, "line_end": 3, "l_shape": 3},
        seed=0,
        aligned=False,
    )


def _fallback_align(pairs: Path, dest: Path) -> Path:
    """Crop each SEM at its truth offset: what a perfect aligner would write."""
    from semlayout.data.pairs import (
        TEMPLATE_SHAPE,
        PairArrays,
        read_gray8,
        read_manifest,
        write_pair_folder,
    )

    with open(pairs / "truth.csv", newline="") as f:
        truth = {r["id"]: (int(r["x"]), int(r["y"])) for r in csv.DictReader(f)}
    h, w = TEMPLATE_SHAPE
    arrays = []
    for rec in read_manifest(pairs):
        x, y = truth[rec.id]
        sem = np.ascontiguousarray(read_gray8(rec.sem_path)[y : y + h, x : x + w])
        clean = None
        if rec.clean_path is not None:
            clean = np.ascontiguousarray(read_gray8(rec.clean_path)[y : y + h, x : x + w])
        arrays.append(PairArrays(rec.id, sem, read_gray8(rec.layout_path), rec.pattern_type, clean))
    write_pair_folder(dest, arrays)
    with open(dest / "alignment.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["id", "x", "y", "score", "qc_pass", "reason"])
        wr.writerows([(pid, x, y, 1.0, "true", "ok") for pid, (x, y) in truth.items()])
    return dest


@pytest.fixture(scope="session")
def tiny_pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("tiny") / "pairs"
    try:
        from semlayout.data.synth import synthesize

        return Path(synthesize(dest, TINY_N, seed=0, progress=False))
    except Exception as err:  # noqa: BLE001 - any failure of synth falls back to rectangles
        warnings.warn(
            f"tiny_pairs: semlayout synth unavailable ({err!r}); using numpy rectangles",
            stacklevel=1,
        )
        return _fallback_pairs(dest)


@pytest.fixture(scope="session")
def tiny_aligned(tiny_pairs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("tiny") / "aligned"
    try:
        from semlayout.data.align_folder import align_folder

        align_folder(tiny_pairs, dest)
        return dest
    except Exception as err:  # noqa: BLE001 - any failure of align falls back to the truth crop
        warnings.warn(
            f"tiny_aligned: semlayout align unavailable ({err!r}); cropping at truth", stacklevel=1
        )
        return _fallback_align(tiny_pairs, dest)


@pytest.fixture(scope="session")
def tiny_shards(tiny_aligned: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from semlayout.data.shards import write_shards

    dest = tmp_path_factory.mktemp("tiny") / "shards"
    write_shards(tiny_aligned, dest, val=0.15, test=0.25, seed=0, shard_size=16)
    return dest
