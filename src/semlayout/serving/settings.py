"""Server settings: environment variables with the prefix `SEMLAYOUT_` (or CLI flags).

Tokens are never in the repository. When `SEMLAYOUT_API_TOKEN` / `SEMLAYOUT_ADMIN_TOKEN`
is unset, the endpoints that need it answer 503 with the reason instead of being open.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServeSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SEMLAYOUT_", extra="ignore", protected_namespaces=(), populate_by_name=True
    )

    model: Annotated[
        str, Field(description="checkpoint folder, models:/NAME@ALIAS or models:/NAME/VERSION")
    ] = ""
    backend: Annotated[
        Literal["auto", "eager", "bf16", "onnx"],
        Field(
            description="auto: the fastest backend whose outputs match eager fp32, measured at "
            "start-up (semlayout.backend_probe)"
        ),
    ] = "auto"
    tracking_uri: Annotated[
        str | None, Field(description="MLflow tracking URI (default: MLFLOW_TRACKING_URI)")
    ] = None
    reference: Annotated[
        Path | None,
        Field(
            description="drift reference override: SHARDS/reference_stats.json (or SHARDS); "
            "default: the one registered with the model version"
        ),
    ] = None
    layer_polarity: Annotated[
        Literal["bright", "dark"] | None,
        Field(
            description="the served layer's contrast polarity when known: the prior of "
            "polarity=auto and what the drift monitor expects (None: the reference's, when "
            "one-sided)"
        ),
    ] = None
    monitor_db: Annotated[
        str, Field(description="monitoring store: a SQLite path or a postgresql:// URL")
    ] = "monitor.db"
    feedback_uri: Annotated[
        str,
        Field(
            # SEMLAYOUT_FEEDBACK_DIR: the name before the feedback store could be on S3
            validation_alias=AliasChoices(
                "feedback_uri", "feedback_dir", "SEMLAYOUT_FEEDBACK_URI", "SEMLAYOUT_FEEDBACK_DIR"
            ),
            description="feedback object store: a folder or s3://BUCKET/PREFIX",
        ),
    ] = "feedback"

    api_token: Annotated[
        SecretStr | None, Field(description="bearer token for ground truth and feedback")
    ] = None
    admin_token: Annotated[SecretStr | None, Field(description="bearer token for /v1/admin/*")] = (
        None
    )

    max_upload_bytes: Annotated[int, Field(ge=1024, description="whole request body limit")] = (
        8 * 1024 * 1024
    )
    # a 2048x2048 field (tiled: `semlayout.tiling`) is the largest image served by default;
    # the 16-megapixel uploads that cost seconds of CPU and gigabytes of memory to decode are
    # refused from their header, before decoding
    max_pixels: Annotated[
        int, Field(ge=64, description="width*height limit, checked from the header")
    ] = 2048 * 2048
    max_field_side: Annotated[
        int,
        Field(
            ge=250,
            description="largest side of a field: an image larger than one window is "
            "translated by overlapping tiles up to this size (beyond: 422)",
        ),
    ] = 2048
    min_side: Annotated[int, Field(ge=1, description="smallest accepted width/height (px)")] = 8
    max_batch_images: Annotated[int, Field(ge=1, description="images per /batch request")] = 16

    micro_batch: Annotated[int, Field(ge=1, description="most images in one forward pass")] = 8
    micro_batch_wait_ms: Annotated[
        float,
        Field(
            ge=0,
            description="extra wait for company before a forward; 0: take what is queued "
            "(requests that arrive during a forward form the next batch)",
        ),
    ] = 0.0
    max_queue: Annotated[
        int, Field(ge=1, description="images waiting for the model; beyond: 503")
    ] = 256

    poll_interval_s: Annotated[
        float, Field(ge=0, description="registry alias polling; 0 disables")
    ] = 30.0
    drift_z_threshold: Annotated[float | None, Field(gt=0, description="None: calibrated")] = None
    drift_kl_threshold: Annotated[float | None, Field(gt=0, description="None: calibrated")] = None
    drift_target_rate: Annotated[float, Field(gt=0, lt=0.5)] = 0.01
    summary_window: Annotated[int, Field(ge=1)] = 500
    baseline_ssim_sem2layout: float | None = None
    baseline_ssim_layout2sem: float | None = None
    keep_outputs: Annotated[
        Literal["none", "thumbnail", "full"],
        Field(
            description="output images stored for late ground truth: none, a thumbnail of at "
            "most thumbnail_side px (the model's own resolution: nothing it computed is lost), "
            "or the full output"
        ),
    ] = "thumbnail"
    thumbnail_side: Annotated[int, Field(ge=16, le=4096)] = 256
    review_keep_below: Annotated[
        float,
        Field(
            ge=0,
            le=1.01,
            description="keep the input (PNG) of a prediction whose confidence is below this "
            "or unknown, for the review queue's export (0: keep none; 1.01: keep all); the "
            "retention byte budget counts it",
        ),
    ] = 0.5
    max_stored_outputs: Annotated[
        int,
        Field(ge=1, description="output images kept for late ground truth; older ones dropped"),
    ] = 100_000
    max_stored_output_bytes: Annotated[
        int, Field(ge=0, description="byte budget of the stored output images")
    ] = 256 * 1024 * 1024
    max_rows: Annotated[
        int, Field(ge=1000, description="rows kept per monitoring event table (newest)")
    ] = 1_000_000
    retention_interval_s: Annotated[
        float, Field(ge=0, description="how often the retention policy runs; 0 disables")
    ] = 60.0

    @property
    def layer_prior(self) -> int | None:
        """`layer_polarity` as +1 / -1 (None when not configured)."""
        from semlayout.polarity import polarity_of_name

        return None if self.layer_polarity is None else polarity_of_name(self.layer_polarity)

    @field_validator("monitor_db", "feedback_uri", mode="before")
    @classmethod
    def _path_as_text(cls, value: object) -> object:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @field_validator("keep_outputs", mode="before")
    @classmethod
    def _keep_outputs_boolean(cls, value: object) -> object:
        # before it had three values it was a boolean: true kept the full output
        text = str(value).strip().lower()
        return {"true": "full", "1": "full", "false": "none", "0": "none"}.get(text, value)
