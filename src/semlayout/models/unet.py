"""U-Net generator (pix2pix, Isola et al. 2017), built from a typed config.

Encoder: `n_down` blocks of Conv 4x4 stride 2 (LeakyReLU 0.2 before each but the
first, norm after each but the outermost and the innermost), channels at depth k
`min(base_filters * 2**k, max_filters)`. Decoder: mirror image, ReLU +
ConvTranspose 4x4 stride 2 + norm, dropout in the first `dropout_blocks`
decoder blocks, each output concatenated with the encoder features of the same
size (the skip), Tanh at the end so outputs are in [-1, 1] like the inputs.
With `attention` on, a `SelfAttention2d` follows the decoder features at each
resolution listed in `attention_resolutions` (the bottleneck counts as one); the
resolutions name decoder levels at `image_size`, so the same blocks act at the
same depth when the network runs on a crop (training with `train.crop_size`).

With `input_norm="standardize"` each input image is first scaled to zero mean and a
standard deviation of 0.5 (per image, over its pixels): part of the network, so training,
the Translator, ONNX and serving all see the same input.

Polarity conditioning (`polarity_conditioning`; +1 pattern bright, -1 dark, see
`semlayout.polarity`): `forward(x, polarity)` takes a (B,) tensor of +-1. `channel` appends a
constant +-1 plane to the input of the first conv; `film` scales and shifts the features after
every encoder and decoder block by a learned per-polarity (gamma, beta) (`FiLM`,
identity at init). `none`: the network ignores polarity (one polarity per model).
`polarity_flip` multiplies the image by the polarity on the image side of the network: the
input for G_A (`flip_side="input"`), the output for G_B (`"output"`), so both polarities
share the mapping of the material contrast and the conditioning learns the rest.

Tool / layer profiles (`profiles`, `semlayout.profiles`): a second FiLM after the polarity's
with one zero-initialised row per profile (the same `FiLM`); `forward(x, polarity, profile)`
takes (B,) row indices, -1 = the shared network. With `profile_adapter_rank` > 0 each profile
also has a residual low-rank 1x1 conv after every decoder block (`ProfileAdapter`, zero = the
shared network): the capacity to re-learn a tool's rendering. `ProfileView` fixes the row.

Init: normal(0, 0.02) for conv weights, normal(1, 0.02) for norm scales, as in
pix2pix — the loss weights (lambda_l1=100 ...) were tuned against that init.
"""

from __future__ import annotations

import torch
from torch import nn

from semlayout.config import GeneratorConfig
from semlayout.models.attention import SelfAttention2d


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        # affine: the norm's shift replaces the conv bias (a bias before a norm gets only
        # rounding-noise gradients, which Adam would amplify into random steps)
        return nn.InstanceNorm2d(channels, affine=True, track_running_stats=False)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm '{kind}', expected batch, instance or none")


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """pix2pix init: conv weights ~ N(0, std), norm scales ~ N(1, std), biases 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.InstanceNorm2d) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)


class FiLM(nn.Module):
    """x * (1 + gamma[r]) + beta[r] per channel, row r of a table (`index` (B,) of rows): the
    polarity's (row 0 for +1, 1 for -1) or a tool / layer profile's; a negative row leaves x
    as it is (no profile: the shared network). Zero init = identity."""

    def __init__(self, channels: int, rows: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(rows, channels))
        self.beta = nn.Parameter(torch.zeros(rows, channels))

    def forward(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        on = (index >= 0).to(x.dtype)[:, None]  # (B, 1): 0 where there is no row
        rows = index.clamp(min=0)
        g = (self.gamma[rows] * on)[:, :, None, None].to(x.dtype)
        b = (self.beta[rows] * on)[:, :, None, None].to(x.dtype)
        return x * (1 + g) + b


class ProfileAdapter(nn.Module):
    """x + U[r] relu(D[r] x): a residual low-rank 1x1 conv per row r (`index` (B,) of rows, a
    negative row leaves x as it is). U is zero at init (identity); D is random so U's
    gradient is not zero (LoRA's init). (rows, rank, C) and (rows, C, rank) tables: a
    gradient mask on one row trains that profile alone."""

    def __init__(self, channels: int, rows: int, rank: int):
        super().__init__()
        self.down = nn.Parameter(torch.randn(rows, rank, channels) * channels**-0.5)
        self.up = nn.Parameter(torch.zeros(rows, channels, rank))

    def forward(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        on = index >= 0
        if not bool(on.any()):
            return x
        rows = index.clamp(min=0)
        d = self.down[rows].to(x.dtype)  # (B, rank, C)
        u = (self.up[rows] * on.to(self.up.dtype)[:, None, None]).to(x.dtype)  # (B, C, rank)
        h = torch.relu(torch.einsum("brc,bchw->brhw", d, x))
        return x + torch.einsum("bcr,brhw->bchw", u, h)


class UNetGenerator(nn.Module):
    def __init__(self, cfg: GeneratorConfig, flip_side: str = "input"):
        super().__init__()
        self.cfg = cfg
        self.conditioning = cfg.polarity_conditioning
        # which side of the network is the SEM, multiplied by the polarity (None: no flip)
        self.flip_side = flip_side if cfg.polarity_flip and self.conditioning != "none" else None
        n = cfg.n_down
        ch = [min(cfg.base_filters * 2**k, cfg.max_filters) for k in range(n)]

        # encoder block k: (B, ch[k-1], S/2^k, ..) -> (B, ch[k], S/2^(k+1), ..)
        self.down = nn.ModuleList()
        for k in range(n):
            layers: list[nn.Module] = []
            if k > 0:
                layers.append(nn.LeakyReLU(0.2, inplace=True))
            c_in = ch[k - 1] if k else cfg.in_channels + (self.conditioning == "channel")
            outermost, innermost = k == 0, k == n - 1
            layers.append(
                nn.Conv2d(c_in, ch[k], 4, 2, 1, bias=outermost or innermost)
            )  # no bias before a norm
            if not (outermost or innermost):
                layers.append(norm_layer(cfg.norm, ch[k]))
            self.down.append(nn.Sequential(*layers))

        # decoder block j (j = n-1 .. 1): up to S/2^j, output ch[j-1], then cat with skip
        # -> 2*ch[j-1]
        self.up = nn.ModuleList()
        for i, j in enumerate(range(n - 1, 0, -1)):
            c_in = ch[j] if j == n - 1 else 2 * ch[j]
            layers = [
                nn.ReLU(inplace=True),
                nn.ConvTranspose2d(c_in, ch[j - 1], 4, 2, 1, bias=False),
                norm_layer(cfg.norm, ch[j - 1]),
            ]
            if i < cfg.dropout_blocks and cfg.dropout > 0:
                layers.append(nn.Dropout(cfg.dropout))
            self.up.append(nn.Sequential(*layers))
        c_last = ch[0] if n == 1 else 2 * ch[0]
        self.outermost = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(c_last, cfg.out_channels, 4, 2, 1),
            nn.Tanh(),
        )

        # attention keyed by resolution; the bottleneck is S / 2^n with ch[n-1] channels,
        # decoder output j has resolution S / 2^j with 2*ch[j-1] channels (after the skip).
        self.attention = nn.ModuleDict()
        if cfg.attention:
            channels_at = {cfg.image_size // 2**n: ch[n - 1]}
            for j in range(n - 1, 0, -1):
                channels_at[cfg.image_size // 2**j] = 2 * ch[j - 1]
            for res in cfg.attention_resolutions:
                if res not in channels_at:
                    raise ValueError(
                        f"attention resolution {res} is not a decoder resolution; "
                        f"expected one of {sorted(channels_at)}"
                    )
                self.attention[str(res)] = SelfAttention2d(channels_at[res])

        # FiLM after every encoder block and every decoder block (before the skip concat)
        self.film_down = nn.ModuleList()
        self.film_up = nn.ModuleList()
        if self.conditioning == "film":
            self.film_down.extend(FiLM(c, 2) for c in ch)
            self.film_up.extend(FiLM(ch[j - 1], 2) for j in range(n - 1, 0, -1))

        # a tool / layer profile's scale and shift after the polarity's, at the same places
        self.profile_down = nn.ModuleList()
        self.profile_up = nn.ModuleList()
        if cfg.profiles:
            k = len(cfg.profiles)
            self.profile_down.extend(FiLM(c, k) for c in ch)
            self.profile_up.extend(FiLM(ch[j - 1], k) for j in range(n - 1, 0, -1))
        # and, with a rank, a residual adapter per profile after every decoder block
        self.profile_adapt = nn.ModuleList()
        if cfg.profiles and cfg.profile_adapter_rank:
            k, r = len(cfg.profiles), cfg.profile_adapter_rank
            self.profile_adapt.extend(ProfileAdapter(ch[j - 1], k, r) for j in range(n - 1, 0, -1))

        init_weights(self)

        # the network is fully convolutional (training may use crops of image_size), so an
        # attention block belongs to a decoder *level*, named by its resolution at image_size
        self._attention_at_level = {
            j: str(cfg.image_size // 2**j)
            for j in range(n, 0, -1)
            if str(cfg.image_size // 2**j) in self.attention
        }

    def _attend(self, x: torch.Tensor, level: int) -> torch.Tensor:
        key = self._attention_at_level.get(level)
        return self.attention[key](x) if key is not None else x

    def _condition(
        self, x: torch.Tensor, at: int, up: bool, index: torch.Tensor | None,
        profile: torch.Tensor | None,
    ) -> torch.Tensor:  # fmt: skip
        """The polarity's FiLM, then the profile's, after encoder (or decoder) block `at`."""
        film, prof = (self.film_up, self.profile_up) if up else (self.film_down, self.profile_down)
        if index is not None and film:
            x = film[at](x, index)
        if profile is not None and prof:
            x = prof[at](x, profile)
            if up and self.profile_adapt:
                x = self.profile_adapt[at](x, profile)
        return x

    def forward(
        self,
        x: torch.Tensor,
        polarity: torch.Tensor | None = None,
        profile: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, in_channels, S, S) in [-1, 1] and, for a conditioned network, polarity (B,) of
        +-1 (and optionally the tool / layer `profile` (B,) of row indices, -1 = none)
        -> (B, out_channels, S, S) in [-1, 1]."""
        sign = None
        if self.flip_side is not None and polarity is not None:
            sign = polarity.to(x.dtype).reshape(-1, 1, 1, 1)
            if self.flip_side == "input":
                x = x * sign
        if self.cfg.input_norm == "standardize":
            mean = x.mean(dim=(2, 3), keepdim=True)
            std = (x - mean).square().mean(dim=(2, 3), keepdim=True).sqrt()
            x = (x - mean) * (
                0.5 / (std + 0.01)
            )  # the floor bounds the gain on a near-blank image (~50x)
        index = None
        if self.conditioning != "none":
            if polarity is None:
                raise ValueError("this generator is polarity-conditioned: pass polarity (B,)")
            pol = polarity.to(x.dtype).reshape(-1, 1, 1, 1)
            if self.conditioning == "channel":
                x = torch.cat([x, pol.expand(-1, 1, x.shape[2], x.shape[3])], dim=1)
            index = (polarity.reshape(-1) < 0).long()
        skips = []
        for k, block in enumerate(self.down):
            x = self._condition(block(x), k, False, index, profile)
            skips.append(x)
        n = len(self.down)
        x = self._attend(skips.pop(), n)  # bottleneck (B, ch[n-1], S/2^n, S/2^n)
        for i, (j, block) in enumerate(zip(range(n - 1, 0, -1), self.up, strict=True)):
            y = self._condition(block(x), i, True, index, profile)
            x = self._attend(torch.cat([y, skips.pop()], dim=1), j)
        out = self.outermost(x)  # (B, out_channels, S, S) in [-1, 1]
        if sign is not None and self.flip_side == "output":
            out = out * sign.to(out.dtype)
        return out


class ProfileView(nn.Module):
    """A generator answering for one tool / layer profile (row `row` of its profile tables)
    whenever the caller passes no profile: what inference loads for a request's label, so the
    backends (eager, ONNX export) keep their (image, polarity) interface. Shares the weights."""

    def __init__(self, net: UNetGenerator, row: int):
        super().__init__()
        self.net = net
        self.row = int(row)
        self.conditioning = net.conditioning
        self.cfg = net.cfg

    def forward(
        self,
        x: torch.Tensor,
        polarity: torch.Tensor | None = None,
        profile: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if profile is None:
            profile = torch.full((x.shape[0],), self.row, dtype=torch.long, device=x.device)
        return self.net(x, polarity, profile)
