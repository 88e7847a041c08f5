"""The explicit training loop: both directions every step, D update -> freeze D -> G update.

Domains: A = SEM, B = layout. G_A: SEM -> layout, G_B: layout -> SEM. D_A judges
(SEM, layout) pairs, D_B judges (layout, SEM) pairs (conditional PatchGANs).
Loss terms, each already multiplied by its lambda:
  gan_A / gan_B     G_A / G_B fooling D_A / D_B (gan_X and fm_X x loss.adversarial_weight_X)
  l1_A / l1_B       paired L1 of G_A(sem) vs layout / G_B(layout) vs sem
  cycle_A / cycle_B G_B(G_A(sem)) vs sem / G_A(G_B(layout)) vs layout
  fm_A / fm_B       feature matching on D_A / D_B hidden layers (real side detached)
  idt_A / idt_B     G_A(layout) vs layout / G_B(sem) vs sem (optional)
  dice_A            soft Dice of G_A(sem) vs layout (optional: small, rare features)

`Trainer` owns the networks, optimisers and image pools and runs one step;
`run_training` drives epochs, checkpoints, exact resume, history and MLflow.

Precision (`train.precision`): with bf16 every G and D forward of the step runs under
`torch.autocast(dtype=bfloat16)` and its outputs are cast back to fp32 before the pool and
the losses, so losses, gradients of the fp32 weights, optimiser state, pools and checkpoints
are fp32 either way (bf16 keeps fp32's exponent range: no loss scaling). `auto` resolves
once per run (`resolve_precision`) to bf16 where the device has bf16 units, else fp32: on a
CPU without them bf16 is emulated and slower than fp32.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from semlayout.atomic import atomic_write_text
from semlayout.config import ExperimentConfig
from semlayout.errors import SemlayoutError
from semlayout.train import distributed
from semlayout.train.checkpoint import (
    build_networks,
    load_checkpoint,
    load_state_into,
    load_train_state,
    save_checkpoint,
)
from semlayout.train.distributed import DistContext
from semlayout.train.losses import (
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    l1_loss,
    soft_dice_loss,
)
from semlayout.train.pool import ImagePool
from semlayout.train.schedule import lr_factor, set_lr

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
        with torch.cuda.device(
            device
        ):  # native bf16 only: emulated bf16 (e.g. T4, V100) is slower than fp32
            return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
    if device.type == "cpu":
        probes = (
            "_is_amx_tile_supported",
            "_is_avx512_bf16_supported",
        )  # private, hence the getattr
        native = any(getattr(torch.cpu, name, lambda: False)() for name in probes)
        return "bf16" if native else "fp32"
    return "fp32"


class Trainer:
    """Networks + optimisers + image pools, and `train_step` — one update of D then of G."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        nets: dict[str, nn.Module] | None = None,
        ctx: DistContext | None = None,
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
        t = cfg.train
        if (
            t.precision == "bf16"
            and self.ctx.device.type == "cuda"
            and not torch.cuda.is_bf16_supported()
        ):
            raise SemlayoutError(
                f"train.precision=bf16: {self.ctx.device} does not support bfloat16; use fp32"
            )
        self.precision = resolve_precision(t.precision, self.ctx.device)
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

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "bf16":
            return torch.autocast(self.ctx.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _gen(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """A generator forward at the step's precision; the output in fp32."""
        with self._autocast():
            out = net(x)
        return out.float()

    def _disc(self, net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """A discriminator forward at the step's precision: (logits, hidden activations) in fp32."""
        with self._autocast():
            logits, feats = net(x)
        return logits.float(), [f.float() for f in feats]

    def _check_finite(self, named: dict[str, torch.Tensor], step: int) -> dict[str, float]:
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

    def train_step(
        self, real_sem: torch.Tensor, real_lay: torch.Tensor, step: int = 0
    ) -> dict[str, float]:
        """One update of D_A, D_B then of G_A, G_B on a batch of (B, 1, S, S) tensors in [-1, 1]."""
        lc = self.cfg.loss
        mode, zero = lc.gan_mode, real_sem.new_zeros(())
        D = (self.D_A, self.D_B)

        # forward both generators (and the cycles when they are weighted)
        fake_lay = self._gen(self.G_A, real_sem)  # SEM -> layout
        fake_sem = self._gen(self.G_B, real_lay)  # layout -> SEM
        real_pair_A = torch.cat([real_sem, real_lay], 1)  # what D_A should call real
        real_pair_B = torch.cat([real_lay, real_sem], 1)

        # 1. D update: real pairs vs fake pairs drawn through the image pool
        set_requires_grad(D, True)
        self.opt_D.zero_grad(set_to_none=True)
        fake_pair_A = self.pool_A.query(torch.cat([real_sem, fake_lay.detach()], 1))
        fake_pair_B = self.pool_B.query(torch.cat([real_lay, fake_sem.detach()], 1))
        d_A = discriminator_loss(
            self._disc(self.D_A, real_pair_A)[0],
            self._disc(self.D_A, fake_pair_A)[0],
            mode,
            lc.real_label,
        )
        d_B = discriminator_loss(
            self._disc(self.D_B, real_pair_B)[0],
            self._disc(self.D_B, fake_pair_B)[0],
            mode,
            lc.real_label,
        )
        loss_D = d_A + d_B
        d_values = self._check_finite({"loss_D": loss_D, "d_A": d_A, "d_B": d_B}, step)
        loss_D.backward()
        distributed.all_reduce_grads(chain(self.D_A.parameters(), self.D_B.parameters()), self.ctx)
        self.opt_D.step()

        # 2. freeze D: the G update must not touch D's weights or gradients
        set_requires_grad(D, False)

        # 3. G update
        self.opt_G.zero_grad(set_to_none=True)
        logits_A, feats_fake_A = self._disc(self.D_A, torch.cat([real_sem, fake_lay], 1))
        logits_B, feats_fake_B = self._disc(self.D_B, torch.cat([real_lay, fake_sem], 1))
        gan_A = lc.adversarial_weight_A * generator_adversarial_loss(logits_A, mode)
        gan_B = lc.adversarial_weight_B * generator_adversarial_loss(logits_B, mode)
        l1_A = lc.lambda_l1 * l1_loss(fake_lay, real_lay)
        l1_B = lc.lambda_l1 * l1_loss(fake_sem, real_sem)
        cycle_A = cycle_B = fm_A = fm_B = idt_A = idt_B = dice_A = zero
        if lc.lambda_dice > 0:
            dice_A = lc.lambda_dice * soft_dice_loss(fake_lay, real_lay)
        if lc.lambda_cycle > 0:
            cycle_A = lc.lambda_cycle * l1_loss(self._gen(self.G_B, fake_lay), real_sem)
            cycle_B = lc.lambda_cycle * l1_loss(self._gen(self.G_A, fake_sem), real_lay)
        if lc.lambda_fm > 0:
            with torch.no_grad():  # targets: real activations carry no gradient
                _, feats_real_A = self._disc(self.D_A, real_pair_A)
                _, feats_real_B = self._disc(self.D_B, real_pair_B)
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
            idt_A = lc.lambda_identity * l1_loss(self._gen(self.G_A, real_lay), real_lay)
            idt_B = lc.lambda_identity * l1_loss(self._gen(self.G_B, real_sem), real_sem)
        loss_G = (
            gan_A + gan_B + l1_A + l1_B + cycle_A + cycle_B + fm_A + fm_B + idt_A + idt_B + dice_A
        )
        terms = dict(
            zip(
                LOSS_TERMS,
                (gan_A, gan_B, l1_A, l1_B, cycle_A, cycle_B, fm_A, fm_B, idt_A, idt_B, dice_A),
                strict=True,
            )
        )
        g_values = self._check_finite({"loss_G": loss_G, **terms}, step)
        loss_G.backward()
        distributed.all_reduce_grads(chain(self.G_A.parameters(), self.G_B.parameters()), self.ctx)
        self.opt_G.step()
        set_requires_grad(D, True)
        return {**d_values, **g_values}

    def state_dict(self) -> dict[str, Any]:
        """Optimiser states (the same on every rank); pools and RNG are saved per rank by the run."""
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


# ---------------------------------------------------------------- data order


def epoch_order(n: int, epoch: int, seed: int, weights: torch.Tensor | None = None) -> list[int]:
    """Item order of an epoch: a function of (seed, epoch) alone, so a resume can replay it.

    With `weights` (balanced sampling) items are drawn with replacement.
    """
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    if weights is None:
        return torch.randperm(n, generator=g).tolist()
    return torch.multinomial(weights, n, replacement=True, generator=g).tolist()


class _BatchSlices(Sampler[list[int]]):
    """This rank's slice of each global batch of `order`, starting at batch `start`."""

    def __init__(
        self, order: list[int], batch_size: int, ctx: DistContext, n_batches: int, start: int
    ):
        self.order, self.batch_size, self.ctx = order, batch_size, ctx
        self.n_batches, self.start = n_batches, start

    def __iter__(self) -> Iterator[list[int]]:
        global_batch = self.batch_size * self.ctx.world_size
        for b in range(self.start, self.n_batches):
            lo = b * global_batch + self.ctx.rank * self.batch_size
            yield self.order[lo : lo + self.batch_size]

    def __len__(self) -> int:
        return self.n_batches - self.start


def family_weights(dataset: Dataset) -> torch.Tensor:
    fams = list(getattr(dataset, "item_families", []))
    if not fams:
        raise SemlayoutError("train.balanced_sampling needs a dataset with item_families")
    counts: dict[str, int] = {}
    for f in fams:
        counts[f] = counts.get(f, 0) + 1
    return torch.tensor([1.0 / counts[f] for f in fams], dtype=torch.double)


# ---------------------------------------------------------------- RNG state


def rng_state() -> dict[str, torch.Tensor]:
    """Python, NumPy and torch global RNG states as plain tensors (gatherable, weights_only-safe)."""
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
    gauss = float(state["python_gauss"][0])
    random.setstate(
        (3, tuple(int(v) for v in state["python"]), None if math.isnan(gauss) else gauss)
    )
    pos, has_gauss, np_gauss = state["numpy_meta"].tolist()
    np.random.set_state(
        ("MT19937", state["numpy"].numpy().astype(np.uint32), int(pos), int(has_gauss), np_gauss)
    )
    torch.set_rng_state(state["torch"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------- evaluation during training


@torch.no_grad()
def quick_validation(
    trainer: Trainer, val_ds: Dataset, n: int, batch_size: int
) -> dict[str, float]:
    """SEM->layout IoU (threshold 0.5 on [0, 1]) and L1 of both directions on the first n val items."""
    if n <= 0 or len(val_ds) == 0:  # type: ignore[arg-type]
        return {}
    for g in (trainer.G_A, trainer.G_B):
        g.eval()
    inter = union = 0.0
    l1_a = l1_b = 0.0
    count = 0
    idx = list(range(min(n, len(val_ds))))  # type: ignore[arg-type]
    for lo in range(0, len(idx), batch_size):
        items = [val_ds[i] for i in idx[lo : lo + batch_size]]
        sem = torch.stack([it["sem"] for it in items]).to(trainer.ctx.device)
        lay = torch.stack([it["layout"] for it in items]).to(trainer.ctx.device)
        fake_lay, fake_sem = trainer.G_A(sem), trainer.G_B(lay)
        pred, truth = fake_lay > 0, lay > 0
        inter += float((pred & truth).sum())
        union += float((pred | truth).sum())
        l1_a += float((fake_lay - lay).abs().mean(dim=(1, 2, 3)).sum()) / 2  # in [0, 1] units
        l1_b += float((fake_sem - sem).abs().mean(dim=(1, 2, 3)).sum()) / 2
        count += len(items)
    for g in (trainer.G_A, trainer.G_B):
        g.train()
    return {
        "val_sem2layout_iou": inter / union if union else 1.0,
        "val_sem2layout_l1": l1_a / count,
        "val_layout2sem_l1": l1_b / count,
    }


@torch.no_grad()
def sample_grid(trainer: Trainer, val_ds: Dataset, n: int) -> np.ndarray:
    """uint8 (n*S, 4*S) grid; columns: SEM | G_A(SEM) | layout | G_B(layout)."""
    rows = []
    for g in (trainer.G_A, trainer.G_B):
        g.eval()
    for i in range(min(n, len(val_ds))):  # type: ignore[arg-type]
        it = val_ds[i]
        sem, lay = it["sem"][None].to(trainer.ctx.device), it["layout"][None].to(trainer.ctx.device)
        cols = [sem, trainer.G_A(sem), lay, trainer.G_B(lay)]
        rows.append(torch.cat([c[0, 0].cpu() for c in cols], dim=1))
    for g in (trainer.G_A, trainer.G_B):
        g.train()
    grid = torch.cat(rows, dim=0) if rows else torch.zeros(1, 1)
    return ((grid.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


# ---------------------------------------------------------------- the run


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


class _MlflowLogger:
    """Logs to MLflow only when a tracking URI is given or MLFLOW_TRACKING_URI is set."""

    def __init__(
        self, uri: str | None, experiment: str | None, cfg: ExperimentConfig, enabled: bool
    ):
        self.active = enabled and bool(uri or os.environ.get("MLFLOW_TRACKING_URI"))
        self.own_run = False
        if not self.active:
            return
        import mlflow

        self.mlflow = mlflow
        if uri:
            mlflow.set_tracking_uri(uri)
        if mlflow.active_run() is None:
            if experiment:
                mlflow.set_experiment(experiment)
            mlflow.start_run(run_name=cfg.name)
            self.own_run = True
        self.params(_flatten(cfg.to_dict()))

    def params(self, values: dict[str, Any]) -> None:
        if not self.active:
            return
        try:
            self.mlflow.log_params({k: str(v)[:500] for k, v in values.items()})
        except (
            self.mlflow.exceptions.MlflowException
        ) as err:  # e.g. a caller's run already holds other values
            print(f"warning: MLflow params not logged: {err}")

    def epoch(self, record: dict[str, Any], grid_path: Path | None) -> None:
        if not self.active:
            return
        metrics = {
            k: float(v) for k, v in record.items() if isinstance(v, int | float) and k != "epoch"
        }
        self.mlflow.log_metrics(metrics, step=int(record["epoch"]))
        if grid_path is not None:
            self.mlflow.log_artifact(str(grid_path), artifact_path="samples")

    def finish(self, run_dir: Path, final: Path, failed: bool = False) -> None:
        if not self.active:
            return
        if (run_dir / "history.json").is_file():
            self.mlflow.log_artifact(str(run_dir / "history.json"))
        if not failed:
            self.mlflow.set_tag("semlayout.checkpoint", str(final))
        if self.own_run:
            self.mlflow.end_run(status="FAILED" if failed else "FINISHED")


def _prune(ckpt_root: Path, keep: int) -> None:
    steps = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir())
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _point_last(run_dir: Path, target: Path) -> None:
    """RUN/last -> checkpoints/step-XXXXXX (a relative symlink swapped in atomically)."""
    tmp = run_dir / f".last.tmp-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(target.relative_to(run_dir))
    os.replace(tmp, run_dir / "last")


def run_training(
    cfg: ExperimentConfig,
    train_ds: Dataset,
    out_dir: str | Path,
    val_ds: Dataset | None = None,
    resume: bool = False,
    init_from: str | Path | None = None,
    mlflow_uri: str | None = None,
    experiment: str | None = None,
    progress: bool = True,
    ctx: DistContext | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> Path:
    """Train on `train_ds` (items with "sem" and "layout" (1,S,S) in [-1,1]); returns RUN/final."""
    ctx = ctx or distributed.init_from_env(cfg.train.device)
    t = cfg.train
    run_dir = Path(out_dir)
    ckpt_root = run_dir / "checkpoints"
    n_items = len(train_ds)  # type: ignore[arg-type]
    global_batch = t.batch_size * ctx.world_size
    steps_per_epoch = n_items // global_batch
    if steps_per_epoch == 0:
        raise SemlayoutError(
            f"the training split has {n_items} pairs, fewer than one batch of {global_batch} "
            f"(train.batch_size={t.batch_size} x {ctx.world_size} processes)"
        )
    total_steps = t.epochs * steps_per_epoch
    if t.max_steps is not None:
        total_steps = min(total_steps, t.max_steps)
    if not resume and ((run_dir / "last").exists() or (run_dir / "final").exists()):
        raise SemlayoutError(
            f"{run_dir} already holds a training run; pass --resume or choose a new --out"
        )

    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    seed_everything(t.seed)
    nets = build_networks(cfg)
    if init_from is not None:
        _, src_nets, _ = load_checkpoint(init_from)
        for name, net in nets.items():
            load_state_into(net, name, src_nets[name].state_dict(), f"--init-from {init_from}")
    trainer = Trainer(cfg, nets, ctx)

    step, history = 0, []
    epoch_sums: dict[str, float] = {}
    if resume:
        last = run_dir / "last"
        if not last.exists():
            raise SemlayoutError(
                f"--resume: {run_dir} has no checkpoint to resume from (no {last})"
            )
        _, old_nets, meta = load_checkpoint(last)
        for name, net in trainer.nets.items():
            load_state_into(net, name, old_nets[name].state_dict(), str(last))
        state = load_train_state(last)
        trainer.load_state_dict(state["trainer"])
        step, history, epoch_sums = (
            int(state["step"]),
            list(state["history"]),
            dict(state["epoch_sums"]),
        )
        ranks = state["ranks"]
        if len(ranks) != ctx.world_size:
            raise SemlayoutError(
                f"--resume: {last} was written by {len(ranks)} process(es), this run has {ctx.world_size}"
            )
        _restore_rank_state(trainer, ranks[ctx.rank])

    weights = family_weights(train_ds) if t.balanced_sampling else None
    logger = _MlflowLogger(mlflow_uri, experiment, cfg, enabled=ctx.is_main)
    if t.precision == "auto":
        logger.params({"train.precision_resolved": trainer.precision})
    bar = None
    if progress and ctx.is_main:
        from tqdm import tqdm

        bar = tqdm(total=total_steps, initial=step, desc=cfg.name, unit="step", dynamic_ncols=True)

    def train_state() -> dict[str, Any]:
        return {
            "trainer": trainer.state_dict(),
            "step": step,
            "history": history,
            "epoch_sums": epoch_sums,
            "ranks": _gather_rank_states(trainer, ctx),
        }

    failed = True
    try:
        t0 = time.perf_counter()
        while step < total_steps:
            epoch, start = divmod(step, steps_per_epoch)
            order = epoch_order(n_items, epoch, t.seed, weights)
            if hasattr(train_ds, "set_epoch"):
                train_ds.set_epoch(epoch)
            _replay_reads(train_ds, order, start * global_batch)
            loader = DataLoader(
                train_ds,
                batch_sampler=_BatchSlices(order, t.batch_size, ctx, steps_per_epoch, start),
                num_workers=t.num_workers,
                # its own generator: making an iterator must not draw from the global torch RNG
                generator=torch.Generator().manual_seed(t.seed * 7919 + epoch),
            )
            for batch in loader:
                sem = batch["sem"].to(ctx.device)
                lay = batch["layout"].to(ctx.device)
                if t.channels_last:
                    sem, lay = (
                        sem.contiguous(memory_format=torch.channels_last),
                        lay.contiguous(memory_format=torch.channels_last),
                    )
                lr = trainer.set_lr_factor(
                    lr_factor(step / steps_per_epoch, t.epochs, t.decay_start_epoch)
                )
                losses = trainer.train_step(sem, lay, step)
                step += 1
                if on_step is not None:
                    on_step(step, losses)
                for k in LOGGED:
                    epoch_sums[k] = epoch_sums.get(k, 0.0) + losses[k]
                epoch_sums["_n"] = epoch_sums.get("_n", 0.0) + 1
                if bar is not None:
                    bar.update(1)
                    if step % max(1, min(t.log_every, 10)) == 0:
                        bar.set_postfix(
                            {
                                k: f"{losses[k]:.3g}"
                                for k in (
                                    "d_A",
                                    "d_B",
                                    "gan_A",
                                    "gan_B",
                                    "l1_A",
                                    "l1_B",
                                    "cycle_A",
                                    "fm_A",
                                )
                            }
                        )
                epoch_done = step % steps_per_epoch == 0
                if epoch_done:
                    n = epoch_sums.pop("_n")
                    record: dict[str, Any] = {
                        "epoch": epoch + 1,
                        "step": step,
                        "lr": lr,
                        "seconds": round(time.perf_counter() - t0, 2),
                    }
                    record.update({k: v / n for k, v in epoch_sums.items()})
                    grid_path = None
                    if val_ds is not None and ctx.is_main:
                        record.update(
                            quick_validation(trainer, val_ds, t.val_samples, t.batch_size)
                        )
                        if t.sample_images:
                            grid_path = _write_grid(
                                run_dir, epoch + 1, sample_grid(trainer, val_ds, t.sample_images)
                            )
                    history.append(record)
                    epoch_sums = {}
                    if ctx.is_main:
                        atomic_write_text(
                            run_dir / "history.json", json.dumps({"epochs": history}, indent=1)
                        )
                        logger.epoch(record, grid_path)
                if step % t.checkpoint_every == 0 or step == total_steps:
                    state = train_state()  # every rank joins the RNG gather
                    if ctx.is_main:
                        dest = save_checkpoint(
                            ckpt_root / f"step-{step:06d}",
                            cfg,
                            trainer.nets,
                            step,
                            step // steps_per_epoch,
                            state,
                        )
                        _point_last(run_dir, dest)
                        _prune(ckpt_root, t.keep_checkpoints)
                if step >= total_steps:
                    break
        final = run_dir / "final"
        state = train_state()
        if ctx.is_main:
            save_checkpoint(final, cfg, trainer.nets, step, step // steps_per_epoch, state)
            if not (run_dir / "history.json").exists():
                atomic_write_text(
                    run_dir / "history.json", json.dumps({"epochs": history}, indent=1)
                )
        distributed.barrier(ctx)
        failed = False
        return final
    finally:
        if bar is not None:
            bar.close()
        logger.finish(run_dir, run_dir / "final", failed=failed)


def _rank_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    """What differs between ranks: image pools and RNG states, as tensors."""
    out = {f"rng.{k}": v for k, v in rng_state().items()}
    for name, pool in (("pool_A", trainer.pool_A), ("pool_B", trainer.pool_B)):
        st = pool.state_dict()
        out[f"{name}.images"], out[f"{name}.rng"] = st["images"], st["rng"]
    return out


def _gather_rank_states(trainer: Trainer, ctx: DistContext) -> list[dict[str, torch.Tensor]]:
    """Every rank's `_rank_state`, in rank order (tensor all-gathers, shapes agree across ranks)."""
    mine = _rank_state(trainer)
    if not ctx.enabled:
        return [mine]
    import torch.distributed as dist

    out: list[dict[str, torch.Tensor]] = [{} for _ in range(ctx.world_size)]
    for key, value in mine.items():
        parts = [torch.empty_like(value) for _ in range(ctx.world_size)]
        dist.all_gather(parts, value.contiguous())
        for r, part in enumerate(parts):
            out[r][key] = part
    return out


def _restore_rank_state(trainer: Trainer, state: dict[str, torch.Tensor]) -> None:
    set_rng_state({k.removeprefix("rng."): v for k, v in state.items() if k.startswith("rng.")})
    for name, pool in (("pool_A", trainer.pool_A), ("pool_B", trainer.pool_B)):
        pool.load_state_dict(
            {"size": pool.size, "images": state[f"{name}.images"], "rng": state[f"{name}.rng"]}
        )


def _replay_reads(ds: Dataset, order: list[int], consumed: int) -> None:
    """After a mid-epoch resume, count the reads the epoch already made (ShardDataset's
    augmentation draw depends on how often an index was read this epoch)."""
    reads = getattr(ds, "_reads", None)
    if reads is None or consumed == 0:
        return
    for i in order[:consumed]:
        reads[i] += 1


def _write_grid(run_dir: Path, epoch: int, grid: np.ndarray) -> Path:
    import cv2

    from semlayout.atomic import atomic_write_bytes

    ok, buf = cv2.imencode(".png", grid)
    if not ok:
        raise RuntimeError("could not encode the sample grid")
    path = run_dir / "samples" / f"epoch-{epoch:04d}.png"
    atomic_write_bytes(path, buf.tobytes())
    return path


def train(
    cfg: ExperimentConfig,
    shards_dir: str | Path,
    out_dir: str | Path,
    resume: bool = False,
    mlflow_uri: str | None = None,
    init_from: str | Path | None = None,
    experiment: str | None = None,
    progress: bool = True,
) -> Path:
    """Train on `shards_dir` (train split; val split for per-epoch checks); returns RUN/final."""
    from semlayout.data.dataset import ShardDataset
    from semlayout.data.shards import read_index

    size = cfg.generator.image_size
    train_ds = ShardDataset(
        shards_dir,
        "train",
        image_size=size,
        augment=cfg.train.augment,
        seed=cfg.train.seed,
        crop=cfg.train.crop_size,
    )
    splits = read_index(shards_dir).get("splits", {})
    val_ds = None
    if splits.get("val", {}).get("n", 0) > 0:
        val_ds = ShardDataset(shards_dir, "val", image_size=size, augment=False)
    return run_training(
        cfg,
        train_ds,
        out_dir,
        val_ds=val_ds,
        resume=resume,
        init_from=init_from,
        mlflow_uri=mlflow_uri,
        experiment=experiment,
        progress=progress,
    )
