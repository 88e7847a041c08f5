"""What a run checks at the end of each epoch on the validation split: a few metrics and a grid
of samples (`RUN/samples/epoch-NNNN.png`). The full evaluation is `semlayout.evaluation`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

from semlayout.atomic import atomic_write_bytes

if TYPE_CHECKING:
    from semlayout.train.trainer import Trainer


def _polarity(items: list[dict], device: torch.device) -> torch.Tensor:
    """(B,) +-1 of the items (+1 for items without one)."""
    return torch.tensor([float(it.get("polarity", 1.0)) for it in items], device=device)


@torch.no_grad()
def quick_validation(
    trainer: Trainer, val_ds: Dataset, n: int, batch_size: int
) -> dict[str, float]:
    """SEM->layout IoU (threshold 0.5 on [0, 1]) and L1 of both directions on the first n items."""
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
        pol = _polarity(items, trainer.ctx.device)
        fake_lay, fake_sem = trainer.G_A(sem, pol), trainer.G_B(lay, pol)
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
        pol = _polarity([it], trainer.ctx.device)
        cols = [sem, trainer.G_A(sem, pol), lay, trainer.G_B(lay, pol)]
        rows.append(torch.cat([c[0, 0].cpu() for c in cols], dim=1))
    for g in (trainer.G_A, trainer.G_B):
        g.train()
    grid = torch.cat(rows, dim=0) if rows else torch.zeros(1, 1)
    return ((grid.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def write_grid(run_dir: Path, epoch: int, grid: np.ndarray) -> Path:
    """RUN/samples/epoch-NNNN.png, written atomically; returns its path."""
    import cv2

    ok, buf = cv2.imencode(".png", grid)
    if not ok:
        raise RuntimeError("could not encode the sample grid")
    path = run_dir / "samples" / f"epoch-{epoch:04d}.png"
    atomic_write_bytes(path, buf.tobytes())
    return path
