"""Data-parallel training helpers: process group from torchrun's environment, gradient averaging.

Under `torchrun --nproc-per-node=N` every process runs the same loop on its own
slice of each global batch (batch_size per rank). After each backward the
gradients are averaged over ranks, so every rank takes the same optimiser step
and the weights stay identical — DistributedDataParallel's semantics, made
explicit: a GAN step calls G and D several times per update and freezes D for
the G step, which DDP's bucketed reducer does not follow (it expects one
forward/backward per module per iteration with a fixed set of trainable
parameters). Backend: gloo on CPU, nccl on GPU. Rank 0 alone writes
checkpoints, history and MLflow logs.

BatchNorm statistics are per rank (SyncBatchNorm does not run on CPU); with
norm "instance" a DDP run equals one process with the combined batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from semlayout.errors import SemlayoutError


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SemlayoutError(
                f"train.device={name}, but this torch build or machine has no CUDA device; "
                "use train.device=auto or cpu"
            )
        dev = torch.device(f"cuda:{local_rank}" if name == "cuda" else name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SemlayoutError(
                f"train.device={name}: only {torch.cuda.device_count()} CUDA device(s) here"
            )
        return dev
    return torch.device(name)


def init_from_env(device: str = "auto") -> DistContext:
    """A DistContext from torchrun's RANK / WORLD_SIZE / LOCAL_RANK (single process without them).

    Initialises the default process group once if WORLD_SIZE > 1.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def broadcast_module(module: torch.nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's parameters and buffers to every rank (identical start)."""
    if not ctx.enabled:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)


def all_reduce_grads(params: Iterable[torch.nn.Parameter], ctx: DistContext) -> None:
    """Average gradients over ranks in one flat all-reduce."""
    if not ctx.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= ctx.world_size
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def all_reduce_mean(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Mean of a (small) tensor over ranks; identity in one process."""
    if not ctx.enabled:
        return values
    out = values.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / ctx.world_size


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
