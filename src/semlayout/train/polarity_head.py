"""The end of a run of both polarities: fit `polarity=auto`'s head on the val split.

`semlayout.polarity_auto` decides an image's polarity from how well each hypothesis,
read by G_A and re-rendered by G_B, explains it. The two polarity branches of a trained
generator are not equally good, so the raw difference is biased; a logistic regression on
the features of the val split's images (their polarity known) calibrates it. The head goes
into the final checkpoint's config (`polarity.auto_head`) and travels with the weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from semlayout.config import AutoHeadConfig, ExperimentConfig

if TYPE_CHECKING:
    from semlayout.train.trainer import Trainer

MIN_PER_POLARITY = 8  # fewer val images of a polarity: no head (the raw evidence serves)


@torch.no_grad()
def fit_auto_head(
    trainer: Trainer, val_ds: Dataset, limit: int = 256, batch_size: int = 8
) -> AutoHeadConfig | None:
    """The head fitted on up to `limit` val images, or None when a polarity has too few."""
    from semlayout.polarity_auto import fit_head, hypotheses

    n = min(limit, len(val_ds))  # type: ignore[arg-type]
    items = [val_ds[i] for i in range(n)]
    pol = np.array([float(it.get("polarity", 1.0)) for it in items])
    if min((pol > 0).sum(), (pol < 0).sum()) < MIN_PER_POLARITY:
        return None
    device = trainer.ctx.device

    def runner(net: torch.nn.Module) -> Any:
        def run(b: np.ndarray, p: np.ndarray) -> np.ndarray:
            x, q = torch.from_numpy(b).to(device), torch.from_numpy(p).to(device)
            return net(x, q).float().cpu().numpy()

        return run

    for g in (trainer.G_A, trainer.G_B):
        g.eval()
    try:
        feats = [
            hypotheses(
                runner(trainer.G_A),
                runner(trainer.G_B),
                torch.stack([it["sem"] for it in items[lo : lo + batch_size]]).numpy(),
            )[1]
            for lo in range(0, n, batch_size)
        ]
    finally:
        for g in (trainer.G_A, trainer.G_B):
            g.train()
    return AutoHeadConfig.model_validate(fit_head(np.concatenate(feats), pol))


def with_auto_head(
    cfg: ExperimentConfig, trainer: Trainer, val_ds: Dataset | None
) -> ExperimentConfig:
    """`cfg` with `polarity.auto_head` fitted, for a model of both polarities with a val split."""
    if val_ds is None or len(cfg.polarity.serves) < 2 or len(val_ds) == 0:  # type: ignore[arg-type]
        return cfg
    head = fit_auto_head(trainer, val_ds)
    if head is None:
        return cfg
    data = cfg.to_dict()
    data["polarity"]["auto_head"] = head.model_dump()
    return ExperimentConfig.model_validate(data)
