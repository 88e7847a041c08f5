"""The on-disk format of a shard set: `index.json` and uncompressed, byte-reproducible .npz.

`read_index` validates the index (format, the three splits, shard files present, not
empty); `npz_members` memory-maps a shard's integer arrays; `write_npz` writes one with
fixed zip timestamps. The layout itself is described in `semlayout.data.shards`.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from semlayout.data.pairs import TEMPLATE_SHAPE
from semlayout.errors import SemlayoutError

FORMAT = "semlayout-shards/1"
SPLITS = ("train", "val", "test")
IMAGE_SIZE = TEMPLATE_SHAPE[0]  # 250: aligned SEMs, clean images and templates
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed timestamp: byte-identical shards for the same input


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Uncompressed .npz (np.load reads it) with fixed timestamps, so it is byte-reproducible."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, arr in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_STORED
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)


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
