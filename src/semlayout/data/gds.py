"""Real design data in: rasterise 250x250 layout clips from a GDSII layer (gdstk).

Coordinates: design x to the right, y up (GDS), in nm (`lib.unit` converts
user units). Image column c, row r (row 0 at the top) of a clip whose
lower-left corner is (x_nm, y_nm) covers
    x in [x_nm + c*P, x_nm + (c+1)*P),  y in (top - (r+1)*P, top - r*P],  top = y_nm + 250*P.
A pixel is pattern (255) iff its centre lies inside the union of the layer's
polygons (nonzero winding; left/top edges inclusive, right/bottom exclusive,
so abutting rectangles on pixel boundaries tile exactly).

`gds_clips` tiles the layer's bounding box, skips clips without structure
(all background or all pattern), and writes `layout/<id>.png` + `clips.csv`.
With `render_sem=True` it also renders synthetic SEMs with the `synth`
physics around each clip, so OUT is a full pair folder (+ clean/, truth.csv).
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from semlayout.errors import SemlayoutError

TEMPLATE = 250
GDS_MAGIC = b"\x00\x06\x00\x02"  # first record of every GDSII stream: HEADER, 2-byte int


@dataclass
class LayerPolygons:
    """Polygons of one layer of one cell, flattened, in nm."""

    cell: str
    layer: int
    datatype: int | None
    polygons: list[np.ndarray]  # each (K, 2) float64, nm
    bbox: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # xmin, ymin, xmax, ymax (nm)
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # per polygon, same order


@dataclass
class GdsClipsResult:
    out_dir: Path
    n_clips: int
    clips: list[dict[str, str]]


@contextlib.contextmanager
def _quiet_c_stderr() -> Iterator[list[str]]:
    """gdstk reports read errors on the C stderr; keep them out of the terminal, hand them back."""
    captured: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            captured.extend(tmp.read().decode("utf-8", "replace").split("\n"))


def read_layer(
    path: str | os.PathLike[str], layer: int, datatype: int | None = None, cell: str | None = None
) -> LayerPolygons:
    """Load the flattened polygons (paths and references included) of `layer` from a GDSII file."""
    import gdstk

    path = Path(path)
    if not path.is_file():
        raise SemlayoutError(f"GDS file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != GDS_MAGIC:
        raise SemlayoutError(
            f"{path} is not a GDSII stream file (it does not start with a GDSII HEADER record)"
        )
    with _quiet_c_stderr() as msgs:
        try:
            lib = gdstk.read_gds(str(path))
        except Exception:
            lib = None
    if lib is None:
        detail = (
            "; ".join(m.replace("[GDSTK]", "").strip() for m in msgs if m.strip()) or "unreadable"
        )
        raise SemlayoutError(f"{path}: cannot read GDSII ({detail})")
    cells = {c.name: c for c in lib.cells}
    if cell is None:
        tops = lib.top_level()
        if len(tops) != 1:
            names = ", ".join(sorted(c.name for c in tops)[:10]) or "none"
            raise SemlayoutError(
                f"{path} has {len(tops)} top-level cells ({names}); choose one with --cell"
            )
        top = tops[0]
    else:
        if cell not in cells:
            raise SemlayoutError(
                f"cell '{cell}' not in {path}; cells: {', '.join(sorted(cells)[:20])}"
            )
        top = cells[cell]
    if not isinstance(top, gdstk.Cell):  # pragma: no cover - read_gds returns Cells, never RawCells
        raise SemlayoutError(f"cell '{top.name}' of {path} cannot be flattened")
    nm_per_unit = lib.unit * 1e9
    all_polys = top.get_polygons(apply_repetitions=True, include_paths=True)
    present = sorted({(p.layer, p.datatype) for p in all_polys})
    polys = [
        p for p in all_polys if p.layer == layer and (datatype is None or p.datatype == datatype)
    ]
    spec = f"layer {layer}" + (f" datatype {datatype}" if datatype is not None else "")
    if not polys:
        if present:
            have = ", ".join(f"{a}/{b}" for a, b in present[:30])
            raise SemlayoutError(
                f"{spec} has no polygons in cell '{top.name}' of {path}; "
                f"layer/datatype present: {have}"
            )
        raise SemlayoutError(f"cell '{top.name}' of {path} holds no polygons at all")
    pts = [np.asarray(p.points, dtype=np.float64) * nm_per_unit for p in polys]
    pts = [p for p in pts if len(p) >= 3]
    boxes = np.array([[p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()] for p in pts])
    bbox = (
        float(boxes[:, 0].min()),
        float(boxes[:, 1].min()),
        float(boxes[:, 2].max()),
        float(boxes[:, 3].max()),
    )
    return LayerPolygons(top.name, layer, datatype, pts, bbox, boxes)


def rasterize(
    polygons: list[np.ndarray],
    x0_nm: float,
    y0_nm: float,
    pixel_nm: float,
    shape: tuple[int, int] = (TEMPLATE, TEMPLATE),
) -> np.ndarray:
    """(H, W) uint8 {0, 1}: pixel centres inside the union of `polygons` (nm), window
    lower-left (x0, y0).

    Scanline with winding numbers: every polygon is oriented the same way, each
    edge adds +-1 at the first pixel whose centre is right of where it crosses a
    row's centre line, and a cumulative sum along the row gives the winding number.
    """
    h, w = shape
    top = y0_nm + h * pixel_nm
    us: list[np.ndarray] = []
    vs: list[np.ndarray] = []
    for poly in polygons:
        u = (poly[:, 0] - x0_nm) / pixel_nm  # columns, left -> right
        v = (top - poly[:, 1]) / pixel_nm  # rows, top -> bottom
        area = 0.5 * float(np.sum(u * np.roll(v, -1) - np.roll(u, -1) * v))
        if area == 0.0:
            continue
        if area < 0:
            u, v = u[::-1], v[::-1]
        us.append(np.stack([u, np.roll(u, -1)], 1))
        vs.append(np.stack([v, np.roll(v, -1)], 1))
    if not us:
        return np.zeros(shape, np.uint8)
    eu, ev = np.concatenate(us), np.concatenate(vs)  # (E, 2) edge end points
    keep = ev[:, 0] != ev[:, 1]
    eu, ev = eu[keep], ev[keep]
    dirs_all = np.where(ev[:, 1] > ev[:, 0], 1, -1)
    vmin, vmax = ev.min(1), ev.max(1)
    # rows r with centre r + 0.5 in [vmin, vmax)
    r0 = np.clip(np.ceil(vmin - 0.5), 0, h).astype(np.int64)
    r1 = np.clip(np.ceil(vmax - 0.5), 0, h).astype(np.int64)
    counts = r1 - r0
    if counts.sum() == 0:
        return np.zeros(shape, np.uint8)
    edge = np.repeat(np.arange(len(counts)), counts)
    rows = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + r0[edge]
    vc = rows + 0.5
    t = (vc - ev[edge, 0]) / (ev[edge, 1] - ev[edge, 0])
    uc = eu[edge, 0] + t * (eu[edge, 1] - eu[edge, 0])
    cols = np.clip(np.ceil(uc - 0.5), 0, w).astype(np.int64)
    acc = np.bincount(rows * (w + 1) + cols, weights=dirs_all[edge], minlength=h * (w + 1))
    winding = np.cumsum(acc.reshape(h, w + 1), axis=1)[:, :w]
    return (np.rint(winding) != 0).astype(np.uint8)


def _window(
    layer: LayerPolygons, x0: float, y0: float, pixel_nm: float, shape: tuple[int, int]
) -> np.ndarray:
    """Rasterise only the polygons whose boxes touch the window."""
    x1, y1 = x0 + shape[1] * pixel_nm, y0 + shape[0] * pixel_nm
    b = layer.boxes
    hit = np.nonzero((b[:, 2] > x0) & (b[:, 0] < x1) & (b[:, 3] > y0) & (b[:, 1] < y1))[0]
    return rasterize([layer.polygons[i] for i in hit], x0, y0, pixel_nm, shape)


MAX_TILES = 100_000_000  # clip windows gds_clips will visit: a 1 cm die at 1 nm/px is ~1.6e9


def _grid(
    bbox: tuple[float, float, float, float], clip_nm: float, stride_nm: float
) -> tuple[int, int]:
    xmin, ymin, xmax, ymax = bbox
    nx = max(1, math.ceil((xmax - xmin - clip_nm) / stride_nm - 1e-9) + 1)
    ny = max(1, math.ceil((ymax - ymin - clip_nm) / stride_nm - 1e-9) + 1)
    return nx, ny


def tile_count(bbox: tuple[float, float, float, float], clip_nm: float, stride_nm: float) -> int:
    nx, ny = _grid(bbox, clip_nm, stride_nm)
    return nx * ny


def iter_tile_origins(
    bbox: tuple[float, float, float, float], clip_nm: float, stride_nm: float
) -> Iterator[tuple[float, float]]:
    """Lower-left corners of clips covering the bbox, top row first, left to right."""
    xmin, _, _, ymax = bbox
    nx, ny = _grid(bbox, clip_nm, stride_nm)
    for j in range(ny):
        for i in range(nx):
            yield xmin + i * stride_nm, ymax - clip_nm - j * stride_nm


def tile_origins(
    bbox: tuple[float, float, float, float], clip_nm: float, stride_nm: float
) -> list[tuple[float, float]]:
    return list(iter_tile_origins(bbox, clip_nm, stride_nm))


# clips.csv: where each clip sits in the design (lower-left, nm), and its pattern share
CLIPS_COLUMNS = (
    "id",
    "layout_path",
    "x_nm",
    "y_nm",
    "layer",
    "datatype",
    "cell",
    "pattern_type",
    "fill",
)


@dataclass
class _Clip:
    """One clip window: its template and, for `render_sem`, the SEM field around it."""

    pid: str
    x_nm: float  # lower-left corner of the template (nm)
    y_nm: float
    tpl: np.ndarray  # (250, 250) uint8 {0, 1}
    fld: np.ndarray | None = None  # (304, 304) uint8 {0, 1}: the template sits at (x, y)
    x: int = 0
    y: int = 0
    rng: np.random.Generator | None = None


def gds_clips(
    path: str | os.PathLike[str],
    layer: int,
    pixel_nm: float,
    out_dir: str | os.PathLike[str],
    datatype: int | None = None,
    cell: str | None = None,
    stride_nm: float | None = None,
    max_clips: int | None = None,
    render_sem: bool = False,
    seed: int = 0,
    ranges: object | None = None,
) -> GdsClipsResult:
    """Write `layout/<id>.png` + `clips.csv` (CLIPS_COLUMNS), one clip per structured window.

    With `render_sem`, OUT is also a pair folder: sem/, clean/, manifest.csv and truth.csv,
    the SEM rendered over a 304x304 field of the design around the clip (template at a
    random offset).
    """
    from semlayout.atomic import atomic_dir
    from semlayout.data.synth import readable_by_others

    clip_nm, stride = _check_options(pixel_nm, stride_nm, max_clips)
    data = read_layer(path, layer, datatype, cell)
    _check_tile_count(data.bbox, clip_nm, stride, pixel_nm)
    origins = iter_tile_origins(data.bbox, clip_nm, stride)  # lazy: --max-clips stops it early
    out = Path(out_dir)
    rows: list[dict[str, str]] = []
    with atomic_dir(out) as tmp:
        for sub in ("layout",) + (("sem", "clean") if render_sem else ()):
            (tmp / sub).mkdir()
        truth: list[str] = ["id,x,y"]
        manifest_rows: list[dict[str, str]] = []
        for x0, y0 in origins:
            if max_clips is not None and len(rows) >= max_clips:
                break
            clip = _cut(data, x0, y0, len(rows), pixel_nm, render_sem, seed)
            row = _write_clip(tmp, clip, layer, datatype, data.cell)
            if row is None:
                continue  # no edge inside: nothing to learn or align
            rows.append(row)
            if render_sem:
                manifest_rows.append(_write_sem(tmp, clip, row, seed, ranges))
                truth.append(f"{clip.pid},{clip.x},{clip.y}")
        if not rows:
            raise SemlayoutError(
                f"no clip of layer {layer} in cell '{data.cell}' has structure at {pixel_nm} nm/px "
                f"(every clip was empty or fully covered); try another --pixel-nm"
            )
        _write_csv(tmp / "clips.csv", list(CLIPS_COLUMNS), rows)
        if render_sem:
            _write_pair_tables(tmp, manifest_rows, truth)
        readable_by_others(tmp)
    return GdsClipsResult(out, len(rows), rows)


def _check_options(
    pixel_nm: float, stride_nm: float | None, max_clips: int | None
) -> tuple[float, float]:
    """(clip size, stride) in nm, after checking the user's numbers."""
    if not (isinstance(pixel_nm, int | float) and math.isfinite(pixel_nm) and pixel_nm > 0):
        raise SemlayoutError(f"--pixel-nm {pixel_nm}: expected a positive pixel size in nm")
    clip_nm = TEMPLATE * pixel_nm
    stride = clip_nm if stride_nm is None else stride_nm
    if not (math.isfinite(stride) and stride > 0):
        raise SemlayoutError(f"--stride-nm {stride_nm}: expected a positive step in nm")
    if max_clips is not None and max_clips <= 0:
        raise SemlayoutError(f"--max-clips {max_clips}: expected a positive number")
    return clip_nm, stride


def _check_tile_count(
    bbox: tuple[float, float, float, float], clip_nm: float, stride: float, pixel_nm: float
) -> None:
    n_tiles = tile_count(bbox, clip_nm, stride)
    if n_tiles > MAX_TILES:
        raise SemlayoutError(
            f"--pixel-nm {pixel_nm} with a {stride:g} nm stride cuts the cell into {n_tiles} clip "
            f"windows (limit {MAX_TILES}); use a larger pixel size or stride"
        )


def _cut(
    data: LayerPolygons,
    x0: float,
    y0: float,
    k: int,
    pixel_nm: float,
    render_sem: bool,
    seed: int,
) -> _Clip:
    """Rasterise the k-th kept clip at lower-left (x0, y0): the template alone or, with
    `render_sem`, the 304x304 field around it with the template at a random offset."""
    from semlayout.data.synth import CENTRE, FIELD, MAX_OFFSET

    pid = f"clip-{k:06d}"
    if not render_sem:
        return _Clip(pid, x0, y0, _window(data, x0, y0, pixel_nm, (TEMPLATE, TEMPLATE)))
    clip_nm = TEMPLATE * pixel_nm
    rng = np.random.default_rng([seed, k])
    x, y = (int(v) for v in rng.integers(CENTRE - MAX_OFFSET, CENTRE + MAX_OFFSET + 1, size=2))
    # field window: template's top-left pixel sits at (x, y) of the 304x304 field
    fx0 = x0 - x * pixel_nm
    fy0 = (y0 + clip_nm + y * pixel_nm) - FIELD * pixel_nm
    fld = _window(data, fx0, fy0, pixel_nm, (FIELD, FIELD))
    return _Clip(pid, x0, y0, fld[y : y + TEMPLATE, x : x + TEMPLATE], fld, x, y, rng)


def _write_clip(
    tmp: Path, clip: _Clip, layer: int, datatype: int | None, cell: str
) -> dict[str, str] | None:
    """Write the clip's layout PNG and return its clips.csv row; None (nothing written) for a
    clip without structure (all background or all pattern)."""
    from semlayout.data.pairs import encode_png

    fill = float(clip.tpl.mean())
    if fill == 0.0 or fill == 1.0:
        return None
    (tmp / "layout" / f"{clip.pid}.png").write_bytes(encode_png(clip.tpl * np.uint8(255)))
    return {
        "id": clip.pid,
        "layout_path": f"layout/{clip.pid}.png",
        "x_nm": f"{clip.x_nm:.6g}",
        "y_nm": f"{clip.y_nm:.6g}",
        "layer": str(layer),
        "datatype": "" if datatype is None else str(datatype),
        "cell": cell,
        "pattern_type": "gds",
        "fill": f"{fill:.4f}",
    }


def _write_sem(
    tmp: Path, clip: _Clip, row: dict[str, str], seed: int, ranges: object | None
) -> dict[str, str]:
    """Render and write the clip's SEM and clean image; returns its manifest.csv row."""
    from semlayout.data.pairs import encode_png
    from semlayout.data.synth import render_sem_pair

    assert clip.fld is not None and clip.rng is not None
    sem, _, clean, _, _, meta = render_sem_pair(
        clip.fld,
        clip.x,
        clip.y,
        clip.rng,
        ranges=ranges,  # type: ignore[arg-type]
    )
    (tmp / "sem" / f"{clip.pid}.png").write_bytes(encode_png(sem))
    (tmp / "clean" / f"{clip.pid}.png").write_bytes(encode_png(clean))
    return {
        "id": clip.pid,
        "sem_path": f"sem/{clip.pid}.png",
        "layout_path": row["layout_path"],
        "pattern_type": "gds",
        "clean_path": f"clean/{clip.pid}.png",
        "seed": str(seed),
        "x_nm": row["x_nm"],
        "y_nm": row["y_nm"],
        **meta["params"].as_columns(),
    }


def _write_pair_tables(tmp: Path, manifest_rows: list[dict[str, str]], truth: list[str]) -> None:
    """manifest.csv and truth.csv of a rendered pair folder."""
    from semlayout.data.synth import PHYSICS_COLUMNS

    cols = ["id", "sem_path", "layout_path", "pattern_type", "clean_path", "seed", "x_nm", "y_nm"]
    _write_csv(tmp / "manifest.csv", [*cols, *PHYSICS_COLUMNS], manifest_rows)
    (tmp / "truth.csv").write_text("\n".join(truth) + "\n", encoding="utf-8")


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, str]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8")
