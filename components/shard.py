"""Step 3: stratified train/val/test shards and the drift reference statistics."""

from kfp.dsl import Dataset, Input, Output


def shard(
    aligned: Input[Dataset],
    val: float,
    test: float,
    seed: int,
    shards: Output[Dataset],
    split_by: str = "id",
):
    """`split_by`: "id" or "content" (reviewed pairs: the same pairs, the same split on every
    run, whatever ids they came back with)."""
    from pathlib import Path

    from semlayout.data.shards import write_shards
    from semlayout_components.common import Stopwatch

    with Stopwatch() as sw:
        index = write_shards(
            Path(aligned.path), Path(shards.path), val=val, test=test, seed=seed, split_by=split_by
        )
    shards.metadata.update(
        {
            "splits": {k: v["n"] for k, v in index["splits"].items()},
            "families": index.get("families", []),
            "seconds": sw.seconds,
        }
    )
