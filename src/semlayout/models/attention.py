"""SAGAN-style self-attention over the pixels of a feature map.

Used by the improved generator at low resolutions (8x8, 16x16), where every
pixel attending to every other pixel costs little and lets the decoder relate
distant edges of the same pattern. `gamma` starts at 0, so a fresh block is
the identity and the U-Net first learns local structure (Zhang et al., 2019).
"""

from __future__ import annotations

import torch
from torch import nn


class SelfAttention2d(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        inner = max(channels // 8, 1)
        self.query = nn.Conv2d(channels, inner, kernel_size=1)
        self.key = nn.Conv2d(channels, inner, kernel_size=1)
        self.value = nn.Conv2d(channels, channels, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # (B, HW, C')
        k = self.key(x).flatten(2)  # (B, C', HW)
        v = self.value(x).flatten(2)  # (B, C, HW)
        attn = torch.softmax(torch.bmm(q, k), dim=-1)  # (B, HW, HW): row i = where pixel i looks
        out = torch.bmm(v, attn.transpose(1, 2)).view(b, c, h, w)
        return x + self.gamma * out
