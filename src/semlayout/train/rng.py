"""The global RNGs a training run draws from (Python, NumPy, torch): seed, save, restore.

States are plain tensors so that every rank's can be all-gathered and saved in
train_state.pt, which is read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, torch.Tensor]:
    """Python, NumPy and torch global RNG states as plain tensors (gatherable, weights_only)."""
    _, py_keys, py_gauss = random.getstate()
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "python": torch.tensor(py_keys, dtype=torch.int64),
        "python_gauss": torch.tensor(
            [math.nan if py_gauss is None else py_gauss], dtype=torch.float64
        ),
        "numpy": torch.from_numpy(np.asarray(np_keys).astype(np.int64)),
        "numpy_meta": torch.tensor([np_pos, np_has_gauss, np_gauss], dtype=torch.float64),
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    """Restore what `rng_state` returned."""
    gauss = float(state["python_gauss"][0])
    random.setstate(
        (3, tuple(int(v) for v in state["python"]), None if math.isnan(gauss) else gauss)
    )
    pos, has_gauss, np_gauss = state["numpy_meta"].tolist()
    np.random.set_state(
        ("MT19937", state["numpy"].numpy().astype(np.uint32), int(pos), int(has_gauss), np_gauss)
    )
    torch.set_rng_state(state["torch"])
