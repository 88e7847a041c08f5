"""Server settings: environment variables with the prefix `SEMLAYOUT_` (or CLI flags).

Tokens are never in the repository. When `SEMLAYOUT_API_TOKEN` / `SEMLAYOUT_ADMIN_TOKEN`
is unset, the endpoints that need it answer 503 with the reason instead of being open.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServeSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SEMLAYOUT_", extra="ignore", protected_namespaces=()
    )

    model: Annotated[
        str, Field(description="checkpoint folder, models:/NAME@ALIAS or models:/NAME/VERSION")
    ] = ""
    backend: Literal["eager", "bf16", "onnx"] = "eager"
    tracking_uri: Annotated[
        str | None, Field(description="MLflow tracking URI (default: MLFLOW_TRACKING_URI)")
    ] = None
    reference: Annotated[
        Path | None,
        Field(description="SHARDS/reference_stats.json (or SHARDS); no drift checks without it"),
    ] = None
    layer_polarity: Annotated[
        Literal["bright", "dark"] | None,
        Field(
            description="the served layer's contrast polarity when known: the prior of "
            "polarity=auto and what the drift monitor expects (None: the reference's, when "
            "one-sided)"
        ),
    ] = None
    monitor_db: Path = Path("monitor.db")
    feedback_dir: Path = Path("feedback")

    api_token: Annotated[
        SecretStr | None, Field(description="bearer token for ground truth and feedback")
    ] = None
    admin_token: Annotated[SecretStr | None, Field(description="bearer token for /v1/admin/*")] = (
        None
    )

    max_upload_bytes: Annotated[int, Field(ge=1024, description="whole request body limit")] = (
        16 * 1024 * 1024
    )
    max_pixels: Annotated[
        int, Field(ge=64, description="width*height limit, checked from the header")
    ] = 4096 * 4096
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
        bool, Field(description="store output PNGs so ground truth can be scored")
    ] = True
    max_stored_outputs: Annotated[
        int,
        Field(ge=1, description="output PNGs kept for late ground truth; older ones are dropped"),
    ] = 100_000

    @property
    def layer_prior(self) -> int | None:
        """`layer_polarity` as +1 / -1 (None when not configured)."""
        from semlayout.polarity import polarity_of_name

        return None if self.layer_polarity is None else polarity_of_name(self.layer_polarity)
