"""Data parallel under torchrun (2 CPU processes, gloo) equals one process with the combined batch.

The comparison uses instance norm, no dropout and no image pool (see helpers_train.ddp_config):
BatchNorm statistics are per process (SyncBatchNorm needs a GPU), and dropout masks and pool
draws are per-process randomness, so with those on the two runs are equally valid but differ.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers_train import PairsInMemory, ddp_config
from safetensors.torch import load_file

from semlayout.train.loop import run_training

STEPS = 3


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_the_combined_batch(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    worker = Path(__file__).parent / "ddp_worker.py"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            str(worker),
            str(tmp_path / "ddp"),
            str(STEPS),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = run_training(
            ddp_config(batch_size=4, max_steps=STEPS),
            PairsInMemory(16),
            tmp_path / "single",
            progress=False,
        )
    finally:
        torch.set_num_threads(n)

    a = load_file(str(tmp_path / "ddp" / "final" / "weights.safetensors"))
    b = load_file(str(single / "weights.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=2e-5, rtol=1e-4), (k, (a[k] - b[k]).abs().max())
    # and training did move the weights (the comparison is not between two untouched inits)
    fresh = PairsInMemory(16)
    assert len(fresh) == 16
    init_dir = run_training(
        ddp_config(batch_size=4, max_steps=1, lr=1e-30), fresh, tmp_path / "init", progress=False
    )
    c = load_file(str(init_dir / "weights.safetensors"))
    assert not torch.allclose(a["G_A.down.0.0.weight"], c["G_A.down.0.0.weight"], atol=1e-6)
    state = torch.load(tmp_path / "ddp" / "final" / "train_state.pt", weights_only=True)
    assert len(state["ranks"]) == 2 and state["step"] == STEPS
