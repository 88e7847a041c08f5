"""What the monitoring store answers per tool / layer profile (issue 21): how many recent
predictions each profile answered, per direction, and their quality where ground truth came
back (mean SSIM and IoU), so a profile that serves worse than the shared network shows.

A prediction's profile is `predictions.profile` (NULL: the shared network, reported as
`none`, also for rows made before profiles were recorded).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from semlayout.monitoring import schema as t
from semlayout.monitoring.store import MonitorStore

SHARED = "none"  # how the shared network (no profile) is named in the summary and X-Profile


def profile_summary(store: MonitorStore, window: int) -> dict[str, Any]:
    """{profile: {"n", "directions": {direction: {"n", "with_truth", "ssim", "iou"}}}} over
    the last `window` predictions (`ssim` / `iou`: means over those with ground truth, None
    without any)."""
    p, g = t.predictions, t.ground_truth
    recent = (
        sa.select(p.c.id, p.c.direction, p.c.profile)
        .order_by(p.c.ts.desc())
        .limit(int(window))
        .subquery()
    )
    q = (
        sa.select(
            recent.c.profile,
            recent.c.direction,
            sa.func.count(),
            sa.func.count(g.c.prediction_id),
            sa.func.avg(g.c.ssim),
            sa.func.avg(g.c.iou),
        )
        .select_from(recent.outerjoin(g, g.c.prediction_id == recent.c.id))
        .group_by(recent.c.profile, recent.c.direction)
    )
    with store.reading() as conn:
        rows: list[Any] = list(conn.execute(q))
    out: dict[str, Any] = {}
    for profile, direction, n, truth, ssim, iou in rows:
        block = out.setdefault(profile or SHARED, {"n": 0, "directions": {}})
        block["n"] += int(n)
        block["directions"][direction] = {
            "n": int(n),
            "with_truth": int(truth),
            "ssim": None if ssim is None else float(ssim),
            "iou": None if iou is None else float(iou),
        }
    return out
