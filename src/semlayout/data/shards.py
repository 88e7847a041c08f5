"""Shards: aligned pairs -> stratified train/val/test .npz shards + the drift reference.

```
SHARDS/index.json               format, seed, splits {n, shards, families, sources}, families, has_clean, source
SHARDS/<split>/shard-NNNNN.npz  uncompressed: ids, families, sources (N,) str; sem, layout[, clean] (N,250,250) uint8
                                [, clean_mask (N,) bool when only some pairs have a clean image]
SHARDS/reference_stats.json     per-image features + mean/std + mean histogram of the TRAIN split (sem and layout)
```
Splitting is stratified by `pattern_type` (and by source when several folders are
mixed): a family with >= 3 pairs appears in every split, however rare; families
with 1-2 pairs go to train only. The split depends only on the ids, families and
the seed, not on manifest order. Shards are written with fixed zip timestamps, so
the same input and seed give byte-identical files.

Sources: a pair folder whose SEMs are 250x250 (an aligned folder: pair folder +
`alignment.csv`, or a plain pair folder already at 250x250), or an existing shard
set (its TRAIN split is used, so a fine-tune replay sample never leaks the
original test pairs). Each source may be capped (`max_n`): a deterministic
random sample, e.g. the replay sample of the original data mixed with newly
reviewed pairs. Every record keeps the name of its source.
"""

from __future__ import annotations

import csv
import io
import json
import os
import zipfile
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semlayout.atomic import atomic_dir
from semlayout.data.pairs import TEMPLATE_SHAPE, check_binary_layout, read_gray8, read_manifest
from semlayout.errors import SemlayoutError

FORMAT = "semlayout-shards/1"
SPLITS = ("train", "val", "test")
IMAGE_SIZE = TEMPLATE_SHAPE[0]  # 250: aligned SEMs, clean images and templates
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed timestamp: byte-identical shards for the same input


@dataclass(frozen=True)
class ShardSource:
    """One input of `write_shards`: a folder, an optional cap on its pairs, a name kept per record."""

    path: Path
    max_n: int | None = None
    name: str | None = None


@dataclass
class _Record:
    id: str
    family: str
    source: str
    sem: np.ndarray
    layout: np.ndarray
    clean: np.ndarray | None


SourceLike = str | os.PathLike[str] | ShardSource | tuple[str | os.PathLike[str], int | None]


# ----------------------------------------------------------------------------- reading inputs

def _as_sources(aligned: SourceLike | Sequence[SourceLike], max_per_source: int | None) -> list[ShardSource]:
    single = isinstance(aligned, str | os.PathLike | ShardSource) or (
        isinstance(aligned, tuple) and len(aligned) == 2 and (aligned[1] is None or isinstance(aligned[1], int))
    )
    items: list[Any] = [aligned] if single else list(aligned)  # type: ignore[arg-type]
    if not items:
        raise SemlayoutError("no input folder given: expected one or more aligned pair folders")
    sources: list[ShardSource] = []
    used: Counter[str] = Counter()
    for item in items:
        if isinstance(item, ShardSource):
            src = item
        elif isinstance(item, tuple):
            src = ShardSource(Path(item[0]), item[1])
        else:
            src = ShardSource(Path(item))
        max_n = src.max_n if src.max_n is not None else max_per_source
        if max_n is not None and (not isinstance(max_n, int) or max_n < 1):
            raise SemlayoutError(f"max pairs per source must be a positive integer, got {max_n!r} for {src.path}")
        name = src.name or Path(src.path).resolve().name or "source"
        used[name] += 1
        if used[name] > 1:
            name = f"{name}-{used[name]}"
        sources.append(ShardSource(Path(src.path), max_n, name))
    return sources


def _qc_failed_ids(folder: Path) -> set[str]:
    """Ids that `alignment.csv` marks qc_pass=false (the aligner leaves them out anyway)."""
    path = folder / "alignment.csv"
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    except (OSError, UnicodeDecodeError) as err:
        raise SemlayoutError(f"{path}: cannot read alignment table ({err})") from None
    if rows and "id" not in rows[0]:
        raise SemlayoutError(f"{path}: no 'id' column; expected id,x,y,score,qc_pass,reason")
    return {r["id"] for r in rows if str(r.get("qc_pass", "true")).strip().lower() in ("false", "0", "no")}


def _read_pair_folder(folder: Path, name: str, keep: set[str] | None = None) -> list[_Record]:
    records = read_manifest(folder)
    has_alignment = (folder / "alignment.csv").is_file()
    failed = _qc_failed_ids(folder) if has_alignment else set()
    out: list[_Record] = []
    for rec in records:
        if rec.id in failed or (keep is not None and rec.id not in keep):
            continue
        sem = read_gray8(rec.sem_path)
        if sem.shape != TEMPLATE_SHAPE:
            if not has_alignment:
                raise SemlayoutError(
                    f"{rec.sem_path}: SEM is {sem.shape[1]}x{sem.shape[0]} px and {folder} has no "
                    f"alignment.csv: expected an aligned folder (run `semlayout align` first) or "
                    f"SEMs already {TEMPLATE_SHAPE[1]}x{TEMPLATE_SHAPE[0]}"
                )
            raise SemlayoutError(
                f"{rec.sem_path}: aligned SEM must be {TEMPLATE_SHAPE[1]}x{TEMPLATE_SHAPE[0]} px, "
                f"got {sem.shape[1]}x{sem.shape[0]}"
            )
        layout = check_binary_layout(read_gray8(rec.layout_path, TEMPLATE_SHAPE), str(rec.layout_path))
        clean = read_gray8(rec.clean_path, TEMPLATE_SHAPE) if rec.clean_path is not None else None
        out.append(_Record(rec.id, rec.pattern_type, name, sem, layout, clean))
    return out


def _read_shard_source(folder: Path, name: str, keep: set[str] | None = None) -> list[_Record]:
    out = []
    for r in iter_split(folder, "train"):
        if keep is None or r["id"] in keep:
            out.append(_Record(r["id"], r["family"], name, r["sem"], r["layout"], r.get("clean")))
    return out


def _list_ids(folder: Path) -> list[tuple[str, str]]:
    """(id, family) of every usable pair of a source, without reading images."""
    if (folder / "index.json").is_file():
        index = read_index(folder)
        pairs = []
        for rel in index["splits"]["train"]["shards"]:
            with np.load(folder / rel, allow_pickle=False) as z:
                pairs += list(zip(z["ids"].tolist(), z["families"].tolist(), strict=True))
        return pairs
    failed = _qc_failed_ids(folder) if (folder / "alignment.csv").is_file() else set()
    return [(r.id, r.pattern_type) for r in read_manifest(folder) if r.id not in failed]


def _sample_ids(pairs: list[tuple[str, str]], max_n: int | None, seed: int, position: int) -> set[str] | None:
    """A deterministic random sample of `max_n` ids (None: keep all)."""
    if max_n is None or max_n >= len(pairs):
        return None
    ids = sorted(p[0] for p in pairs)
    rng = np.random.default_rng([seed, position, 1])
    return {ids[i] for i in rng.choice(len(ids), size=max_n, replace=False)}


def _load_sources(sources: list[ShardSource], seed: int) -> tuple[list[_Record], list[dict[str, Any]]]:
    records: list[_Record] = []
    summary: list[dict[str, Any]] = []
    seen: set[str] = set()
    for k, src in enumerate(sources):
        folder = Path(src.path)
        if not folder.is_dir():
            raise SemlayoutError(f"input folder not found: {folder}")
        is_shards = (folder / "index.json").is_file()
        if not is_shards and not (folder / "manifest.csv").is_file():
            raise SemlayoutError(
                f"{folder} is neither an aligned pair folder (manifest.csv + alignment.csv) nor a shard set (index.json)"
            )
        assert src.name is not None
        available = _list_ids(folder)
        keep = _sample_ids(available, src.max_n, seed, k)
        reader = _read_shard_source if is_shards else _read_pair_folder
        recs = reader(folder, src.name, keep)
        # ids must be unique across sources: a clash gets a source prefix, deterministically
        renamed = 0
        for r in recs:
            if r.id in seen:
                r.id = f"s{k}-{r.id}"
                renamed += 1
            seen.add(r.id)
        records += recs
        summary.append({
            "name": src.name, "path": str(folder), "kind": "shards" if is_shards else "pairs",
            "n_available": len(available), "n_used": len(recs), "max_n": src.max_n, "renamed_ids": renamed,
        })
    if not records:
        raise SemlayoutError(
            "no pairs to shard: " + ", ".join(f"{s['path']} ({s['n_available']} usable)" for s in summary)
        )
    return records, summary


# ----------------------------------------------------------------------------- splitting

def split_counts(n: int, val: float, test: float) -> tuple[int, int, int]:
    """(train, val, test) sizes of one family of n pairs; n >= 3 puts >= 1 in each split asked for."""
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
    keys: Sequence[tuple[str, str, str]], val: float, test: float, seed: int,
) -> dict[str, str]:
    """Map each id to a split. keys: (id, family, source). Stratified by (source, family).

    Each (source, family) group is shuffled by a generator seeded with (seed, family), so adding
    a family does not reshuffle another and the folder's name plays no part, and cut by `split_counts`. Then a family with >= 3 pairs in
    total that still misses a split (possible only when spread thinly across sources) gets
    one pair moved there from its largest train group.
    """
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for pid, fam, src in keys:
        groups[(src, fam)].append(pid)
    out: dict[str, str] = {}
    for (_src, fam), ids in sorted(groups.items()):
        ids = sorted(ids)
        # seeded by family only: renaming or moving a folder must not change its split
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


# ----------------------------------------------------------------------------- writing

def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Uncompressed .npz (np.load reads it) with fixed timestamps, so it is byte-reproducible."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, arr in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_STORED
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)


def _shard_arrays(recs: list[_Record], store_clean: bool) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {
        "ids": np.array([r.id for r in recs], dtype=str),
        "families": np.array([r.family for r in recs], dtype=str),
        "sources": np.array([r.source for r in recs], dtype=str),
        "sem": np.stack([r.sem for r in recs]),
        "layout": np.stack([r.layout for r in recs]),
    }
    if store_clean:
        mask = np.array([r.clean is not None for r in recs], dtype=bool)
        zero = np.zeros(TEMPLATE_SHAPE, np.uint8)
        arrays["clean"] = np.stack([r.clean if r.clean is not None else zero for r in recs])
        if not mask.all():
            arrays["clean_mask"] = mask
    return arrays


def _stats_block(images: list[np.ndarray]) -> dict[str, Any]:
    from semlayout.data.features import FEATURE_NAMES, HISTOGRAM_BINS, features_table, histogram

    table = features_table(images)
    hist = np.mean([histogram(im, HISTOGRAM_BINS) for im in images], axis=0)
    return {
        "n": len(images),
        # population std (ddof=0) of the per-image values
        "mean": {f: float(np.mean(table[f])) for f in FEATURE_NAMES},
        "std": {f: float(np.std(table[f])) for f in FEATURE_NAMES},
        "histogram": [float(v) for v in hist / hist.sum()],
        "features": {f: table[f] for f in FEATURE_NAMES},
    }


def reference_stats(sem: list[np.ndarray], layout: list[np.ndarray]) -> dict[str, Any]:
    """The drift reference (`reference_stats.json` content) of a set of training images."""
    from semlayout.data.features import FEATURE_NAMES, HISTOGRAM_BINS

    if not sem:
        raise SemlayoutError("reference statistics need at least one training image")
    return {
        "format": "semlayout-reference/1",
        "feature_names": list(FEATURE_NAMES),
        "histogram_bins": HISTOGRAM_BINS,
        "split": "train",
        "sem": _stats_block(sem),
        "layout": _stats_block(layout),
    }


def write_shards(
    aligned_dir: SourceLike | Sequence[SourceLike],
    out_dir: str | os.PathLike[str],
    val: float = 0.1,
    test: float = 0.2,
    seed: int = 0,
    shard_size: int = 256,
    max_per_source: int | None = None,
) -> dict[str, Any]:
    """Shard one or more aligned folders (or shard sets) into `out_dir`; returns the index dict.

    `aligned_dir`: a path, a `(path, max_n)` tuple, a `ShardSource`, or a list of them.
    `max_per_source` caps every source that has no cap of its own (deterministic sample by seed).
    """
    for what, frac in (("val", val), ("test", test)):
        if not isinstance(frac, int | float) or not 0 <= frac < 1:
            raise SemlayoutError(f"--{what} must be a fraction in [0, 1), got {frac!r}")
    if val + test >= 1:
        raise SemlayoutError(f"--val + --test must leave pairs for training, got {val} + {test} >= 1")
    if not isinstance(shard_size, int) or shard_size < 1:
        raise SemlayoutError(f"--shard-size must be a positive integer, got {shard_size!r}")
    sources = _as_sources(aligned_dir, max_per_source)
    records, source_summary = _load_sources(sources, seed)
    split_of = assign_splits([(r.id, r.family, r.source) for r in records], val, test, seed)

    n_clean = sum(r.clean is not None for r in records)
    has_clean = n_clean == len(records)
    index: dict[str, Any] = {
        "format": FORMAT,
        "seed": seed,
        "image_size": IMAGE_SIZE,
        "val": val,
        "test": test,
        "shard_size": shard_size,
        "splits": {},
        "families": sorted({r.family for r in records}),
        "has_clean": has_clean,
        "n_clean": n_clean,
        "source": ";".join(s["path"] for s in source_summary),
        "sources": source_summary,
    }
    with atomic_dir(out_dir) as tmp:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; a shard set is meant to be shared
        train_recs: list[_Record] = []
        for split in SPLITS:
            recs = sorted((r for r in records if split_of[r.id] == split), key=lambda r: r.id)
            # shuffle so each shard mixes families (streaming readers see a fair sample)
            rng = np.random.default_rng([seed, SPLITS.index(split), 7])
            recs = [recs[i] for i in rng.permutation(len(recs))]
            if split == "train":
                train_recs = recs
            shards = []
            for s, start in enumerate(range(0, len(recs), shard_size)):
                rel = f"{split}/shard-{s:05d}.npz"
                _write_npz(tmp / rel, _shard_arrays(recs[start:start + shard_size], n_clean > 0))
                shards.append(rel)
            (tmp / split).mkdir(exist_ok=True)
            index["splits"][split] = {
                "n": len(recs),
                "shards": shards,
                "families": dict(sorted(Counter(r.family for r in recs).items())),
                "sources": dict(sorted(Counter(r.source for r in recs).items())),
            }
        if not train_recs:
            raise SemlayoutError("no pairs in the train split")
        stats = reference_stats([r.sem for r in train_recs], [r.layout for r in train_recs])
        (tmp / "reference_stats.json").write_text(json.dumps(stats) + "\n")
        (tmp / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    return index


# ----------------------------------------------------------------------------- reading shards

def _index_path(shards_dir: str | os.PathLike[str]) -> Path:
    d = Path(shards_dir)
    if not d.is_dir():
        raise SemlayoutError(f"shard folder not found: {d}")
    p = d / "index.json"
    if not p.is_file():
        raise SemlayoutError(f"{d} is not a shard set: index.json is missing (make one with `semlayout shard`)")
    return p


def read_index(shards_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and validate `index.json`: format, the three splits, shard files present, not empty."""
    p = _index_path(shards_dir)
    try:
        index = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SemlayoutError(f"{p}: not valid JSON ({err})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        got = index.get("format") if isinstance(index, dict) else type(index).__name__
        raise SemlayoutError(f"{p}: format is {got!r}, expected {FORMAT!r}")
    splits = index.get("splits")
    if not isinstance(splits, dict):
        raise SemlayoutError(f"{p}: 'splits' is missing; expected {{train, val, test}}")
    for split in SPLITS:
        info = splits.get(split)
        if not isinstance(info, dict) or not isinstance(info.get("shards"), list) or not isinstance(info.get("n"), int):
            raise SemlayoutError(f"{p}: split '{split}' is missing or malformed (needs n and shards)")
        for rel in info["shards"]:
            if not isinstance(rel, str) or rel.startswith(("/", "\\")) or ".." in Path(rel).parts:
                raise SemlayoutError(f"{p}: shard path {rel!r} must be relative inside the shard folder")
            if not (p.parent / rel).is_file():
                raise SemlayoutError(f"{p}: shard file {rel} of split '{split}' is missing")
    if sum(splits[s]["n"] for s in SPLITS) == 0:
        raise SemlayoutError(f"{p}: the shard set is empty (0 pairs in every split)")
    return index


def _split_info(index: dict[str, Any], split: str, shards_dir: str | os.PathLike[str]) -> dict[str, Any]:
    if split not in SPLITS:
        raise SemlayoutError(f"unknown split '{split}': expected one of {', '.join(SPLITS)}")
    info: dict[str, Any] = index["splits"][split]
    if info["n"] == 0:
        raise SemlayoutError(f"split '{split}' of {shards_dir} has no pairs")
    return info


def iter_split(
    shards_dir: str | os.PathLike[str], split: str, source: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Stream the records of a split, one shard in memory at a time.

    Each record: {"id", "family", "source", "sem", "layout"[, "clean"]} with (250, 250) uint8 images.
    `source` keeps only the records of that source name (see index["sources"]).
    """
    index = read_index(shards_dir)
    info = _split_info(index, split, shards_dir)
    for rel in info["shards"]:
        with np.load(Path(shards_dir) / rel, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        n = len(data["ids"])
        srcs = data["sources"] if "sources" in data else np.array([""] * n)
        mask = data.get("clean_mask")
        for i in range(n):
            if source is not None and srcs[i] != source:
                continue
            rec: dict[str, Any] = {
                "id": str(data["ids"][i]), "family": str(data["families"][i]), "source": str(srcs[i]),
                "sem": data["sem"][i], "layout": data["layout"][i],
            }
            if "clean" in data and (mask is None or mask[i]):
                rec["clean"] = data["clean"][i]
            yield rec


def load_split_arrays(
    shards_dir: str | os.PathLike[str], split: str, source: str | None = None,
) -> dict[str, np.ndarray]:
    """A whole split stacked: ids, families, sources (N,) str; sem, layout[, clean] (N,250,250) uint8.

    `clean` is present only when every selected pair has a clean image.
    """
    recs = list(iter_split(shards_dir, split, source))
    if not recs:
        raise SemlayoutError(f"split '{split}' of {shards_dir} has no pairs from source '{source}'")
    out: dict[str, np.ndarray] = {
        "ids": np.array([r["id"] for r in recs], dtype=str),
        "families": np.array([r["family"] for r in recs], dtype=str),
        "sources": np.array([r["source"] for r in recs], dtype=str),
        "sem": np.stack([r["sem"] for r in recs]),
        "layout": np.stack([r["layout"] for r in recs]),
    }
    if all("clean" in r for r in recs):
        out["clean"] = np.stack([r["clean"] for r in recs])
    return out


def load_reference_stats(shards_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Load `reference_stats.json` from a shard folder (or the file itself) and check its shape."""
    from semlayout.data.features import FEATURE_NAMES

    p = Path(shards_dir)
    if p.is_dir():
        p = p / "reference_stats.json"
    if not p.is_file():
        raise SemlayoutError(f"reference statistics not found: {p} (written by `semlayout shard`)")
    try:
        stats = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SemlayoutError(f"{p}: not valid JSON ({err})") from None
    if not isinstance(stats, dict) or stats.get("feature_names") != list(FEATURE_NAMES):
        raise SemlayoutError(f"{p}: feature_names do not match {list(FEATURE_NAMES)}; re-run `semlayout shard`")
    for kind in ("sem", "layout"):
        block = stats.get(kind)
        if not isinstance(block, dict) or not all(k in block for k in ("mean", "std", "histogram", "features")):
            raise SemlayoutError(f"{p}: '{kind}' block missing or incomplete (needs mean, std, histogram, features)")
    return stats
