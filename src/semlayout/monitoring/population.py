"""Population drift: is the RECENT STREAM of a cohort unlike the training images?

The per-image detector (`monitoring.drift`) asks whether one image is an outlier; a stream can
move without any single image being one (a pattern family the model never saw has ordinary
grey levels: it was flagged on 0 % of its images). This is a two-sample test of a window of
recent requests against the reference:

- the samples are the per-image features of `semlayout.data.features.image_features`, the ones
  the drift detector already stores for every request (`drift_events.features`), standardised
  by the reference's spread; the reference sample is the train split's per-image features
  (`reference_stats.json` -> `<kind>.features`), at most `MAX_REFERENCE` of them;
- the statistic is the (biased) squared maximum mean discrepancy with a Gaussian kernel whose
  width is the median pairwise distance of the pooled samples (Gretton et al., "A kernel
  two-sample test", JMLR 2012); its p-value is a permutation test with `PERMUTATIONS`
  reshuffles from a fixed seed, so the same window always gets the same verdict;
- a cohort (pattern family when the caller said it, tool / client label when given, else
  "all") is judged once it has `min_samples` requests in the window; it has drifted when
  p < `alpha` (0.01 by default: about one in-distribution window in a hundred fires;
  docs/confidence.md has the measured rate).

Without a drift reference, a model version with a confidence calibration is tested against
the calibration's reference: the validation inputs' features AND confidence signals
(`confidence_calibration`'s `reference`; each request's signals are stored with it,
`predictions.confidence_signals`). The train split's features are preferred when both exist:
the val sample is small, and windows of held-out in-distribution requests fired against it
(docs/confidence.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

PERMUTATIONS = 500  # the smallest p-value a test can give is 1 / 501
MAX_REFERENCE = 400
DEFAULT_ALPHA = 0.01
DEFAULT_WINDOW = 100
DEFAULT_MIN_SAMPLES = 30


@dataclass(frozen=True)
class PopulationResult:
    cohort: str
    n: int  # requests of the cohort in the window
    mmd2: float | None
    p_value: float | None
    drifted: bool
    alpha: float
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T, 0.0)


def mmd_test(
    x: np.ndarray, y: np.ndarray, permutations: int = PERMUTATIONS, seed: int = 0
) -> tuple[float, float]:
    """(MMD^2, permutation p-value) of samples x (n, d) and y (m, d)."""
    z = np.concatenate([x, y]).astype(np.float64)
    d2 = _sqdist(z, z)
    med = float(np.median(d2[np.triu_indices(len(z), 1)]))
    k = np.exp(-d2 / max(med, 1e-12))
    n = len(x)

    def stat(idx: np.ndarray) -> float:
        a, b = idx[:n], idx[n:]
        return float(k[np.ix_(a, a)].mean() + k[np.ix_(b, b)].mean() - 2.0 * k[np.ix_(a, b)].mean())

    observed = stat(np.arange(len(z)))
    rng = np.random.default_rng(seed)
    more = sum(stat(rng.permutation(len(z))) >= observed for _ in range(permutations))
    return observed, (more + 1) / (permutations + 1)


class PopulationDrift:
    """A reference sample of one image kind, and the test of a window against it."""

    def __init__(self, reference_features: Mapping[str, Sequence[float]], seed: int = 0):
        names = sorted(reference_features)
        cols = [np.asarray(reference_features[f], np.float64) for f in names]
        n = min((len(c) for c in cols), default=0)
        ref = np.stack([c[:n] for c in cols], axis=1) if n else np.zeros((0, len(names)))
        ref = ref[np.isfinite(ref).all(axis=1)]
        if len(ref) > MAX_REFERENCE:
            ref = ref[np.random.default_rng(seed).choice(len(ref), MAX_REFERENCE, replace=False)]
        self.names = names
        self.mean = ref.mean(axis=0) if len(ref) else np.zeros(len(names))
        self.scale = ref.std(axis=0) + 1e-6 if len(ref) else np.ones(len(names))
        self.reference = (ref - self.mean) / self.scale
        self.seed = seed

    @property
    def usable(self) -> bool:
        return len(self.reference) >= 20 and bool(self.names)

    def matrix(self, rows: Sequence[Mapping[str, float]]) -> np.ndarray:
        """Standardised (n, d) samples of feature dicts (rows missing a feature are dropped)."""
        vals = [
            [float(r[f]) for f in self.names]
            for r in rows
            if all(f in r and math.isfinite(float(r[f])) for f in self.names)
        ]
        if not vals:
            return np.zeros((0, len(self.names)))
        return (np.asarray(vals) - self.mean) / self.scale

    def test(
        self,
        rows: Sequence[Mapping[str, float]],
        cohort: str = "all",
        alpha: float = DEFAULT_ALPHA,
        min_samples: int = DEFAULT_MIN_SAMPLES,
    ) -> PopulationResult:
        x = self.matrix(rows)
        if not self.usable:
            return PopulationResult(
                cohort, len(x), None, None, False, alpha, "no per-image reference features"
            )
        if len(x) < min_samples:
            return PopulationResult(
                cohort,
                len(x),
                None,
                None,
                False,
                alpha,
                f"{len(x)} requests (need {min_samples}); no verdict",
            )
        mmd2, p = mmd_test(x, self.reference, seed=self.seed)
        drifted = p < alpha
        return PopulationResult(
            cohort,
            len(x),
            mmd2,
            p,
            drifted,
            alpha,
            f"MMD^2 {mmd2:.4f}, p {p:.4f} over {len(x)} requests vs {len(self.reference)} "
            f"reference images (alpha {alpha})",
        )


def by_cohort(
    detector: PopulationDrift,
    rows: Sequence[tuple[str | None, Mapping[str, float]]],
    alpha: float = DEFAULT_ALPHA,
    min_samples: int = DEFAULT_MIN_SAMPLES,
) -> list[PopulationResult]:
    """Test every cohort of (cohort label or None, features) rows, and all of them together."""
    groups: dict[str, list[Mapping[str, float]]] = {"all": [f for _, f in rows]}
    for label, feats in rows:
        if label:
            groups.setdefault(label, []).append(feats)
    return [detector.test(g, c, alpha, min_samples) for c, g in groups.items()]


def detectors_for(
    calibration: Any | None, reference_stats: Mapping[str, Any] | None
) -> dict[str, PopulationDrift]:
    """One population test per direction: on the drift reference's per-image features of the
    train split when there is one, else on the calibration's reference sample (the validation
    inputs' features and confidence signals). The train split first: its sample is larger (up
    to `MAX_REFERENCE`) and is the training population itself; against a 71-image val sample,
    windows of the held-out test split fired 8 times in 20 (docs/confidence.md, "Population
    drift"), against the train split's features never."""
    kinds = {"sem2layout": "sem", "layout2sem": "layout"}
    out: dict[str, PopulationDrift] = {}
    for direction, kind in kinds.items():
        cal = calibration.get(direction) if calibration is not None else None
        if reference_stats and isinstance(reference_stats.get(kind, {}).get("features"), dict):
            out[direction] = PopulationDrift(reference_stats[kind]["features"])
        elif cal is not None and cal.reference:
            out[direction] = PopulationDrift(cal.reference)
    return out


def loop_population(
    store: Any,
    checkpoint: Any,
    window: int = DEFAULT_WINDOW,
    alpha: float = DEFAULT_ALPHA,
    min_samples: int = DEFAULT_MIN_SAMPLES,
) -> list[dict[str, Any]]:
    """The loop's observation: every direction's cohorts tested over the last `window`
    predictions against the reference that came with `checkpoint` (its calibration, else its
    drift reference); [] without a checkpoint or a usable reference."""
    if checkpoint is None:
        return []
    from semlayout.confidence_calibration import load_calibration
    from semlayout.errors import SemlayoutError
    from semlayout.monitoring.confidence_store import population_window
    from semlayout.registry.model_cache import drift_reference_of

    stats = None
    try:
        calibration = load_calibration(checkpoint)
        ref = drift_reference_of(checkpoint)
        if ref is not None:
            from semlayout.data.reference_stats import load_reference_stats

            stats = load_reference_stats(ref)
    except SemlayoutError:
        return []
    out = []
    for direction, det in detectors_for(calibration, stats).items():
        rows = population_window(store, direction, window)
        for res in by_cohort(det, rows, alpha, min_samples):
            out.append({"direction": direction, **res.to_dict()})
    return out
