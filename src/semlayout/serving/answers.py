"""The answer of a translate request, from its `serving.translation.Translated`: the JSON
body (`as_response`, with `confidence_fields`) or a PNG's headers (`png_headers`, with
`confidence_headers`: which confidence tier it carries is `X-Confidence-Source`); the tool /
layer profile that answered is `X-Profile` / `profile` (`none` / null: the shared network)."""

from __future__ import annotations

import base64
from typing import Any

from semlayout.confidence import Confidence
from semlayout.directions import Direction
from semlayout.serving.schemas import TranslateResponse
from semlayout.serving.translation import Translated


def as_response(done: Translated, direction: Direction) -> TranslateResponse:
    return TranslateResponse(
        prediction_id=done.prediction_id,
        direction=direction,
        model_version=done.model.version,
        width=int(done.output.shape[1]),
        height=int(done.output.shape[0]),
        image_png_base64=base64.b64encode(done.png).decode("ascii"),
        drift=done.drift,
        polarity=done.decision.polarity,
        polarity_margin=done.decision.margin,
        polarity_source=done.decision.source,
        layer=done.layer,
        polarity_evidence=done.evidence,
        profile=done.profile,
        **confidence_fields(done.confidence),
    )


def profile_header(profile: str | None) -> str:
    """`X-Profile`: the tool / layer profile that answered, `none` for the shared network."""
    from semlayout.monitoring.profile_store import SHARED

    return SHARED if profile is None else profile


def confidence_fields(c: Confidence) -> dict[str, Any]:
    """The JSON answer's confidence fields (None: unknown, with the reason)."""
    return {
        "confidence": c.confidence,
        "predicted_iou": c.predicted if c.metric == "iou" else None,
        "predicted_ssim": c.predicted if c.metric == "ssim" else None,
        "confidence_reason": c.reason,
        "confidence_source": c.source,
    }


def confidence_headers(c: Confidence) -> dict[str, str]:
    """X-Confidence and X-Predicted-IoU / X-Predicted-SSIM ("unknown" without a calibration),
    X-Confidence-Reason when there is one."""

    def fmt(v: float | None) -> str:
        return "unknown" if v is None else f"{v:.4f}"

    name = "X-Predicted-IoU" if c.metric == "iou" else "X-Predicted-SSIM"
    headers = {
        "X-Confidence": fmt(c.confidence),
        name: fmt(c.predicted),
        "X-Confidence-Source": c.source,
    }
    if c.reason:
        headers["X-Confidence-Reason"] = c.reason.encode("ascii", "replace").decode("ascii")
    return headers


def png_headers(done: Translated) -> dict[str, str]:
    """The headers of a PNG answer: what the JSON answer carries in its fields."""
    headers = {
        "X-Prediction-Id": done.prediction_id,
        "X-Model-Version": done.model.version,
        "X-Polarity": f"{done.decision.polarity:+d}",
        "X-Polarity-Source": done.decision.source,
        "X-Layer": done.layer,
        "X-Profile": profile_header(done.profile),
        **confidence_headers(done.confidence),
    }
    if done.evidence is not None:
        headers["X-Polarity-Evidence"] = done.evidence
    if done.decision.margin is not None:
        headers["X-Polarity-Margin"] = f"{done.decision.margin:.4f}"
    if done.drift is not None:
        headers["X-Drift-Score"] = f"{done.drift.score:.4f}"
        headers["X-Drifted"] = "true" if done.drift.drifted else "false"
    return headers
