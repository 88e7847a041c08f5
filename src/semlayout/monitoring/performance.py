"""PerformanceTracker: quality of served predictions once their ground truth arrives.

At inference every output is registered with a prediction id, the SHA-256 of the
input and the output image (PNG, in the monitoring store; a thumbnail of at most the model's
resolution by default, and the truth is then scored at the thumbnail's size). When the truth
for that id arrives later (`POST /v1/ground-truth/{id}`), L1 / SSIM / PSNR / IoU are computed
with `semlayout.metrics` and stored; the rolling mean SSIM per direction is compared
with the promotion baseline (the SSIM the model was approved on). What the prediction's
confidence predicted (`predicted_quality`: IoU for sem2layout, SSIM for layout2sem) is stored
beside the truth, so the calibration error over time is a monitored number (`calibration`).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np

from semlayout.errors import SemlayoutError
from semlayout.monitoring.store import MonitorStore, Prediction


class UnknownPrediction(SemlayoutError):
    """Ground truth was posted for a prediction id the store does not know."""


def new_prediction_id() -> str:
    return uuid.uuid4().hex


def sha256(data: bytes | np.ndarray) -> str:
    raw = data.tobytes() if isinstance(data, np.ndarray) else data
    return hashlib.sha256(raw).hexdigest()


class PerformanceTracker:
    def __init__(self, store: MonitorStore, baseline: Mapping[str, float] | None = None):
        self.store = store
        self.baseline: dict[str, float] = dict(baseline or {})

    def output_of(self, prediction_id: str) -> tuple[Prediction, np.ndarray]:
        from semlayout.data.pairs import decode_gray8

        pred = self.store.get_prediction(prediction_id)
        if pred is None or pred.output_png is None:
            raise UnknownPrediction(f"unknown prediction id '{prediction_id}'")
        return pred, decode_gray8(pred.output_png, f"prediction {prediction_id}")

    def add_ground_truth(self, prediction_id: str, truth: np.ndarray) -> dict[str, Any]:
        """Quality of prediction `prediction_id` against `truth` (uint8, the prediction's size)."""
        from semlayout import metrics

        pred, output = self.output_of(prediction_id)
        if truth.shape != (pred.height, pred.width):
            raise SemlayoutError(
                f"ground truth is {truth.shape[1]}x{truth.shape[0]} px but prediction "
                f"'{prediction_id}' is {pred.width}x{pred.height} px; expected the same size"
            )
        if pred.direction == "sem2layout":  # the truth of a layout prediction is a drawn layout
            from semlayout.data.pairs import check_binary_layout

            check_binary_layout(truth, "ground truth (a sem2layout prediction's truth is a layout)")
        if truth.shape != output.shape:  # the output was stored as a thumbnail: score at its size
            import cv2

            size = (output.shape[1], output.shape[0])
            truth = cv2.resize(truth, size, interpolation=cv2.INTER_AREA)
        values = {
            "l1": metrics.l1(output, truth),
            "ssim": metrics.ssim(output, truth),
            "psnr": metrics.psnr(output, truth),
            "iou": metrics.iou(output, truth),
        }
        self.store.add_ground_truth(
            prediction_id,
            pred.direction,
            pred.model_version,
            values,
            predicted_quality=pred.predicted_quality,
            confidence=pred.confidence,
        )
        return {
            "prediction_id": prediction_id,
            "direction": pred.direction,
            "model_version": pred.model_version,
            "metrics": values,
            "predicted_quality": pred.predicted_quality,
            "confidence": pred.confidence,
        }

    def calibration(self, direction: str, window: int) -> dict[str, Any]:
        """Mean |predicted - true| quality over the last `window` ground truths."""
        from semlayout.monitoring.confidence_store import calibration_error

        return calibration_error(self.store, direction, window)

    def rolling(self, direction: str, window: int) -> dict[str, Any]:
        mean, n = self.store.rolling_ssim_stats(direction, window)
        base = self.baseline.get(direction)
        return {
            "ssim": mean,
            "n": n,
            "baseline": base,
            "delta": (mean - base) if (mean is not None and base is not None) else None,
        }
