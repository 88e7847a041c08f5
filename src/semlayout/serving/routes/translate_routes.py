"""POST /v1/translate/{direction} (PNG), .../json (TranslateResponse), .../batch (a list).

Each endpoint: check the query, decode the uploads (`serving.uploads.read_image`), then
`serving.translation.translate` (forward through the micro-batcher, record) and answer.
`polarity` (auto | bright | dark; a query parameter or a form field) says which side of the
SEM contrast is the pattern; the answer says which one was used (`X-Polarity`, and
`X-Polarity-Margin` when auto decided it; the same as JSON fields).
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Query, UploadFile
from fastapi.responses import Response

from semlayout.directions import Direction
from semlayout.errors import SemlayoutError
from semlayout.polarity import CHOICES, PolarityChoice, parse_choice
from semlayout.serving.deps import SettingsDep, StateDep
from semlayout.serving.schemas import PNG_IMAGE, UPLOAD_ERRORS, TranslateResponse
from semlayout.serving.translation import as_response, png_headers, translate
from semlayout.serving.uploads import read_image

router = APIRouter(tags=["translate"])

BINARIZE_HELP = "sem2layout: the drawn layout in {0, 255} (threshold + Manhattan fit)"
POLARITY_HELP = (
    f"which side of the SEM contrast is the pattern: {' | '.join(CHOICES)} (default auto: "
    "decided per image; layout2sem renders the layer's polarity, else bright)"
)
PolarityQuery = Annotated[str | None, Query(alias="polarity", description=POLARITY_HELP)]
PolarityForm = Annotated[str | None, Form(alias="polarity", description=POLARITY_HELP)]


def polarity_choice(query: str | None, form: str | None) -> PolarityChoice:
    """The request's polarity (query parameter or form field); 422 naming the choices."""
    if query is not None and form is not None and query.strip() != form.strip():
        raise HTTPException(
            422, detail=f"polarity given twice and differently: query {query!r}, form {form!r}"
        )
    try:
        return parse_choice(query if query is not None else form)
    except SemlayoutError as err:
        raise HTTPException(422, detail=str(err)) from None


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
    polarity: PolarityQuery = None,
    polarity_form: PolarityForm = None,
) -> Response:
    """Translate one image; answers a PNG of the input's size."""
    t0 = time.perf_counter()
    check_binarize(direction, binarize)
    pol = polarity_choice(polarity, polarity_form)
    img = await read_image(image, "image", settings)
    [done] = await translate(
        state, "/v1/translate/{direction}", direction, [img], binarize, t0, pol
    )
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
    polarity: PolarityQuery = None,
    polarity_form: PolarityForm = None,
) -> TranslateResponse:
    """Translate one image; answers JSON with the PNG in base64, the polarity used and the
    drift verdict."""
    t0 = time.perf_counter()
    check_binarize(direction, binarize)
    pol = polarity_choice(polarity, polarity_form)
    img = await read_image(image, "image", settings)
    [done] = await translate(
        state, "/v1/translate/{direction}/json", direction, [img], binarize, t0, pol
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
    polarity: PolarityQuery = None,
    polarity_form: PolarityForm = None,
) -> list[TranslateResponse]:
    """Translate several `images` fields (up to SEMLAYOUT_MAX_BATCH_IMAGES) in one request,
    all in `polarity` (auto decides per image)."""
    t0 = time.perf_counter()
    check_binarize(direction, binarize)
    pol = polarity_choice(polarity, polarity_form)
    if not images:
        raise HTTPException(422, detail="images: at least one image is required")
    if len(images) > settings.max_batch_images:
        raise HTTPException(
            413,
            detail=f"{len(images)} images in one batch; the limit is {settings.max_batch_images}",
        )
    decoded = [await read_image(up, f"images[{i}]", settings) for i, up in enumerate(images)]
    done = await translate(
        state, "/v1/translate/{direction}/batch", direction, decoded, binarize, t0, pol
    )
    return [as_response(d, direction) for d in done]
