"""The drift reference, `SHARDS/reference_stats.json`: written by `semlayout shard` from the
TRAIN split, read by the server's DriftDetector and the Evidently drift report.

```
format          "semlayout-reference/1"
feature_names   FEATURE_NAMES of semlayout.data.features, in order
histogram_bins  64
split           "train"
sem, layout     {n, mean {feature: value}, std {feature: value} (population, ddof=0),
                 histogram [bins] (mean normalised histogram, sums to 1),
                 features {feature: [value per image]}}
polarity        {"+1": n, "-1": n}: the contrast polarities of the train pairs
sem_by_polarity {"+1": block, "-1": block}: the `sem` block of each polarity's train SEMs
                (only the polarities present)
```
The polarity keys are absent from files written before polarity was recorded: those read as
all +1 (`polarity_mix`).
`load_reference_stats` accepts only that shape: a file from another feature set or with
a block missing is refused with a message that says to re-run `semlayout shard`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from semlayout.errors import SemlayoutError
from semlayout.polarity import POLARITIES, UNKNOWN_READS_AS, key, polarity_counts

REFERENCE_FILE = "reference_stats.json"
REFERENCE_FORMAT = "semlayout-reference/1"
KINDS = ("sem", "layout")
BLOCK_KEYS = ("mean", "std", "histogram", "features")

Described = tuple[dict[str, float], np.ndarray]  # one image: its features, its histogram


def describe(img: np.ndarray) -> Described:
    """The per-image features and normalised histogram of one (H, W) uint8 image."""
    from semlayout.data.features import HISTOGRAM_BINS, histogram, image_features

    return image_features(img), histogram(img, HISTOGRAM_BINS)


def _stats_block(described: list[Described]) -> dict[str, Any]:
    from semlayout.data.features import FEATURE_NAMES

    table = {f: [d[0][f] for d in described] for f in FEATURE_NAMES}
    hist = np.mean([d[1] for d in described], axis=0)
    return {
        "n": len(described),
        # population std (ddof=0) of the per-image values
        "mean": {f: float(np.mean(table[f])) for f in FEATURE_NAMES},
        "std": {f: float(np.std(table[f])) for f in FEATURE_NAMES},
        "histogram": [float(v) for v in hist / hist.sum()],
        "features": table,
    }


def reference_doc(
    sem: list[Described], layout: list[Described], polarity: Sequence[int] | None = None
) -> dict[str, Any]:
    """The `reference_stats.json` document from already described train images and their
    polarities (None: all +1)."""
    from semlayout.data.features import FEATURE_NAMES, HISTOGRAM_BINS

    if not sem:
        raise SemlayoutError("reference statistics need at least one training image")
    pols = list(polarity) if polarity is not None else [UNKNOWN_READS_AS] * len(sem)
    if len(pols) != len(sem):
        raise SemlayoutError(f"{len(pols)} polarities for {len(sem)} reference images")
    return {
        "format": REFERENCE_FORMAT,
        "feature_names": list(FEATURE_NAMES),
        "histogram_bins": HISTOGRAM_BINS,
        "split": "train",
        "sem": _stats_block(sem),
        "layout": _stats_block(layout),
        "polarity": polarity_counts(pols),
        "sem_by_polarity": {
            key(p): _stats_block([d for d, q in zip(sem, pols, strict=True) if q == p])
            for p in POLARITIES
            if p in pols
        },
    }


def reference_stats(
    sem: Sequence[np.ndarray],
    layout: Sequence[np.ndarray],
    polarity: Sequence[int] | None = None,
) -> dict[str, Any]:
    """The drift reference (`reference_stats.json` content) of a set of training images."""
    return reference_doc([describe(im) for im in sem], [describe(im) for im in layout], polarity)


def polarity_mix(stats: dict[str, Any]) -> dict[str, int]:
    """{"+1": n, "-1": n} of a loaded reference (a file without it: all of its SEMs +1)."""
    mix = stats.get("polarity")
    if isinstance(mix, dict) and all(isinstance(mix.get(k), int) for k in ("+1", "-1")):
        return {"+1": int(mix["+1"]), "-1": int(mix["-1"])}
    block = stats["sem"]
    n = block.get("n")
    if not isinstance(n, int):
        n = len(next(iter(block["features"].values()), []))
    return {"+1": n, "-1": 0}


def write_reference(folder: Path, doc: dict[str, Any]) -> None:
    """Write `doc` (from `reference_doc`) as `folder/reference_stats.json`."""
    (folder / REFERENCE_FILE).write_text(json.dumps(doc) + "\n")


def load_reference_stats(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load `reference_stats.json` from a shard folder (or the file itself) and check its shape:
    a `sem` and a `layout` block with mean, std, histogram and per-image features, computed
    for this version's `FEATURE_NAMES`."""
    from semlayout.data.features import FEATURE_NAMES

    p = Path(path)
    if p.is_dir():
        p = p / REFERENCE_FILE
    if not p.is_file():
        raise SemlayoutError(
            f"reference statistics not found: {p} "
            f"(expected SHARDS/{REFERENCE_FILE}, written by `semlayout shard`)"
        )
    try:
        stats = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SemlayoutError(f"{p}: not valid JSON ({err})") from None
    for kind in KINDS:
        block = stats.get(kind) if isinstance(stats, dict) else None
        if not isinstance(block, dict) or not all(k in block for k in BLOCK_KEYS):
            raise SemlayoutError(
                f"{p}: missing '{kind}' block with {', '.join(BLOCK_KEYS)}; "
                "re-run `semlayout shard`"
            )
    if stats.get("feature_names") != list(FEATURE_NAMES):
        raise SemlayoutError(
            f"{p}: feature_names do not match {list(FEATURE_NAMES)}; re-run `semlayout shard`"
        )
    return stats
