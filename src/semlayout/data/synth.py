"""Synthetic SEM/layout pairs with ground truth: the data every other stage starts from.

One pair = a design drawn over the whole 304x304 field (`layouts.py`), an SEM
rendering of that field (`sem_physics.py`), and the 250x250 layout template
cut from the field at a random offset (x, y) in [2, 52] (centre 27 +- 25 px; narrower when a
field distortion is asked for, so that the distorted template stays inside the SEM).
`truth.csv` records that offset (in the sample frame: with a distortion, the SEM shows the
field through `field_distortion.similarity_matrix(rotation_deg, magnification)`, both manifest
columns), so alignment can be scored exactly.

Pair i of a run uses the generator `default_rng([seed, i])`: files are
byte-identical for the same seed, and any pair can be regenerated alone.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from semlayout.data.field_distortion import max_displacement
from semlayout.data.layouts import DEFAULT_MIX, FAMILIES, FIELD, draw_layout
from semlayout.data.sem_physics import (
    PhysicsRanges,
    SemParams,
    add_noise,
    render_clean,
    sample_params,
    to_u8,
)
from semlayout.errors import SemlayoutError

TEMPLATE = 250
CENTRE = (FIELD - TEMPLATE) // 2  # 27
MAX_OFFSET = 25
PHYSICS_COLUMNS = [f for f in SemParams.__dataclass_fields__]


def parse_mix(text: str | Mapping[str, float] | None) -> dict[str, float]:
    """'line_space=0.5,via_array=0.2' (or a dict) -> normalised weights over the named families.

    Families not named get weight 0. `None` gives the default, imbalanced mix.
    """
    if text is None or (isinstance(text, str) and not text.strip()):
        return dict(DEFAULT_MIX)
    if isinstance(text, str):
        raw: dict[str, float] = {}
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            name, sep, value = part.partition("=")
            name = name.strip()
            if not sep:
                raise SemlayoutError(
                    f"--mix entry '{part}': expected family=weight, e.g. line_space=0.5"
                )
            try:
                raw[name] = float(value)
            except ValueError:
                raise SemlayoutError(
                    f"--mix entry '{part}': weight '{value}' is not a number"
                ) from None
    else:
        raw = {str(k): float(v) for k, v in text.items()}
    for name, w in raw.items():
        if name not in FAMILIES:
            raise SemlayoutError(
                f"unknown family '{name}' in mix; expected one of {', '.join(FAMILIES)}"
            )
        if not math.isfinite(w) or w < 0:
            raise SemlayoutError(f"mix weight for '{name}' is {w}; expected a number >= 0")
    total = sum(raw.values())
    if total <= 0:
        raise SemlayoutError(
            f"mix {raw} has no positive weight; give at least one family a weight > 0"
        )
    return {k: v / total for k, v in raw.items() if v > 0}


def assign_families(n: int, mix: Mapping[str, float], rng: np.random.Generator) -> list[str]:
    """Exactly round(n * weight) of each family (largest remainder), in shuffled order."""
    names = list(mix)
    quota = np.array([mix[k] * n for k in names])
    counts = np.floor(quota).astype(int)
    order = np.argsort(-(quota - counts), kind="stable")
    for k in order[: n - int(counts.sum())]:
        counts[k] += 1
    fams = [name for name, c in zip(names, counts, strict=True) for _ in range(c)]
    return [fams[i] for i in rng.permutation(n)]


def generate_pair(
    rng_or_seed: np.random.Generator | int | tuple[int, ...] | list[int],
    family: str,
    params: SemParams | Mapping[str, float] | None = None,
    ranges: PhysicsRanges | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int, dict[str, Any]]:
    """One pair in memory: (sem u8 304x304, layout u8 250x250 {0,255}, clean u8 304x304, x, y,
    meta).

    `params` pins the physics (a full `SemParams`, or a dict of a few fields such
    as `{"dose": 5.0, "polarity": -1}`; the rest are drawn from `ranges`).
    meta = {"family", "params": SemParams, "field": (304,304) uint8 {0,1} drawn design}.
    """
    if family not in FAMILIES:
        raise SemlayoutError(f"unknown family '{family}'; expected one of {', '.join(FAMILIES)}")
    rng = (
        rng_or_seed
        if isinstance(rng_or_seed, np.random.Generator)
        else np.random.default_rng(rng_or_seed)
    )
    field = draw_layout(family, rng, FIELD)
    reach = MAX_OFFSET - offset_margin(ranges)
    x, y = (int(v) for v in rng.integers(CENTRE - reach, CENTRE + reach + 1, size=2))
    sem, layout, clean, x, y, meta = render_sem_pair(field, x, y, rng, params, ranges)
    meta["family"] = family
    return sem, layout, clean, x, y, meta


def render_sem_pair(
    field: np.ndarray,
    x: int,
    y: int,
    rng: np.random.Generator,
    params: SemParams | Mapping[str, float] | None = None,
    ranges: PhysicsRanges | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int, dict[str, Any]]:
    """SEM of a drawn (304,304) {0,1} field; the template is its 250x250 window at (x, y).

    Same return as `generate_pair` (meta without "family"); used for GDS clips too.
    """
    if isinstance(params, SemParams):
        p = params
    else:
        p = sample_params(rng, ranges, **dict(params or {}))
    clean_f = render_clean(field, p, rng)
    noisy_f = add_noise(clean_f, p, rng)
    layout = (field[y : y + TEMPLATE, x : x + TEMPLATE] * 255).astype(np.uint8)
    return to_u8(noisy_f), layout, to_u8(clean_f), x, y, {"params": p, "field": field}


def offset_margin(ranges: PhysicsRanges | None) -> int:
    """Px kept free around the offset range so that a field distortion (rotation, magnification)
    never moves the template out of the SEM; 0 without distortion (offsets as always)."""
    if ranges is None:
        return 0
    worst = max(
        max_displacement(rot, mag, CENTRE + TEMPLATE / 2.0)
        for rot in ranges.rotation_deg
        for mag in ranges.magnification
    )
    return min(MAX_OFFSET, math.ceil(worst))


def _pair_id(seed: int, i: int) -> str:
    return f"s{seed}-{i:06d}"


def _write_png(path: Path, img: np.ndarray) -> None:
    import cv2

    if not cv2.imwrite(str(path), img):
        raise OSError(f"could not write {path}")


def _make_one(args: tuple[Path, int, int, str, PhysicsRanges]) -> dict[str, str]:
    """Generate pair i and write its three PNGs; returns its manifest row (+ x, y)."""
    folder, seed, i, family, ranges = args
    pid = _pair_id(seed, i)
    sem, layout, clean, x, y, meta = generate_pair(
        np.random.default_rng([seed, i]), family, ranges=ranges
    )
    _write_png(folder / "sem" / f"{pid}.png", sem)
    _write_png(folder / "layout" / f"{pid}.png", layout)
    _write_png(folder / "clean" / f"{pid}.png", clean)
    row = {
        "id": pid,
        "sem_path": f"sem/{pid}.png",
        "layout_path": f"layout/{pid}.png",
        "pattern_type": family,
        "clean_path": f"clean/{pid}.png",
        **meta["params"].as_columns(),
        "x": str(x),
        "y": str(y),
    }
    return row


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core already; cv2's own threads would oversubscribe


def _check_out(out: Path, folder: bool = True) -> None:
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SemlayoutError(f"cannot create output folder {out}: {err.strerror or err}") from None
    if not os.access(parent, os.W_OK):
        raise SemlayoutError(f"cannot write into {parent}: permission denied")
    # (a file where the folder goes is refused by atomic_dir, before any work)
    if not folder and out.is_dir():
        raise SemlayoutError(f"output file {out} is a folder; expected a .png file path")


def synthesize(
    out_dir: str | os.PathLike[str],
    n: int,
    seed: int = 0,
    mix: str | Mapping[str, float] | None = None,
    ranges: PhysicsRanges | None = None,
    preview: str | os.PathLike[str] | None = None,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Write a pair folder of `n` synthetic pairs (+ clean/, truth.csv) atomically; returns it.

    Columns of manifest.csv: id,sem_path,layout_path,pattern_type,clean_path,seed and the
    per-image physics (`SemParams` fields: dose, polarity, blur_sigma, ...).
    """
    from tqdm import tqdm

    from semlayout.atomic import atomic_dir

    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n <= 0:
        raise SemlayoutError(f"n={n}: expected a positive number of pairs")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise SemlayoutError(f"seed={seed}: expected an integer >= 0")
    if workers < 1:
        raise SemlayoutError(f"workers={workers}: expected >= 1")
    weights = parse_mix(mix)
    ranges = ranges or PhysicsRanges()
    out = Path(out_dir)
    _check_out(out)
    if preview is not None:
        _check_out(Path(preview), folder=False)
    families = assign_families(int(n), weights, np.random.default_rng([int(seed), 2**32 - 1]))
    rows: list[dict[str, str]] = []
    try:
        with atomic_dir(out) as tmp:
            for sub in ("sem", "layout", "clean"):
                (tmp / sub).mkdir()
            jobs = [(tmp, int(seed), i, fam, ranges) for i, fam in enumerate(families)]
            bar = tqdm(
                total=n, desc="synth", unit="pair", disable=not progress or n < 200, leave=False
            )
            if workers > 1 and n >= 64:
                import multiprocessing as mp
                from concurrent.futures import ProcessPoolExecutor
                from multiprocessing.context import BaseContext

                # fork where there is one: spawn would re-run an unguarded calling script in each
                # child. A forked child must not touch cv2.setNumThreads (it hangs on the parent's
                # pool state); spawned children (no fork on this OS) start clean and can.
                ctx: BaseContext
                if "fork" in mp.get_all_start_methods():
                    ctx, init = mp.get_context("fork"), None
                else:  # pragma: no cover - Windows / macOS defaults
                    ctx, init = mp.get_context("spawn"), _init_worker
                with ProcessPoolExecutor(
                    max_workers=workers, mp_context=ctx, initializer=init
                ) as pool:
                    for row in pool.map(_make_one, jobs, chunksize=16):
                        rows.append(row)
                        bar.update()
            else:
                for job in jobs:
                    rows.append(_make_one(job))
                    bar.update()
            bar.close()
            _write_tables(tmp, rows, int(seed))
            readable_by_others(tmp)
    except PermissionError as err:
        raise SemlayoutError(f"cannot write {out}: {err.strerror or err}") from None
    if preview is not None:
        write_preview(out, preview)
    return out


def readable_by_others(path: Path) -> None:
    """Give an atomically written folder/file the permissions a plain mkdir/open would have.

    `tempfile.mkdtemp`/`mkstemp` create 0700/0600, which would survive the final rename and
    hide the output from other users (e.g. a container running as another uid).
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def _write_tables(folder: Path, rows: list[dict[str, str]], seed: int) -> None:
    base = ["id", "sem_path", "layout_path", "pattern_type", "clean_path", "seed"]
    columns = base + PHYSICS_COLUMNS
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "seed": str(seed)})
    (folder / "manifest.csv").write_text(buf.getvalue(), encoding="utf-8")
    truth = ["id,x,y"] + [f"{r['id']},{r['x']},{r['y']}" for r in rows]
    (folder / "truth.csv").write_text("\n".join(truth) + "\n", encoding="utf-8")


def read_truth(folder: str | os.PathLike[str]) -> dict[str, tuple[int, int]]:
    """`truth.csv` of a synth folder -> {id: (x, y)}."""
    path = Path(folder) / "truth.csv"
    if not path.is_file():
        raise SemlayoutError(f"{folder} has no truth.csv (only `semlayout synth` folders do)")
    with open(path, newline="", encoding="utf-8") as f:
        return {r["id"]: (int(r["x"]), int(r["y"])) for r in csv.DictReader(f)}


def write_preview(
    pair_dir: str | os.PathLike[str], dest: str | os.PathLike[str], rows: int = 6
) -> Path:
    """PNG grid: one pair per row, `layout-in-field | clean SEM | noisy SEM`, labelled by family.

    Picks one pair per family first (in manifest order), then fills up to `rows`.
    The layout panel shows the 250x250 template at its true place in the field (grey outside).
    """
    import cv2

    from semlayout.atomic import atomic_write_bytes
    from semlayout.data.pairs import encode_png, read_gray8, read_manifest

    pair_dir = Path(pair_dir)
    records = read_manifest(pair_dir)
    truth = read_truth(pair_dir) if (pair_dir / "truth.csv").is_file() else {}
    chosen, seen = [], set()
    for r in records:
        if r.pattern_type not in seen:
            chosen.append(r)
            seen.add(r.pattern_type)
    for r in records:
        if len(chosen) >= rows:
            break
        if r not in chosen:
            chosen.append(r)
    chosen = chosen[:rows]
    pad, label_h = 6, 22
    cell = FIELD
    width = 3 * cell + 4 * pad
    panels = []
    for r in chosen:
        sem = read_gray8(r.sem_path)
        clean = read_gray8(r.clean_path) if r.clean_path else np.zeros_like(sem)
        layout = read_gray8(r.layout_path)
        canvas = np.full((cell, cell), 96, np.uint8)
        x, y = truth.get(r.id, ((cell - layout.shape[1]) // 2, (cell - layout.shape[0]) // 2))
        canvas[y : y + layout.shape[0], x : x + layout.shape[1]] = layout
        row = np.full((label_h + cell + pad, width), 255, np.uint8)
        for k, img in enumerate((canvas, clean, sem)):
            x0 = pad + k * (cell + pad)
            row[label_h : label_h + cell, x0 : x0 + cell] = cv2.resize(
                img, (cell, cell), interpolation=cv2.INTER_AREA
            )
        extra = r.extra
        text = (
            f"{r.pattern_type}   dose {extra.get('dose', '?')} e-/px   "
            f"polarity {extra.get('polarity', '?')}"
        )
        cv2.putText(row, text, (pad, label_h - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 0, 1, cv2.LINE_AA)
        panels.append(row)
    header = np.full((label_h, width), 255, np.uint8)
    for k, name in enumerate(("layout (template in field)", "clean SEM", "noisy SEM")):
        cv2.putText(
            header,
            name,
            (pad + k * (cell + pad), label_h - 6),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.5,
            0,
            1,
            cv2.LINE_AA,
        )
    grid = np.vstack([header, *panels])
    dest = Path(dest)
    atomic_write_bytes(dest, encode_png(grid))
    readable_by_others(dest)
    return dest
