"""The resumable state of a run, saved as train_state.pt beside each checkpoint's weights.

```
"trainer"     Trainer.state_dict(): opt_G, opt_D, precision
"step"        steps done
"history"     the records of the finished epochs (what history.json lists)
"epoch_sums"  the current epoch's running loss sums (LOGGED) plus "_n", the steps summed;
              {} at an epoch boundary
"ranks"       per rank, in rank order: "rng.*" (semlayout.train.rng) and the image pools
              ("pool_A.images", "pool_A.rng", "pool_B.*")
```
Plain tensors and containers only: read with `torch.load(weights_only=True)`. Every rank
joins the all-gather of `train_state`; a resume needs the same number of processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from semlayout.errors import SemlayoutError
from semlayout.train.checkpoint import load_checkpoint, load_state_into, load_train_state
from semlayout.train.distributed import DistContext
from semlayout.train.rng import rng_state, set_rng_state
from semlayout.train.trainer import LOGGED, Trainer


class EpochStats:
    """Running sums of the LOGGED losses over the steps of the current epoch."""

    def __init__(self, sums: dict[str, float] | None = None, n: int = 0) -> None:
        self.sums: dict[str, float] = dict(sums or {})
        self.n = n

    def add(self, losses: dict[str, float]) -> None:
        for k in LOGGED:
            self.sums[k] = self.sums.get(k, 0.0) + losses[k]
        self.n += 1

    def means(self) -> dict[str, float]:
        return {k: v / self.n for k, v in self.sums.items()}

    def state_dict(self) -> dict[str, float]:
        """The saved "epoch_sums": the sums plus "_n" (a float), or {} when nothing is summed."""
        return {**self.sums, "_n": float(self.n)} if self.n else {}

    @classmethod
    def from_state_dict(cls, state: dict[str, float]) -> EpochStats:
        sums = dict(state)
        n = int(sums.pop("_n", 0))
        return cls(sums, n)


@dataclass
class RunState:
    """Where a run is: steps done, the finished epochs' records, the current epoch's sums."""

    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    stats: EpochStats = field(default_factory=EpochStats)


def train_state(trainer: Trainer, run: RunState, ctx: DistContext) -> dict[str, Any]:
    """The train_state.pt of a checkpoint (see the module docstring); every rank must call it."""
    return {
        "trainer": trainer.state_dict(),
        "step": run.step,
        "history": run.history,
        "epoch_sums": run.stats.state_dict(),
        "ranks": gather_rank_states(trainer, ctx),
    }


def resume_run(run_dir: Path, trainer: Trainer, ctx: DistContext) -> RunState:
    """Load RUN/last into `trainer` (weights, optimisers, this rank's pools and RNG states)."""
    last = run_dir / "last"
    if not last.exists():
        raise SemlayoutError(f"--resume: {run_dir} has no checkpoint to resume from (no {last})")
    _, old_nets, _ = load_checkpoint(last)
    for name, net in trainer.nets.items():
        load_state_into(net, name, old_nets[name].state_dict(), str(last))
    state = load_train_state(last)
    trainer.load_state_dict(state["trainer"])
    run = RunState(
        step=int(state["step"]),
        history=list(state["history"]),
        stats=EpochStats.from_state_dict(state.get("epoch_sums", {})),
    )
    ranks = state["ranks"]
    if len(ranks) != ctx.world_size:
        raise SemlayoutError(
            f"--resume: {last} was written by {len(ranks)} process(es), "
            f"this run has {ctx.world_size}"
        )
    restore_rank_state(trainer, ranks[ctx.rank])
    return run


def rank_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    """What differs between ranks: image pools and RNG states, as tensors."""
    out = {f"rng.{k}": v for k, v in rng_state().items()}
    for name, pool in (("pool_A", trainer.pool_A), ("pool_B", trainer.pool_B)):
        st = pool.state_dict()
        out[f"{name}.images"], out[f"{name}.rng"] = st["images"], st["rng"]
    return out


def gather_rank_states(trainer: Trainer, ctx: DistContext) -> list[dict[str, torch.Tensor]]:
    """Every rank's `rank_state`, in rank order (tensor all-gathers, shapes agree across ranks)."""
    mine = rank_state(trainer)
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


def restore_rank_state(trainer: Trainer, state: dict[str, torch.Tensor]) -> None:
    set_rng_state({k.removeprefix("rng."): v for k, v in state.items() if k.startswith("rng.")})
    for name, pool in (("pool_A", trainer.pool_A), ("pool_B", trainer.pool_B)):
        pool.load_state_dict(
            {"size": pool.size, "images": state[f"{name}.images"], "rng": state[f"{name}.rng"]}
        )
