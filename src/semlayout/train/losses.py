"""Loss terms of the paired + cycle GAN, each a small pure function of tensors.

The training step sums them with their lambdas where every term is named
(see `semlayout.train.trainer`). Discriminator outputs are logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _adversarial(logits: torch.Tensor, target: float, mode: str) -> torch.Tensor:
    labels = torch.full_like(logits, target)
    if mode == "lsgan":
        return F.mse_loss(logits, labels)
    if mode == "bce":
        return F.binary_cross_entropy_with_logits(logits, labels)
    raise ValueError(f"unknown gan_mode '{mode}', expected lsgan or bce")


def discriminator_loss(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, mode: str, real_label: float = 1.0
) -> torch.Tensor:
    """D's loss: real pairs toward `real_label` (one-sided smoothing, e.g. 0.9), fakes toward 0.

    Halved as in pix2pix so D learns at half G's pace.
    """
    return 0.5 * (
        _adversarial(real_logits, real_label, mode) + _adversarial(fake_logits, 0.0, mode)
    )


def generator_adversarial_loss(fake_logits: torch.Tensor, mode: str) -> torch.Tensor:
    """G's loss for fooling D: fakes toward 1 (no smoothing on G's side)."""
    return _adversarial(fake_logits, 1.0, mode)


def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).abs().mean()


def soft_dice_loss(pred: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice overlap of two (B, C, H, W) maps in [-1, 1] (mapped to [0, 1]), per image.

    Unlike L1 it weighs each image's foreground as a whole, so a 4 px via counts as much
    as the background around it: the term for small, rare features (an optional extra,
    `loss.lambda_dice`, on G_A's layout only)."""
    p, t = (pred + 1) / 2, (target + 1) / 2
    inter = (p * t).sum(dim=(1, 2, 3))
    total = p.sum(dim=(1, 2, 3)) + t.sum(dim=(1, 2, 3))
    return (1 - (2 * inter + smooth) / (total + smooth)).mean()


def feature_matching_loss(
    fake_feats: Sequence[torch.Tensor], real_feats: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Mean over D's hidden layers of L1(fake activation, real activation).

    Real activations are targets: detached, so this term never trains D nor
    moves the real side.
    """
    if len(fake_feats) != len(real_feats) or not fake_feats:
        raise ValueError("feature matching needs the same non-zero number of fake and real layers")
    total = fake_feats[0].new_zeros(())
    for f, r in zip(fake_feats, real_feats, strict=True):
        total = total + l1_loss(f, r.detach())
    return total / len(fake_feats)
