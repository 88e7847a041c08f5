"""The torch Dataset over shards, the [-1, 1] <-> uint8 mapping, and a family-balanced sampler.

Item of `ShardDataset(shards_dir, split, image_size=S)`:
```
{"sem": (1,S,S) float32 in [-1,1], "layout": (1,S,S) float32 in [-1,1],
 "clean": (1,S,S) (only when every pair of the shard set has one), "family": str, "id": str,
 "polarity": () float32, +1 or -1 (the pair's contrast polarity; +1 for older shard sets)}
```
Resizing 250 -> S uses cv2.INTER_AREA for every image, the layout included: the
layout then becomes continuous in [-1, 1] near edges (a partial-coverage value),
which is what a Tanh generator can match and what `to_uint8` maps back; training
against a re-binarised layout would move edges by up to half a pixel. With S = 250
nothing is resized and the layout stays exactly {-1, 1}.

With `crop=C` every read takes a random C x C window (the same for every image of
the item) after the resize: training at full resolution for a quarter of the pixels
per step at C = S/2 (`train.crop_size`).

Augmentation is geometric only (the 8 dihedral transforms: 90-degree rotations
and flips), applied identically to every image of an item; never photometric,
because intensity is what the SEM<->layout translation has to learn. The transform
of an item is a function of (seed, epoch, index, how often this process has read
that index), so it is reproducible and still changes from epoch to epoch; call
`set_epoch(e)` to make it independent of worker scheduling, and after a mid-epoch resume
`count_reads(order[:consumed])` to record the reads the epoch already made (the training loop
does both through the protocols of `semlayout.train.sampling`). Reads are counted per process:
with DataLoader workers an index read again in the same epoch counts only that worker's reads.

Shards are opened lazily and memory-mapped (uncompressed .npz members are
contiguous in the file), so a big shard set costs page cache, not RAM per worker.
"""

from __future__ import annotations

import os
import zipfile
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, WeightedRandomSampler

from semlayout.data.shards import _split_info, npz_members, read_index
from semlayout.errors import SemlayoutError
from semlayout.polarity import UNKNOWN_READS_AS

IMAGE_KEYS = ("sem", "layout", "clean")


def from_uint8(a: np.ndarray | torch.Tensor, as_tensor: bool = False) -> Any:
    """uint8 [0, 255] -> float32 [-1, 1] (`x / 127.5 - 1`; 0 -> -1, 255 -> 1 exactly)."""
    if isinstance(a, torch.Tensor):
        return a.to(torch.float32) / 127.5 - 1.0
    arr = np.asarray(a)
    if arr.dtype != np.uint8:
        raise SemlayoutError(f"from_uint8 expects uint8 values, got {arr.dtype}")
    out = arr.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    return torch.from_numpy(out) if as_tensor else out


def to_uint8(t: np.ndarray | torch.Tensor) -> np.ndarray:
    """float [-1, 1] -> uint8, rounding to nearest and clipping; inverse of `from_uint8`."""
    if isinstance(t, torch.Tensor):
        t = t.detach().to("cpu", torch.float32).numpy()
    arr = np.asarray(t, dtype=np.float32)
    return np.clip(np.rint((arr + 1.0) * 127.5), 0, 255).astype(np.uint8)


def dihedral(img: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 symmetries of the square: k in 0..7 -> rotate by (k % 4) * 90 deg, then flip
    if k >= 4."""
    out = np.rot90(img, k % 4, axes=(-2, -1))
    if k >= 4:
        out = out[..., ::-1]
    return np.ascontiguousarray(out)


class ShardDataset(Dataset):
    """A split of a shard set as a torch Dataset (see the module docstring for the item)."""

    def __init__(
        self,
        shards_dir: str | os.PathLike[str],
        split: str,
        image_size: int = 256,
        augment: bool = False,
        seed: int = 0,
        source: str | None = None,
        crop: int | None = None,
    ) -> None:
        if not isinstance(image_size, int) or image_size < 8:
            raise SemlayoutError(f"image_size must be an integer >= 8, got {image_size!r}")
        if crop is not None and not (isinstance(crop, int) and 8 <= crop <= image_size):
            raise SemlayoutError(
                f"crop must be an integer in [8, image_size={image_size}], got {crop!r}"
            )
        self.crop = crop
        self.shards_dir = Path(shards_dir)
        self.split = split
        self.image_size = image_size
        self.augment = augment
        self.seed = seed
        self.index = read_index(shards_dir)
        info = _split_info(self.index, split, shards_dir)
        self._shard_paths = [self.shards_dir / rel for rel in info["shards"]]
        self._cache: dict[int, dict[str, np.ndarray]] = {}
        self.has_clean = bool(self.index.get("has_clean", False))
        # (shard, row) of every item, plus ids and families: read once, small
        self._loc: list[tuple[int, int]] = []
        self.ids: list[str] = []
        self.item_families: list[str] = []
        self.item_sources: list[str] = []
        self.item_polarities: list[int] = []
        for s, path in enumerate(self._shard_paths):
            try:
                with np.load(path, allow_pickle=False) as z:
                    ids, fams = z["ids"].tolist(), z["families"].tolist()
                    srcs = z["sources"].tolist() if "sources" in z.files else [""] * len(ids)
                    pols = (
                        z["polarity"].tolist()
                        if "polarity" in z.files
                        else [UNKNOWN_READS_AS] * len(ids)
                    )
            except (zipfile.BadZipFile, EOFError, KeyError, ValueError) as err:
                raise SemlayoutError(
                    f"shard {path} is corrupt or truncated ({err}); "
                    "re-create it with `semlayout shard`"
                ) from None
            for row, (pid, fam, src, pol) in enumerate(zip(ids, fams, srcs, pols, strict=True)):
                if source is not None and src != source:
                    continue
                self._loc.append((s, row))
                self.ids.append(pid)
                self.item_families.append(fam)
                self.item_sources.append(src)
                self.item_polarities.append(int(pol))
        if not self._loc:
            raise SemlayoutError(
                f"split '{split}' of {shards_dir} has no pairs from source '{source}'"
            )
        self.families: list[str] = sorted(set(self.item_families))
        self.polarities: list[int] = sorted(set(self.item_polarities), reverse=True)
        self.epoch = 0
        self._reads: Counter[int] = Counter()

    def __len__(self) -> int:
        return len(self._loc)

    def set_epoch(self, epoch: int) -> None:
        """Choose the augmentation draw for this epoch (like DistributedSampler.set_epoch)."""
        self.epoch = int(epoch)
        self._reads.clear()

    def __getstate__(self) -> dict[str, Any]:
        # workers started with "spawn" reopen the shards instead of receiving copies of the maps
        state = self.__dict__.copy()
        state["_cache"] = {}
        return state

    def count_reads(self, indices: Iterable[int]) -> None:
        """Record reads already made this epoch without loading anything (exact mid-epoch resume:
        the augmentation draw of an index depends on how often it was read this epoch)."""
        for i in indices:
            self._reads[int(i)] += 1

    def _shard(self, s: int) -> dict[str, np.ndarray]:
        if s not in self._cache:
            self._cache[s] = npz_members(self._shard_paths[s])
        return self._cache[s]

    def transform_index(self, index: int) -> int:
        """The dihedral transform (0..7) the next read of `index` will use (0 without augment)."""
        return self._draw(index)[0]

    def _draw(self, index: int) -> tuple[int, int, int]:
        """(dihedral transform, crop top, crop left) of the next read of `index`."""
        if not self.augment and self.crop is None:
            return 0, 0, 0
        rng = np.random.default_rng([self.seed, self.epoch, index, self._reads[index]])
        k = int(rng.integers(8)) if self.augment else 0
        if self.crop is None:
            return k, 0, 0
        top, left = (int(v) for v in rng.integers(0, self.image_size - self.crop + 1, size=2))
        return k, top, left

    def raw(self, index: int) -> dict[str, Any]:
        """The stored uint8 (250, 250) images of an item, untransformed."""
        s, row = self._loc[index]
        data = self._shard(s)
        rec: dict[str, Any] = {
            "id": self.ids[index],
            "family": self.item_families[index],
            "polarity": self.item_polarities[index],
        }
        for key in IMAGE_KEYS:
            if key in data and (key != "clean" or self.has_clean):
                rec[key] = np.asarray(data[key][row])
        return rec

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self._loc):
            if -len(self._loc) <= index < 0:
                index += len(self._loc)
            else:
                raise IndexError(index)
        k, top, left = self._draw(index)
        self._reads[index] += 1
        rec = self.raw(index)
        item: dict[str, Any] = {
            "id": rec["id"],
            "family": rec["family"],
            "polarity": torch.tensor(float(rec["polarity"])),
        }
        size = self.image_size
        for key in IMAGE_KEYS:
            if key not in rec:
                continue
            img = rec[key]
            if img.shape != (size, size):
                img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
            if self.crop is not None:
                img = img[top : top + self.crop, left : left + self.crop]
            if k:
                img = dihedral(img, k)
            item[key] = torch.from_numpy(from_uint8(img)[None])  # (1, S, S)
        return item


def balanced_sampler(
    dataset: Any,
    seed: int = 0,
    num_samples: int | None = None,
) -> WeightedRandomSampler:
    """Sample with replacement so every family gets the same total weight (class imbalance).

    `dataset` needs `item_families` (ShardDataset has it) or items with a "family" key.
    """
    fams: Sequence[str] = getattr(dataset, "item_families", None) or [
        dataset[i]["family"] for i in range(len(dataset))
    ]
    if not fams:
        raise SemlayoutError("balanced_sampler needs a non-empty dataset")
    counts = Counter(fams)
    weights = [1.0 / counts[f] for f in fams]  # each family sums to 1
    gen = torch.Generator().manual_seed(int(seed))
    return WeightedRandomSampler(weights, num_samples or len(fams), replacement=True, generator=gen)
