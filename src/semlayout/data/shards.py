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
import functools
import io
import json
import os
import zipfile
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from semlayout.atomic import atomic_dir, check_not_over_inputs
from semlayout.data.pairs import (
    TEMPLATE_SHAPE,
    PairRecord,
    check_binary_layout,
    read_gray8,
    read_manifest,
)
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


Images = tuple[np.ndarray, np.ndarray, "np.ndarray | None"]  # sem, layout, clean: (250, 250) uint8


@dataclass
class _Entry:
    """One pair to shard; its images are read only when its shard is written (bounded memory)."""

    id: str
    family: str
    source: str
    has_clean: bool
    load: Callable[[], Images]


SourceLike = str | os.PathLike[str] | ShardSource | tuple[str | os.PathLike[str], int | None]


# ----------------------------------------------------------------------------- reading inputs


def _as_sources(
    aligned: SourceLike | Sequence[SourceLike], max_per_source: int | None
) -> list[ShardSource]:
    single = isinstance(aligned, str | os.PathLike | ShardSource) or (
        isinstance(aligned, tuple)
        and len(aligned) == 2
        and (aligned[1] is None or isinstance(aligned[1], int))
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
            raise SemlayoutError(
                f"max pairs per source must be a positive integer, got {max_n!r} for {src.path}"
            )
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
    return {
        r["id"]
        for r in rows
        if str(r.get("qc_pass", "true")).strip().lower() in ("false", "0", "no")
    }


def _load_pair(rec: PairRecord, folder: Path, has_alignment: bool) -> Images:
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
    layout = read_gray8(rec.layout_path, TEMPLATE_SHAPE)
    if cv2.countNonZero(cv2.inRange(layout, 1, 254)):  # fast test; the slow one words the error
        check_binary_layout(layout, str(rec.layout_path))
    clean = read_gray8(rec.clean_path, TEMPLATE_SHAPE) if rec.clean_path is not None else None
    return sem, layout, clean


def _pair_folder_entries(folder: Path, name: str) -> list[_Entry]:
    has_alignment = (folder / "alignment.csv").is_file()
    failed = _qc_failed_ids(folder) if has_alignment else set()
    return [
        _Entry(
            rec.id,
            rec.pattern_type,
            name,
            rec.clean_path is not None,
            functools.partial(_load_pair, rec, folder, has_alignment),
        )
        for rec in read_manifest(folder)
        if rec.id not in failed
    ]


def _load_shard_row(members: dict[str, np.ndarray], row: int) -> Images:
    clean = None
    if "clean" in members and ("clean_mask" not in members or members["clean_mask"][row]):
        clean = np.array(members["clean"][row])
    return np.array(members["sem"][row]), np.array(members["layout"][row]), clean


def _shard_set_entries(folder: Path, name: str) -> list[_Entry]:
    """The TRAIN split of an existing shard set (memory-mapped, rows read on demand)."""
    index = read_index(folder)
    out: list[_Entry] = []
    for rel in index["splits"]["train"]["shards"]:
        members = npz_members(folder / rel)
        has_clean = "clean" in members
        mask = members.get("clean_mask")
        for row, (pid, fam) in enumerate(
            zip(members["ids"].tolist(), members["families"].tolist(), strict=True)
        ):
            clean_here = has_clean and (mask is None or bool(mask[row]))
            out.append(
                _Entry(pid, fam, name, clean_here, functools.partial(_load_shard_row, members, row))
            )
    return out


def _sample(entries: list[_Entry], max_n: int | None, seed: int, position: int) -> list[_Entry]:
    """A deterministic random sample of `max_n` entries (all of them when max_n is None)."""
    if max_n is None or max_n >= len(entries):
        return entries
    ordered = sorted(entries, key=lambda e: e.id)
    rng = np.random.default_rng([seed, position, 1])
    return [ordered[i] for i in sorted(rng.choice(len(ordered), size=max_n, replace=False))]


def _collect_entries(
    sources: list[ShardSource], seed: int
) -> tuple[list[_Entry], list[dict[str, Any]]]:
    entries: list[_Entry] = []
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
        available = (_shard_set_entries if is_shards else _pair_folder_entries)(folder, src.name)
        chosen = _sample(available, src.max_n, seed, k)
        # ids must be unique across sources: a clash gets a source prefix, deterministically
        renamed = 0
        for e in chosen:
            if e.id in seen:
                e.id = f"s{k}-{e.id}"
                renamed += 1
            seen.add(e.id)
        entries += chosen
        summary.append(
            {
                "name": src.name,
                "path": str(folder),
                "kind": "shards" if is_shards else "pairs",
                "n_available": len(available),
                "n_used": len(chosen),
                "max_n": src.max_n,
                "renamed_ids": renamed,
            }
        )
    if not entries:
        raise SemlayoutError(
            "no pairs to shard: "
            + ", ".join(f"{s['path']} ({s['n_available']} usable)" for s in summary)
        )
    return entries, summary


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
    keys: Sequence[tuple[str, str, str]],
    val: float,
    test: float,
    seed: int,
) -> dict[str, str]:
    """Map each id to a split. keys: (id, family, source). Stratified by (source, family).

    Each (source, family) group is shuffled by a generator seeded with (seed, family), so adding
    a family does not reshuffle another and a folder's name plays no part; each group is cut
    by `split_counts`. Then a family with >= 3 pairs in total that still misses a split
    (possible only when it is spread thinly across sources) gets a train pair moved there.
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


def _shard_arrays(
    entries: list[_Entry], images: list[Images], store_clean: bool
) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {
        "ids": np.array([e.id for e in entries], dtype=str),
        "families": np.array([e.family for e in entries], dtype=str),
        "sources": np.array([e.source for e in entries], dtype=str),
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


def _describe(img: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
    from semlayout.data.features import HISTOGRAM_BINS, histogram, image_features

    return image_features(img), histogram(img, HISTOGRAM_BINS)


def _stats_block(described: list[tuple[dict[str, float], np.ndarray]]) -> dict[str, Any]:
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


def _reference_doc(
    sem: list[tuple[dict[str, float], np.ndarray]],
    layout: list[tuple[dict[str, float], np.ndarray]],
) -> dict[str, Any]:
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


def reference_stats(sem: Sequence[np.ndarray], layout: Sequence[np.ndarray]) -> dict[str, Any]:
    """The drift reference (`reference_stats.json` content) of a set of training images."""
    return _reference_doc([_describe(im) for im in sem], [_describe(im) for im in layout])


def _threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def write_shards(
    aligned_dir: SourceLike | Sequence[SourceLike],
    out_dir: str | os.PathLike[str],
    val: float = 0.1,
    test: float = 0.2,
    seed: int = 0,
    shard_size: int = 256,
    max_per_source: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Shard one or more aligned folders (or shard sets) into `out_dir`; returns the index dict.

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
    sources = _as_sources(aligned_dir, max_per_source)
    for src in sources:
        check_not_over_inputs(out_dir, input=src.path)
    entries, source_summary = _collect_entries(sources, seed)
    split_of = assign_splits([(e.id, e.family, e.source) for e in entries], val, test, seed)
    try:
        return _write(
            entries, source_summary, split_of, Path(out_dir), val, test, seed, shard_size, progress
        )
    except (PermissionError, NotADirectoryError, FileExistsError) as err:
        raise SemlayoutError(f"cannot write {out_dir}: {err.strerror or err}") from None


def _write(
    entries: list[_Entry],
    source_summary: list[dict[str, Any]],
    split_of: dict[str, str],
    out_dir: Path,
    val: float,
    test: float,
    seed: int,
    shard_size: int,
    progress: bool,
) -> dict[str, Any]:
    n_clean = sum(e.has_clean for e in entries)
    index: dict[str, Any] = {
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
    }
    described: dict[str, list[tuple[dict[str, float], np.ndarray]]] = {"sem": [], "layout": []}
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
            chosen = sorted((e for e in entries if split_of[e.id] == split), key=lambda e: e.id)
            # shuffle so each shard mixes families (streaming readers see a fair sample)
            rng = np.random.default_rng([seed, SPLITS.index(split), 7])
            chosen = [chosen[i] for i in rng.permutation(len(chosen))]
            (tmp / split).mkdir()
            shards = []
            for s, start in enumerate(range(0, len(chosen), shard_size)):
                part = chosen[start : start + shard_size]
                images = list(pool.map(lambda e: e.load(), part))
                rel = f"{split}/shard-{s:05d}.npz"
                _write_npz(tmp / rel, _shard_arrays(part, images, n_clean > 0))
                shards.append(rel)
                if split == "train":
                    for kind, col in (("sem", 0), ("layout", 1)):
                        described[kind] += pool.map(_describe, [im[col] for im in images])
                bar.update(len(part))
            index["splits"][split] = {
                "n": len(chosen),
                "shards": shards,
                "families": dict(sorted(Counter(e.family for e in chosen).items())),
                "sources": dict(sorted(Counter(e.source for e in chosen).items())),
            }
        bar.close()
        if not described["sem"]:
            raise SemlayoutError("no pairs in the train split")
        stats = _reference_doc(described["sem"], described["layout"])
        (tmp / "reference_stats.json").write_text(json.dumps(stats) + "\n")
        (tmp / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    return index


def npz_members(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Memory-map the integer arrays of an uncompressed .npz (the others are read).

    Members of an uncompressed zip are contiguous in the file: parse the local file header
    and the .npy header, then map the data. Compressed members fall back to np.load.
    """
    path = Path(path)
    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, EOFError) as err:
        raise SemlayoutError(
            f"shard {path} is corrupt or truncated ({err}); re-create it with `semlayout shard`"
        ) from None
    with open(path, "rb") as f:
        for info in infos:
            key = info.filename.removesuffix(".npy")
            version = None
            if info.compress_type == zipfile.ZIP_STORED:
                # local file header: 30 bytes + name + extra, then the .npy bytes
                f.seek(info.header_offset + 26)
                name_len, extra_len = np.frombuffer(f.read(4), dtype="<u2")
                f.seek(info.header_offset + 30 + int(name_len) + int(extra_len))
                version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                with np.load(path, allow_pickle=False) as z:
                    out[key] = z[key]
                continue
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(f)
            if dtype.hasobject:
                raise SemlayoutError(f"{path}: member {key} holds Python objects; shards must not")
            if dtype.kind in "uib" and not fortran:
                out[key] = np.memmap(path, dtype=dtype, mode="r", offset=f.tell(), shape=shape)
            else:  # small string arrays: read them
                count = int(np.prod(shape)) if shape else 1
                arr = np.frombuffer(f.read(count * dtype.itemsize), dtype=dtype)
                out[key] = arr.reshape(shape, order="F" if fortran else "C")
    return out


# ----------------------------------------------------------------------------- reading shards


def _index_path(shards_dir: str | os.PathLike[str]) -> Path:
    d = Path(shards_dir)
    if not d.is_dir():
        raise SemlayoutError(f"shard folder not found: {d}")
    p = d / "index.json"
    if not p.is_file():
        raise SemlayoutError(
            f"{d} is not a shard set: index.json is missing (make one with `semlayout shard`)"
        )
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
        if (
            not isinstance(info, dict)
            or not isinstance(info.get("shards"), list)
            or not isinstance(info.get("n"), int)
        ):
            raise SemlayoutError(
                f"{p}: split '{split}' is missing or malformed (needs n and shards)"
            )
        for rel in info["shards"]:
            if not isinstance(rel, str) or rel.startswith(("/", "\\")) or ".." in Path(rel).parts:
                raise SemlayoutError(
                    f"{p}: shard path {rel!r} must be relative inside the shard folder"
                )
            if not (p.parent / rel).is_file():
                raise SemlayoutError(f"{p}: shard file {rel} of split '{split}' is missing")
    if sum(splits[s]["n"] for s in SPLITS) == 0:
        raise SemlayoutError(f"{p}: the shard set is empty (0 pairs in every split)")
    return index


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

    Each record: {"id", "family", "source", "sem", "layout"[, "clean"]} with (250, 250) uint8 images.
    `source` keeps only the records of that source name (see index["sources"]).
    """
    index = read_index(shards_dir)
    info = _split_info(index, split, shards_dir)
    for rel in info["shards"]:
        data = npz_members(Path(shards_dir) / rel)  # memory-mapped: one shard's pages at a time
        n = len(data["ids"])
        srcs = data["sources"] if "sources" in data else np.array([""] * n)
        mask = data.get("clean_mask")
        for i in range(n):
            if source is not None and srcs[i] != source:
                continue
            rec: dict[str, Any] = {
                "id": str(data["ids"][i]),
                "family": str(data["families"][i]),
                "source": str(srcs[i]),
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
        raise SemlayoutError(
            f"{p}: feature_names do not match {list(FEATURE_NAMES)}; re-run `semlayout shard`"
        )
    for kind in ("sem", "layout"):
        block = stats.get(kind)
        if not isinstance(block, dict) or not all(
            k in block for k in ("mean", "std", "histogram", "features")
        ):
            raise SemlayoutError(
                f"{p}: '{kind}' block missing or incomplete (needs mean, std, histogram, features)"
            )
    return stats
