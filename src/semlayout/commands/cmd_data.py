"""`semlayout synth` and `semlayout gds-clips`: where pair folders come from."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from semlayout.errors import SemlayoutError


def _parse_range(text: str | None, name: str) -> tuple[float, float] | None:
    if text is None:
        return None
    parts = [p.strip() for p in text.replace(":", ",").split(",") if p.strip()]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise SemlayoutError(f"{name} '{text}': expected LOW,HIGH numbers, e.g. 3,3000") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or values[0] > values[1]:
        raise SemlayoutError(f"{name} '{text}': expected LOW,HIGH with LOW <= HIGH, e.g. 3,3000")
    return values[0], values[1]


def synth(
    out: Annotated[Path, typer.Argument(help="output pair folder (replaced atomically)")],
    n: Annotated[int, typer.Option("--n", help="number of pairs")] = 200,
    seed: Annotated[int, typer.Option("--seed", help="same seed -> byte-identical files")] = 0,
    mix: Annotated[
        str | None,
        typer.Option(
            "--mix",
            help="family weights, e.g. line_space=0.5,via_array=0.2 "
            "(default: imbalanced mix of all)",
        ),
    ] = None,
    dose_range: Annotated[
        str | None,
        typer.Option(
            "--dose-range", help="electrons/pixel LOW,HIGH, drawn log-uniformly (default 2,3000)"
        ),
    ] = None,
    reverse_fraction: Annotated[
        float | None,
        typer.Option(
            "--reverse-fraction",
            help="share of images with reversed polarity (default 0: one layer, one contrast)",
        ),
    ] = None,
    rotation_range: Annotated[
        str | None,
        typer.Option(
            "--rotation-range",
            help="field rotation in degrees LOW,HIGH, e.g. -1,1 (default 0: none)",
        ),
    ] = None,
    magnification_range: Annotated[
        str | None,
        typer.Option(
            "--magnification-range",
            help="field magnification LOW,HIGH, e.g. 0.98,1.02 (default 1: none)",
        ),
    ] = None,
    particle_fraction: Annotated[
        float | None,
        typer.Option(
            "--particle-fraction",
            help="share of images with 1-4 bright particles on the sample (default 0)",
        ),
    ] = None,
    preview: Annotated[
        Path | None,
        typer.Option(
            "--preview", help="also write a PNG grid: layout | clean SEM | noisy SEM per family"
        ),
    ] = None,
    workers: Annotated[
        int, typer.Option("--workers", help="processes (default: min(2, CPUs))")
    ] = 0,
) -> None:
    """Synthesise SEM/layout pairs with ground-truth offsets (manifest.csv, sem/, layout/, clean/, \
truth.csv)."""
    from dataclasses import replace

    from semlayout.data.sem_physics import PhysicsRanges
    from semlayout.data.synth import synthesize

    changes: dict[str, Any] = {
        "dose": _parse_range(dose_range, "--dose-range"),
        "reverse_fraction": reverse_fraction,
        "rotation_deg": _parse_range(rotation_range, "--rotation-range"),
        "magnification": _parse_range(magnification_range, "--magnification-range"),
        "particle_fraction": particle_fraction,
    }
    ranges = replace(PhysicsRanges(), **{k: v for k, v in changes.items() if v is not None})
    if workers < 0:
        raise SemlayoutError(f"--workers {workers}: expected >= 1 (or 0 for automatic)")
    workers = workers or min(2, os.cpu_count() or 1)
    path = synthesize(out, n, seed, mix=mix, ranges=ranges, preview=preview, workers=workers)
    typer.echo(f"wrote {n} pairs to {path}" + (f" (preview {preview})" if preview else ""))


def gds_clips(
    gds_file: Annotated[Path, typer.Argument(help="GDSII file")],
    layer: Annotated[int, typer.Option("--layer", help="GDS layer number")],
    pixel_nm: Annotated[float, typer.Option("--pixel-nm", help="pixel size in nm")],
    out: Annotated[Path, typer.Option("--out", help="output folder (replaced atomically)")],
    datatype: Annotated[
        int | None, typer.Option("--datatype", help="GDS datatype (default: all)")
    ] = None,
    cell: Annotated[
        str | None, typer.Option("--cell", help="cell name (default: the single top cell)")
    ] = None,
    stride_nm: Annotated[
        float | None,
        typer.Option("--stride-nm", help="tiling step in nm (default: one clip width, no overlap)"),
    ] = None,
    max_clips: Annotated[
        int | None, typer.Option("--max-clips", help="stop after this many clips")
    ] = None,
    render_sem: Annotated[
        bool,
        typer.Option(
            "--render-sem",
            help="also render synthetic SEMs: OUT becomes a pair folder with truth.csv",
        ),
    ] = False,
    seed: Annotated[
        int, typer.Option("--seed", help="seed for --render-sem physics and offsets")
    ] = 0,
) -> None:
    """Rasterise 250x250 layout clips from a GDSII layer (layout/<id>.png + clips.csv)."""
    from semlayout.data.gds import gds_clips as run

    result = run(
        gds_file,
        layer=layer,
        pixel_nm=pixel_nm,
        out_dir=out,
        datatype=datatype,
        cell=cell,
        stride_nm=stride_nm,
        max_clips=max_clips,
        render_sem=render_sem,
        seed=seed,
    )
    typer.echo(
        f"wrote {result.n_clips} clips to {result.out_dir}"
        + (" with rendered SEMs" if render_sem else "")
    )


def register(app: typer.Typer) -> None:
    app.command("synth")(synth)
    app.command("gds-clips")(gds_clips)
