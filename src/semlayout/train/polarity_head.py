"""The end of a run of both polarities: fit `polarity=auto`'s head.

`semlayout.polarity_auto` decides an image's polarity from how well each hypothesis,
read by G_A and re-rendered by G_B, explains it, and from which phase the SE rims lie on.
The two polarity branches of a trained generator are not equally good, so the raw difference
is biased; a logistic regression (the polarities weighted equally: a likelihood ratio a layer
can pool) on the features of images whose polarity is known calibrates it: the val split's
plus `SYNTH_PAIRS` fresh synthetic pairs drawn at fit time, half of each polarity (a val
split has few reversed images: 13 of 71 in `make run`'s). The head goes into the final
checkpoint's config (`polarity.auto_head`) and travels with the weights. `synth_head` fits
one for a loaded `Translator` the same way (the bench refits an older checkpoint's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from semlayout.config import AutoHeadConfig, ExperimentConfig

if TYPE_CHECKING:
    from semlayout.train.trainer import Trainer

MIN_PER_POLARITY = 8  # fewer images of a polarity: no head (the raw evidence serves)
SYNTH_PAIRS = 96  # fresh synthetic pairs added to the val split, half reversed
SYNTH_SEED = 16016  # their seed (the data synthesis of a run does not use it)


def synth_sems(n: int, size: int, seed: int = SYNTH_SEED) -> tuple[np.ndarray, np.ndarray]:
    """`n` fresh synthetic SEMs (N, 1, size, size) float32 in [-1, 1] at the template crop,
    alternately bright and dark, default physics and family mix; and their polarity (N,)."""
    import cv2

    from semlayout.data.layouts import DEFAULT_MIX
    from semlayout.data.synth import generate_pair

    rng = np.random.default_rng(seed)
    fams = rng.choice(list(DEFAULT_MIX), size=n, p=np.array(list(DEFAULT_MIX.values())))
    out, pol = [], np.array([1 if i % 2 == 0 else -1 for i in range(n)])
    for i, fam in enumerate(fams):
        sem, layout, _, x, y, _ = generate_pair(
            np.random.default_rng([seed, i]), str(fam), params={"polarity": int(pol[i])}
        )
        crop = sem[y : y + layout.shape[0], x : x + layout.shape[1]]
        img = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
        out.append(img.astype(np.float32) / np.float32(127.5) - np.float32(1.0))
    return np.stack(out)[:, None], pol


def _features(run_a: Any, run_b: Any, sems: np.ndarray, batch_size: int = 8) -> np.ndarray:
    from semlayout.polarity_auto import hypotheses

    return np.concatenate(
        [hypotheses(run_a, run_b, sems[lo : lo + batch_size])[1]
         for lo in range(0, len(sems), batch_size)]
    )  # fmt: skip


def synth_head(tr: Any, n: int = 2 * SYNTH_PAIRS, seed: int = SYNTH_SEED) -> AutoHeadConfig:
    """A head for a loaded `Translator` of both polarities, fitted on `n` fresh synthetic
    SEMs (half reversed)."""
    from semlayout.polarity_auto import fit_head

    sems, pol = synth_sems(n, tr.image_size, seed)
    feats = _features(tr._runners["sem2layout"], tr._runners["layout2sem"], sems)
    return AutoHeadConfig.model_validate(fit_head(feats, pol))


@torch.no_grad()
def fit_auto_head(
    trainer: Trainer,
    val_ds: Dataset,
    limit: int = 256,
    synth_pairs: int = SYNTH_PAIRS,
) -> AutoHeadConfig | None:
    """The head fitted on up to `limit` val images plus `synth_pairs` fresh synthetic ones,
    or None when a polarity has too few."""
    from semlayout.polarity_auto import fit_head

    n = min(limit, len(val_ds))  # type: ignore[arg-type]
    items = [val_ds[i] for i in range(n)]
    sems = torch.stack([it["sem"] for it in items]).numpy() if items else None
    pol = np.array([float(it.get("polarity", 1.0)) for it in items])
    if synth_pairs > 0:
        size = trainer.cfg.generator.image_size
        s_sems, s_pol = synth_sems(synth_pairs, size)
        sems = s_sems if sems is None else np.concatenate([sems, s_sems])
        pol = np.concatenate([pol, s_pol])
    if sems is None or min((pol > 0).sum(), (pol < 0).sum()) < MIN_PER_POLARITY:
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
        feats = _features(runner(trainer.G_A), runner(trainer.G_B), sems.astype(np.float32))
    finally:
        for g in (trainer.G_A, trainer.G_B):
            g.train()
    return AutoHeadConfig.model_validate(fit_head(feats, pol))


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
