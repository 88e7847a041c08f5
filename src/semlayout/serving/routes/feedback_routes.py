"""What people send back (API token): ground truth for an earlier prediction, and reviewed
SEM/layout pairs for fine-tuning."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, HTTPException, UploadFile
from starlette.concurrency import run_in_threadpool

from semlayout.monitoring.feedback import DuplicatePair
from semlayout.serving.deps import MetricsDep, SettingsDep, StateDep
from semlayout.serving.schemas import (
    AUTH_ERRORS,
    ERROR,
    UPLOAD_ERRORS_NO_503,
    FeedbackResponse,
    GroundTruthResponse,
)
from semlayout.serving.security import require
from semlayout.serving.uploads import read_image

router = APIRouter(tags=["monitoring"], dependencies=[Depends(require("api"))])


@router.post(
    "/v1/ground-truth/{prediction_id}",
    response_model=GroundTruthResponse,
    responses={
        **AUTH_ERRORS,
        404: {**ERROR, "description": "unknown prediction id"},
        409: {**ERROR, "description": "the prediction's output is no longer stored"},
        **UPLOAD_ERRORS_NO_503,
    },
)
async def ground_truth(
    state: StateDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    prediction_id: str,
    image: Annotated[UploadFile, File()],
) -> Any:
    """The true image for an earlier prediction -> its L1 / SSIM / PSNR / IoU (stored for
    rolling SSIM)."""
    if len(prediction_id) > 64:
        raise HTTPException(404, detail="unknown prediction id")
    pred = await run_in_threadpool(state.store.get_prediction, prediction_id)
    if pred is None:
        raise HTTPException(404, detail=f"unknown prediction id '{prediction_id}'")
    if pred.output_png is None:
        raise HTTPException(
            409,
            detail=f"the output of prediction '{prediction_id}' is no longer stored "
            "(SEMLAYOUT_KEEP_OUTPUTS / SEMLAYOUT_MAX_STORED_OUTPUTS)",
        )
    truth = await read_image(image, "image", settings)
    res = await run_in_threadpool(state.tracker.add_ground_truth, prediction_id, truth)
    metrics.ground_truth.labels(res["direction"]).inc()
    if res.get("predicted_quality") is not None:  # calibration error over time (issue 17)
        true = res["metrics"]["iou" if res["direction"] == "sem2layout" else "ssim"]
        metrics.confidence_error.labels(res["direction"]).observe(
            abs(res["predicted_quality"] - true)
        )
    return res


@router.post(
    "/v1/feedback",
    response_model=FeedbackResponse,
    responses={
        **AUTH_ERRORS,
        **UPLOAD_ERRORS_NO_503,
        409: {**ERROR, "description": "this SEM was already received (a pair counts once)"},
    },
)
async def feedback(
    state: StateDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    sem: Annotated[UploadFile, File(description="raw SEM, 304x304, 8-bit")],
    layout: Annotated[UploadFile, File(description="layout, 250x250, values 0 and 255")],
    pattern_type: Annotated[str, Form(max_length=64)],
) -> FeedbackResponse:
    """Store a human-reviewed pair for fine-tuning: its images in the feedback object store,
    then its row in the monitoring store (a pair exists once its row does).

    Refused, with nothing stored: sizes other than 304x304 / 250x250, a layout with values
    other than 0 and 255, a template that fails alignment QC against the SEM (422), and a
    SEM already received (409). A store that cannot take the write: 503 (post it again)."""
    sem_img = await read_image(sem, "sem", settings)
    lay_img = await read_image(layout, "layout", settings)
    try:
        row = await run_in_threadpool(state.feedback.add, sem_img, lay_img, pattern_type)
    except DuplicatePair as err:
        raise HTTPException(409, detail=str(err)) from None
    metrics.feedback.inc()
    return FeedbackResponse(
        id=row["id"],
        pattern_type=row["pattern_type"],
        sem_path=row["sem_path"],
        layout_path=row["layout_path"],
        feedback_count=row["feedback_count"],
    )
