"""`semlayout shard ALIGNED... --out SHARDS`: stratified train/val/test shards + drift reference."""

from __future__ import annotations

from pathlib import Path

import typer

from semlayout.errors import SemlayoutError


def _parse_limits(limits: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in limits:
        path, sep, n = item.rpartition("=")
        if not sep or not path or not n.strip().isdigit() or int(n) < 1:
            raise SemlayoutError(f"--limit '{item}' is not PATH=N with N a positive integer")
        out[str(Path(path).resolve())] = int(n)
    return out


def shard(
    aligned: list[Path] = typer.Argument(
        ...,
        metavar="ALIGNED",
        help="aligned pair folder(s) (pair folder + alignment.csv, or SEMs already 250x250), "
        "or existing shard sets (their train split is used, e.g. as a replay sample)",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="output shard folder (replaced atomically)"),
    val: float = typer.Option(0.1, help="validation fraction per family"),
    test: float = typer.Option(0.2, help="test fraction per family"),
    seed: int = typer.Option(0, help="split and sampling seed"),
    shard_size: int = typer.Option(256, "--shard-size", help="pairs per .npz shard"),
    max_per_source: int | None = typer.Option(
        None,
        "--max-per-source",
        help="cap on pairs taken from each input (random sample by seed)",
    ),
    limit: list[str] = typer.Option(
        [],
        "--limit",
        help="PATH=N: cap on pairs taken from one input (repeatable; overrides --max-per-source)",
    ),
) -> None:
    """Split aligned pairs by pattern type into train/val/test .npz shards and write reference \
statistics."""
    from semlayout.data.shards import ShardSource, write_shards

    limits = _parse_limits(limit)
    known: set[str] = set()
    for (
        folder
    ) in aligned:  # the same pairs twice would land in different splits (a train/test leak)
        if str(folder.resolve()) in known:
            raise SemlayoutError(f"input {folder} is given twice; give each folder once")
        known.add(str(folder.resolve()))
    for p in limits:
        if p not in known:
            raise SemlayoutError(f"--limit names {p}, which is not one of the inputs")
    sources = [ShardSource(p, limits.get(str(p.resolve()))) for p in aligned]
    index = write_shards(
        sources,
        out,
        val=val,
        test=test,
        seed=seed,
        shard_size=shard_size,
        max_per_source=max_per_source,
        progress=True,
    )
    fams = index["families"]
    width = max(len(f) for f in [*fams, "family"])
    print(f"{'family':<{width}}  {'train':>6} {'val':>6} {'test':>6}")
    for f in fams:
        row = [index["splits"][s]["families"].get(f, 0) for s in ("train", "val", "test")]
        print(f"{f:<{width}}  {row[0]:>6} {row[1]:>6} {row[2]:>6}")
    totals = [index["splits"][s]["n"] for s in ("train", "val", "test")]
    print(f"{'total':<{width}}  {totals[0]:>6} {totals[1]:>6} {totals[2]:>6}")
    print(f"wrote {out} (index.json, reference_stats.json, has_clean={index['has_clean']})")


def register(app: typer.Typer) -> None:
    app.command("shard")(shard)
