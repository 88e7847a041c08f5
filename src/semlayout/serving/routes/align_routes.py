"""POST /v1/align: where a layout template lies in a raw SEM, optionally translating the crop."""

from __future__ import annotations

import time
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, File, HTTPException, Query, UploadFile
from starlette.concurrency import run_in_threadpool

from semlayout.directions import Direction
from semlayout.serving import answers, translation
from semlayout.serving.deps import SettingsDep, StateDep
from semlayout.serving.schemas import UPLOAD_ERRORS, AlignResponse
from semlayout.serving.uploads import read_image

router = APIRouter(tags=["translate"])


@router.post("/v1/align", response_model=AlignResponse, responses=UPLOAD_ERRORS)
async def align(
    state: StateDep,
    settings: SettingsDep,
    sem: Annotated[UploadFile, File(description="raw SEM, 304x304")],
    template: Annotated[UploadFile, File(description="layout template, 250x250")],
    translate: Annotated[bool, Query(description="also translate the aligned SEM crop")] = False,
) -> AlignResponse:
    """Find where the template lies in the raw SEM (NCC with QC); optionally translate the crop."""
    from semlayout.data.pairs import SEM_RAW_SHAPE, TEMPLATE_SHAPE

    t0 = time.perf_counter()
    sem_img = await read_image(sem, "sem", settings)
    tpl_img = await read_image(template, "template", settings)
    for name, img, shape in (
        ("sem", sem_img, SEM_RAW_SHAPE),
        ("template", tpl_img, TEMPLATE_SHAPE),
    ):
        if img.shape != shape:
            raise HTTPException(
                422,
                detail=f"{name}: expected {shape[1]}x{shape[0]} px, got "
                f"{img.shape[1]}x{img.shape[0]}",
            )
    res = await run_in_threadpool(align_fields, sem_img, tpl_img)
    translated = None
    if translate and res["x"] is not None and res["y"] is not None:
        y, x = res["y"], res["x"]
        h, w = tpl_img.shape
        crop = np.ascontiguousarray(sem_img[y : y + h, x : x + w])
        direction = Direction.sem2layout
        [done] = await translation.translate(state, "/v1/align", direction, [crop], False, t0)
        translated = answers.as_response(done, direction)
    return AlignResponse(**res, translated=translated)


def align_fields(sem: np.ndarray, template: np.ndarray) -> dict[str, Any]:
    """`semlayout.data.align.align_pair` as AlignResponse's fields (plain JSON types)."""
    from semlayout.data.align import AlignConfig, align_pair

    r = align_pair(sem, template, AlignConfig())

    def num(v: Any, kind: type) -> Any:
        return None if v is None else kind(v)

    return {
        "x": num(r.x, int),
        "y": num(r.y, int),
        "x_sub": num(r.x_sub, float),
        "y_sub": num(r.y_sub, float),
        "score": num(r.score, float),
        "confidence": num(r.confidence, float),
        "polarity": num(r.polarity, int),
        "n_equivalent": num(r.n_equivalent, int),
        "qc_pass": bool(r.qc_pass),
        "reason": str(r.reason or ""),
    }
