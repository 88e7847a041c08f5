"""Tiny in-memory datasets and configs for the training tests (seconds on a CPU)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from semlayout.config import ExperimentConfig, config_from_dict


@contextmanager
def one_thread() -> Iterator[None]:
    """torch at one intra-op thread inside (the machine is shared: two threads spin against
    other jobs and run 10x slower), its previous count restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def tiny_config(**train: Any) -> ExperimentConfig:
    t = {
        "epochs": 4,
        "decay_start_epoch": 2,
        "batch_size": 2,
        "buffer_size": 3,
        "checkpoint_every": 4,
        "val_samples": 4,
        "sample_images": 2,
        "augment": False,
    } | train
    return config_from_dict(
        {
            "name": "tiny-test",
            "generator": {
                "image_size": 32,
                "n_down": 3,
                "base_filters": 4,
                "max_filters": 8,
                "dropout_blocks": 1,
            },
            "discriminator": {
                "base_filters": 4,
                "n_layers": 2,
                "spectral_norm": True,
                "norm": "instance",
            },
            "loss": {
                "gan_mode": "lsgan",
                "lambda_fm": 10.0,
                "lambda_identity": 1.0,
                "lambda_dice": 1.0,
            },
            "train": t,
        }
    )


def stripes(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A layout of vertical lines and a blurred, noisy 'SEM' of it, both in [-1, 1]."""
    period = int(rng.integers(4, 9))
    width = int(rng.integers(2, period))
    phase = int(rng.integers(0, period))
    cols = ((np.arange(size) + phase) % period) < width
    layout = np.broadcast_to(cols, (size, size)).astype(np.float32)
    if rng.random() < 0.5:
        layout = layout.T.copy()
    sem = 0.3 + 0.4 * layout + rng.normal(0, 0.05, layout.shape).astype(np.float32)
    return sem * 2 - 1, layout * 2 - 1


class PairsInMemory(Dataset):
    """Items like ShardDataset's; with `augment`, a random flip drawn from the global NumPy RNG
    (so a resume must restore that RNG to replay it)."""

    def __init__(
        self,
        n: int,
        size: int = 32,
        seed: int = 0,
        augment: bool = False,
        nan_at: int | None = None,
    ):
        rng = np.random.default_rng(seed)
        self.pairs = [stripes(rng, size) for _ in range(n)]
        self.item_families = ["lines" if i % 3 else "other" for i in range(n)]
        self.augment = augment
        self.nan_at = nan_at

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sem, lay = self.pairs[i]
        if self.augment and np.random.random() < 0.5:
            sem, lay = sem[:, ::-1], lay[:, ::-1]
        sem_t = torch.from_numpy(np.ascontiguousarray(sem))[None]
        if self.nan_at is not None and i == self.nan_at:
            sem_t = torch.full_like(sem_t, float("nan"))
        return {
            "sem": sem_t,
            "layout": torch.from_numpy(np.ascontiguousarray(lay))[None],
            "family": self.item_families[i],
            "id": f"p{i}",
        }


def ddp_config(**train: Any) -> ExperimentConfig:
    """tiny_config made deterministic across process layouts: instance norm (BatchNorm statistics
    are per process on CPU, where SyncBatchNorm does not run), no dropout, no image pool (both
    draw per-process randomness)."""
    from semlayout.config import apply_overrides

    cfg = tiny_config(buffer_size=0, checkpoint_every=100, val_samples=0, sample_images=0, **train)
    return apply_overrides(cfg, {"generator.norm": "instance", "generator.dropout": 0.0})
