"""Tiny pair folders built from numpy rectangles: no dependence on `semlayout synth` / `align`.

`make_pairs(dest, {"line_space": 10, "via_array": 3}, aligned=True)` writes a pair folder
(plus `alignment.csv` and `truth.csv`) whose layouts are simple family-specific drawings
and whose SEM is a monotone function of the layout plus mild noise, so that
`layout == (sem > 127) * 255` holds exactly (used to check paired augmentation).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from semlayout.data.pairs import PairArrays, write_pair_folder

FIELD = 304
TEMPLATE = 250


def draw_layout(rng: np.random.Generator, family: str, size: int) -> np.ndarray:
    """(size, size) uint8 in {0, 255}: a few family-flavoured rectangles."""
    img = np.zeros((size, size), np.uint8)
    if family.startswith("line"):
        pitch = int(rng.integers(16, 48))
        width = max(4, int(pitch * rng.uniform(0.3, 0.7)))
        off = int(rng.integers(pitch))
        for c in range(off, size, pitch):
            img[:, c : c + width] = 255
        if rng.random() < 0.5:
            img = np.ascontiguousarray(img.T)
    elif family.startswith("via"):
        pitch = int(rng.integers(20, 40))
        side = max(4, pitch // 2)
        for r in range(4, size - side, pitch):
            for c in range(4, size - side, pitch):
                if rng.random() > 0.1:
                    img[r : r + side, c : c + side] = 255
    else:
        for _ in range(int(rng.integers(3, 9))):
            r, c = rng.integers(0, size - 20, 2)
            h, w = rng.integers(8, 80, 2)
            img[r : r + h, c : c + w] = 255
    return img


def render_sem(
    rng: np.random.Generator, layout: np.ndarray, noise: float = 6.0
) -> tuple[np.ndarray, np.ndarray]:
    """(noisy, clean) uint8 with noisy > 127 exactly where layout == 255."""
    clean = np.where(layout > 0, 190, 60).astype(np.float64)
    noisy = clean + rng.normal(0, noise, layout.shape).clip(-50, 50)
    return noisy.astype(np.uint8), clean.astype(np.uint8)


def make_pairs(
    dest: Path,
    families: dict[str, int],
    seed: int = 0,
    aligned: bool = True,
    with_clean: bool = True,
    prefix: str = "p",
) -> Path:
    """A pair folder: aligned (250x250 SEMs + alignment.csv) or raw (304x304 SEMs + truth.csv)."""
    rng = np.random.default_rng(seed)
    pairs, truth = [], []
    k = 0
    for fam, n in families.items():
        for _ in range(n):
            field = draw_layout(rng, fam, FIELD)
            x, y = (int(v) for v in rng.integers(2, 53, 2))
            layout = np.ascontiguousarray(field[y : y + TEMPLATE, x : x + TEMPLATE])
            sem, clean = render_sem(rng, field)
            if aligned:
                sem, clean = (
                    sem[y : y + TEMPLATE, x : x + TEMPLATE],
                    clean[y : y + TEMPLATE, x : x + TEMPLATE],
                )
            pid = f"{prefix}{k:05d}"
            pairs.append(
                PairArrays(
                    pid,
                    np.ascontiguousarray(sem),
                    layout,
                    fam,
                    np.ascontiguousarray(clean) if with_clean else None,
                )
            )
            truth.append((pid, x, y))
            k += 1
    write_pair_folder(dest, pairs)
    with open(dest / ("alignment.csv" if aligned else "truth.csv"), "w", newline="") as f:
        w = csv.writer(f)
        if aligned:
            w.writerow(["id", "x", "y", "score", "qc_pass", "reason"])
            w.writerows([(pid, x, y, 0.99, "true", "ok") for pid, x, y in truth])
        else:
            w.writerow(["id", "x", "y"])
            w.writerows(truth)
    return dest
