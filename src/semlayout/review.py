"""The review queue: which predictions a person should label next (issue 17, active learning).

Candidates are recent predictions whose truth has not come back (no ground truth for the
prediction, no feedback pair with the same SEM). `select(candidates, limit)` orders them least
confident first, diversity-aware: greedily, the next pick maximises
`(1 - confidence) * min(1, distance to the nearest pick / spread)`, where distance is taken
over the image's standardised drift features and `spread` is half the median distance between
candidates, so a burst of near-identical images from one bad batch yields one or two picks and
leaves room for other kinds of failure. A confidence that is unknown counts as 0.5; a pick's
reason says why it is there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAX_LIMIT = 500
UNKNOWN_CONFIDENCE = 0.5


@dataclass(frozen=True)
class Candidate:
    prediction_id: str
    ts: float
    direction: str
    model_version: str
    confidence: float | None
    predicted_quality: float | None
    reason: str | None
    cohort: str | None
    features: dict[str, float] = field(default_factory=dict)
    has_input: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "prediction_id": self.prediction_id,
            "ts": self.ts,
            "direction": self.direction,
            "model_version": self.model_version,
            "confidence": self.confidence,
            "predicted_quality": self.predicted_quality,
            "reason": self.reason,
            "cohort": self.cohort,
            "input_kept": self.has_input,
        }


def _feature_matrix(cands: Sequence[Candidate]) -> np.ndarray:
    names = sorted({k for c in cands for k in c.features})
    if not names:
        return np.zeros((len(cands), 0))
    m = np.array([[float(c.features.get(k, math.nan)) for k in names] for c in cands], np.float64)
    m = np.where(np.isfinite(m), m, np.nanmean(np.where(np.isfinite(m), m, np.nan), axis=0))
    m = np.nan_to_num(m)
    return (m - m.mean(axis=0)) / (m.std(axis=0) + 1e-9)


def urgency(c: Candidate) -> float:
    conf = UNKNOWN_CONFIDENCE if c.confidence is None else float(c.confidence)
    return 1.0 - min(max(conf, 0.0), 1.0)


def select(candidates: Sequence[Candidate], limit: int) -> list[Candidate]:
    """Up to `limit` candidates, least confident first, diversity-aware (module docstring)."""
    cands = list(candidates)
    if not cands or limit < 1:
        return []
    base = np.array([urgency(c) for c in cands])
    x = _feature_matrix(cands)
    if x.shape[1] == 0 or len(cands) < 3:
        order = np.argsort(-base, kind="stable")[:limit]
        return [cands[i] for i in order]
    sq = (x * x).sum(1)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0))
    spread = 0.5 * float(np.median(dist[np.triu_indices(len(cands), 1)])) or 1.0
    nearest = np.full(len(cands), np.inf)
    picked: list[int] = []
    free = np.ones(len(cands), bool)
    while len(picked) < min(limit, len(cands)):
        score = base * np.minimum(1.0, nearest / spread)
        score = np.where(free, score, -np.inf)
        # ties (e.g. nothing picked yet): the least confident, then the most recent
        best = int(np.lexsort((-np.array([c.ts for c in cands]), -base, -score))[0])
        picked.append(best)
        free[best] = False
        nearest = np.minimum(nearest, dist[best])
    return [cands[i] for i in picked]


def candidates_from_rows(rows: Sequence[Mapping[str, Any]]) -> list[Candidate]:
    """Candidates from the store's rows (`MonitorStore.review_candidates`)."""
    return [
        Candidate(
            prediction_id=str(r["id"]),
            ts=float(r["ts"]),
            direction=str(r["direction"]),
            model_version=str(r["model_version"]),
            confidence=None if r.get("confidence") is None else float(r["confidence"]),
            predicted_quality=(
                None if r.get("predicted_quality") is None else float(r["predicted_quality"])
            ),
            reason=r.get("confidence_reason"),
            cohort=r.get("cohort"),
            features=dict(r.get("features") or {}),
            has_input=bool(r.get("has_input")),
        )
        for r in rows
    ]
