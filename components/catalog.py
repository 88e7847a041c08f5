"""The pipeline steps as KFP components, built for one container image at compile time.

Each module in this package holds one step as a plain function: its body is what runs in
the step's process (imports inside the body, one call into `semlayout`), its annotations
are the step's KFP inputs and outputs. `steps(image)` turns them into lightweight
components whose `base_image` is `image` — chosen by whoever compiles the pipeline
(`semlayout pipeline compile --image`, `ClusterSettings.image`), never read from the
environment at import time. Locally the SubprocessRunner ignores the image; on the cluster
every step pulls it.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

from semlayout import __version__

DEFAULT_REPOSITORY = "ghcr.io/semlayout/semlayout"


def project_image() -> str:
    """The default image: $SEMLAYOUT_IMAGE, else the release image tagged with the version."""
    return os.environ.get("SEMLAYOUT_IMAGE") or f"{DEFAULT_REPOSITORY}:{__version__}"


@dataclass(frozen=True)
class Steps:
    """Every step as a KFP component for one image (attributes named as the step functions)."""

    image: str
    ingest: Any
    align_qc: Any
    shard: Any
    shard_mix: Any
    train: Any
    finetune: Any
    evaluate: Any
    evaluate_finetune: Any
    track: Any
    register: Any
    gate_failed: Any
    drift_check: Any


@functools.cache
def steps(image: str | None = None) -> Steps:
    """The components for `image` (default `project_image()`); built once per image."""
    from kfp import dsl

    from semlayout_components import (
        align_qc,
        drift_check,
        evaluate,
        evaluate_finetune,
        finetune,
        gate_failed,
        ingest,
        register,
        shard,
        shard_mix,
        track,
        train,
    )

    image = image or project_image()
    modules = (
        ingest,
        align_qc,
        shard,
        shard_mix,
        train,
        finetune,
        evaluate,
        evaluate_finetune,
        track,
        register,
        gate_failed,
        drift_check,
    )
    built = {
        m.__name__.rsplit(".", 1)[1]: dsl.component(
            getattr(m, m.__name__.rsplit(".", 1)[1]), base_image=image, install_kfp_package=False
        )
        for m in modules
    }
    return Steps(image=image, **built)
