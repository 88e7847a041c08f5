"""Request/response models of the HTTP API (they are the OpenAPI schema), and the error
responses the routes declare. `Direction` is the library's (`semlayout.directions`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from semlayout.directions import Direction


class ErrorResponse(BaseModel):
    detail: str = Field(..., description="why the request was refused")


# --------------------------------------------------------------------------- declared responses
Responses = dict[int | str, dict[str, Any]]

ERROR: dict[str, Any] = {"model": ErrorResponse}
UPLOAD_ERRORS: Responses = {
    413: {**ERROR, "description": "body or image dimensions over the limit"},
    415: {**ERROR, "description": "not a PNG, TIFF or JPEG"},
    422: {**ERROR, "description": "not an 8-bit grayscale image, truncated, or a missing field"},
    503: {
        **ERROR,
        "description": "server busy, model not loaded, or the monitoring store unavailable "
        "(nothing stored; Retry-After says when to try again)",
    },
}
AUTH_ERRORS: Responses = {
    401: {**ERROR, "description": "missing bearer token"},
    403: {**ERROR, "description": "wrong token"},
    503: {
        **ERROR,
        "description": "endpoint disabled (token not configured), model not loaded, or the "
        "monitoring or feedback store unavailable (nothing stored; Retry-After)",
    },
}
STORE_ERROR: Responses = {
    503: {**ERROR, "description": "model not loaded or the monitoring store unavailable"}
}
SERVER_ERROR: Responses = {500: {**ERROR, "description": "server bug (never a user mistake)"}}


def _header(description: str) -> dict[str, Any]:
    return {"description": description, "schema": {"type": "string"}}


PNG_IMAGE: Responses = {
    200: {
        "content": {"image/png": {}},
        "description": "the translated image, the input's size",
        "headers": {
            "X-Polarity": _header("+1 / -1: the polarity it was translated in"),
            "X-Polarity-Source": _header("given | layer | pooled | auto | only"),
            "X-Polarity-Margin": _header(
                "pooled / auto: log-odds of the choice; for a one-pass answer "
                "(X-Polarity-Evidence: deferred) the layer's pooled evidence, not this image's"
            ),
            "X-Polarity-Evidence": _header(
                "image: the image's own polarity evidence was read in the request (four "
                "generator passes); deferred: the layer's polarity is settled, the answer is "
                "one pass and the evidence is read after it (layer pooling, drift test)"
            ),
            "X-Profile": {
                "description": "the tool / layer profile that answered: the `layer` label when "
                "the served model learned that profile, `none` for the shared network",
                "schema": {"type": "string"},
            },
            "X-Layer": {
                "description": "the layer the image was read as part of",
                "schema": {"type": "string"},
            },
        },
    }
}

# for the token endpoints, whose 503 is AUTH_ERRORS' "token not configured"
UPLOAD_ERRORS_NO_503: Responses = {k: v for k, v in UPLOAD_ERRORS.items() if k != 503}


class DriftInfo(BaseModel):
    drifted: bool
    score: float = Field(
        ..., description="max(max|z|/z_threshold, KL/kl_threshold); > 1 means drifted"
    )
    max_abs_z: float
    worst_feature: str
    kl: float = Field(..., description="KL(p_image || q_reference) of 64-bin histograms, nats")
    z_threshold: float
    kl_threshold: float
    expected_polarity: int | None = Field(
        None, description="the polarity the stream should have (+1 / -1); null: either"
    )


class TranslateResponse(BaseModel):
    prediction_id: str
    direction: Direction
    model_version: str
    width: int
    height: int
    image_png_base64: str = Field(..., description="the translated image, PNG, the input's size")
    drift: DriftInfo | None = Field(None, description="null when the server has no drift reference")
    polarity: int = Field(
        ..., description="+1 pattern bright, -1 pattern dark: the polarity it was translated in"
    )
    polarity_margin: float | None = Field(
        None,
        description="pooled / auto: how clearly the evidence chose that polarity (log-odds); "
        "for a one-pass answer (polarity_evidence `deferred`) the layer's pooled evidence "
        "|pooled|, not this image's; null otherwise",
    )
    polarity_source: str = Field(
        ...,
        description="given (the request), layer (the layer's configured polarity), pooled "
        "(the image and its layer's pooled evidence), auto (the image alone), only (the "
        "model serves one polarity)",
    )
    layer: str = Field("default", description="the layer the image was read as part of")
    polarity_evidence: str | None = Field(
        None,
        description="the image's own polarity evidence: image (read in the request, four "
        "generator passes), deferred (the layer has settled its polarity: answered in one "
        "pass, the image's evidence read after the answer for the layer's pooling and drift "
        "test); null: not read (a given polarity, layout2sem, a one-polarity model)",
    )
    profile: str | None = Field(
        None,
        description="the tool / layer profile that answered: the `layer` label when the served "
        "model learned that profile (its own conditioning), null for the shared network (no "
        "such profile, or a backend that serves the shared network only); as `X-Profile`",
    )
    confidence: float | None = Field(
        None,
        description="P(the prediction is good: IoU >= 0.6 for sem2layout, SSIM over the "
        "calibration's threshold for layout2sem); null: unknown (no calibration)",
    )
    predicted_iou: float | None = Field(None, description="sem2layout: the predicted IoU")
    predicted_ssim: float | None = Field(None, description="layout2sem: the predicted SSIM")
    confidence_reason: str | None = Field(
        None, description="why the confidence is the lowest (a blank input...) or unknown"
    )
    confidence_source: str = Field(
        "full",
        description="which confidence: inline (free signals only; the full one follows in the "
        "monitor store) or full (every kept signal; ask with confidence=full)",
    )


class LayerInfo(BaseModel):
    """A layer's polarity: what is configured and what its images' evidence says."""

    layer: str
    configured: int | None = Field(
        None, description="+1 / -1 set by an admin (PUT /v1/layers/{layer}/polarity); null: none"
    )
    pooled_logodds: float = Field(
        ..., description="the pooled evidence of its images: log-odds of bright (capped)"
    )
    implied: int | None = Field(None, description="the polarity the pooled evidence implies")
    established: int | None = Field(
        None, description="the implied polarity once the evidence is strong enough; else null"
    )
    images: int = Field(..., description="images whose evidence was pooled")


class LayerPolarityRequest(BaseModel):
    polarity: str = Field(..., description="bright or dark (also +1 / -1)")


class AlignResponse(BaseModel):
    """Fields are null when the pair cannot be aligned at all (see `reason`)."""

    x: int | None = Field(..., description="column of the template's top-left corner in the SEM")
    y: int | None = Field(..., description="row of the template's top-left corner in the SEM")
    x_sub: float | None
    y_sub: float | None
    score: float | None
    confidence: float | None
    polarity: int | None = Field(..., description="+1 lines bright, -1 reversed contrast")
    n_equivalent: int | None = Field(..., description="equally right offsets (periodic patterns)")
    qc_pass: bool
    reason: str
    translated: TranslateResponse | None = Field(None, description="sem2layout of the aligned crop")


class QualityMetrics(BaseModel):
    l1: float
    ssim: float
    psnr: float
    iou: float


class GroundTruthResponse(BaseModel):
    prediction_id: str
    direction: Direction
    model_version: str
    metrics: QualityMetrics
    predicted_quality: float | None = Field(
        None, description="what the prediction's confidence predicted (IoU / SSIM); null: unknown"
    )
    confidence: float | None = None


class FeedbackResponse(BaseModel):
    id: str
    pattern_type: str
    sem_path: str
    layout_path: str
    feedback_count: int


class HealthResponse(BaseModel):
    status: str = "ok"


class ReadyResponse(BaseModel):
    ready: bool
    model_loaded: bool
    db_writable: bool = Field(..., description="a write to the monitoring store just committed")
    feedback_writable: bool | None = Field(
        None,
        description="a probe object was just written to the feedback store (reported, not "
        "required: translation works without it)",
    )
    model_version: str | None = None
    drift_reference: str | None = Field(
        None, description="where the drift reference comes from; null: drift checks are off"
    )
    profiles: list[str] = Field(
        default_factory=list,
        description="the tool / layer profiles the served model answers with (a request whose "
        "`layer` is one of them gets its conditioning)",
    )
    profile_note: str | None = Field(
        None,
        description="why the model's learned profiles are not served (e.g. the onnx backend "
        "serves the shared network only); null: they are, or it learned none",
    )
    reasons: list[str] = Field(default_factory=list)


class ReloadResponse(BaseModel):
    changed: bool
    old_version: str
    new_version: str
    source: str


class LatencySummary(BaseModel):
    p50: float | None
    p95: float | None
    p99: float | None


class InferenceSummary(BaseModel):
    window: int
    requests: int
    errors: int
    error_rate: float | None
    errors_by_status: dict[str, int]
    requests_by_direction: dict[str, int]
    latency_ms: LatencySummary


class DriftSummary(BaseModel):
    window: int
    rate: float | None = Field(..., description="share of drifted images among the last `window`")
    n: int
    by_direction: dict[str, float | None]
    thresholds: dict[str, dict[str, float]] = Field(default_factory=dict)


class QualitySummary(BaseModel):
    ssim: float | None = Field(
        ..., description="rolling mean SSIM of predictions with ground truth"
    )
    n: int
    baseline: float | None = Field(..., description="SSIM the model was promoted on")
    delta: float | None


class PolaritySummary(BaseModel):
    window: int
    mix: dict[str, int] = Field(
        ...,
        description='contrast polarity of the last `window` predictions: "+1", "-1", '
        '"unknown" (made before polarity was recorded)',
    )
    share_dark: float | None = Field(..., description="share of -1 among those with one")
    reference: dict[str, int] | None = Field(
        None, description="the polarity mix of the model's training SEMs (drift reference)"
    )
    expected: int | None = Field(
        None, description="the polarity the drift monitor expects (+1 / -1); null: either"
    )


class ConfidenceSummary(BaseModel):
    """Issue 17: how sure the served model has been, per direction and cohort."""

    window: int
    low_threshold: float = Field(..., description="a confidence below this counts as low")
    calibrated: dict[str, bool] = Field(
        ..., description="per direction: whether the served version has a calibration"
    )
    directions: dict[str, Any] = Field(
        ...,
        description="{direction: {all: {n, known, low, low_confidence_rate, mean_confidence}, "
        "cohorts: {cohort: {...same...}}}}",
    )
    calibration_error: dict[str, Any] = Field(
        ..., description="per direction: mean |predicted - true| over the recent ground truth"
    )
    population: dict[str, list[dict[str, Any]]] = Field(
        ..., description="per direction: the two-sample test of the recent stream per cohort"
    )


class ProfileSummary(BaseModel):
    """Issue 21: the recent predictions per tool / layer profile that answered them."""

    window: int
    served: list[str] = Field(..., description="the profiles the served model answers with")
    profiles: dict[str, Any] = Field(
        ...,
        description="{profile ('none': the shared network): {n, directions: {direction: {n, "
        "with_truth, ssim, iou}}}} over the last `window` predictions; ssim / iou: means over "
        "those with ground truth (null: none yet)",
    )


class MonitoringSummary(BaseModel):
    model_version: str | None
    inference: InferenceSummary
    drift: DriftSummary
    quality: dict[str, QualitySummary]
    feedback_count: int
    polarity: PolaritySummary
    confidence: ConfidenceSummary | None = None
    profiles: ProfileSummary | None = None
