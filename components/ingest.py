"""Step 1: bring the pairs in — synthesise them, or fetch a pair folder by URI, and validate."""

from kfp.dsl import Dataset, Output


def ingest(
    data_uri: str, n_synth: int, seed: int, pairs: Output[Dataset], reverse_fraction: float = 0.0
):
    """Empty `data_uri` -> `n_synth` synthetic pairs (`reverse_fraction` of them in reversed \
contrast, polarity -1); else a pair folder, `s3://` folder or intake prefix."""
    import shutil
    from pathlib import Path

    from semlayout.data.pairs import read_manifest
    from semlayout.errors import SemlayoutError
    from semlayout_components.common import Stopwatch, tree_sha256

    dest = Path(pairs.path)
    with Stopwatch() as sw:
        if not data_uri:
            from semlayout.data.sem_physics import PhysicsRanges
            from semlayout.data.synth import synthesize

            if n_synth < 1:
                raise SemlayoutError(f"n_synth={n_synth}: expected >= 1 when no data URI is given")
            ranges = PhysicsRanges(reverse_fraction=reverse_fraction)
            synthesize(dest, n=n_synth, seed=seed, ranges=ranges, workers=2, progress=False)
        elif data_uri.startswith("s3://"):
            from semlayout.storage import open_store

            if any(k.startswith("batches/") for k in open_store(data_uri).list("batches/")):
                from semlayout.intake_batches import download_batches

                download_batches(data_uri, dest)
            else:
                from semlayout.storage import fetch_to_local

                fetch_to_local(data_uri, dest)
        else:
            from semlayout.storage import fetch_to_local

            src = fetch_to_local(data_uri, dest)
            read_manifest(src)  # refuse a non-pair folder before copying anything
            shutil.copytree(src, dest, dirs_exist_ok=True)
        records = read_manifest(dest)
        if not records:
            raise SemlayoutError(
                f"data set {data_uri or '(synthetic)'} has no pairs: manifest.csv is empty"
            )
    pairs.metadata.update(
        {
            "n_pairs": len(records),
            "source": data_uri
            or f"synth:n={n_synth},seed={seed},reverse_fraction={reverse_fraction}",
            "content_sha256": tree_sha256(dest),
            "seconds": sw.seconds,
        }
    )
