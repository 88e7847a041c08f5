"""Conditional PatchGAN discriminator (pix2pix): judges overlapping patches.

Input is `cat(source, output)` along channels, so D judges whether the output
fits its source, not only whether it looks real. Conv 4x4: `n_layers` stride-2
layers, then two stride-1 layers; no norm on the first layer; LeakyReLU 0.2.
`forward` returns the logits map `(B, 1, h, w)` (one logit per patch) and the
activations after every hidden layer, which feature matching compares.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from semlayout.config import DiscriminatorConfig
from semlayout.models.unet import init_weights, norm_layer

KERNEL = 4


def layer_geometry(n_layers: int) -> list[tuple[int, int]]:
    """(kernel, stride) of each conv, input to output."""
    return [(KERNEL, 2)] * n_layers + [(KERNEL, 1), (KERNEL, 1)]


def receptive_field(n_layers: int) -> int:
    """Side in input pixels that one output logit sees (70 for n_layers=3)."""
    rf = 1
    for k, s in reversed(layer_geometry(n_layers)):
        rf = rf * s + (k - s)
    return rf


class PatchDiscriminator(nn.Module):
    def __init__(self, cfg: DiscriminatorConfig):
        super().__init__()
        self.cfg = cfg
        bias = cfg.norm == "none"  # a bias right before a norm is redundant

        def conv(c_in: int, c_out: int, stride: int, with_bias: bool) -> nn.Module:
            c = nn.Conv2d(c_in, c_out, KERNEL, stride, 1, bias=with_bias)
            init_weights(c)  # before spectral_norm, which then reparametrises this weight
            return spectral_norm(c) if cfg.spectral_norm else c

        nf = cfg.base_filters
        blocks: list[nn.Module] = [
            nn.Sequential(conv(cfg.in_channels, nf, 2, True), nn.LeakyReLU(0.2, inplace=True))
        ]
        c_prev = nf
        for k in range(1, cfg.n_layers + 1):
            c_out = nf * min(2**k, 8)
            stride = 2 if k < cfg.n_layers else 1
            blocks.append(
                nn.Sequential(
                    conv(c_prev, c_out, stride, bias),
                    norm_layer(cfg.norm, c_out),
                    nn.LeakyReLU(0.2, inplace=True),
                )
            )
            c_prev = c_out
        self.blocks = nn.ModuleList(blocks)
        self.head = conv(c_prev, 1, 1, True)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d | nn.InstanceNorm2d):
                init_weights(m)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return self.head(x), feats  # (B, 1, h, w), [(B, C_k, h_k, w_k)]
