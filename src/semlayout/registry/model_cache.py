"""Local checkpoint folders for registered versions: downloaded once, atomically, into
`$SEMLAYOUT_CACHE_DIR/models/<registry>/<name>/<version>-<source hash>/checkpoint/`
(a killed download leaves no folder that looks complete), with the version's drift reference
beside it in `drift/` when it was registered with one (`drift_reference_of`). mlflow is
imported inside."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from semlayout.errors import SemlayoutError
from semlayout.model_uri import ModelUri
from semlayout.registry.audit_tags import to_json
from semlayout.registry.tracking import mlflow_errors, no_progress_bars, use_tracking_uri

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion


# the version tag naming the run artifact folder of the drift reference registered with it
DRIFT_TAG = "drift_reference"
DRIFT_ARTIFACTS = "drift"


def drift_reference_of(ckpt: Path) -> Path | None:
    """The drift reference folder a registered version's checkpoint came with, if any."""
    folder = ckpt.parent / DRIFT_ARTIFACTS
    return folder if (folder / "reference_stats.json").is_file() else None


def cache_root() -> Path:
    from semlayout.cache import cache_dir

    return cache_dir("models")


def checkpoint_folder(model: str | os.PathLike[str]) -> Path:
    """A model given as a local checkpoint folder (anything but a `models:/` URI)."""
    text = str(model)
    if "://" in text or text.startswith("runs:/"):
        raise SemlayoutError(
            f"model '{text}' is not supported: expected a checkpoint folder or models:/NAME@ALIAS"
        )
    path = Path(text)
    if not path.is_dir():
        raise SemlayoutError(f"checkpoint folder not found: {path}")
    return path


def _complete(ckpt: Path) -> bool:
    return (ckpt / "config.json").is_file() and (ckpt / "weights.safetensors").is_file()


def download_checkpoint(tracking_uri: str, name: str, mv: ModelVersion) -> Path:
    """The checkpoint folder of version `mv` of model `name`, from the cache or downloaded."""
    key = hashlib.sha256(f"{tracking_uri}|{mv.source}|{mv.run_id}".encode()).hexdigest()[:12]
    dest = (
        cache_root()
        / hashlib.sha256(tracking_uri.encode()).hexdigest()[:10]
        / name
        / f"{mv.version}-{key}"
    )
    ckpt = dest / "checkpoint"
    if _complete(ckpt):
        return ckpt
    from semlayout.atomic import atomic_dir

    # another process may finish the same download first: keep its (complete) folder, so a
    # reader of that folder never sees it replaced; a broken leftover is overwritten
    try:
        with atomic_dir(dest, overwrite=dest.exists()) as tmp:
            _download_into(tmp, tracking_uri, name, mv)
    except OSError:
        # FileExistsError / ENOTEMPTY: someone else's complete download landed first
        if not _complete(ckpt):
            raise
    return ckpt


def _download_into(tmp: Path, tracking_uri: str, name: str, mv: ModelVersion) -> None:
    import mlflow

    with no_progress_bars():
        with (
            mlflow_errors(f"artifacts of model '{name}' version {mv.version}"),
            use_tracking_uri(tracking_uri),
        ):
            mlflow.artifacts.download_artifacts(
                artifact_uri=str(ModelUri(name, version=str(mv.version))),
                dst_path=str(tmp / "model"),
                tracking_uri=tracking_uri,
            )
        drift = (mv.tags or {}).get(DRIFT_TAG)
        if drift:
            with (
                mlflow_errors(f"drift reference of model '{name}' version {mv.version}"),
                use_tracking_uri(tracking_uri),
            ):
                mlflow.artifacts.download_artifacts(
                    run_id=mv.run_id,
                    artifact_path=drift,
                    dst_path=str(tmp / "drift-download"),
                    tracking_uri=tracking_uri,
                )
            (tmp / "drift-download" / drift).rename(tmp / DRIFT_ARTIFACTS)
    src = tmp / "model" / "artifacts" / "checkpoint"
    if not (src / "config.json").is_file():
        raise SemlayoutError(
            f"model '{name}' version {mv.version} holds no semlayout checkpoint "
            "(artifacts/checkpoint)"
        )
    src.rename(tmp / "checkpoint")
    (tmp / "version.json").write_text(
        to_json(
            {
                "name": name,
                "version": mv.version,
                "source": mv.source,
                "run_id": mv.run_id,
                "tracking_uri": tracking_uri,
            }
        )
    )
    shutil.rmtree(tmp / "model", ignore_errors=True)
    shutil.rmtree(tmp / "drift-download", ignore_errors=True)
