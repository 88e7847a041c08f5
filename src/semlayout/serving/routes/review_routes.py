"""GET /v1/review/queue: the predictions a person should label next (issue 17).

Recent predictions whose truth has not come back (no ground truth, no feedback pair with the
same SEM), least confident first, diversity-aware (`semlayout.review.select`). A reviewed pair
posted to /v1/feedback (same SEM pixels) or a ground truth for the prediction closes its
entry. API token; `limit` 1..`MAX_LIMIT` (else 422).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from starlette.concurrency import run_in_threadpool

from semlayout.directions import Direction
from semlayout.review import MAX_LIMIT
from semlayout.serving.deps import StateDep
from semlayout.serving.schemas import AUTH_ERRORS, STORE_ERROR
from semlayout.serving.security import require
from semlayout.serving.state import ServingState

router = APIRouter(tags=["review"], dependencies=[Depends(require("api"))])


@router.get("/v1/review/queue", responses={**AUTH_ERRORS, **STORE_ERROR})
async def review_queue(
    state: StateDep,
    direction: Direction | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 20,
    window: Annotated[int, Query(ge=1, le=100_000)] = 2000,
) -> dict[str, Any]:
    """Up to `limit` of the last `window` unreviewed predictions, least confident first."""
    return await run_in_threadpool(build_queue, state, direction, limit, window)


def build_queue(
    state: ServingState, direction: Direction | None, limit: int, window: int
) -> dict[str, Any]:
    from semlayout.monitoring.confidence_store import review_candidates
    from semlayout.review import candidates_from_rows, select

    rows = review_candidates(state.store, None if direction is None else direction.value, window)
    picked = select(candidates_from_rows(rows), limit)
    return {
        "direction": None if direction is None else direction.value,
        "open": len(rows),
        "items": [c.to_dict() for c in picked],
    }
