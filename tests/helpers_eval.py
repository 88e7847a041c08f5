"""Fixtures for inference/evaluation tests: a tiny checkpoint and a tiny shard set.

The shard set is written directly in the docs/architecture.md format (index.json +
uncompressed npz), with simple line/space and via pairs whose noise-free SEM is
known, so evaluation numbers can be checked against independent computations.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

TINY_GENERATOR = {
    "image_size": 32,
    "base_filters": 4,
    "max_filters": 8,
    "n_down": 3,
    "norm": "batch",
}
TINY_DISCRIMINATOR = {"base_filters": 4, "n_layers": 1}


def make_tiny_checkpoint(dest: Path, seed: int = 0, image_size: int = 32) -> Path:
    import torch

    from semlayout.config import config_from_dict
    from semlayout.train.checkpoint import build_networks, save_checkpoint

    cfg = config_from_dict(
        {
            "name": "tiny",
            "generator": {**TINY_GENERATOR, "image_size": image_size},
            "discriminator": TINY_DISCRIMINATOR,
        }
    )
    torch.manual_seed(seed)
    nets = build_networks(cfg)
    return save_checkpoint(dest, cfg, nets, step=3, epoch=1)


def synthetic_pair(
    rng: np.random.Generator, family: str, size: int = 250, dark_lines: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sem, layout, clean) uint8 (size, size): pattern = 255 in the layout,
    minority of the area."""
    layout = np.zeros((size, size), np.uint8)
    if family == "line_space":
        pitch = int(rng.integers(20, 40))
        width = int(pitch * rng.uniform(0.3, 0.45))
        off = int(rng.integers(0, pitch))
        for s in range(off, size, pitch):
            layout[:, s : s + width] = 255
        if rng.random() < 0.5:
            layout = np.ascontiguousarray(layout.T)
    else:
        pitch = int(rng.integers(30, 50))
        for y in range(10, size - 15, pitch):
            for x in range(10, size - 15, pitch):
                layout[y : y + 12, x : x + 12] = 255
    fg, bg = (60.0, 170.0) if dark_lines else (190.0, 70.0)
    clean_f = cv2.GaussianBlur(np.where(layout > 0, fg, bg), (0, 0), 1.5)
    clean = np.clip(np.rint(clean_f), 0, 255).astype(np.uint8)
    noisy = np.clip(np.rint(clean_f + rng.normal(0, 35, clean_f.shape)), 0, 255).astype(np.uint8)
    return noisy, layout, clean


def make_tiny_shards(dest: Path, n_test: int = 6, seed: int = 0, with_clean: bool = True) -> Path:
    rng = np.random.default_rng(seed)
    dest.mkdir(parents=True, exist_ok=True)
    fams = ["line_space" if i % 3 else "via_array" for i in range(n_test)]
    recs = [synthetic_pair(rng, f, dark_lines=(i % 4 == 3)) for i, f in enumerate(fams)]
    index = {
        "format": "semlayout-shards/1",
        "seed": seed,
        "image_size": 250,
        "splits": {},
        "families": sorted(set(fams)),
        "has_clean": with_clean,
        "source": "test",
    }
    for split, n in (("train", 2), ("val", 2), ("test", n_test)):
        rows = recs[:n]
        arrays = {
            "ids": np.array([f"{split}-{i:03d}" for i in range(n)]),
            "families": np.array(fams[:n]),
            "sem": np.stack([r[0] for r in rows]),
            "layout": np.stack([r[1] for r in rows]),
        }
        if with_clean:
            arrays["clean"] = np.stack([r[2] for r in rows])
        (dest / split).mkdir(exist_ok=True)
        np.savez(dest / split / "shard-00000.npz", **arrays)
        counts: dict[str, int] = {}
        for f in fams[:n]:
            counts[f] = counts.get(f, 0) + 1
        index["splits"][split] = {
            "n": n,
            "shards": [f"{split}/shard-00000.npz"],
            "families": counts,
        }
    (dest / "index.json").write_text(json.dumps(index, indent=2))
    return dest
