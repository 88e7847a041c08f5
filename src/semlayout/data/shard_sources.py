"""What `write_shards` shards: its inputs, read into entries whose images load on demand.

A source is a pair folder whose SEMs are 250x250 (an aligned folder: pair folder +
`alignment.csv`, or a plain pair folder already at 250x250), or an existing shard
set (its TRAIN split is used, so a fine-tune replay sample never leaks the original
test pairs). Each source may be capped (`max_n`): a deterministic random sample,
e.g. the replay sample of the original data mixed with newly reviewed pairs. Every
entry keeps the name of its source; an id that clashes with an earlier source's gets
the prefix `s<k>-`.

Each entry also carries its contrast polarity (+1 / -1, `semlayout.polarity`) and where it
came from (`polarity_source`). One rule, first found wins:
1. what the data declares: an aligned folder's `declared_polarity` column (the aligner keeps
   its input manifest's own `polarity` there, e.g. the physics synth drew), or the `polarity`
   column of a folder that was not aligned (no `alignment.csv`: synth at 250 px, collected
   reviewed pairs) -> `declared` (or the folder's own `polarity_source`, when it writes one);
2. the aligner's estimate: an aligned folder's manifest `polarity` column, with the
   aligner's `polarity_source` (`pair`: the pair's own fit, `prior`: the data set's
   polarity), or `alignment.csv`'s `polarity` column -> `alignment`;
3. a shard set's `polarity` array -> `shards`;
4. otherwise +1, counted as `assumed` (data made before polarity was recorded was bright).
So a synthetic set trains on the polarity it was drawn with, and real data (which declares
none) on the aligner's.
"""

from __future__ import annotations

import functools
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from semlayout.data.alignment_table import (
    ALIGNMENT_FILE,
    DECLARED_POLARITY,
    failed_ids,
    read_alignment_table,
)
from semlayout.data.pairs import (
    TEMPLATE_SHAPE,
    PairRecord,
    check_binary_layout,
    read_gray8,
    read_manifest,
)
from semlayout.data.shard_format import npz_members, read_index
from semlayout.errors import SemlayoutError
from semlayout.polarity import UNKNOWN_READS_AS, read_polarity_cell


@dataclass(frozen=True)
class ShardSource:
    """One input of `write_shards`: a folder, an optional cap on its pairs, the name its
    records keep (default: the folder's name)."""

    path: Path
    max_n: int | None = None
    name: str | None = None


Images = tuple[np.ndarray, np.ndarray, "np.ndarray | None"]  # sem, layout, clean: (250, 250) uint8


@dataclass
class Entry:
    """One pair to shard; its images are read only when its shard is written (bounded memory)."""

    id: str
    family: str
    source: str
    has_clean: bool
    load: Callable[[], Images]
    polarity: int = UNKNOWN_READS_AS  # +1 pattern bright, -1 dark
    # declared | pair | prior | alignment | shards | assumed (the module docstring's rule)
    polarity_source: str = "assumed"


SourceLike = str | os.PathLike[str] | ShardSource | tuple[str | os.PathLike[str], int | None]


# ----------------------------------------------------------------------------- reading inputs


def as_sources(
    aligned: SourceLike | Sequence[SourceLike], max_per_source: int | None
) -> list[ShardSource]:
    """`write_shards`' input as ShardSources: caps checked (`max_per_source` for those without
    one of their own), names unique (a repeated folder name gets a `-2` suffix)."""
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


def _alignment_verdicts(folder: Path) -> tuple[set[str], dict[str, int]]:
    """(ids `alignment.csv` marks qc_pass=false, the aligner's polarity per id where given)."""
    rows = read_alignment_table(folder / ALIGNMENT_FILE)
    polarity = {r.id: p for r in rows if (p := read_polarity_cell(r.extra.get("polarity")))}
    return failed_ids(rows), polarity


def _pair_polarity(
    rec: PairRecord, aligned: dict[str, int], has_alignment: bool
) -> tuple[int, str]:
    """(polarity, source) of a manifest row: what the data declares, then the aligner's, then
    +1 (the module docstring's rule)."""
    column = read_polarity_cell(rec.extra.get("polarity"))
    source = (rec.extra.get("polarity_source") or "").strip()
    declared = read_polarity_cell(rec.extra.get(DECLARED_POLARITY))
    if declared is not None:
        return declared, "declared"
    if column is not None and not has_alignment:
        return column, source or "declared"
    if column is not None:  # an aligned folder's manifest: the aligner's estimate
        return column, source or "alignment"
    if rec.id in aligned:
        return aligned[rec.id], "alignment"
    return UNKNOWN_READS_AS, "assumed"


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


def _pair_folder_entries(folder: Path, name: str) -> list[Entry]:
    has_alignment = (folder / ALIGNMENT_FILE).is_file()
    failed, aligned = _alignment_verdicts(folder) if has_alignment else (set(), {})
    return [
        Entry(
            rec.id,
            rec.pattern_type,
            name,
            rec.clean_path is not None,
            functools.partial(_load_pair, rec, folder, has_alignment),
            *_pair_polarity(rec, aligned, has_alignment),
        )
        for rec in read_manifest(folder)
        if rec.id not in failed
    ]


def _load_shard_row(members: dict[str, np.ndarray], row: int) -> Images:
    clean = None
    if "clean" in members and ("clean_mask" not in members or members["clean_mask"][row]):
        clean = np.array(members["clean"][row])
    return np.array(members["sem"][row]), np.array(members["layout"][row]), clean


def _shard_set_entries(folder: Path, name: str) -> list[Entry]:
    """The TRAIN split of an existing shard set (memory-mapped, rows read on demand)."""
    index = read_index(folder)
    out: list[Entry] = []
    for rel in index["splits"]["train"]["shards"]:
        members = npz_members(folder / rel)
        has_clean = "clean" in members
        mask = members.get("clean_mask")
        pols = members.get("polarity")
        for row, (pid, fam) in enumerate(
            zip(members["ids"].tolist(), members["families"].tolist(), strict=True)
        ):
            clean_here = has_clean and (mask is None or bool(mask[row]))
            load = functools.partial(_load_shard_row, members, row)
            if pols is None:
                out.append(Entry(pid, fam, name, clean_here, load))
            else:
                out.append(Entry(pid, fam, name, clean_here, load, int(pols[row]), "shards"))
    return out


def _sample(entries: list[Entry], max_n: int | None, seed: int, position: int) -> list[Entry]:
    """A deterministic random sample of `max_n` entries (all of them when max_n is None)."""
    if max_n is None or max_n >= len(entries):
        return entries
    ordered = sorted(entries, key=lambda e: e.id)
    rng = np.random.default_rng([seed, position, 1])
    return [ordered[i] for i in sorted(rng.choice(len(ordered), size=max_n, replace=False))]


def collect_entries(
    sources: list[ShardSource], seed: int
) -> tuple[list[Entry], list[dict[str, Any]]]:
    entries: list[Entry] = []
    summary: list[dict[str, Any]] = []
    seen: set[str] = set()
    for k, src in enumerate(sources):
        folder = Path(src.path)
        if not folder.is_dir():
            raise SemlayoutError(f"input folder not found: {folder}")
        is_shards = (folder / "index.json").is_file()
        if not is_shards and not (folder / "manifest.csv").is_file():
            raise SemlayoutError(
                f"{folder} is neither an aligned pair folder (manifest.csv + alignment.csv) "
                "nor a shard set (index.json)"
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
