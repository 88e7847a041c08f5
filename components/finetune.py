"""Fine-tune the champion on reviewed pairs with the loop's recipe (`semlayout.train.adaptation`):
the new pairs' train split, replay of the original train split at the recipe's ratio, the best
weights on the new pairs' val split kept (the learning curve goes to `history.json`)."""

from kfp.dsl import Dataset, Input, Model, Output


def finetune(
    new_shards: Input[Dataset],
    original_shards: Input[Dataset],
    mlflow_uri: str,
    model_name: str,
    base_model: str,
    overrides: str,
    recipe: str,
    model: Output[Model],
):
    """`base_model`: a checkpoint folder or models:/ URI; empty -> models:/<model_name>@champion.
    `recipe`: JSON of `semlayout.train.recipe.AdaptConfig` values; `overrides`: JSON dotted-key
    overrides of the champion's experiment config (e.g. {"train.precision": "fp32"})."""
    import json
    import shutil
    import tempfile
    from pathlib import Path

    from semlayout.model_uri import ModelUri
    from semlayout.registry import CHAMPION, Registry
    from semlayout.train.adaptation import adapt
    from semlayout.train.recipe import adapt_config
    from semlayout_components.common import Stopwatch, parse_json_object

    source = base_model or str(ModelUri(model_name, alias=CHAMPION))
    init_from = Registry.local_checkpoint(source, mlflow_uri or None)
    acfg = adapt_config(parse_json_object(recipe, "adaptation recipe"))
    work = Path(tempfile.mkdtemp(prefix="semlayout-finetune-"))
    with Stopwatch() as sw:
        result = adapt(
            init_from,
            Path(new_shards.path),
            work / "adapted",
            acfg,
            replay_shards=Path(original_shards.path),
            cfg_overrides=parse_json_object(overrides, "config overrides"),
            on_eval=lambda r: print("adaptation", json.dumps(r), flush=True),
        )
    shutil.copytree(result.path, model.path, dirs_exist_ok=True)
    model.metadata.update(
        {
            "base_model": source,
            "recipe": acfg.model_dump(),
            "best_step": result.best_step,
            "steps_run": result.steps_run,
            "seconds": sw.seconds,
        }
    )
    shutil.rmtree(work, ignore_errors=True)
