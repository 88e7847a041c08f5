"""Fine-tune step: the new pairs' TRAIN split plus a replay sample of the original TRAIN split.

Both inputs are shard sets; `write_shards` reads a shard set's train split only, so
neither test split leaks into training. No test split here (test=0): the fine-tuned
model is judged on the new pairs' test split and the original test shard.
"""

from kfp.dsl import Dataset, Input, Output


def shard_mix(
    new_shards: Input[Dataset],
    original_shards: Input[Dataset],
    replay_n: int,
    seed: int,
    mixed: Output[Dataset],
):
    from pathlib import Path

    from semlayout.data.shards import ShardSource, write_shards
    from semlayout_components.common import Stopwatch

    sources = [ShardSource(Path(new_shards.path), None, "reviewed")]
    if replay_n > 0:
        sources.append(ShardSource(Path(original_shards.path), replay_n, "replay"))
    with Stopwatch() as sw:
        index = write_shards(sources, Path(mixed.path), val=0.1, test=0.0, seed=seed)
    mixed.metadata.update(
        {
            "splits": {k: v["n"] for k, v in index["splits"].items()},
            "sources": index["splits"]["train"].get("sources", {}),
            "seconds": sw.seconds,
        }
    )
