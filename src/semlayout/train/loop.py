"""The training driver: epochs of GAN steps, checkpoints, exact resume, history and MLflow.

A run folder (RUN = `--out`):
```
RUN/checkpoints/step-NNNNNN/  every train.checkpoint_every steps (the keep_checkpoints newest)
RUN/last -> checkpoints/...   the newest of them, swapped in atomically; what --resume reads
RUN/final/                    the checkpoint of the last step (the run's result)
RUN/history.json              one record per finished epoch: mean losses, lr, quick validation
RUN/steps.jsonl               every train.log_every steps: that step's losses, lr, wall time
RUN/samples/epoch-NNNN.png    a sample grid per epoch (with a val split)
```
`run_training` sets up (networks, resume, sampling weights, MLflow) and then trains epoch
after epoch (`_train_epoch`); a step can end an epoch (`_end_epoch`) and save (`_save`). The
step itself is `Trainer.train_step` (semlayout.train.trainer); the data order is
semlayout.train.sampling, what a resume restores semlayout.train.run_state.

Exact resume: the order of an epoch, the position in it, the optimisers, the image pools and
every RNG state are saved, so a resumed run computes what the uninterrupted run would have.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from semlayout.atomic import atomic_symlink, atomic_write_text
from semlayout.config import ExperimentConfig
from semlayout.errors import SemlayoutError
from semlayout.train import distributed
from semlayout.train.checkpoint import (
    build_networks,
    load_checkpoint,
    load_state_into,
    prune_checkpoints,
    save_checkpoint,
)
from semlayout.train.distill import load_teacher
from semlayout.train.distributed import DistContext
from semlayout.train.mlflow_logger import MlflowLogger
from semlayout.train.polarity_head import with_auto_head
from semlayout.train.quick_eval import quick_validation, sample_grid, write_grid
from semlayout.train.rng import seed_everything
from semlayout.train.run_state import EpochStats, RunState, resume_run, train_state
from semlayout.train.sampling import BatchSlices, epoch_order, family_weights, start_epoch
from semlayout.train.schedule import lr_factor
from semlayout.train.trainer import LOGGED, Trainer

PROGRESS_KEYS = ("d_A", "d_B", "gan_A", "gan_B", "l1_A", "l1_B", "cycle_A", "fm_A")
DISTILL_KEYS = ("distill_A", "distill_B")


@dataclass
class _Run:
    """A run in progress: its config and plan, the trainer, where it is, and its outputs."""

    cfg: ExperimentConfig
    ctx: DistContext
    run_dir: Path
    trainer: Trainer
    state: RunState
    steps_per_epoch: int
    total_steps: int
    val_ds: Dataset | None
    logger: MlflowLogger
    on_step: Callable[[int, dict[str, float]], None] | None
    bar: Any = None  # tqdm on the main process when progress is shown
    t0: float = 0.0


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
    cfg = learned_polarities(cfg, train_ds, init_from)
    t = cfg.train
    run_dir = Path(out_dir)
    steps_per_epoch, total_steps = _plan(cfg, len(train_ds), ctx)  # type: ignore[arg-type]
    if not resume and ((run_dir / "last").exists() or (run_dir / "final").exists()):
        raise SemlayoutError(
            f"{run_dir} already holds a training run; pass --resume or choose a new --out"
        )

    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    seed_everything(t.seed)
    trainer = Trainer(cfg, _networks(cfg, init_from), ctx, load_teacher(cfg, ctx.device))
    state = resume_run(run_dir, trainer, ctx) if resume else RunState()
    weights = family_weights(train_ds) if t.balanced_sampling else None
    logger = MlflowLogger(mlflow_uri, experiment, cfg, enabled=ctx.is_main)
    if t.precision == "auto":
        logger.params({"train.precision_resolved": trainer.precision})
    run = _Run(
        cfg, ctx, run_dir, trainer, state, steps_per_epoch, total_steps, val_ds, logger, on_step
    )
    if progress and ctx.is_main:
        from tqdm import tqdm

        run.bar = tqdm(
            total=total_steps, initial=state.step, desc=cfg.name, unit="step", dynamic_ncols=True
        )

    failed = True
    try:
        run.t0 = time.perf_counter()
        while state.step < total_steps:
            _train_epoch(run, train_ds, weights)
        if ctx.is_main:  # polarity=auto's calibrated head, from the val split
            run.cfg = with_auto_head(run.cfg, trainer, val_ds)
        final = _save_final(run)
        distributed.barrier(ctx)
        failed = False
        return final
    finally:
        if run.bar is not None:
            run.bar.close()
        logger.finish(run_dir, run_dir / "final", failed=failed)


def learned_polarities(
    cfg: ExperimentConfig, train_ds: Dataset, init_from: str | Path | None = None
) -> ExperimentConfig:
    """`cfg` with `polarity.learned` = the train split's polarities (with `init_from`, also
    those its checkpoint had learned); a network that cannot tell polarities apart
    (`generator.polarity_conditioning: none`) is refused a split that mixes them."""
    from semlayout.train.checkpoint import read_checkpoint_meta

    pols = set(getattr(train_ds, "item_polarities", None) or [1])
    if init_from is not None:
        src = read_checkpoint_meta(init_from).get("config", {}).get("polarity", {})
        pols |= set(src.get("learned") or [1])
    if len(pols) > 1 and cfg.generator.polarity_conditioning == "none":
        raise SemlayoutError(
            "the training data holds both contrast polarities (bright and dark pairs) but "
            "generator.polarity_conditioning is 'none': the model could not tell them apart "
            "and would learn neither; set it to 'channel' or 'film'"
        )
    learned = sorted(pols, reverse=True)  # +1 first
    data = cfg.to_dict()
    data["polarity"]["learned"] = learned
    return ExperimentConfig.model_validate(data)


def _plan(cfg: ExperimentConfig, n_items: int, ctx: DistContext) -> tuple[int, int]:
    """(steps per epoch, total steps); an epoch is every full global batch of the split."""
    t = cfg.train
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
    return steps_per_epoch, total_steps


def _networks(cfg: ExperimentConfig, init_from: str | Path | None) -> dict[str, nn.Module]:
    """Freshly initialised networks, or with `init_from`, that checkpoint's weights."""
    nets = build_networks(cfg)
    if init_from is not None:
        _, src_nets, _ = load_checkpoint(init_from)
        for name, net in nets.items():
            load_state_into(net, name, src_nets[name].state_dict(), f"--init-from {init_from}")
    return nets


# ---------------------------------------------------------------- one epoch


def _train_epoch(run: _Run, train_ds: Dataset, weights: torch.Tensor | None) -> None:
    """Train the rest of the current epoch: all of it, unless resumed mid-epoch or stopped early."""
    t, ctx, state = run.cfg.train, run.ctx, run.state
    epoch, start = divmod(state.step, run.steps_per_epoch)
    order = epoch_order(len(train_ds), epoch, t.seed, weights)  # type: ignore[arg-type]
    start_epoch(train_ds, epoch, order, consumed=start * t.batch_size * ctx.world_size)
    loader = DataLoader(
        train_ds,
        batch_sampler=BatchSlices(order, t.batch_size, ctx, run.steps_per_epoch, start),
        num_workers=t.num_workers,
        # its own generator: making an iterator must not draw from the global torch RNG
        generator=torch.Generator().manual_seed(t.seed * 7919 + epoch),
    )
    for batch in loader:
        losses, lr = _train_step(run, batch)
        if run.on_step is not None:
            run.on_step(state.step, losses)
        state.stats.add(losses)
        _record_step(run, losses, lr)
        _show_progress(run, losses)
        if state.step % run.steps_per_epoch == 0:
            _end_epoch(run, epoch, lr)
        if state.step % t.checkpoint_every == 0 or state.step == run.total_steps:
            _save(run)
        if state.step >= run.total_steps:
            return


def _train_step(run: _Run, batch: dict[str, Any]) -> tuple[dict[str, float], float]:
    """One GAN step on `batch` at the step's learning rate; returns (losses, lr)."""
    t, device = run.cfg.train, run.ctx.device
    sem, lay = batch["sem"].to(device), batch["layout"].to(device)
    if t.channels_last:
        sem = sem.contiguous(memory_format=torch.channels_last)
        lay = lay.contiguous(memory_format=torch.channels_last)
    epochs_done = run.state.step / run.steps_per_epoch
    lr = run.trainer.set_lr_factor(lr_factor(epochs_done, t.epochs, t.decay_start_epoch))
    pol = batch["polarity"].to(device) if "polarity" in batch else None
    losses = run.trainer.train_step(sem, lay, run.state.step, pol)
    run.state.step += 1
    return losses, lr


def _record_step(run: _Run, losses: dict[str, float], lr: float) -> None:
    """Every train.log_every steps and at the last one: this step's losses (numbers already
    computed: no RNG, no tensor work) in RUN/steps.jsonl and MLflow, for per-step curves.
    After a resume the file goes on; a step written twice is read once (the last line)."""
    step = run.state.step
    if not run.ctx.is_main or (step % run.cfg.train.log_every and step != run.total_steps):
        return
    record = {"step": step, "lr": lr, "time": round(time.time(), 3)}
    record.update({k: float(losses[k]) for k in LOGGED if k in losses})
    run.run_dir.mkdir(parents=True, exist_ok=True)
    with open(run.run_dir / "steps.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
    run.logger.step(record)


def _show_progress(run: _Run, losses: dict[str, float]) -> None:
    if run.bar is None:
        return
    run.bar.update(1)
    if run.state.step % max(1, min(run.cfg.train.log_every, 10)) == 0:
        keys = PROGRESS_KEYS + (DISTILL_KEYS if run.cfg.loss.lambda_distill > 0 else ())
        run.bar.set_postfix({k: f"{losses[k]:.3g}" for k in keys})


# ---------------------------------------------------------------- end of an epoch


def _end_epoch(run: _Run, epoch: int, lr: float) -> None:
    """Record the epoch (mean losses, quick validation, sample grid) in history.json and MLflow."""
    t, state = run.cfg.train, run.state
    record: dict[str, Any] = {
        "epoch": epoch + 1,
        "step": state.step,
        "lr": lr,
        "seconds": round(time.perf_counter() - run.t0, 2),
    }
    record.update(state.stats.means())
    grid_path = None
    if run.val_ds is not None and run.ctx.is_main:
        record.update(quick_validation(run.trainer, run.val_ds, t.val_samples, t.batch_size))
        if t.sample_images:
            grid = sample_grid(run.trainer, run.val_ds, t.sample_images)
            grid_path = write_grid(run.run_dir, epoch + 1, grid)
    state.history.append(record)
    state.stats = EpochStats()
    if run.ctx.is_main:
        _write_history(run)
        run.logger.epoch(record, grid_path)


def _write_history(run: _Run) -> None:
    text = json.dumps({"epochs": run.state.history}, indent=1)
    atomic_write_text(run.run_dir / "history.json", text)


# ---------------------------------------------------------------- saving


def _save(run: _Run) -> None:
    """RUN/checkpoints/step-NNNNNN, RUN/last pointed at it, the oldest step folders pruned."""
    state = train_state(run.trainer, run.state, run.ctx)  # every rank joins the RNG gather
    if not run.ctx.is_main:
        return
    step, ckpt_root = run.state.step, run.run_dir / "checkpoints"
    epoch = step // run.steps_per_epoch
    dest = save_checkpoint(
        ckpt_root / f"step-{step:06d}", run.cfg, run.trainer.nets, step, epoch, state
    )
    atomic_symlink(run.run_dir / "last", dest)
    prune_checkpoints(ckpt_root, run.cfg.train.keep_checkpoints)


def _save_final(run: _Run) -> Path:
    """RUN/final (and history.json if no epoch finished); every rank must call it."""
    final = run.run_dir / "final"
    step = run.state.step
    state = train_state(run.trainer, run.state, run.ctx)
    if run.ctx.is_main:
        save_checkpoint(final, run.cfg, run.trainer.nets, step, step // run.steps_per_epoch, state)
        if not (run.run_dir / "history.json").exists():
            _write_history(run)
    return final


# ---------------------------------------------------------------- from a shard folder


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
