"""Step 4: train both generators (G_A SEM->layout, G_B layout->SEM) and their discriminators.

One process on the CPU or one GPU; with `gpus > 1` the same training runs under
`torchrun --standalone --nproc-per-node=gpus` (DDP inside the task; multi-node
training is the Kubeflow Trainer `TrainJob` in k8s/).
"""

from kfp.dsl import Dataset, Input, Model, Output


def train(shards: Input[Dataset], config: str, overrides: str, gpus: int, model: Output[Model]):
    import shutil
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path

    from semlayout_components.common import Stopwatch, load_experiment_config, read_json

    cfg = load_experiment_config(config, overrides)
    work = Path(tempfile.mkdtemp(prefix="semlayout-train-"))
    started_ms = int(time.time() * 1000)
    with Stopwatch() as sw:
        if gpus > 1:
            cfg_file = work / "config.json"
            cfg.save_json(cfg_file)
            cmd = [
                "torchrun",
                "--standalone",
                f"--nproc-per-node={gpus}",
                "-m",
                "semlayout.cli",
                "train",
                "--config",
                str(cfg_file),
                "--data",
                shards.path,
                "--out",
                str(work / "run"),
            ]
            subprocess.run(cmd, check=True, stdout=sys.stdout, stderr=sys.stderr)
            final = work / "run" / "final"
        else:
            from semlayout.train.loop import train as train_loop

            final = Path(train_loop(cfg, Path(shards.path), work / "run"))
    ended_ms = int(time.time() * 1000)
    # the artifact is the checkpoint folder (weights + config.json [+ onnx]) and the curves:
    # per-epoch (history.json) and per-step (steps.jsonl)
    shutil.copytree(final, model.path, dirs_exist_ok=True)
    for curves in ("history.json", "steps.jsonl"):
        if (work / "run" / curves).is_file():
            shutil.copy2(work / "run" / curves, Path(model.path) / curves)
    meta = read_json(Path(model.path) / "config.json")
    model.metadata.update(
        {
            "config": config,
            "step": meta.get("step"),
            "epoch": meta.get("epoch"),
            "gpus": gpus,
            "seconds": sw.seconds,
            "started_ms": started_ms,
            "ended_ms": ended_ms,
        }
    )
    shutil.rmtree(work, ignore_errors=True)
