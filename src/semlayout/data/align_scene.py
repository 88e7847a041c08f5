"""A pair prepared for matching: the raw SEM, the SEM as matched (raw, or resampled into the
layout's frame after a field distortion was undone), the template's features and
self-comparison table, and the score maps. `prepare` builds it, `rematch` swaps the SEM.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from semlayout.data.align_config import AlignConfig
from semlayout.data.align_maps import (
    ModelTables,
    ScoreMaps,
    noise_ratio,
    score_map,
    sem_features,
    template_features,
    unit64,
)
from semlayout.data.align_peak import ShiftTable, Verdict, evaluate


@dataclass(frozen=True)
class Scene:
    """One pair ready to match: the SEM as matched (raw, or resampled into the layout's
    frame), the template's features and self-comparison table, and the score maps."""

    raw: np.ndarray  # (H, W) uint8 SEM as acquired (its noise scales the z-scores)
    sem: np.ndarray  # (H, W) the SEM as matched (raw, or float32 after a correction)
    T: np.ndarray
    E: np.ndarray | None
    table: ShiftTable
    sem_f: np.ndarray  # the matched SEM high-passed (`sem_features`)
    maps: ScoreMaps

    # computed once per scene, on first use (a frozen dataclass still has its __dict__)
    @cached_property
    def noise(self) -> float:
        """`noise_ratio` of the raw SEM: what every z-score of this pair is scaled by."""
        return noise_ratio(self.raw)

    @cached_property
    def raw_std(self) -> float:
        """Standard deviation of the raw SEM (grey levels)."""
        return float(self.raw.std())

    @property
    def rho(self) -> float | bool:
        """`align_maps.feature_rho` of the template (what `score_map` computed)."""
        return self.maps.rho if self.maps.rE is not None else False

    @cached_property
    def units(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(T, E) zero-mean and unit-norm in float64 (`align_maps.pair_model_dist2`)."""
        return unit64(self.T), None if self.E is None else unit64(self.E)

    @cached_property
    def tables(self) -> ModelTables:
        ny, nx = self.maps.R.shape
        return ModelTables.of(self.T, self.E, ny - 1, nx - 1)

    def evaluate_signed(
        self, R: np.ndarray, a: np.ndarray, b: np.ndarray, cfg: AlignConfig
    ) -> Verdict:
        """`align_peak.evaluate` of one polarity's map `R` (coefficient maps a, b); look-alikes
        are judged on the fitted models' distances (`ModelTables`)."""
        tables = self.tables
        return evaluate(
            R,
            lambda y, x: (a[y, x], b[y, x]),
            self.table,
            self.T,
            self.E,
            self.raw,
            cfg,
            lambda p: tables.dist2((p.y, p.x), (p.coef_t, p.coef_e), a, b),
            self.noise,
        )


def prepare(raw: np.ndarray, layout: np.ndarray, cfg: AlignConfig) -> Scene:
    """Features of the template and the score map of the raw SEM."""
    tpl01 = (layout == 255).astype(np.uint8)
    T, E = template_features(tpl01, cfg.template_sigma, cfg.use_edges)
    sem_f = sem_features(raw, cfg.blur, cfg.highpass)
    maps = score_map(sem_f, T, E, cfg.edges_bright)
    return Scene(raw, raw, T, E, ShiftTable.of(tpl01, maps.R.shape), sem_f, maps)


def rematch(scene: Scene, sem: np.ndarray, cfg: AlignConfig) -> Scene:
    """The same pair with the SEM replaced (a corrected one), maps recomputed."""
    sem_f = sem_features(sem, cfg.blur, cfg.highpass)
    maps = score_map(sem_f, scene.T, scene.E, cfg.edges_bright, scene.rho)
    new = Scene(scene.raw, sem, scene.T, scene.E, scene.table, sem_f, maps)
    # the same raw SEM and template, same shapes
    for known in ("noise", "raw_std", "units", "tables"):
        if known in scene.__dict__:
            new.__dict__[known] = scene.__dict__[known]
    return new
