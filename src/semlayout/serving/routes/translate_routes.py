"""POST /v1/translate/{direction} (PNG), .../json (TranslateResponse), .../batch (a list).

Each endpoint: check the query, decode the uploads (`serving.uploads.read_image`), then
`serving.translation.translate` (forward through the micro-batcher, record) and answer.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, File, HTTPException, Query, UploadFile
from fastapi.responses import Response

from semlayout.directions import Direction
from semlayout.serving.deps import SettingsDep, StateDep
from semlayout.serving.schemas import PNG_IMAGE, UPLOAD_ERRORS, TranslateResponse
from semlayout.serving.translation import as_response, png_headers, translate
from semlayout.serving.uploads import read_image

router = APIRouter(tags=["translate"])

BINARIZE_HELP = "sem2layout: the drawn layout in {0, 255} (threshold + Manhattan fit)"


def check_binarize(direction: Direction, binarize: bool) -> None:
    if binarize and direction != Direction.sem2layout:
        raise HTTPException(422, detail="binarize=true applies to sem2layout only")


@router.post(
    "/v1/translate/{direction}",
    response_class=Response,
    responses={**PNG_IMAGE, **UPLOAD_ERRORS},
)
async def translate_png(
    state: StateDep,
    settings: SettingsDep,
    direction: Direction,
    image: Annotated[UploadFile, File()],
    binarize: Annotated[bool, Query(description=BINARIZE_HELP)] = False,
) -> Response:
    """Translate one image; answers a PNG of the input's size."""
    t0 = time.perf_counter()
    check_binarize(direction, binarize)
    img = await read_image(image, "image", settings)
    [done] = await translate(state, "/v1/translate/{direction}", direction, [img], binarize, t0)
    return Response(done.png, media_type="image/png", headers=png_headers(done))


@router.post(
    "/v1/translate/{direction}/json",
    response_model=TranslateResponse,
    responses=UPLOAD_ERRORS,
)
async def translate_json(
    state: StateDep,
    settings: SettingsDep,
    direction: Direction,
    image: Annotated[UploadFile, File()],
    binarize: Annotated[bool, Query()] = False,
) -> TranslateResponse:
    """Translate one image; answers JSON with the PNG in base64 and the drift verdict."""
    t0 = time.perf_counter()
    check_binarize(direction, binarize)
    img = await read_image(image, "image", settings)
    [done] = await translate(
        state, "/v1/translate/{direction}/json", direction, [img], binarize, t0
    )
    return as_response(done, direction)


@router.post(
    "/v1/translate/{direction}/batch",
    response_model=list[TranslateResponse],
    responses=UPLOAD_ERRORS,
)
async def translate_batch(
    state: StateDep,
    settings: SettingsDep,
    direction: Direction,
    images: Annotated[list[UploadFile], File()],
    binarize: Annotated[bool, Query()] = False,
) -> list[TranslateResponse]:
    """Translate several `images` fields (up to SEMLAYOUT_MAX_BATCH_IMAGES) in one request."""
    t0 = time.perf_counter()
    check_binarize(direction, binarize)
    if not images:
        raise HTTPException(422, detail="images: at least one image is required")
    if len(images) > settings.max_batch_images:
        raise HTTPException(
            413,
            detail=f"{len(images)} images in one batch; the limit is {settings.max_batch_images}",
        )
    decoded = [await read_image(up, f"images[{i}]", settings) for i, up in enumerate(images)]
    done = await translate(
        state, "/v1/translate/{direction}/batch", direction, decoded, binarize, t0
    )
    return [as_response(d, direction) for d in done]
