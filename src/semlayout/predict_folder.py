"""`semlayout predict` over a folder: the folder is one data set, so one layer.

Polarity belongs to the layer, not the image (`semlayout.polarity_layer`): with
`polarity=auto` on a model of both polarities, every SEM's own evidence is read first
(`Translator.read_evidence`), pooled as the layer's (on top of what a monitor store already
holds for the layer, when one is given), and every image is then translated in the pooled
polarity (`source = pooled`). `per_image=True` keeps per-image decisions (auto's, still with
the store's pooled evidence as prior when there is one). A configured layer polarity (the
caller's `--layer-polarity`, or the store's for the layer) decides (`source = layer`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from semlayout.inference import Translation, Translator
from semlayout.polarity import BRIGHT, DARK, PolarityChoice, name_of
from semlayout.polarity_auto import PolarityDecision
from semlayout.polarity_layer import LayerState


def pools(tr: Translator, direction: str, choice: PolarityChoice, layer: LayerState) -> bool:
    """Whether the folder's polarity is read as one layer's: auto on a model of both
    polarities, SEM -> layout, no configured layer polarity."""
    return (
        direction == "sem2layout"
        and choice is PolarityChoice.auto
        and len(tr.polarities) == 2
        and layer.configured is None
    )


def translate_folder(
    tr: Translator,
    direction: str,
    images: Sequence[np.ndarray],
    choice: PolarityChoice,
    layer: LayerState,
    per_image: bool = False,
    **options: Any,
) -> tuple[list[Translation], LayerState]:
    """The translations of `images` (in order) and the layer's state after reading them.

    `options`: `translate_detailed`'s binarize, batch_size and max_field_side (fields)."""
    if per_image or not pools(tr, direction, choice, layer):
        done = tr.translate_detailed(
            direction, images, polarity=choice, prior=layer.prior(), **options
        )
        ev = [t.decision.evidence for t in done if t.decision.evidence is not None]
        return done, layer.fold_all(ev)
    evidences = tr.read_evidence(images, options.get("batch_size", 16))
    after = layer.fold_all(evidences)
    polarity = DARK if after.pooled < 0 else BRIGHT
    done = tr.translate_detailed(direction, images, polarity=name_of(polarity), **options)
    margin = abs(after.pooled)
    return [
        replace(t, decision=PolarityDecision(polarity, "pooled", margin, float(e)))
        for t, e in zip(done, evidences, strict=True)
    ], after
