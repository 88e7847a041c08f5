"""POST /v1/admin/reload (admin token): load the version the registry alias names now."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from semlayout.serving.deps import StateDep
from semlayout.serving.schemas import AUTH_ERRORS, ReloadResponse
from semlayout.serving.security import require
from semlayout.serving.state import reload_model

router = APIRouter(tags=["admin"], dependencies=[Depends(require("admin"))])


@router.post("/v1/admin/reload", response_model=ReloadResponse, responses=AUTH_ERRORS)
async def reload(state: StateDep, force: Annotated[bool, Query()] = False) -> ReloadResponse:
    """Load the version the registry alias names now (or the model again with force=true)."""
    return ReloadResponse(**await reload_model(state, force))
