"""Run by `torchrun` from test_ddp.py: a tiny data-parallel training run (argv: OUT STEPS)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from helpers_train import PairsInMemory, ddp_config  # noqa: E402

from semlayout.train.loop import run_training  # noqa: E402

if __name__ == "__main__":
    torch.set_num_threads(1)
    out, steps = sys.argv[1], int(sys.argv[2])
    cfg = ddp_config(batch_size=2, max_steps=steps)
    run_training(cfg, PairsInMemory(16), out, progress=False)
