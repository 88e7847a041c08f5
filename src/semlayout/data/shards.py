"""Shards: aligned pairs -> stratified train/val/test .npz shards + the drift reference.

```
SHARDS/index.json               format, seed, splits {n, shards, families, sources, polarity},
                                families, has_clean, source, polarity {"+1": n, "-1": n},
                                polarity_sources {manifest|alignment|shards|assumed: n}
SHARDS/<split>/shard-NNNNN.npz  uncompressed: ids, families, sources (N,) str;
                                polarity (N,) int8 (+1 pattern bright, -1 dark);
                                sem, layout[, clean] (N,250,250) uint8
                                [, clean_mask (N,) bool when only some pairs have a clean image]
SHARDS/reference_stats.json     per-image features + mean/std + mean histogram of the TRAIN
                                split (sem and layout; the SEM also per polarity), see
                                semlayout.data.reference_stats
```
Polarity (`semlayout.polarity`): where each pair's comes from is `semlayout.data.shard_sources`;
a shard set written before polarity was recorded has no `polarity` array and reads as +1
(the project drew bright data only until then).
Splitting is stratified by `pattern_type` (and by source when several folders are
mixed): a family with >= 3 pairs appears in every split, however rare; families
with 1-2 pairs go to train only. The split depends only on the ids, families and
the seed, not on manifest order. Shards are written with fixed zip timestamps, so
the same input and seed give byte-identical files.

Sources (`semlayout.data.shard_sources`): aligned pair folders and existing shard
sets (their TRAIN split, e.g. a replay sample), each optionally capped. The file
format itself (index validation, .npz members) is `semlayout.data.shard_format`;
this module is the public API of a shard set: writing it and reading its records.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from semlayout.atomic import atomic_dir, check_not_over_inputs
from semlayout.data.pairs import TEMPLATE_SHAPE
from semlayout.data.reference_stats import Described, describe, reference_doc, write_reference
from semlayout.data.shard_format import (
    FORMAT,
    IMAGE_SIZE,
    SPLITS,
    npz_members,
    read_index,
    write_npz,
)
from semlayout.data.shard_sources import (
    Entry,
    Images,
    ShardSource,
    SourceLike,
    as_sources,
    collect_entries,
)
from semlayout.errors import SemlayoutError
from semlayout.polarity import UNKNOWN_READS_AS, polarity_counts

__all__ = [
    "FORMAT",
    "IMAGE_SIZE",
    "SPLITS",
    "ShardSource",
    "SourceLike",
    "assign_splits",
    "iter_split",
    "load_split_arrays",
    "npz_members",
    "read_index",
    "split_counts",
    "write_shards",
]


# ----------------------------------------------------------------------------- splitting


def split_counts(n: int, val: float, test: float) -> tuple[int, int, int]:
    """(train, val, test) sizes of one family of n pairs; n >= 3 puts >= 1 in each split asked
    for."""
    if n < 3:
        return n, 0, 0
    n_val = int(round(n * val))
    n_test = int(round(n * test))
    if val > 0:
        n_val = max(n_val, 1)
    if test > 0:
        n_test = max(n_test, 1)
    while n - n_val - n_test < 1:  # train keeps at least one pair
        if n_test >= n_val and n_test > (1 if test > 0 else 0):
            n_test -= 1
        elif n_val > (1 if val > 0 else 0):
            n_val -= 1
        else:  # pragma: no cover - n >= 3 always leaves room for 1/1/1
            break
    return n - n_val - n_test, n_val, n_test


def assign_splits(
    keys: Sequence[tuple[str, str, str]],
    val: float,
    test: float,
    seed: int,
    content: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Map each id to a split. keys: (id, family, source). Stratified by (source, family).

    Each (source, family) group is shuffled by a generator seeded with (seed, family), so adding
    a family does not reshuffle another and a folder's name plays no part; each group is cut
    by `split_counts`. With `content` ({id: hash of the pair's pixels}) a group is ordered by
    sha256(seed, content) instead: the split follows what a pair IS, not what it is called, so
    reviewed pairs that come back under new ids (each feedback post makes one) land in the
    same split on every run. Then a family with >= 3 pairs in total that still misses a split
    (possible only when it is spread thinly across sources) gets a train pair moved there.
    """
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for pid, fam, src in keys:
        groups[(src, fam)].append(pid)
    out: dict[str, str] = {}
    for (_src, fam), ids in sorted(groups.items()):
        ids = sorted(ids)
        # seeded by family only: renaming or moving a folder must not change its split
        if content is not None:
            order = sorted(ids, key=lambda i: _content_rank(seed, content[i], i))
        else:
            rng = np.random.default_rng([seed, zlib.crc32(fam.encode())])
            order = [ids[i] for i in rng.permutation(len(ids))]
        n_train, n_val, _ = split_counts(len(ids), val, test)
        for j, pid in enumerate(order):
            out[pid] = "train" if j < n_train else "val" if j < n_train + n_val else "test"
    fam_of = {pid: fam for pid, fam, _ in keys}
    by_fam: dict[str, list[str]] = defaultdict(list)
    for pid in sorted(out):
        by_fam[fam_of[pid]].append(pid)
    wanted = [s for s, frac in (("val", val), ("test", test)) if frac > 0]
    for _fam, ids in sorted(by_fam.items()):
        if len(ids) < 3:
            continue
        for split in wanted:
            if not any(out[p] == split for p in ids):
                train_ids = [p for p in ids if out[p] == "train"]
                if len(train_ids) > 1:
                    out[train_ids[-1]] = split
    return out


def _content_rank(seed: int, content: str, pid: str) -> tuple[str, str]:
    return hashlib.sha256(f"{seed}:{content}".encode()).hexdigest(), pid


def content_hash(sem: np.ndarray, layout: np.ndarray) -> str:
    """A pair's identity for splitting: sha256 of its SEM and layout pixels."""
    return hashlib.sha256(sem.tobytes() + b"|" + layout.tobytes()).hexdigest()


# ----------------------------------------------------------------------------- writing


def write_shards(
    aligned_dir: SourceLike | Sequence[SourceLike],
    out_dir: str | os.PathLike[str],
    val: float = 0.1,
    test: float = 0.2,
    seed: int = 0,
    shard_size: int = 256,
    max_per_source: int | None = None,
    progress: bool = False,
    split_by: str = "id",
) -> dict[str, Any]:
    """Shard one or more aligned folders (or shard sets) into `out_dir`; returns the index dict.

    `split_by`: "id" (the seeded shuffle of ids) or "content" (by a hash of each pair's pixels:
    the same pairs get the same split whatever their ids; see `assign_splits`).

    `aligned_dir`: a path, a `(path, max_n)` tuple, a `ShardSource`, or a list of them.
    `max_per_source` caps every source that has no cap of its own (deterministic sample by seed).
    """
    for what, frac in (("val", val), ("test", test)):
        if not isinstance(frac, int | float) or not 0 <= frac < 1:
            raise SemlayoutError(f"--{what} must be a fraction in [0, 1), got {frac!r}")
    if val + test >= 1:
        raise SemlayoutError(
            f"--val + --test must leave pairs for training, got {val} + {test} >= 1"
        )
    if not isinstance(shard_size, int) or shard_size < 1:
        raise SemlayoutError(f"--shard-size must be a positive integer, got {shard_size!r}")
    sources = as_sources(aligned_dir, max_per_source)
    for src in sources:
        check_not_over_inputs(out_dir, input=src.path)
    entries, source_summary = collect_entries(sources, seed)
    if split_by not in ("id", "content"):
        raise SemlayoutError(f"split_by must be 'id' or 'content', got {split_by!r}")
    content = None
    if split_by == "content":
        content = {e.id: content_hash(*e.load()[:2]) for e in entries}
    split_of = assign_splits(
        [(e.id, e.family, e.source) for e in entries], val, test, seed, content
    )
    index = _index_header(entries, source_summary, val, test, seed, shard_size)
    if content is not None:
        index["split_by"] = split_by
    try:
        return _write(entries, split_of, index, Path(out_dir), progress)
    except (PermissionError, NotADirectoryError, FileExistsError) as err:
        raise SemlayoutError(f"cannot write {out_dir}: {err.strerror or err}") from None


def _index_header(
    entries: list[Entry],
    source_summary: list[dict[str, Any]],
    val: float,
    test: float,
    seed: int,
    shard_size: int,
) -> dict[str, Any]:
    """index.json before its splits are written (the key order is the file's)."""
    n_clean = sum(e.has_clean for e in entries)
    return {
        "format": FORMAT,
        "seed": seed,
        "image_size": IMAGE_SIZE,
        "val": val,
        "test": test,
        "shard_size": shard_size,
        "splits": {},
        "families": sorted({e.family for e in entries}),
        "has_clean": n_clean == len(entries),
        "n_clean": n_clean,
        "source": ";".join(s["path"] for s in source_summary),
        "sources": source_summary,
        "polarity": polarity_counts(e.polarity for e in entries),
        "polarity_sources": dict(sorted(Counter(e.polarity_source for e in entries).items())),
    }


def _write(
    entries: list[Entry],
    split_of: dict[str, str],
    index: dict[str, Any],
    out_dir: Path,
    progress: bool,
) -> dict[str, Any]:
    """Write every split's shards, then reference_stats.json and index.json, atomically."""
    seed, shard_size = index["seed"], index["shard_size"]
    store_clean = index["n_clean"] > 0
    described: dict[str, list[Described]] = {"sem": [], "layout": []}
    train_polarity: list[int] = []
    bar = tqdm(
        total=len(entries),
        desc="shard",
        unit="pair",
        leave=False,
        disable=not progress or len(entries) < 200,
    )
    # threads: PNG decoding and the OpenCV feature code release the GIL
    with atomic_dir(out_dir) as tmp, ThreadPoolExecutor(_threads()) as pool:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; a shard set is meant to be shared
        for split in SPLITS:
            chosen = _split_order(entries, split_of, split, seed)
            (tmp / split).mkdir()
            shards = []
            for s, start in enumerate(range(0, len(chosen), shard_size)):
                part = chosen[start : start + shard_size]
                images = list(pool.map(lambda e: e.load(), part))
                rel = f"{split}/shard-{s:05d}.npz"
                write_npz(tmp / rel, _shard_arrays(part, images, store_clean))
                shards.append(rel)
                if split == "train":
                    for kind, col in (("sem", 0), ("layout", 1)):
                        described[kind] += pool.map(describe, [im[col] for im in images])
                    train_polarity += [e.polarity for e in part]
                bar.update(len(part))
            index["splits"][split] = _split_summary(chosen, shards)
        bar.close()
        if not described["sem"]:
            raise SemlayoutError("no pairs in the train split")
        write_reference(tmp, reference_doc(described["sem"], described["layout"], train_polarity))
        (tmp / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    return index


def _split_order(
    entries: list[Entry], split_of: dict[str, str], split: str, seed: int
) -> list[Entry]:
    """The entries of `split`, shuffled so each shard mixes families (streaming readers see a
    fair sample); the order depends only on the ids and the seed."""
    chosen = sorted((e for e in entries if split_of[e.id] == split), key=lambda e: e.id)
    rng = np.random.default_rng([seed, SPLITS.index(split), 7])
    return [chosen[i] for i in rng.permutation(len(chosen))]


def _split_summary(chosen: list[Entry], shards: list[str]) -> dict[str, Any]:
    return {
        "n": len(chosen),
        "shards": shards,
        "families": dict(sorted(Counter(e.family for e in chosen).items())),
        "sources": dict(sorted(Counter(e.source for e in chosen).items())),
        "polarity": polarity_counts(e.polarity for e in chosen),
    }


def _shard_arrays(
    entries: list[Entry], images: list[Images], store_clean: bool
) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {
        "ids": np.array([e.id for e in entries], dtype=str),
        "families": np.array([e.family for e in entries], dtype=str),
        "sources": np.array([e.source for e in entries], dtype=str),
        "polarity": np.array([e.polarity for e in entries], dtype=np.int8),
        "sem": np.stack([im[0] for im in images]),
        "layout": np.stack([im[1] for im in images]),
    }
    if store_clean:
        mask = np.array([im[2] is not None for im in images], dtype=bool)
        zero = np.zeros(TEMPLATE_SHAPE, np.uint8)
        arrays["clean"] = np.stack([im[2] if im[2] is not None else zero for im in images])
        if not mask.all():
            arrays["clean_mask"] = mask
    return arrays


def _threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


# ----------------------------------------------------------------------------- reading shards


def _split_info(
    index: dict[str, Any], split: str, shards_dir: str | os.PathLike[str]
) -> dict[str, Any]:
    if split not in SPLITS:
        raise SemlayoutError(f"unknown split '{split}': expected one of {', '.join(SPLITS)}")
    info: dict[str, Any] = index["splits"][split]
    if info["n"] == 0:
        raise SemlayoutError(f"split '{split}' of {shards_dir} has no pairs")
    return info


def iter_split(
    shards_dir: str | os.PathLike[str],
    split: str,
    source: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Stream the records of a split, one shard in memory at a time.

    Each record: {"id", "family", "source", "polarity", "sem", "layout"[, "clean"]} with
    (250, 250) uint8 images; polarity +1 / -1 (+1 in shards written before it was recorded).
    `source` keeps only the records of that source name (see index["sources"]).
    """
    index = read_index(shards_dir)
    info = _split_info(index, split, shards_dir)
    for rel in info["shards"]:
        data = npz_members(Path(shards_dir) / rel)  # memory-mapped: one shard's pages at a time
        n = len(data["ids"])
        srcs = data["sources"] if "sources" in data else np.array([""] * n)
        pols = data.get("polarity")
        mask = data.get("clean_mask")
        for i in range(n):
            if source is not None and srcs[i] != source:
                continue
            rec: dict[str, Any] = {
                "id": str(data["ids"][i]),
                "family": str(data["families"][i]),
                "source": str(srcs[i]),
                "polarity": int(pols[i]) if pols is not None else UNKNOWN_READS_AS,
                "sem": np.array(data["sem"][i]),
                "layout": np.array(data["layout"][i]),
            }
            if "clean" in data and (mask is None or mask[i]):
                rec["clean"] = np.array(data["clean"][i])
            yield rec


def load_split_arrays(
    shards_dir: str | os.PathLike[str],
    split: str,
    source: str | None = None,
) -> dict[str, np.ndarray]:
    """A whole split stacked: ids, families, sources (N,) str; polarity (N,) int8;
    sem, layout[, clean] (N,250,250) uint8.

    `clean` is present only when every selected pair has a clean image.
    """
    recs = list(iter_split(shards_dir, split, source))
    if not recs:
        raise SemlayoutError(f"split '{split}' of {shards_dir} has no pairs from source '{source}'")
    out: dict[str, np.ndarray] = {
        "ids": np.array([r["id"] for r in recs], dtype=str),
        "families": np.array([r["family"] for r in recs], dtype=str),
        "sources": np.array([r["source"] for r in recs], dtype=str),
        "polarity": np.array([r["polarity"] for r in recs], dtype=np.int8),
        "sem": np.stack([r["sem"] for r in recs]),
        "layout": np.stack([r["layout"] for r in recs]),
    }
    if all("clean" in r for r in recs):
        out["clean"] = np.stack([r["clean"] for r in recs])
    return out
