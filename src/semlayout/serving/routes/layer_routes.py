"""The layers' polarity (`semlayout.polarity_layer`): GET /v1/layers lists what the service
knows of each layer (configured polarity, pooled evidence, the polarity it implies, images
read); PUT / DELETE /v1/layers/{layer}/polarity (admin token) set or clear a layer's
configured polarity, the strongest word for `polarity=auto`. A polarity the served model
never learned is refused (422), as on the translate endpoints."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path
from starlette.concurrency import run_in_threadpool

from semlayout.errors import SemlayoutError
from semlayout.polarity import PolarityChoice, parse_choice
from semlayout.polarity_layer import LAYER_PATTERN
from semlayout.serving.deps import StateDep
from semlayout.serving.schemas import AUTH_ERRORS, STORE_ERROR, LayerInfo, LayerPolarityRequest
from semlayout.serving.security import require

router = APIRouter(tags=["layers"])
LayerPath = Annotated[
    str, Path(pattern=LAYER_PATTERN, description="the layer: 1-64 of A-Z a-z 0-9 . _ -")
]


@router.get("/v1/layers", response_model=list[LayerInfo], responses=STORE_ERROR)
async def layers(state: StateDep) -> list[LayerInfo]:
    """Every layer the service has read or been told about, with its pooled evidence."""
    known = await run_in_threadpool(state.layers.all)
    return [LayerInfo(**s.to_dict()) for s in known]  # type: ignore[arg-type]


@router.put(
    "/v1/layers/{layer}/polarity",
    response_model=LayerInfo,
    responses={**AUTH_ERRORS, **STORE_ERROR},
    dependencies=[Depends(require("admin"))],
)
async def set_polarity(state: StateDep, layer: LayerPath, body: LayerPolarityRequest) -> LayerInfo:
    """Configure the layer's polarity (bright or dark): auto translates its images in it."""
    try:
        choice = parse_choice(body.polarity)
        if choice is PolarityChoice.auto:
            raise SemlayoutError("a layer's polarity must be bright or dark (DELETE clears it)")
        polarity = choice.value_or_none
        assert polarity is not None
        state.engine.current.translator.fixed_polarity("sem2layout", "auto", polarity)
    except SemlayoutError as err:
        raise HTTPException(422, detail=str(err)) from None
    done = await run_in_threadpool(state.layers.configure, layer, polarity)
    return LayerInfo(**done.to_dict())  # type: ignore[arg-type]


@router.delete(
    "/v1/layers/{layer}/polarity",
    response_model=LayerInfo,
    responses={**AUTH_ERRORS, **STORE_ERROR},
    dependencies=[Depends(require("admin"))],
)
async def clear_polarity(state: StateDep, layer: LayerPath) -> LayerInfo:
    """Clear the layer's configured polarity: auto goes back to the pooled evidence."""
    done = await run_in_threadpool(state.layers.configure, layer, None)
    return LayerInfo(**done.to_dict())  # type: ignore[arg-type]
