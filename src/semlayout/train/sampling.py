"""Which items a step trains on: the epoch order, each rank's batch slices, family weights.

The order of an epoch is a function of (seed, epoch) alone and the position in it is the
step, so a resume replays both. A dataset whose items depend on how often an index was read
this epoch (ShardDataset's augmentation draw) is told the reads a resumed epoch already made
(`ReplaysReads.count_reads`), and a dataset with `set_epoch` is told the epoch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol, runtime_checkable

import torch
from torch.utils.data import Dataset, Sampler

from semlayout.errors import SemlayoutError
from semlayout.train.distributed import DistContext


@runtime_checkable
class EpochAware(Protocol):
    def set_epoch(self, epoch: int) -> None: ...


@runtime_checkable
class ReplaysReads(Protocol):
    def count_reads(self, indices: Iterable[int]) -> None: ...


def epoch_order(n: int, epoch: int, seed: int, weights: torch.Tensor | None = None) -> list[int]:
    """Item order of an epoch: a function of (seed, epoch) alone, so a resume can replay it.

    With `weights` (balanced sampling) items are drawn with replacement.
    """
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    if weights is None:
        return torch.randperm(n, generator=g).tolist()
    return torch.multinomial(weights, n, replacement=True, generator=g).tolist()


def start_epoch(ds: Dataset, epoch: int, order: list[int], consumed: int) -> None:
    """Tell `ds` the epoch and, after a mid-epoch resume, the `consumed` reads of `order` that the
    epoch already made (items whose draw depends on earlier reads then come out the same)."""
    if isinstance(ds, EpochAware):
        ds.set_epoch(epoch)
    if consumed and isinstance(ds, ReplaysReads):
        ds.count_reads(order[:consumed])


class BatchSlices(Sampler[list[int]]):
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
    """Per-item sampling weights that give every family the same total (balanced sampling)."""
    fams = list(getattr(dataset, "item_families", []))
    if not fams:
        raise SemlayoutError("train.balanced_sampling needs a dataset with item_families")
    counts: dict[str, int] = {}
    for f in fams:
        counts[f] = counts.get(f, 0) + 1
    return torch.tensor([1.0 / counts[f] for f in fams], dtype=torch.double)
