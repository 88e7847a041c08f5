"""`semlayout align PAIRS --out OUT`: template matching + QC over a pair folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def register(app: typer.Typer) -> None:
    @app.command("align")
    def align(
        pairs: Path = typer.Argument(..., help="pair folder with manifest.csv (raw 304x304 SEMs)"),
        out: Path = typer.Option(
            ..., "--out", help="aligned pair folder to write (QC-passed pairs + alignment.csv)"
        ),
        blur: float = typer.Option(
            0.0, "--blur", help="extra Gaussian sigma (px) on the SEM before matching"
        ),
        min_score: float = typer.Option(
            None, "--min-score", help="QC: least multiple-correlation score at the peak"
        ),
        min_confidence: float = typer.Option(
            None,
            "--min-confidence",
            help="QC: least z-score separating the peak from the best non-equivalent one",
        ),
        min_localization: float = typer.Option(
            None,
            "--min-localization",
            help="QC: least z-score separating the peak from its neighbouring offsets",
        ),
        polarity_prior: str = typer.Option(
            "auto",
            "--polarity-prior",
            help="the data set's polarity for pairs whose own is unclear: auto (estimated from "
            "the confident pairs, per pattern type), bright, dark, or none (refuse them)",
        ),
        no_distortion: bool = typer.Option(
            False,
            "--no-distortion",
            help="do not estimate or undo field rotation/magnification (faster)",
        ),
        workers: int = typer.Option(
            1, "--workers", help="processes (one per core helps on large folders)"
        ),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="tqdm progress bar"),
    ) -> None:
        """Align raw SEMs to their layout templates; write OUT (cropped 250x250 pairs) and
        OUT/alignment.csv."""
        from semlayout.data.align import AlignConfig
        from semlayout.data.align_folder import align_folder
        from semlayout.data.align_polarity import prior_table

        prior = prior_table(polarity_prior)
        kw: dict[str, Any] = {"blur": blur, "correct_distortion": not no_distortion}
        if min_score is not None:
            kw["min_score"] = min_score
        if min_confidence is not None:
            kw["min_confidence"] = min_confidence
        if min_localization is not None:
            kw["min_localization"] = min_localization
        summary = align_folder(
            pairs, out, AlignConfig(**kw), workers=workers, progress=progress, prior=prior
        )
        reasons = ", ".join(f"{k}={v}" for k, v in summary.reasons.items())
        typer.echo(
            f"aligned {summary.n_pairs} pairs: {summary.n_passed} passed QC ({reasons}) "
            f"in {summary.seconds:.1f} s ({summary.pairs_per_s:.0f} pairs/s) -> {summary.out_dir}"
        )
        typer.echo(
            f"polarity prior: {summary.polarity_prior}; {summary.n_prior} passed pairs "
            "placed or labelled with it"
        )
