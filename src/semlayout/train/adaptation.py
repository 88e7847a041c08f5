"""Adapting the champion to a new tool or layer from a few dozen reviewed pairs.

`adapt(champion, new_shards, out, AdaptConfig(...), replay_shards)` fine-tunes the champion's
networks (G and D: the GAN step is `semlayout.train.trainer.Trainer.train_step`) for at most
`steps` steps and keeps the weights that score best on the held-out reviewed pairs (the new
shards' `val` split), so "more steps" cannot overshoot. Each ingredient is a config value,
and docs/adaptation.md says what each one measured:

- `replay_fraction`: the share of every batch drawn from the champion's own training pairs
  (against forgetting; 0 = none);
- `freeze`: `encoder` (the U-Net's down path keeps the champion's weights), `norm` (only the
  normalisation layers' scales and shifts train, and their running statistics adapt) or `none`;
- `ema_decay`: an exponential moving average of the generators' weights is what is
  evaluated and saved (0 = the raw weights);
- `l2sp`: a decoupled pull of the generators' weights toward the champion's (L2-SP: every
  step w <- w - lr * l2sp * (w - w_champion));
- `eval_every` / `patience`: the learning curve on the held-out reviewed pairs (and on a few
  of the original validation pairs: forgetting, seen while it happens); early stopping after
  `patience` evaluations without a gain (0 = run every step, still keep the best);
- `forget_budget`: only weights that lose at most this much SSIM on those original pairs
  (in each direction, against the champion's) can be kept — the gate's forgetting rule,
  applied while choosing.

The result folder is a checkpoint (weights + config.json, as `semlayout.train.checkpoint`) plus
`history.json` (one record per evaluation: the curve the loop's report draws) and
`adaptation.json` (config, best step, seconds).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from semlayout.atomic import atomic_write_text
from semlayout.directions import DIRECTIONS
from semlayout.errors import SemlayoutError
from semlayout.train.recipe import AdaptConfig

GENERATORS = ("G_A", "G_B")  # in the order of DIRECTIONS: G_A = sem2layout, G_B = layout2sem


@dataclass
class AdaptResult:
    path: Path
    best_step: int
    steps_run: int
    seconds: float
    curve: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------- ingredients


def freeze_generators(
    nets: dict[str, nn.Module], how: str, directions: tuple[str, ...] = DIRECTIONS
) -> int:
    """Stop gradients to the frozen part of G_A and G_B, and all of a generator whose direction
    is not adapted (it also stays in eval mode: its BatchNorm statistics stay the champion's);
    returns the trainable parameter count."""
    trainable = 0
    for name in GENERATORS:
        net = nets[name]
        if DIRECTIONS[GENERATORS.index(name)] not in directions:
            net.requires_grad_(False)
            net.eval()
            continue
        norm_params: set[int] = set()
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d | nn.InstanceNorm2d | nn.GroupNorm | nn.LayerNorm):
                norm_params.update(id(p) for p in m.parameters(recurse=False))
        for pname, p in net.named_parameters():
            if how == "encoder":
                keep = not pname.startswith("down.")
            elif how == "norm":
                keep = id(p) in norm_params
            else:
                keep = True
            p.requires_grad_(keep)
            trainable += p.numel() if keep else 0
    return trainable


# ---------------------------------------------------------------- profiles


def grow_profile(
    cfg: Any, nets: dict[str, nn.Module], label: str, adapter_rank: int = 0
) -> tuple[Any, dict[str, nn.Module], int]:
    """(cfg with `label` among `generator.profiles`, networks with its zero rows added, the
    row): the champion's weights and existing profile rows are copied as they are, so the
    grown networks answer exactly as the champion for every other profile. `adapter_rank`
    adds residual adapters when the champion has none (a champion's own rank is kept)."""
    from semlayout.config import config_from_dict
    from semlayout.profiles import with_profile
    from semlayout.train.checkpoint import build_networks

    profiles = with_profile(list(cfg.generator.profiles), label)
    data = cfg.model_dump(mode="json")
    data["generator"]["profiles"] = profiles
    if not cfg.generator.profile_adapter_rank:
        data["generator"]["profile_adapter_rank"] = adapter_rank
    grown_cfg = config_from_dict(data)
    grown = build_networks(grown_cfg)
    with torch.no_grad():
        for name, net in grown.items():
            old = nets[name].state_dict()
            for key, value in net.state_dict().items():
                src = old.get(key)
                if src is None:
                    continue  # a profile table the champion did not have: identity
                if src.shape != value.shape:  # a profile table that grew by one row
                    value[: src.shape[0]].copy_(src)
                else:
                    value.copy_(src)
    return grown_cfg, grown, profiles.index(label)


def train_profile_only(
    nets: dict[str, nn.Module], row: int, directions: tuple[str, ...] = DIRECTIONS
) -> int:
    """Only row `row` of the profile tables of the generators of `directions` trains (a
    gradient mask keeps the other rows bit-identical; the residual adapters' tables, when there
    are, train the same way); every other generator weight is frozen (a direction left out
    keeps the profile's row at zero: the shared network). Returns the trainable count."""
    trainable = 0
    for name in GENERATORS:
        adapted = DIRECTIONS[GENERATORS.index(name)] in directions
        for pname, p in nets[name].named_parameters():
            keep = adapted and pname.startswith(("profile_down.", "profile_up.", "profile_adapt."))
            p.requires_grad_(keep)
            if keep:
                mask = torch.zeros_like(p)
                mask[row] = 1.0
                p.register_hook(lambda g, m=mask: g * m)
                trainable += p[row].numel()
    return trainable


def frozen_statistics(net: nn.Module) -> None:
    """Normalisation layers use (and keep) the champion's running statistics while training."""
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()


class WeightAverage:
    """EMA of the generators' parameters and floating buffers (BN running statistics)."""

    def __init__(self, nets: dict[str, nn.Module], decay: float):
        self.decay = decay
        self.nets = {n: copy.deepcopy(nets[n]).eval() for n in GENERATORS}
        for net in self.nets.values():
            net.requires_grad_(False)

    @torch.no_grad()
    def update(self, nets: dict[str, nn.Module]) -> None:
        for n in GENERATORS:
            avg, cur = self.nets[n].state_dict(), nets[n].state_dict()
            for k, v in avg.items():
                if v.is_floating_point():
                    v.lerp_(cur[k].to(v.dtype), 1.0 - self.decay)
                else:
                    v.copy_(cur[k])


class AnchorPull:
    """L2-SP, decoupled: after each step w <- w - lr * strength * (w - w_champion)."""

    def __init__(self, nets: dict[str, nn.Module], strength: float):
        self.strength = strength
        self.pairs = [(p, p.detach().clone()) for n in GENERATORS for p in nets[n].parameters()]

    @torch.no_grad()
    def apply(self, lr: float) -> None:
        k = lr * self.strength
        for p, anchor in self.pairs:
            if p.requires_grad:
                p.sub_(k * (p - anchor))


# ---------------------------------------------------------------- data


class MixedBatches:
    """Batches of `batch_size`: round(batch_size * replay_fraction) replay items, the rest new.

    Each source is walked in a fresh seeded permutation per pass, so every reviewed pair is
    seen once per pass and a run is reproducible from its seed."""

    def __init__(self, new: Any, replay: Any | None, acfg: AdaptConfig, row: int | None = None):
        self.sources = [new] + ([replay] if replay is not None else [])
        self.row = row  # the new pairs' profile row (replay pairs: none), None: no profiles
        k_replay = round(acfg.batch_size * acfg.replay_fraction) if replay is not None else 0
        k_replay = min(k_replay, acfg.batch_size - 1)
        self.counts = [acfg.batch_size - k_replay] + ([k_replay] if replay is not None else [])
        self.rng = np.random.default_rng([acfg.seed, 4021])
        self.orders: list[list[int]] = [[] for _ in self.sources]

    def _take(self, s: int, k: int) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            if not self.orders[s]:
                self.orders[s] = self.rng.permutation(len(self.sources[s])).tolist()
            out.append(self.orders[s].pop())
        return out

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(sem, layout, polarity, profile): (B, 1, S, S) twice, (B,) of +-1 and (B,) profile
        rows (-1 for replay pairs; None without a profile)."""
        picks = [(s, i) for s, k in enumerate(self.counts) for i in self._take(s, k)]
        sem, lay, pol = _stack([self.sources[s][i] for s, i in picks])
        if self.row is None:
            return sem, lay, pol, None
        return sem, lay, pol, torch.tensor([self.row if s == 0 else -1 for s, _ in picks])


def _stack(items: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    sem = torch.stack([it["sem"] for it in items])
    lay = torch.stack([it["layout"] for it in items])
    pol = torch.tensor([float(it.get("polarity", 1.0)) for it in items])
    return sem, lay, pol


def _gen(net: nn.Module, x: torch.Tensor, polarity: torch.Tensor, row: int | None) -> torch.Tensor:
    """A generator's output; the polarity goes in when the network is conditioned on it, the
    profile row when one is given."""
    from semlayout.inference_backends import is_conditioned

    if row is not None:
        return net(x, polarity, torch.full((x.shape[0],), row, dtype=torch.long))
    return net(x, polarity) if is_conditioned(net) else net(x)


@torch.no_grad()
def held_out_scores(
    g_a: nn.Module, g_b: nn.Module, ds: Any, n: int, batch: int = 8, row: int | None = None
) -> dict[str, float]:
    """Mean SSIM of both directions (Layout->SEM also after the low-pass the fine-tune gate
    judges it with: `metrics.ssim_lowpass`) and SEM->Layout IoU on the first `n` items of `ds`
    (network resolution; the full evaluation is `semlayout.evaluation`)."""
    from semlayout import metrics as M
    from semlayout.data.dataset import to_uint8

    g_a.eval()
    g_b.eval()
    s2l, l2s, l2s_lp, iou = [], [], [], []
    idx = list(range(min(n, len(ds))))
    for lo in range(0, len(idx), batch):
        sem, lay, pol = _stack([ds[i] for i in idx[lo : lo + batch]])
        outs = _gen(g_a, sem, pol, row), _gen(g_b, lay, pol, row)
        for pl, ps, ts, tl in zip(*outs, sem, lay, strict=True):
            p_l, p_s, t_s, t_l = (to_uint8(x[0]) for x in (pl, ps, ts, tl))
            s2l.append(M.ssim(p_l, t_l))
            l2s.append(M.ssim(p_s, t_s))
            l2s_lp.append(float(M.ssim_lowpass_batch(p_s[None], t_s[None])[0]))
            iou.append(M.iou(p_l, t_l))
    return {
        "sem2layout_ssim": float(np.mean(s2l)),
        "layout2sem_ssim": float(np.mean(l2s)),
        "layout2sem_ssim_lowpass": float(np.mean(l2s_lp)),
        "sem2layout_iou": float(np.mean(iou)),
    }


# what the early stopping and the forgetting budget judge, as the fine-tune gate does
# (`GateConfig.paired_metric`): Layout->SEM after the low-pass, reviewed SEMs being noisy
GATED = ("sem2layout_ssim", "layout2sem_ssim_lowpass")


# ---------------------------------------------------------------- the run


@dataclass
class _Evaluator:
    """The held-out reviewed pairs (early stopping) and a few original pairs (forgetting)."""

    new_val: Any | None
    orig_val: Any | None
    n: int
    forget_budget: float | None = None
    row: int | None = None  # the reviewed pairs' profile row (original pairs: the shared net)
    orig_start: dict[str, float] | None = None  # the champion's original-val SSIMs (step 0)
    best_score: float = -np.inf
    best_step: int = 0
    best_state: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    since_best: int = 0

    def __call__(self, step: int, gens: dict[str, nn.Module], record: dict[str, Any]) -> None:
        """Score `gens` into `record`; keep their weights when they are the best so far."""
        if self.new_val is not None:
            s = held_out_scores(gens["G_A"], gens["G_B"], self.new_val, self.n, row=self.row)
            record.update({f"val_reviewed_{k}": v for k, v in s.items()})
            score = sum(s[k] for k in GATED) / len(GATED)
        else:  # no held-out reviewed pairs: the last weights are the result
            score = float(step)
        eligible = True
        if self.orig_val is not None:
            o = held_out_scores(gens["G_A"], gens["G_B"], self.orig_val, self.n)
            record.update({f"val_original_{k}": v for k, v in o.items()})
            ssims = {k: o[k] for k in GATED}
            if self.orig_start is None:
                self.orig_start = ssims
            if self.forget_budget is not None:  # per direction, as the gate judges
                start, budget = self.orig_start, self.forget_budget
                eligible = all(v >= start[k] - budget for k, v in ssims.items())
        record["eligible"] = eligible
        if eligible and score > self.best_score:
            self.best_score, self.best_step, self.since_best = score, step, 0
            self.best_state = {n: copy.deepcopy(g.state_dict()) for n, g in gens.items()}
        else:
            self.since_best += 1

    def stop(self, patience: int) -> bool:
        return patience > 0 and self.since_best >= patience


def _datasets(
    cfg: Any, new_shards: Path, replay_shards: Path | None, acfg: AdaptConfig
) -> tuple[Any, Any, Any, Any]:
    from semlayout.data.dataset import ShardDataset
    from semlayout.data.shards import read_index

    size = cfg.generator.image_size

    def has(shards: Path, split: str) -> bool:
        return bool(read_index(shards).get("splits", {}).get(split, {}).get("n", 0))

    def train_split(shards: Path) -> Any:
        return ShardDataset(
            shards, "train", image_size=size, augment=True, seed=acfg.seed, crop=acfg.crop_size
        )

    new = train_split(new_shards)
    replay = train_split(replay_shards) if replay_shards and acfg.replay_fraction > 0 else None
    new_val = ShardDataset(new_shards, "val", image_size=size) if has(new_shards, "val") else None
    orig_val = None
    if replay_shards is not None and has(replay_shards, "val"):
        orig_val = ShardDataset(replay_shards, "val", image_size=size)
    return new, replay, new_val, orig_val


def adapt(
    champion: str | Path,
    new_shards: str | Path,
    out: str | Path,
    acfg: AdaptConfig,
    replay_shards: str | Path | None = None,
    cfg_overrides: dict[str, Any] | None = None,
    on_eval: Callable[[dict[str, Any]], None] | None = None,
) -> AdaptResult:
    """Fine-tune `champion` (a checkpoint folder) on the train split of `new_shards` (+ replay
    of `replay_shards`' train split); write the best checkpoint to `out` (see the module doc).
    `on_eval` sees every record of the learning curve as it is made (progress lines)."""
    from semlayout.config import apply_overrides, config_from_dict
    from semlayout.train.checkpoint import load_checkpoint, save_checkpoint
    from semlayout.train.loop import learned_polarities
    from semlayout.train.rng import seed_everything
    from semlayout.train.trainer import Trainer

    t0 = time.perf_counter()
    base_cfg, nets, _ = load_checkpoint(champion)
    train = base_cfg.train.model_copy(
        update={"lr": acfg.lr, "batch_size": acfg.batch_size, "crop_size": acfg.crop_size,
                "seed": acfg.seed}
    )  # fmt: skip
    cfg = config_from_dict({**base_cfg.model_dump(mode="json"), "train": train.model_dump()})
    if cfg_overrides:
        cfg = apply_overrides(cfg, cfg_overrides)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)  # as semlayout.train.loop does
    seed_everything(acfg.seed)
    new, replay, new_val, orig_val = _datasets(
        cfg, Path(new_shards), Path(replay_shards) if replay_shards else None, acfg
    )
    if len(new) < 1:
        raise SemlayoutError(f"{new_shards}: no reviewed pairs in the train split to adapt on")
    cfg = learned_polarities(cfg, new, champion)  # the champion's and the reviewed pairs'
    row = None
    if acfg.profile is not None:  # only the profile's rows learn: nothing else can forget
        cfg, nets, row = grow_profile(cfg, nets, acfg.profile, acfg.adapter_rank)
    trainer = Trainer(cfg, nets)
    if row is None:
        freeze_generators(trainer.nets, acfg.freeze, tuple(acfg.directions))
    else:
        train_profile_only(trainer.nets, row, tuple(acfg.directions))
    ema = WeightAverage(trainer.nets, acfg.ema_decay) if acfg.ema_decay > 0 else None
    pull = AnchorPull(trainer.nets, acfg.l2sp) if acfg.l2sp > 0 else None
    batches = MixedBatches(new, replay, acfg, row)
    evaluator = _Evaluator(new_val, orig_val, acfg.eval_pairs, acfg.forget_budget, row=row)
    curve: list[dict[str, Any]] = []

    def evaluate(step: int, losses: dict[str, float]) -> None:
        gens = ema.nets if ema is not None else {n: trainer.nets[n] for n in GENERATORS}
        record: dict[str, Any] = {"step": step, "seconds": round(time.perf_counter() - t0, 2)}
        record.update({k: losses[k] for k in ("loss_G", "l1_A", "l1_B") if k in losses})
        evaluator(step, gens, record)
        for n in GENERATORS:
            trainer.nets[n].train(DIRECTIONS[GENERATORS.index(n)] in acfg.directions)
            if row is not None:
                frozen_statistics(trainer.nets[n])
        curve.append(record)
        if on_eval is not None:
            on_eval(record)

    evaluate(0, {})
    step = 0
    while step < acfg.steps and not evaluator.stop(acfg.patience):
        sem, lay, pol, prof = batches.next()
        losses = trainer.train_step(sem, lay, step, polarity=pol, profile=prof)
        step += 1
        if pull is not None:
            pull.apply(acfg.lr)
        if ema is not None:
            ema.update(trainer.nets)
        if step % acfg.eval_every == 0 or step == acfg.steps:
            evaluate(step, losses)
    for n, state in evaluator.best_state.items():
        trainer.nets[n].load_state_dict(state)
    dest = save_checkpoint(Path(out), cfg, trainer.nets, evaluator.best_step, 0)
    seconds = round(time.perf_counter() - t0, 2)
    atomic_write_text(Path(dest) / "history.json", json.dumps({"epochs": curve}, indent=1))
    summary = {
        "config": acfg.model_dump(),
        "best_step": evaluator.best_step,
        "steps_run": step,
        "seconds": seconds,
        "n_train": len(new),
        "n_val": len(new_val) if new_val is not None else 0,
    }
    atomic_write_text(Path(dest) / "adaptation.json", json.dumps(summary, indent=1))
    return AdaptResult(Path(dest), evaluator.best_step, step, seconds, curve)
