"""The GAN step: both directions every step, D update -> freeze D -> G update.

Domains: A = SEM, B = layout. G_A: SEM -> layout, G_B: layout -> SEM. D_A judges
(SEM, layout) pairs, D_B judges (layout, SEM) pairs (conditional PatchGANs).
Loss terms, each already multiplied by its lambda:
  gan_A / gan_B     G_A / G_B fooling D_A / D_B (gan_X and fm_X x loss.adversarial_weight_X)
  l1_A / l1_B       paired L1 of G_A(sem) vs layout / G_B(layout) vs sem
  cycle_A / cycle_B G_B(G_A(sem)) vs sem / G_A(G_B(layout)) vs layout
  fm_A / fm_B       feature matching on D_A / D_B hidden layers (real side detached)
  idt_A / idt_B     G_A(layout) vs layout / G_B(sem) vs sem (optional)
  dice_A            soft Dice of G_A(sem) vs layout (optional: small, rare features)
  distill_A / _B    G_A(sem) / G_B(layout) vs a frozen teacher's output for the same input and
                    polarity (optional: loss.lambda_distill + train.teacher; train/distill.py)

`Trainer` owns the networks, optimisers and image pools and runs one step
(`semlayout.train.loop` drives the epochs).

Precision (`train.precision`): with bf16 every G and D forward of the step runs under
`torch.autocast(dtype=bfloat16)` and its outputs are cast back to fp32 before the pool and
the losses, so losses, gradients of the fp32 weights, optimiser state, pools and checkpoints
are fp32 either way (bf16 keeps fp32's exponent range: no loss scaling). `auto` resolves
once per run (`resolve_precision`) to bf16 where the device has bf16 units, else fp32: on a
CPU without them bf16 is emulated and slower than fp32.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import torch
from torch import nn

from semlayout.config import ExperimentConfig
from semlayout.errors import SemlayoutError
from semlayout.train import distributed
from semlayout.train.checkpoint import build_networks
from semlayout.train.distributed import DistContext
from semlayout.train.losses import (
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    l1_loss,
    soft_dice_loss,
)
from semlayout.train.pool import ImagePool
from semlayout.train.schedule import set_lr

LOSS_TERMS = (
    "gan_A",
    "gan_B",
    "l1_A",
    "l1_B",
    "cycle_A",
    "cycle_B",
    "fm_A",
    "fm_B",
    "idt_A",
    "idt_B",
    "dice_A",
    "distill_A",
    "distill_B",
)
LOGGED = ("loss_D", "d_A", "d_B", "loss_G", *LOSS_TERMS)


class NonFiniteLoss(SemlayoutError):
    """Training diverged: a loss became NaN or infinite."""


def set_requires_grad(nets: Sequence[nn.Module], flag: bool) -> None:
    for net in nets:
        for p in net.parameters():
            p.requires_grad_(flag)


def resolve_precision(precision: str, device: torch.device) -> str:
    """`train.precision` -> "fp32" | "bf16"; "auto" is bf16 only where the device has bf16 units."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        # native bf16 only: emulated bf16 (e.g. T4, V100) is slower than fp32
        with torch.cuda.device(device):
            return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
    if device.type == "cpu":
        probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # private: getattr
        native = any(getattr(torch.cpu, name, lambda: False)() for name in probes)
        return "bf16" if native else "fp32"
    return "fp32"


@dataclass(frozen=True)
class _Batch:
    """The tensors of one step that both the D and the G update read."""

    real_sem: torch.Tensor
    real_lay: torch.Tensor
    polarity: torch.Tensor  # (B,) +-1: the contrast polarity of each pair
    profile: torch.Tensor | None  # (B,) tool / layer profile rows (-1: none), or None
    fake_lay: torch.Tensor  # G_A(real_sem)
    fake_sem: torch.Tensor  # G_B(real_lay)
    real_pair_A: torch.Tensor  # what D_A should call real: (sem, layout)
    real_pair_B: torch.Tensor  # what D_B should call real: (layout, sem)


class Trainer:
    """Networks + optimisers + image pools, and `train_step` — one update of D then of G."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        nets: dict[str, nn.Module] | None = None,
        ctx: DistContext | None = None,
        teacher: dict[str, nn.Module] | None = None,
    ):
        self.cfg = cfg
        self.ctx = ctx or DistContext()
        self.nets = nets if nets is not None else build_networks(cfg)
        memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        for net in self.nets.values():
            net.to(self.ctx.device, memory_format=memory_format).train()  # type: ignore[call-overload]
            distributed.broadcast_module(net, self.ctx)
        self.G_A, self.G_B = self.nets["G_A"], self.nets["G_B"]
        self.D_A, self.D_B = self.nets["D_A"], self.nets["D_B"]
        # frozen G_A / G_B of a distillation teacher (semlayout.train.distill), or None
        self.teacher = teacher
        for net in (teacher or {}).values():
            net.to(self.ctx.device, memory_format=memory_format).eval()  # type: ignore[call-overload]
        t = cfg.train
        device = self.ctx.device
        if t.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise SemlayoutError(
                f"train.precision=bf16: {device} does not support bfloat16; use fp32"
            )
        self.precision = resolve_precision(t.precision, device)
        betas = (t.beta1, t.beta2)
        self.opt_G = torch.optim.Adam(
            chain(self.G_A.parameters(), self.G_B.parameters()), lr=t.lr, betas=betas
        )
        self.opt_D = torch.optim.Adam(
            chain(self.D_A.parameters(), self.D_B.parameters()), lr=t.lr, betas=betas
        )
        # per-rank pools with their own RNG so a resume replays their choices
        self.pool_A = ImagePool(t.buffer_size, seed=t.seed * 1000 + 2 * self.ctx.rank + 1)
        self.pool_B = ImagePool(t.buffer_size, seed=t.seed * 1000 + 2 * self.ctx.rank + 2)

    def set_lr_factor(self, factor: float) -> float:
        set_lr(self.opt_D, self.cfg.train.lr, factor)
        return set_lr(self.opt_G, self.cfg.train.lr, factor)

    # ------------------------------------------------------------ forwards at the step's precision

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "bf16":
            return torch.autocast(self.ctx.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _gen(
        self,
        net: nn.Module,
        x: torch.Tensor,
        polarity: torch.Tensor,
        profile: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """A generator forward at the step's precision; the output in fp32."""
        with self._autocast():
            out = net(x, polarity) if profile is None else net(x, polarity, profile)
        return out.float()

    def _disc(self, net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """A discriminator forward at the step's precision: (logits, hidden activations) in fp32."""
        with self._autocast():
            logits, feats = net(x)
        return logits.float(), [f.float() for f in feats]

    def _check_finite(self, named: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        """The values averaged over ranks, as floats; NonFiniteLoss if any is NaN or infinite."""
        names = list(named)
        values = distributed.all_reduce_mean(
            torch.stack([named[n].detach() for n in names]), self.ctx
        )
        out = {n: float(v) for n, v in zip(names, values.tolist(), strict=True)}
        bad = [n for n, v in out.items() if not math.isfinite(v)]
        if bad:
            raise NonFiniteLoss(
                f"training diverged at step {step}: {', '.join(f'{n}={out[n]}' for n in bad)}; "
                f"the last good checkpoint is kept (lower train.lr or the loss lambdas and resume)"
            )
        return out

    # ------------------------------------------------------------ the step

    def train_step(
        self,
        real_sem: torch.Tensor,
        real_lay: torch.Tensor,
        step: int = 0,
        polarity: torch.Tensor | None = None,
        profile: torch.Tensor | None = None,
    ) -> dict[str, float]:
        """One update of D_A, D_B then of G_A, G_B on a batch of (B, 1, S, S) tensors in [-1, 1];
        `polarity` (B,) of +-1 (None: all +1) conditions the generators when they are, and
        `profile` (B,) the tool / layer profile rows (None: the shared network)."""
        D = (self.D_A, self.D_B)
        if polarity is None:
            polarity = real_sem.new_ones(real_sem.shape[0])
        batch = _Batch(
            real_sem,
            real_lay,
            polarity,
            profile,
            fake_lay=self._gen(self.G_A, real_sem, polarity, profile),  # SEM -> layout
            fake_sem=self._gen(self.G_B, real_lay, polarity, profile),  # layout -> SEM
            real_pair_A=torch.cat([real_sem, real_lay], 1),
            real_pair_B=torch.cat([real_lay, real_sem], 1),
        )
        # 1. D update: real pairs vs fake pairs drawn through the image pool
        set_requires_grad(D, True)
        d_values = self._d_step(batch, step)
        # 2. freeze D: the G update must not touch D's weights or gradients
        set_requires_grad(D, False)
        # 3. G update
        g_values = self._g_step(batch, step)
        set_requires_grad(D, True)
        return {**d_values, **g_values}

    def _d_step(self, b: _Batch, step: int) -> dict[str, float]:
        """Update D_A and D_B on real pairs vs (pooled) fake pairs; returns loss_D, d_A, d_B."""
        lc = self.cfg.loss
        self.opt_D.zero_grad(set_to_none=True)
        fake_pair_A = self.pool_A.query(torch.cat([b.real_sem, b.fake_lay.detach()], 1))
        fake_pair_B = self.pool_B.query(torch.cat([b.real_lay, b.fake_sem.detach()], 1))
        d_A = discriminator_loss(
            self._disc(self.D_A, b.real_pair_A)[0],
            self._disc(self.D_A, fake_pair_A)[0],
            lc.gan_mode,
            lc.real_label,
        )
        d_B = discriminator_loss(
            self._disc(self.D_B, b.real_pair_B)[0],
            self._disc(self.D_B, fake_pair_B)[0],
            lc.gan_mode,
            lc.real_label,
        )
        loss_D = d_A + d_B
        d_values = self._check_finite({"loss_D": loss_D, "d_A": d_A, "d_B": d_B}, step)
        loss_D.backward()
        distributed.all_reduce_grads(chain(self.D_A.parameters(), self.D_B.parameters()), self.ctx)
        self.opt_D.step()
        return d_values

    def _g_step(self, b: _Batch, step: int) -> dict[str, float]:
        """Update G_A and G_B (D frozen) on the sum of the loss terms; returns loss_G and them."""
        self.opt_G.zero_grad(set_to_none=True)
        terms = self._g_terms(b)
        loss_G = terms[LOSS_TERMS[0]]
        for k in LOSS_TERMS[1:]:  # in order: the same sum, bit for bit, as before distillation
            loss_G = loss_G + terms[k]
        g_values = self._check_finite({"loss_G": loss_G, **terms}, step)
        loss_G.backward()
        distributed.all_reduce_grads(chain(self.G_A.parameters(), self.G_B.parameters()), self.ctx)
        self.opt_G.step()
        return g_values

    def _g_terms(self, b: _Batch) -> dict[str, torch.Tensor]:
        """The generators' loss terms (LOSS_TERMS), each times its lambda; off terms are 0."""
        lc = self.cfg.loss
        mode, zero = lc.gan_mode, b.real_sem.new_zeros(())
        logits_A, feats_fake_A = self._disc(self.D_A, torch.cat([b.real_sem, b.fake_lay], 1))
        logits_B, feats_fake_B = self._disc(self.D_B, torch.cat([b.real_lay, b.fake_sem], 1))
        gan_A = lc.adversarial_weight_A * generator_adversarial_loss(logits_A, mode)
        gan_B = lc.adversarial_weight_B * generator_adversarial_loss(logits_B, mode)
        l1_A = lc.lambda_l1 * l1_loss(b.fake_lay, b.real_lay)
        l1_B = lc.lambda_l1 * l1_loss(b.fake_sem, b.real_sem)
        cycle_A = cycle_B = fm_A = fm_B = idt_A = idt_B = dice_A = zero
        if lc.lambda_dice > 0:
            dice_A = lc.lambda_dice * soft_dice_loss(b.fake_lay, b.real_lay)
        if lc.lambda_cycle > 0:
            cycle_A = lc.lambda_cycle * l1_loss(
                self._gen(self.G_B, b.fake_lay, b.polarity, b.profile), b.real_sem
            )
            cycle_B = lc.lambda_cycle * l1_loss(
                self._gen(self.G_A, b.fake_sem, b.polarity, b.profile), b.real_lay
            )
        if lc.lambda_fm > 0:
            with torch.no_grad():  # targets: real activations carry no gradient
                _, feats_real_A = self._disc(self.D_A, b.real_pair_A)
                _, feats_real_B = self._disc(self.D_B, b.real_pair_B)
            fm_A = (
                lc.adversarial_weight_A
                * lc.lambda_fm
                * feature_matching_loss(feats_fake_A, feats_real_A)
            )
            fm_B = (
                lc.adversarial_weight_B
                * lc.lambda_fm
                * feature_matching_loss(feats_fake_B, feats_real_B)
            )
        if lc.lambda_identity > 0:
            idt_A = lc.lambda_identity * l1_loss(
                self._gen(self.G_A, b.real_lay, b.polarity, b.profile), b.real_lay
            )
            idt_B = lc.lambda_identity * l1_loss(
                self._gen(self.G_B, b.real_sem, b.polarity, b.profile), b.real_sem
            )
        values = (gan_A, gan_B, l1_A, l1_B, cycle_A, cycle_B, fm_A, fm_B, idt_A, idt_B, dice_A)
        return {
            **dict(zip(LOSS_TERMS[: len(values)], values, strict=True)),
            **self._distill_terms(b),
        }

    def _distill_terms(self, b: _Batch) -> dict[str, torch.Tensor]:
        """distill_A / distill_B: L1 of G_A's / G_B's output to the frozen teacher's for the
        same input and polarity, times loss.lambda_distill (0 without a teacher)."""
        lam, zero = self.cfg.loss.lambda_distill, b.real_sem.new_zeros(())
        if self.teacher is None or lam <= 0:
            return {"distill_A": zero, "distill_B": zero}
        with torch.no_grad():
            t_lay = self._gen(self.teacher["G_A"], b.real_sem, b.polarity, b.profile)
            t_sem = self._gen(self.teacher["G_B"], b.real_lay, b.polarity, b.profile)
        return {
            "distill_A": lam * l1_loss(b.fake_lay, t_lay),
            "distill_B": lam * l1_loss(b.fake_sem, t_sem),
        }

    # ------------------------------------------------------------ optimiser state

    def state_dict(self) -> dict[str, Any]:
        """Optimiser states (the same on every rank); pools and RNG are saved per rank elsewhere."""
        return {
            "opt_G": self.opt_G.state_dict(),
            "opt_D": self.opt_D.state_dict(),
            "precision": self.precision,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        # a resume keeps the precision the run started with (exact resume), even when `auto`
        # would resolve differently on this machine
        self.precision = str(state.get("precision", self.precision))
