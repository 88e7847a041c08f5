"""Server settings: environment variables with the prefix `SEMLAYOUT_` (or CLI flags).

Tokens are never in the repository. When `SEMLAYOUT_API_TOKEN` / `SEMLAYOUT_ADMIN_TOKEN`
is unset, the endpoints that need it answer 503 with the reason instead of being open.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SEMLAYOUT_", extra="ignore", protected_namespaces=())

    model: str = Field("", description="checkpoint folder, models:/NAME@ALIAS or models:/NAME/VERSION")
    backend: Literal["eager", "onnx"] = "eager"
    tracking_uri: str | None = Field(None, description="MLflow tracking URI (default: MLFLOW_TRACKING_URI)")
    reference: Path | None = Field(None, description="SHARDS/reference_stats.json (or SHARDS); no drift without it")
    monitor_db: Path = Path("monitor.db")
    feedback_dir: Path = Path("feedback")

    api_token: SecretStr | None = Field(None, description="bearer token for ground truth and feedback")
    admin_token: SecretStr | None = Field(None, description="bearer token for /v1/admin/*")

    max_upload_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="whole request body limit")
    max_pixels: int = Field(4096 * 4096, ge=64, description="width*height limit, checked from the header")
    min_side: int = Field(8, ge=1, description="smallest accepted width/height (px)")
    max_batch_images: int = Field(16, ge=1, description="images per /batch request")

    micro_batch: int = Field(8, ge=1, description="most images in one forward pass")
    micro_batch_wait_ms: float = Field(
        0.0, ge=0, description="extra wait for company before a forward; 0: take what is queued "
        "(requests that arrive during a forward form the next batch)")
    max_queue: int = Field(256, ge=1, description="images waiting for the model; beyond: 503")

    poll_interval_s: float = Field(30.0, ge=0, description="registry alias polling; 0 disables")
    drift_z_threshold: float | None = Field(None, gt=0, description="None: calibrated")
    drift_kl_threshold: float | None = Field(None, gt=0, description="None: calibrated")
    drift_target_rate: float = Field(0.01, gt=0, lt=0.5)
    summary_window: int = Field(500, ge=1)
    baseline_ssim_sem2layout: float | None = None
    baseline_ssim_layout2sem: float | None = None
    keep_outputs: bool = Field(True, description="store output PNGs so ground truth can be scored")
