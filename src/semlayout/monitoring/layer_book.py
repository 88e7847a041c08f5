"""The layers' polarity in the monitoring store (`layer_polarity`, migration 0005).

`LayerBook(store)` reads a layer's `LayerState`, folds the evidence of newly read images
into it (one write transaction: SQLite's BEGIN IMMEDIATE, PostgreSQL's SELECT ... FOR
UPDATE, so two replicas on one store never lose an update) and sets or clears a layer's
configured polarity. The arithmetic is `semlayout.polarity_layer`'s.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from semlayout.monitoring import schema as t
from semlayout.monitoring.store import MonitorStore, upsert
from semlayout.polarity_layer import LayerState


def _state(row: Any) -> LayerState:
    return LayerState(
        layer=row.layer,
        configured=row.configured,
        pooled=float(row.pooled),
        n=int(row.n),
        s_dark=float(row.s_dark),
        s_bright=float(row.s_bright),
    )


def _row(state: LayerState) -> dict[str, Any]:
    return {
        "layer": state.layer,
        "configured": state.configured,
        "pooled": state.pooled,
        "n": state.n,
        "s_dark": state.s_dark,
        "s_bright": state.s_bright,
        "ts": time.time(),
    }


class LayerBook:
    """Per-layer polarity evidence, shared by every process on `store`."""

    def __init__(self, store: MonitorStore):
        self.store = store

    def _read(self, conn: Connection, layer: str, lock: bool = False) -> LayerState:
        q = sa.select(t.layer_polarity).where(t.layer_polarity.c.layer == layer)
        if lock:
            q = q.with_for_update()
        row = conn.execute(q).first()
        return _state(row) if row is not None else LayerState(layer)

    def get(self, layer: str) -> LayerState:
        """The layer's state (a fresh one when nothing was recorded for it)."""
        with self.store.reading() as conn:
            return self._read(conn, layer)

    def all(self) -> list[LayerState]:
        with self.store.reading() as conn:
            rows = conn.execute(sa.select(t.layer_polarity).order_by(t.layer_polarity.c.layer))
            return [_state(r) for r in rows]

    def fold(self, layer: str, evidences: Sequence[float]) -> list[LayerState]:
        """Pool `evidences` (log-odds of bright, in order) into the layer; the state after
        each image."""
        if not evidences:
            return []
        with self.store.transaction() as conn:
            state = self._read(conn, layer, lock=True)
            after = []
            for e in evidences:
                state = state.fold(e)
                after.append(state)
            upsert(conn, t.layer_polarity, _row(state), ["layer"])
        return after

    def configure(self, layer: str, polarity: int | None) -> LayerState:
        """Set (+1 / -1) or clear (None) the layer's configured polarity."""
        with self.store.transaction() as conn:
            state = self._read(conn, layer, lock=True)
            state = LayerState(layer, polarity, state.pooled, state.n, state.s_dark, state.s_bright)
            upsert(conn, t.layer_polarity, _row(state), ["layer"])
        return state


def update_drift(store: MonitorStore, updates: Sequence[tuple[str, Any]]) -> int:
    """The drift verdict of recorded predictions judged again once their image's polarity
    evidence was read after the answer (`serving.layer_evidence`): (prediction id,
    `DriftResult`) -> its drift row's drifted flag and score. One transaction; returns the
    rows updated (one pruned meanwhile is skipped)."""
    d = t.drift_events
    done = 0
    with store.transaction() as conn:
        for pid, res in updates:
            q = sa.update(d).where(d.c.prediction_id == pid)
            done += conn.execute(q.values(drifted=int(res.drifted), score=res.score)).rowcount
    return done
