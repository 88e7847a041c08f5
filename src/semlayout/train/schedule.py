"""Linear learning-rate decay (pix2pix `linear` policy).

Constant for the first `decay_start_epoch` epochs, then falling linearly to 0
at `epochs`. Evaluated at a fractional epoch (step / steps_per_epoch), so short
runs decay smoothly; the rate is a function of the step alone, which makes a
resumed run's schedule identical without saving scheduler state.
"""

from __future__ import annotations

import torch


def lr_factor(epoch: float, epochs: int, decay_start_epoch: int) -> float:
    """Multiplier of the base LR at (fractional) `epoch`; 1 before decay, 0 at `epochs`."""
    if epoch <= decay_start_epoch:
        return 1.0
    if epochs <= decay_start_epoch:
        return 0.0
    return max(0.0, (epochs - epoch) / (epochs - decay_start_epoch))


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, factor: float) -> float:
    lr = base_lr * factor
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
