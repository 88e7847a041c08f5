"""Fine-tune the champion on reviewed pairs (+ replay): its weights, a low LR, a few epochs."""

from kfp.dsl import Dataset, Input, Model, Output


def finetune(
    shards: Input[Dataset],
    mlflow_uri: str,
    model_name: str,
    base_model: str,
    config: str,
    overrides: str,
    model: Output[Model],
):
    """`base_model`: a checkpoint folder or models:/ URI; empty -> models:/<model_name>@champion."""
    import shutil
    import tempfile
    from pathlib import Path

    from semlayout.model_uri import ModelUri
    from semlayout.registry import CHAMPION, Registry
    from semlayout.train.loop import train as train_loop
    from semlayout_components.common import Stopwatch, load_experiment_config, read_json

    source = base_model or str(ModelUri(model_name, alias=CHAMPION))
    init_from = Registry.local_checkpoint(source, mlflow_uri or None)
    # the architecture comes from the champion's own config; the run settings (lr, epochs) from ours
    base_cfg = read_json(init_from / "config.json")["config"]
    run_cfg = load_experiment_config(config, overrides)
    from semlayout.config import config_from_dict

    cfg = config_from_dict(
        {**base_cfg, "train": run_cfg.train.model_dump(mode="json")}, source=source
    )
    work = Path(tempfile.mkdtemp(prefix="semlayout-finetune-"))
    with Stopwatch() as sw:
        final = Path(train_loop(cfg, Path(shards.path), work / "run", init_from=init_from))
    shutil.copytree(final, model.path, dirs_exist_ok=True)
    if (work / "run" / "history.json").is_file():
        shutil.copy2(work / "run" / "history.json", Path(model.path) / "history.json")
    model.metadata.update(
        {
            "base_model": source,
            "lr": cfg.train.lr,
            "epochs": cfg.train.epochs,
            "seconds": sw.seconds,
        }
    )
    shutil.rmtree(work, ignore_errors=True)
