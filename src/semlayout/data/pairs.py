"""The pair folder: the one format that synth writes, align reads and data engineers upload.

```
manifest.csv     id,sem_path,layout_path,pattern_type[,clean_path]  (paths relative to the folder)
sem/<id>.png     8-bit grayscale SEM
layout/<id>.png  8-bit layout template, values 0 and 255
clean/<id>.png   optional noise-free SEM (synthetic data only)
```
Readers here refuse anything else with a `SemlayoutError` that names the file and
the reason; `ImageRejected.reason` is a short code that QC reports reuse.
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from semlayout.atomic import atomic_dir
from semlayout.data.image_header import HeaderRejected, read_header
from semlayout.errors import SemlayoutError

REQUIRED_COLUMNS = ("id", "sem_path", "layout_path", "pattern_type")
SEM_RAW_SHAPE = (304, 304)
TEMPLATE_SHAPE = (250, 250)
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ImageRejected(SemlayoutError):
    """An image that is not what the pair folder contract asks for."""

    def __init__(self, path: str | Path, reason: str, detail: str):
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{path}: {detail}")


@dataclass(frozen=True)
class PairRecord:
    id: str
    sem_path: Path
    layout_path: Path
    pattern_type: str
    clean_path: Path | None = None
    extra: dict[str, str] = field(default_factory=dict)


def _inside(folder: Path, rel: str, what: str, line: int) -> Path:
    if not rel:
        raise SemlayoutError(f"manifest.csv line {line}: empty {what}")
    if rel.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", rel):
        raise SemlayoutError(
            f"manifest.csv line {line}: {what} '{rel}' must be relative to the folder"
        )
    resolved = (folder / rel).resolve()
    root = folder.resolve()
    if resolved != root and root not in resolved.parents:
        raise SemlayoutError(f"manifest.csv line {line}: {what} '{rel}' escapes the pair folder")
    return folder / rel


def read_manifest(folder: str | Path) -> list[PairRecord]:
    """Parse and validate `folder/manifest.csv` (columns, unique ids, paths inside the folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SemlayoutError(f"pair folder not found: {folder}")
    manifest = folder / "manifest.csv"
    if not manifest.is_file():
        raise SemlayoutError(f"{folder} is not a pair folder: manifest.csv is missing")
    try:
        # utf-8-sig: spreadsheet exports start with a byte-order mark that would rename column 'id'
        text = manifest.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise SemlayoutError(f"{manifest}: not UTF-8 text") from None
    if not text.strip():
        raise SemlayoutError(
            f"{manifest} is empty; expected a header {','.join(REQUIRED_COLUMNS)} "
            "and one row per pair"
        )
    reader = csv.DictReader(io.StringIO(text))
    # tolerate "id, sem_path, ..." (spaces after commas) in the header
    reader.fieldnames = [c.strip() for c in (reader.fieldnames or [])]
    columns = reader.fieldnames
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise SemlayoutError(
            f"{manifest}: missing column(s) {', '.join(missing)}; "
            f"expected {','.join(REQUIRED_COLUMNS)}"
        )
    records: list[PairRecord] = []
    seen: set[str] = set()
    for line, row in enumerate(reader, start=2):
        pid = (row.get("id") or "").strip()
        if not _ID_RE.match(pid):
            raise SemlayoutError(
                f"manifest.csv line {line}: id '{pid}' is not valid "
                "(letters, digits, '.', '_', '-'; max 128)"
            )
        if pid in seen:
            raise SemlayoutError(f"manifest.csv line {line}: duplicate id '{pid}'")
        seen.add(pid)
        clean_rel = (row.get("clean_path") or "").strip()
        extra = {
            k: (v or "")
            for k, v in row.items()
            if k is not None and k not in REQUIRED_COLUMNS and k != "clean_path"
        }
        records.append(
            PairRecord(
                id=pid,
                sem_path=_inside(folder, (row.get("sem_path") or "").strip(), "sem_path", line),
                layout_path=_inside(
                    folder, (row.get("layout_path") or "").strip(), "layout_path", line
                ),
                pattern_type=(row.get("pattern_type") or "").strip() or "unknown",
                clean_path=_inside(folder, clean_rel, "clean_path", line) if clean_rel else None,
                extra=extra,
            )
        )
    if not records:
        raise SemlayoutError(f"{manifest}: no pairs listed")
    return records


def decode_gray8(
    data: bytes, name: str = "<upload>", expected_shape: tuple[int, int] | None = None
) -> np.ndarray:
    """Decode PNG/TIFF/... bytes to an (H, W) uint8 array, refusing colour, 16-bit and wrong
    sizes."""
    import cv2

    if not data:
        raise ImageRejected(name, "unreadable", "empty file")
    _check_header(data, name, expected_shape)
    _quiet_opencv()
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error:  # e.g. a header claiming more pixels than OpenCV will allocate
        raise ImageRejected(
            name, "unreadable", "cannot decode: corrupt, or too large for the decoder"
        ) from None
    if img is None:
        raise ImageRejected(name, "unreadable", "not a readable image")
    return _check_gray8(img, name, expected_shape)


MAX_DECODE_PIXELS = 8192 * 8192  # files on disk: far above any SEM or layout clip, far below a bomb


def _check_header(data: bytes, name: str, expected_shape: tuple[int, int] | None) -> None:
    """Refuse an image by its header (pixel count, size) before the decoder allocates anything.
    A header these parsers do not know is left to the decoder, which refuses what it cannot read."""
    try:
        h = read_header(data)
    except HeaderRejected:
        return
    if h.width * h.height > MAX_DECODE_PIXELS:
        raise ImageRejected(
            name,
            "too_large",
            f"{h.format.upper()} header claims {h.width}x{h.height} px; "
            f"the limit is {MAX_DECODE_PIXELS} px",
        )
    if expected_shape is not None and (h.height, h.width) != tuple(expected_shape):
        raise ImageRejected(
            name,
            "wrong_size",
            f"expected {expected_shape[1]}x{expected_shape[0]} px, got {h.width}x{h.height}",
        )


_OPENCV_QUIET = False


def _quiet_opencv() -> None:
    """OpenCV prints '[ WARN:0@...]' / '[ERROR:0@...]' lines for corrupt files; the caller reports
    those itself, as one line. Set once for the process."""
    global _OPENCV_QUIET
    if _OPENCV_QUIET:
        return
    import cv2

    with contextlib.suppress(AttributeError):
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    _OPENCV_QUIET = True


def _check_gray8(img: np.ndarray, name: str, expected_shape: tuple[int, int] | None) -> np.ndarray:
    if img.dtype != np.uint8:
        raise ImageRejected(
            name,
            "bit_depth",
            f"expected 8-bit grayscale, got {img.dtype} ({img.dtype.itemsize * 8}-bit)",
        )
    if img.ndim == 3:
        channels = img.shape[2]
        if channels == 1:
            img = img[:, :, 0]
        else:
            kind = {3: "RGB", 4: "RGBA", 2: "gray+alpha"}.get(channels, f"{channels}-channel")
            raise ImageRejected(name, "not_grayscale", f"expected 8-bit grayscale, got {kind}")
    if img.ndim != 2:
        raise ImageRejected(name, "unreadable", f"unexpected image shape {img.shape}")
    if expected_shape is not None and tuple(img.shape) != tuple(expected_shape):
        raise ImageRejected(
            name,
            "wrong_size",
            f"expected {expected_shape[1]}x{expected_shape[0]} px, "
            f"got {img.shape[1]}x{img.shape[0]}",
        )
    return np.ascontiguousarray(img)


def read_gray8(path: str | Path, expected_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read an 8-bit grayscale image from disk (see `decode_gray8`)."""
    path = Path(path)
    if not path.is_file():
        raise ImageRejected(path, "missing", "file not found")
    return decode_gray8(path.read_bytes(), str(path), expected_shape)


def check_binary_layout(img: np.ndarray, name: str = "<layout>") -> np.ndarray:
    """A layout template holds only 0 and 255."""
    values = np.unique(img)
    if not set(values.tolist()) <= {0, 255}:
        raise ImageRejected(
            name,
            "not_binary",
            f"layout must hold only 0 and 255, found {len(values)} distinct values",
        )
    return img


def encode_png(img: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", img)
    if not ok:  # pragma: no cover - cv2 only fails on unsupported dtypes
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


@dataclass
class PairArrays:
    id: str
    sem: np.ndarray
    layout: np.ndarray
    pattern_type: str
    clean: np.ndarray | None = None
    extra: dict[str, str] = field(default_factory=dict)


def write_pairs(folder: Path, pairs: Iterable[PairArrays]) -> list[str]:
    """Write pairs into an existing (temporary) folder; returns the ids. Use inside `atomic_dir`."""
    import cv2

    (folder / "sem").mkdir(parents=True, exist_ok=True)
    (folder / "layout").mkdir(exist_ok=True)
    rows: list[dict[str, str]] = []
    extra_cols: list[str] = []
    any_clean = False
    for p in pairs:
        cv2.imwrite(str(folder / "sem" / f"{p.id}.png"), p.sem)
        cv2.imwrite(str(folder / "layout" / f"{p.id}.png"), p.layout)
        row = {
            "id": p.id,
            "sem_path": f"sem/{p.id}.png",
            "layout_path": f"layout/{p.id}.png",
            "pattern_type": p.pattern_type,
            "clean_path": "",
        }
        if p.clean is not None:
            any_clean = True
            (folder / "clean").mkdir(exist_ok=True)
            cv2.imwrite(str(folder / "clean" / f"{p.id}.png"), p.clean)
            row["clean_path"] = f"clean/{p.id}.png"
        for k, v in p.extra.items():
            if k not in extra_cols:
                extra_cols.append(k)
            row[k] = v
        rows.append(row)
    columns = list(REQUIRED_COLUMNS) + (["clean_path"] if any_clean else []) + extra_cols
    with open(folder / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in columns})
    return [r["id"] for r in rows]


def write_pair_folder(dest: str | Path, pairs: Iterable[PairArrays]) -> list[str]:
    """Write a complete pair folder atomically (nothing at `dest` until it is complete)."""
    with atomic_dir(dest) as tmp:
        return write_pairs(tmp, pairs)
