"""Cluster settings baked into the compiled pipelines: GPU pool, limits, retries, secrets.

Compile-time options (CLI flags or `SEMLAYOUT_*` environment variables). The
local runner ignores all of them (with a warning), so the same DAG runs here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from semlayout.errors import SemlayoutError
from semlayout.keyvalue import split_assignment
from semlayout_components.catalog import project_image


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


@dataclass
class ClusterSettings:
    image: str = ""  # every step's container image; "" -> project_image() when compiling
    accelerator: str = "nvidia.com/gpu"
    gpus: int = 1
    node_selector: str = "cloud.google.com/gke-accelerator=nvidia-l4"  # KEY=VALUE of the GPU pool
    toleration_key: str = "nvidia.com/gpu"  # the taint on the GPU pool (k8s/README.md)
    gpu_cpu_limit: str = "8"
    gpu_memory_limit: str = "32Gi"
    cpu_limit: str = "2"
    memory_limit: str = "4Gi"
    retries: int = 2
    s3_secret: str = "semlayout-s3"
    s3_secret_keys: dict[str, str] = field(
        default_factory=lambda: {
            "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
            "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL",
        }
    )
    mlflow_secret: str = "semlayout-mlflow"
    mlflow_secret_keys: dict[str, str] = field(
        default_factory=lambda: {
            "MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
            "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD",
        }
    )

    def __post_init__(self) -> None:
        if self.gpus < 0:
            raise SemlayoutError(f"gpus={self.gpus}: expected 0 (CPU) or more")
        if self.retries < 0:
            raise SemlayoutError(f"retries={self.retries}: expected >= 0")
        if self.node_selector:
            split_assignment(self.node_selector, "GPU node selector", "pool=gpu")

    @classmethod
    def from_env(cls, **overrides: object) -> ClusterSettings:
        base = cls(
            image=project_image(),
            accelerator=_env("SEMLAYOUT_GPU_ACCELERATOR", cls.accelerator),
            gpus=int(_env("SEMLAYOUT_GPUS", str(cls.gpus))),
            node_selector=os.environ.get("SEMLAYOUT_GPU_NODE_SELECTOR", cls.node_selector),
            toleration_key=os.environ.get("SEMLAYOUT_GPU_TOLERATION_KEY", cls.toleration_key),
            gpu_cpu_limit=_env("SEMLAYOUT_GPU_CPU_LIMIT", cls.gpu_cpu_limit),
            gpu_memory_limit=_env("SEMLAYOUT_GPU_MEMORY_LIMIT", cls.gpu_memory_limit),
            retries=int(_env("SEMLAYOUT_RETRIES", str(cls.retries))),
            s3_secret=_env("SEMLAYOUT_S3_SECRET", cls.s3_secret),
            mlflow_secret=_env("SEMLAYOUT_MLFLOW_SECRET", cls.mlflow_secret),
        )
        for k, v in overrides.items():
            if v is not None:
                setattr(base, k, v)
        base.__post_init__()
        return base

    @property
    def node_selector_pair(self) -> tuple[str, str] | None:
        if not self.node_selector:
            return None
        return split_assignment(self.node_selector, "GPU node selector", "pool=gpu")


def on_cpu_pool(task, s: ClusterSettings):  # noqa: ANN001,ANN201 - kfp PipelineTask
    """Light steps: modest limits, retried on transient failures (pre-emption, S3 hiccups)."""
    task.set_cpu_limit(s.cpu_limit).set_memory_limit(s.memory_limit)
    if s.retries:
        task.set_retry(num_retries=s.retries, backoff_duration="30s", backoff_factor=2.0)
    return task


def on_gpu_pool(task, s: ClusterSettings):  # noqa: ANN001,ANN201
    """Train / fine-tune: GPUs, the GPU pool's node selector and taint toleration, big limits."""
    from kfp import kubernetes

    task.set_cpu_limit(s.gpu_cpu_limit).set_memory_limit(s.gpu_memory_limit)
    if s.gpus > 0:
        task.set_accelerator_type(s.accelerator).set_accelerator_limit(s.gpus)
        pair = s.node_selector_pair
        if pair:
            kubernetes.add_node_selector(task, label_key=pair[0], label_value=pair[1])
        if s.toleration_key:
            kubernetes.add_toleration(
                task, key=s.toleration_key, operator="Exists", effect="NoSchedule"
            )
    if s.retries:
        task.set_retry(num_retries=s.retries, backoff_duration="120s", backoff_factor=2.0)
    return task


def with_s3(task, s: ClusterSettings):  # noqa: ANN001,ANN201
    from kfp import kubernetes

    if s.s3_secret:
        kubernetes.use_secret_as_env(
            task, secret_name=s.s3_secret, secret_key_to_env=dict(s.s3_secret_keys), optional=True
        )
    return task


def with_mlflow(task, s: ClusterSettings):  # noqa: ANN001,ANN201
    from kfp import kubernetes

    with_s3(task, s)  # MLflow artifacts live in S3 on the cluster
    if s.mlflow_secret:
        kubernetes.use_secret_as_env(
            task,
            secret_name=s.mlflow_secret,
            secret_key_to_env=dict(s.mlflow_secret_keys),
            optional=True,
        )
    return task
