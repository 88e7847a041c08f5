"""MLflow plumbing: which tracking URI, a client that fails in seconds, errors users can read,
and logging one training run (params, metrics, config, the checkpoint as a pyfunc model).

MLflow 3.17 notes: the file store is gone, so the local default is
`sqlite:///$PWD/outputs/mlflow/mlflow.db` with artifacts in `outputs/mlflow/artifacts`.
The checkpoint folder is logged ONCE, inside the pyfunc model (`artifacts/checkpoint/`),
so a 500 MB checkpoint is not stored twice; the run itself carries `config.json`,
`metrics.json`, the report and the sample grid.
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
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from semlayout.errors import SemlayoutError

PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")
MODEL_NAME_IN_RUN = "model"
CHECKPOINT_FILES = ("config.json", "weights.safetensors", "sem2layout.onnx", "layout2sem.onnx")
TAG_MODEL_URI = "semlayout.model_uri"
TAG_CONFIG_HASH = "semlayout.config_hash"
TAG_CHECKPOINT_STEP = "semlayout.checkpoint_step"
_URI_LOCK = threading.RLock()


def default_tracking_uri() -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    return f"sqlite:///{Path.cwd() / 'outputs' / 'mlflow' / 'mlflow.db'}"


def _sqlite_path(uri: str) -> Path | None:
    # sqlite:////abs/path.db -> /abs/path.db ; sqlite:///rel/path.db -> rel/path.db (SQLAlchemy's rule)
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :].split("?", 1)[0])
    return None


def registry_missing(tracking_uri: str | None) -> bool:
    """True when the URI names a SQLite registry whose file does not exist yet (a first run)."""
    db = _sqlite_path((tracking_uri or "").strip() or default_tracking_uri())
    return db is not None and not db.is_file()


def check_tracking_uri(tracking_uri: str | None, create: bool = False) -> str:
    """Resolve the URI and make sure it answers, so nothing hangs on MLflow's long HTTP retries.

    `create=False` (read-only commands): a missing SQLite file is an error instead of a new,
    empty registry appearing somewhere by accident.
    """
    uri = (tracking_uri or "").strip() or default_tracking_uri()
    db = _sqlite_path(uri)
    if db is not None:
        if create:
            db.parent.mkdir(parents=True, exist_ok=True)
        elif not db.is_file():
            raise SemlayoutError(
                f"no MLflow registry at {uri} (file {db} does not exist); "
                "pass --tracking-uri or set MLFLOW_TRACKING_URI"
            )
        if db.is_file() and db.stat().st_size > 0:
            with open(db, "rb") as fh:
                if fh.read(16) != b"SQLite format 3\x00":
                    raise SemlayoutError(f"tracking URI {uri}: {db} is not an SQLite database")
        return uri
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(
                url, timeout=float(os.environ.get("SEMLAYOUT_MLFLOW_TIMEOUT", "5"))
            ):
                pass
        except urllib.error.HTTPError as err:
            if err.code >= 500:
                raise SemlayoutError(
                    f"MLflow tracking server {uri} answered {err.code} on /health"
                ) from None
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            raise SemlayoutError(f"cannot reach MLflow tracking server {uri}: {reason}") from None
        return uri
    if uri.startswith(("postgresql", "mysql", "mssql", "databricks")):
        return uri
    if uri.startswith("file:") or "://" not in uri:
        raise SemlayoutError(
            f"tracking URI '{uri}' is a file store, which MLflow 3 no longer supports; "
            "use sqlite:////abs/path/mlflow.db or http://host:port"
        )
    raise SemlayoutError(
        f"tracking URI '{uri}': unsupported scheme '{uri.split('://', 1)[0]}'; expected "
        "sqlite:////abs/path/mlflow.db, http(s)://host:port or a database URI (postgresql, mysql, mssql)"
    )


def client(checked_uri: str) -> Any:
    """An MlflowClient for a URI that already went through `check_tracking_uri`."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=checked_uri, registry_uri=checked_uri)


@contextlib.contextmanager
def use_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's global tracking/registry URI at `uri` for the block.

    Needed because parts of MLflow 3.17 ignore a client's URI (the SQL registry looks up
    logged models through a default `MlflowClient()`); restored afterwards.
    """
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    # the raw globals and variables, not get_*_uri() (which resolve defaults): restoring those
    # would pin the defaults and leak MLFLOW_TRACKING_URI into the environment
    # one block at a time: interleaved save/restore from threads would leak a URI
    with _URI_LOCK:
        prev_t, prev_r = tracking_utils._tracking_uri, registry_utils._registry_uri
        prev_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(prev_t)  # type: ignore[arg-type]  # None restores the default
            registry_utils._registry_uri = prev_r
            for k, v in prev_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@contextlib.contextmanager
def mlflow_errors(what: str) -> Iterator[None]:
    """Turn MLflow's "not found" and connection failures into one-line user errors."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as err:
        code = getattr(err, "error_code", "")
        msg = str(getattr(err, "message", err)).splitlines()[0][:300]
        if code == "RESOURCE_DOES_NOT_EXIST" or "not found" in msg.lower():
            raise SemlayoutError(f"{what}: not found ({msg})") from None
        if "max retries" in msg.lower() or "connection" in msg.lower():
            raise SemlayoutError(
                f"{what}: cannot reach the MLflow tracking server ({msg})"
            ) from None
        raise


def config_hash(config: Any) -> str:
    """sha256 of the canonical JSON of a config (ExperimentConfig or dict)."""
    data = config.to_dict() if hasattr(config, "to_dict") else config
    return hashlib.sha256(
        json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


_METRIC_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-. /]")


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


def _experiment_id(c: Any, experiment: str, tracking_uri: str) -> str:
    exp = c.get_experiment_by_name(experiment)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise SemlayoutError(
                f"MLflow experiment '{experiment}' is deleted; restore it or pick another name"
            )
        return str(exp.experiment_id)
    location = None
    db = _sqlite_path(tracking_uri)
    if db is not None:
        # keep artifacts beside the database instead of MLflow's ./mlruns in whatever cwd
        location = (db.parent / "artifacts").absolute().as_uri()
    return str(c.create_experiment(experiment, artifact_location=location))


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


def _stage_checkpoint(checkpoint_dir: Path, tmp: Path, include_train_state: bool) -> Path:
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


def log_training_run(
    tracking_uri: str | None,
    experiment: str,
    checkpoint_dir: str | os.PathLike[str],
    metrics: dict[str, Any],
    params: dict[str, Any] | None = None,
    config: Any = None,
    report_html: str | os.PathLike[str] | None = None,
    sample_grid_png: str | os.PathLike[str] | None = None,
    tags: dict[str, str] | None = None,
    include_train_state: bool = False,
) -> str:
    """Log one finished training run; returns its run id.

    Logged: `params` and the config (flattened as `cfg.*` params), `metrics` flattened
    (`sem2layout.ssim`, ...), `metrics.json` and `config.json` artifacts, the report and
    sample grid, and a pyfunc model (`model`) holding the checkpoint folder, built from
    code (`pyfunc_model.py`): nothing is pickled.
    """
    import mlflow

    ckpt = Path(checkpoint_dir)
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
    cfg_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    uri = check_tracking_uri(tracking_uri, create=True)
    c = client(uri)
    with mlflow_errors(f"MLflow experiment '{experiment}'"):
        exp_id = _experiment_id(c, experiment, uri)
    run_tags = {TAG_CONFIG_HASH: config_hash(cfg_dict), **(tags or {})}
    try:
        meta = json.loads((ckpt / "config.json").read_text())
        if isinstance(meta, dict) and "step" in meta:
            run_tags[TAG_CHECKPOINT_STEP] = str(meta["step"])
    except (OSError, json.JSONDecodeError):
        pass

    with (
        use_tracking_uri(uri),
        mlflow.start_run(experiment_id=exp_id, tags=run_tags) as run,
        tempfile.TemporaryDirectory(prefix="semlayout-log-") as tmp_s,
    ):
        tmp = Path(tmp_s)
        all_params = {**flatten_params(params or {}), **flatten_params(cfg_dict, "cfg")}
        if all_params:
            mlflow.log_params(all_params)
        flat = flatten_numbers(metrics)
        if flat:
            mlflow.log_metrics(flat)
        mlflow.log_dict(metrics, "metrics.json")
        mlflow.log_dict(cfg_dict, "config.json")
        if report_html is not None:
            mlflow.log_artifact(str(report_html), "report")
        if sample_grid_png is not None:
            mlflow.log_artifact(str(sample_grid_png), "samples")
        staged = _stage_checkpoint(ckpt, tmp, include_train_state)
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME_IN_RUN,
            python_model=str(PYFUNC_FILE),
            artifacts={"checkpoint": str(staged)},
            pip_requirements=pip_requirements(),
        )
        mlflow.set_tag(TAG_MODEL_URI, info.model_uri)
        return str(run.info.run_id)
