"""POST /v1/translate/{direction} (PNG), .../json (TranslateResponse), .../batch (a list).

Each endpoint: check the query, read the uploads (`serving.uploads.read_encoded`; decoded in
the translate path's first worker-thread hop), then
`serving.translation.translate` (forward through the micro-batcher, record) and answer.
`polarity` (auto | bright | dark; a query parameter or a form field) says which side of the
SEM contrast is the pattern; `layer` (a query parameter or a form field, `[A-Za-z0-9._-]{1,64}`;
`default` without one) names the data set the image belongs to: auto pools the evidence of
a layer's images and follows its configured polarity (`semlayout.polarity_layer`). The answer
says which polarity was used and why (`X-Polarity`, `X-Polarity-Source`, `X-Polarity-Margin`
when auto decided it, `X-Layer`; the same as JSON fields); `X-Polarity-Evidence` whether the
image's own evidence was read in the request (`image`) or, the layer's polarity being settled
and the answer one generator pass, after it (`deferred`, `serving.layer_evidence`). The `layer`
label also selects the tool / layer profile (`semlayout.profiles`) when the served model learned
one of that name: `X-Profile` / `profile` say which answered (`none` / null: the shared network).
How sure the model is: `X-Confidence`, `X-Predicted-IoU` / `X-Predicted-SSIM` ("unknown" for a
version without a calibration; `X-Confidence-Reason`); `X-Confidence-Source` says which tier:
`inline` (the default: free signals only; the full one follows in the monitor store) or `full`
(every kept signal, asked with `confidence=full`). `cohort` labels the request for the
monitors.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, HTTPException, Query, UploadFile
from fastapi.responses import Response

from semlayout.confidence import TIERS
from semlayout.directions import Direction
from semlayout.errors import SemlayoutError
from semlayout.polarity import CHOICES, PolarityChoice, parse_choice
from semlayout.polarity_layer import check_layer
from semlayout.serving import server_timing
from semlayout.serving.answers import as_response, png_headers
from semlayout.serving.deps import SettingsDep, StateDep
from semlayout.serving.schemas import PNG_IMAGE, UPLOAD_ERRORS, TranslateResponse
from semlayout.serving.translation import translate
from semlayout.serving.uploads import read_encoded

router = APIRouter(tags=["translate"])

BINARIZE_HELP = "sem2layout: the drawn layout in {0, 255} (threshold + Manhattan fit)"
POLARITY_HELP = (
    f"which side of the SEM contrast is the pattern: {' | '.join(CHOICES)} (default auto: "
    "decided per image; layout2sem renders the layer's polarity, else bright)"
)
PolarityQuery = Annotated[str | None, Query(alias="polarity", description=POLARITY_HELP)]
PolarityForm = Annotated[str | None, Form(alias="polarity", description=POLARITY_HELP)]
LAYER_HELP = (
    "the layer (data set) the images belong to, 1-64 of A-Z a-z 0-9 . _ - (default: "
    "'default'): auto pools its images' polarity evidence and follows its configured "
    "polarity; when the served model learned a tool / layer profile of that name, it answers "
    "with that profile (X-Profile / profile say which)"
)
LayerQuery = Annotated[str | None, Query(alias="layer", description=LAYER_HELP)]
LayerForm = Annotated[str | None, Form(alias="layer", description=LAYER_HELP)]


def _query_or_form(name: str, query: str | None, form: str | None, parse: Any) -> Any:
    """`parse` of a field given as a query parameter or a form field (or neither); 422 when
    both are given and differ, or when `parse` refuses it."""
    if query is not None and form is not None and query.strip() != form.strip():
        raise HTTPException(
            422, detail=f"{name} given twice and differently: query {query!r}, form {form!r}"
        )
    try:
        return parse(query if query is not None else form)
    except SemlayoutError as err:
        raise HTTPException(422, detail=str(err)) from None


def layer_label(query: str | None, form: str | None) -> str:
    """The request's layer (`default` without one)."""
    return str(_query_or_form("layer", query, form, check_layer))


CONFIDENCE_HELP = (
    f"which confidence the answer carries: {' | '.join(TIERS)} (default inline: free signals "
    "only, the full one is computed after the answer for the monitors; full: every kept signal, "
    "one or two more forwards on this request)"
)
ConfidenceQuery = Annotated[str | None, Query(alias="confidence", description=CONFIDENCE_HELP)]
ConfidenceForm = Annotated[str | None, Form(alias="confidence", description=CONFIDENCE_HELP)]


def _parse_tier(value: str | None) -> str:
    tier = "inline" if value is None else value.strip().lower()
    if tier not in TIERS:
        raise SemlayoutError(f"confidence must be one of {', '.join(TIERS)}, got {value!r}")
    return tier


def confidence_tier(query: str | None, form: str | None) -> str:
    """The confidence tier the answer carries; 422 naming the choices."""
    return str(_query_or_form("confidence", query, form, _parse_tier))


COHORT_HELP = (
    "optional label the monitors slice by (pattern family, tool or client): letters, digits, "
    "'.', '_', '-', at most 64"
)
CohortQuery = Annotated[
    str | None,
    Query(description=COHORT_HELP, max_length=64, pattern=r"^[A-Za-z0-9._-]+$"),
]


def polarity_choice(query: str | None, form: str | None) -> PolarityChoice:
    """The request's polarity; 422 naming the choices."""
    choice: PolarityChoice = _query_or_form("polarity", query, form, parse_choice)
    return choice


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
    layer: LayerQuery = None,
    layer_form: LayerForm = None,
    cohort: CohortQuery = None,
    confidence: ConfidenceQuery = None,
    confidence_form: ConfidenceForm = None,
) -> Response:
    """Translate one image; answers a PNG of the input's size."""
    t0 = time.perf_counter()
    server_timing.mark_since_start("parse")  # the body read, the form parsed
    check_binarize(direction, binarize)
    pol = polarity_choice(polarity, polarity_form)
    lay = layer_label(layer, layer_form)
    tier = confidence_tier(confidence, confidence_form)
    img = await read_encoded(image, "image", settings)  # decoded in the first worker hop
    [done] = await translate(
        state, "/v1/translate/{direction}", direction, [img], binarize, t0, pol, lay, cohort, tier
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
    layer: LayerQuery = None,
    layer_form: LayerForm = None,
    cohort: CohortQuery = None,
    confidence: ConfidenceQuery = None,
    confidence_form: ConfidenceForm = None,
) -> TranslateResponse:
    """Translate one image; answers JSON with the PNG in base64, the polarity used and the
    drift verdict."""
    t0 = time.perf_counter()
    server_timing.mark_since_start("parse")  # the body read, the form parsed
    check_binarize(direction, binarize)
    pol = polarity_choice(polarity, polarity_form)
    lay = layer_label(layer, layer_form)
    tier = confidence_tier(confidence, confidence_form)
    img = await read_encoded(image, "image", settings)  # decoded in the first worker hop
    [done] = await translate(
        state,
        "/v1/translate/{direction}/json",
        direction,
        [img],
        binarize,
        t0,
        pol,
        lay,
        cohort,
        tier,
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
    layer: LayerQuery = None,
    layer_form: LayerForm = None,
    cohort: CohortQuery = None,
    confidence: ConfidenceQuery = None,
    confidence_form: ConfidenceForm = None,
) -> list[TranslateResponse]:
    """Translate several `images` fields (up to SEMLAYOUT_MAX_BATCH_IMAGES) in one request,
    all in `polarity` (auto decides per image)."""
    t0 = time.perf_counter()
    server_timing.mark_since_start("parse")  # the body read, the form parsed
    check_binarize(direction, binarize)
    pol = polarity_choice(polarity, polarity_form)
    lay = layer_label(layer, layer_form)
    tier = confidence_tier(confidence, confidence_form)
    if not images:
        raise HTTPException(422, detail="images: at least one image is required")
    if len(images) > settings.max_batch_images:
        raise HTTPException(
            413,
            detail=f"{len(images)} images in one batch; the limit is {settings.max_batch_images}",
        )
    decoded = [await read_encoded(up, f"images[{i}]", settings) for i, up in enumerate(images)]
    done = await translate(
        state,
        "/v1/translate/{direction}/batch",
        direction,
        decoded,
        binarize,
        t0,
        pol,
        lay,
        cohort,
        tier,
    )
    return [as_response(d, direction) for d in done]
