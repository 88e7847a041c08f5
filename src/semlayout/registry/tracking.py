"""MLflow plumbing: which tracking URI, a check that fails in seconds instead of hanging on
MLflow's HTTP retries, errors users can read, and scoping MLflow's global URI to a block.

MLflow 3.17 notes: the file store is gone, so the local default is
`sqlite:///$PWD/outputs/mlflow/mlflow.db` with artifacts in `outputs/mlflow/artifacts`.
"""

from __future__ import annotations

import contextlib
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from semlayout.errors import SemlayoutError

_URI_LOCK = threading.RLock()


def default_tracking_uri() -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    return f"sqlite:///{Path.cwd() / 'outputs' / 'mlflow' / 'mlflow.db'}"


def sqlite_path(uri: str) -> Path | None:
    # sqlite:////abs/path.db -> /abs/path.db ; sqlite:///rel/path.db -> rel/path.db
    # (SQLAlchemy's rule)
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :].split("?", 1)[0])
    return None


def registry_missing(tracking_uri: str | None) -> bool:
    """True when the URI names a SQLite registry whose file does not exist yet (a first run)."""
    db = sqlite_path((tracking_uri or "").strip() or default_tracking_uri())
    return db is not None and not db.is_file()


def check_tracking_uri(tracking_uri: str | None, create: bool = False) -> str:
    """Resolve the URI and make sure it answers, so nothing hangs on MLflow's long HTTP retries.

    `create=False` (read-only commands): a missing SQLite file is an error instead of a new,
    empty registry appearing somewhere by accident.
    """
    uri = (tracking_uri or "").strip() or default_tracking_uri()
    db = sqlite_path(uri)
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
        "sqlite:////abs/path/mlflow.db, http(s)://host:port or a database URI "
        "(postgresql, mysql, mssql)"
    )


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


@contextlib.contextmanager
def no_progress_bars() -> Iterator[None]:
    """MLflow's artifact download progress bars off for a block (they are noise in a CLI)."""
    prev = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        yield
    finally:
        if prev is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = prev
