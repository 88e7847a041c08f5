"""What one training run logs (params, metrics, config, the checkpoint as a pyfunc model).

The checkpoint folder is logged ONCE, inside the pyfunc model (`artifacts/checkpoint/`),
so a 500 MB checkpoint is not stored twice; the run itself carries `config.json`,
`metrics.json`, the report and the sample grid. `Registry.log_run` opens the run; the pieces
are here. mlflow is imported inside the functions.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import numbers
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from semlayout.errors import SemlayoutError

PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")
MODEL_NAME_IN_RUN = "model"
CHECKPOINT_FILES = (
    "config.json",
    "weights.safetensors",
    "sem2layout.onnx",
    "layout2sem.onnx",
    "confidence_calibration.json",  # issue 17: fitted at evaluate time, beside the weights
)
TAG_MODEL_URI = "semlayout.model_uri"
TAG_CONFIG_HASH = "semlayout.config_hash"
TAG_CHECKPOINT_STEP = "semlayout.checkpoint_step"
# the contrast polarities the model learned, e.g. "+1,-1" (+1 bright, -1 dark); "+1" for a
# checkpoint made before polarity was recorded. Copied onto the registered model version.
TAG_POLARITIES = "polarities"
_METRIC_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-. /]")

PathLike = str | os.PathLike[str]


def config_hash(config: Any) -> str:
    """sha256 of the canonical JSON of a config (ExperimentConfig or dict)."""
    data = config.to_dict() if hasattr(config, "to_dict") else config
    return hashlib.sha256(
        json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def flatten_numbers(tree: Any, prefix: str = "") -> dict[str, float]:
    """{"sem2layout": {"ssim": 0.9, "per_family": {"line": {"ssim": 0.8}}}} ->
    {"sem2layout.ssim": 0.9, "sem2layout.per_family.line.ssim": 0.8}; finite numbers only."""
    out: dict[str, float] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            key = _METRIC_KEY_BAD.sub("_", str(k))
            out.update(flatten_numbers(v, f"{prefix}.{key}" if prefix else key))
    elif (
        isinstance(tree, numbers.Real) and not isinstance(tree, bool) and math.isfinite(float(tree))
    ):
        out[prefix] = float(tree)
    return out


def flatten_params(tree: Any, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(flatten_params(v, f"{prefix}.{k}" if prefix else str(k)))
    else:
        text = json.dumps(tree) if isinstance(tree, list | tuple) else str(tree)
        out[prefix] = text[:6000]
    return out


def pip_requirements() -> list[str]:
    from semlayout import __version__

    return [
        f"semlayout=={__version__}",
        "torch==2.13.0",
        "numpy",
        "safetensors",
        "pydantic>=2",
        "opencv-python-headless",
        "onnxruntime",
        "pandas",
        "mlflow==3.17.*",
    ]


def checkpoint_config(ckpt: Path, config: Any = None) -> dict[str, Any]:
    """The config to log for checkpoint folder `ckpt` (checked first): `config` as a dict, or
    the one saved in its `config.json`."""
    if not ckpt.is_dir():
        raise SemlayoutError(f"checkpoint folder not found: {ckpt}")
    for required in ("config.json", "weights.safetensors"):
        if not (ckpt / required).is_file():
            raise SemlayoutError(f"{ckpt} is not a checkpoint folder: {required} is missing")
    if config is None:
        try:
            config = json.loads((ckpt / "config.json").read_text()).get("config", {})
        except (OSError, json.JSONDecodeError) as err:
            raise SemlayoutError(f"{ckpt}/config.json is not readable JSON: {err}") from None
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def run_tags(ckpt: Path, cfg_dict: dict[str, Any], tags: dict[str, str] | None) -> dict[str, str]:
    """The run's tags: the config hash, the learned polarities and tool / layer profiles
    (`registry.profile_tags`), the checkpoint's step when it recorded one, `tags`."""
    from semlayout.registry.profile_tags import TAG_PROFILES, profiles_tag

    learned = (cfg_dict.get("polarity") or {}).get("learned") or [1]
    out = {
        TAG_CONFIG_HASH: config_hash(cfg_dict),
        TAG_POLARITIES: ",".join(f"{int(p):+d}" for p in learned),
        **(tags or {}),
    }
    if profiles_tag(cfg_dict):
        out[TAG_PROFILES] = profiles_tag(cfg_dict)
    try:
        meta = json.loads((ckpt / "config.json").read_text())
        if isinstance(meta, dict) and "step" in meta:
            out[TAG_CHECKPOINT_STEP] = str(meta["step"])
    except (OSError, json.JSONDecodeError):
        pass
    return out


def stage_checkpoint(checkpoint_dir: Path, tmp: Path, include_train_state: bool) -> Path:
    if not (checkpoint_dir / "config.json").is_file():
        raise SemlayoutError(f"{checkpoint_dir} is not a checkpoint folder: config.json is missing")
    if not (checkpoint_dir / "weights.safetensors").is_file():
        raise SemlayoutError(
            f"{checkpoint_dir} is not a checkpoint folder: weights.safetensors is missing"
        )
    # the folder's name becomes the artifact name inside the model: artifacts/checkpoint/
    staged = tmp / "checkpoint"
    staged.mkdir()
    names = list(CHECKPOINT_FILES) + (["train_state.pt"] if include_train_state else [])
    for name in names:
        src = checkpoint_dir / name
        if src.is_file():
            with contextlib.suppress(OSError):
                os.link(src, staged / name)
            if not (staged / name).exists():
                shutil.copyfile(src, staged / name)
    return staged


def log_run_contents(
    ckpt: Path,
    metrics: dict[str, Any],
    params: dict[str, Any] | None,
    cfg_dict: dict[str, Any],
    report_html: PathLike | None,
    sample_grid_png: PathLike | None,
    include_train_state: bool,
) -> None:
    """Log into the active run: params (`params` and `cfg.*`), flattened metrics,
    `metrics.json`, `config.json`, the report, the sample grid, and the pyfunc model."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="semlayout-log-") as tmp_s:
        tmp = Path(tmp_s)
        all_params = {**flatten_params(params or {}), **flatten_params(cfg_dict, "cfg")}
        if all_params:
            mlflow.log_params(all_params)
        flat = {k: v for k, v in flatten_numbers(metrics).items() if not _baseline_detail(k)}
        if flat:
            mlflow.log_metrics(flat)
        mlflow.log_dict(metrics, "metrics.json")
        mlflow.log_dict(cfg_dict, "config.json")
        if report_html is not None:  # named report.html whatever the file is called (KFP: report)
            named = tmp / "report.html"
            shutil.copyfile(report_html, named)
            mlflow.log_artifact(str(named))
        if sample_grid_png is not None:
            mlflow.log_artifact(str(sample_grid_png), "samples")
        staged = stage_checkpoint(ckpt, tmp, include_train_state)
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME_IN_RUN,
            python_model=str(PYFUNC_FILE),
            artifacts={"checkpoint": str(staged)},
            pip_requirements=pip_requirements(),
        )
        mlflow.set_tag(TAG_MODEL_URI, info.model_uri)


def _baseline_detail(key: str) -> bool:
    """The Otsu baseline's per-family numbers: in metrics.json, not as run metrics."""
    return ".baseline_otsu.per_family." in key


def read_step_records(folder: Path) -> list[dict[str, Any]]:
    """`steps.jsonl` of a training run (one record per logged step; after a resume the last
    record of a step wins), in step order; [] when there is none."""
    path = folder / "steps.jsonl"
    if not path.is_file():
        return []
    by_step: dict[int, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError, KeyError, TypeError, ValueError):
            rec = json.loads(line)
            by_step[int(rec["step"])] = rec
    return [by_step[k] for k in sorted(by_step)]


def log_curves(client: Any, run_id: str, folder: Path) -> int:
    """The training's curves into run `run_id`, at the time they were measured: per-step
    losses (`train/<loss>`, step = global step) from steps.jsonl and per-epoch records
    (history.json, step = epoch, as `semlayout train --tracking-uri` logs them).
    Returns the number of values logged."""
    from mlflow.entities import Metric

    from semlayout.train.mlflow_logger import step_metrics

    values: list[Metric] = []
    for rec in read_step_records(folder):
        ts = int(float(rec.get("time", 0)) * 1000)
        for key, value in step_metrics(rec).items():
            values.append(Metric(key, value, ts, int(rec["step"])))
    history = folder / "history.json"
    if history.is_file():
        with contextlib.suppress(json.JSONDecodeError, OSError):
            for rec in json.loads(history.read_text()).get("epochs", []):
                for key, value in rec.items():
                    if key in ("epoch", "step") or isinstance(value, bool):
                        continue
                    if isinstance(value, int | float) and math.isfinite(float(value)):
                        # a fine-tune's records are per evaluation (a step, no epoch)
                        at = int(rec.get("epoch", rec.get("step", 0)))
                        values.append(Metric(key, float(value), 0, at))
    for start in range(0, len(values), 1000):  # MLflow's batch limit
        client.log_batch(run_id, metrics=values[start : start + 1000])
    return len(values)


def log_datasets(datasets: list[dict[str, Any]]) -> None:
    """Each {"name", "source", "digest", "context"[, "profile"]} as an MLflow dataset input
    of the active run (MLflow shows them as the run's data sets)."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    for d in datasets:
        source = resolve_dataset_source(d["source"])
        digest = (d.get("digest") or "")[:36] or None
        # MetaDataset: a data set MLflow records by source and digest without loading it
        dataset = MetaDataset(source, name=d["name"], digest=digest)  # type: ignore[abstract]
        mlflow.log_input(dataset, context=d.get("context", "training"))
