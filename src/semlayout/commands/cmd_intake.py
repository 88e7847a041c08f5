"""`semlayout intake ...`: data engineers upload reviewed pairs to the object store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

group = typer.Typer(
    help="Reviewed-pair intake: validate and upload pair folders, list batches.",
    no_args_is_help=True,
)


def _print_rejects(rejects: list, err: bool = True) -> None:
    for r in rejects:
        typer.echo(f"  rejected {r.id}: {r.reason} - {r.detail}", err=err)


@group.command("upload")
def upload_cmd(
    pairs_dir: Annotated[Path, typer.Argument(help="pair folder (manifest.csv, sem/, layout/)")],
    to: Annotated[str, typer.Option("--to", help="s3://BUCKET/PREFIX or a local folder")],
    skip_invalid: Annotated[
        bool,
        typer.Option(
            "--skip-invalid",
            help="upload the valid pairs and list the rejects (default: refuse the batch)",
        ),
    ] = False,
    uploader: Annotated[
        str | None, typer.Option("--uploader", help="recorded in batch.json (default: login name)")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bar")] = False,
    workers: Annotated[int, typer.Option("--workers", help="parallel object uploads")] = 4,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
    polarity_prior: Annotated[
        str,
        typer.Option(
            "--polarity-prior",
            help="the batch's polarity for pairs whose own is unclear: auto (estimated from "
            "its confident pairs), bright, dark, or none",
        ),
    ] = "auto",
) -> None:
    """Validate every pair, then upload the batch: objects first, manifest last."""
    from semlayout.data.align_polarity import prior_table
    from semlayout.errors import SemlayoutError
    from semlayout.intake import BatchRefused, upload_batch

    if workers < 1:
        raise SemlayoutError(f"--workers {workers}: expected >= 1")

    try:
        result = upload_batch(
            pairs_dir,
            to,
            skip_invalid=skip_invalid,
            uploader=uploader,
            progress=not quiet and not as_json,
            workers=workers,
            polarity_prior=prior_table(polarity_prior),
        )
    except BatchRefused as err:
        _print_rejects(err.rejects)
        raise
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2, default=str))
        return
    _print_rejects(result.rejects, err=False)
    if result.already_complete:
        typer.echo(
            f"batch {result.batch_id} is already uploaded to {result.uri} "
            f"({result.n_pairs} pairs); nothing new uploaded"
        )
        return
    typer.echo(
        f"batch {result.batch_id}: {result.n_pairs} pairs, {len(result.rejects)} rejected, "
        f"{result.objects_uploaded} objects uploaded, {result.objects_skipped} already there "
        f"-> {result.uri}/{result.manifest_key}"
    )


@group.command("list")
def list_cmd(
    uri: Annotated[str, typer.Argument(help="s3://BUCKET/PREFIX or a local folder")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    all_: Annotated[
        bool, typer.Option("--all", help="also show incomplete batches (no manifest yet)")
    ] = False,
) -> None:
    """Batches under an intake prefix with their counts."""
    from semlayout.intake_batches import list_batches

    rows = list_batches(uri, include_incomplete=all_)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"no batches under {uri}")
        return
    typer.echo(
        f"{'batch':<22}{'created':<22}{'uploader':<14}{'pairs':>6}{'rejected':>10}  families"
    )
    for b in rows:
        fam = ", ".join(f"{k}={v}" for k, v in (b["families"] or {}).items())
        state = "" if b["complete"] else "  (incomplete)"
        typer.echo(
            f"{b['batch_id']:<22}{b['created'] or '-':<22}{(b['uploader'] or '-')[:13]:<14}"
            f"{b['pairs'] if b['pairs'] is not None else '-':>6}"
            f"{b['rejected'] if b['rejected'] is not None else '-':>10}  {fam}{state}"
        )
    typer.echo(
        f"{sum(b['pairs'] or 0 for b in rows if b['complete'])} pairs in "
        f"{sum(1 for b in rows if b['complete'])} complete batches"
    )


@group.command("download")
def download_cmd(
    uri: Annotated[str, typer.Argument(help="s3://BUCKET/PREFIX or a local folder")],
    out: Annotated[
        Path, typer.Option("--out", help="local pair folder to write (replaced atomically)")
    ],
    since: Annotated[
        str | None, typer.Option("--since", help="only batches created at/after this ISO time")
    ] = None,
) -> None:
    """Materialise all complete batches as one local pair folder."""
    from semlayout.atomic import check_not_over_inputs
    from semlayout.data.pairs import read_manifest
    from semlayout.intake_batches import download_batches

    check_not_over_inputs(out, intake_store=uri)
    path = download_batches(uri, out, since=since)
    typer.echo(f"wrote {len(read_manifest(path))} pairs to {path}")


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="intake")
