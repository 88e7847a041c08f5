"""DriftDetector: is this request's image unlike the images the model was trained on?

Each image is compared with the training reference (`SHARDS/reference_stats.json`,
written by `semlayout shard`) of the kind it is — a SEM for `sem2layout`, a
layout for `layout2sem` — in two ways:

1. **Feature z-scores.** For every scalar feature f of `semlayout.data.features.image_features`
   (mean, std, edge_density, p05, p95, laplacian_var, fg_fraction):
   `z_f = (x_f - mean_f) / max(std_f, floor_f)` with the reference mean/std of the train
   split; `floor_f = 1e-3 * (|mean_f| + 1)` keeps a feature that never varied in training
   (e.g. p05 of binary layouts) from dividing by zero while still flagging any change of it.
2. **Histogram KL divergence** `KL(p_current || q_reference) = sum_i p_i log(p_i / q_i)` over
   64 grey-level bins, where p is this image's histogram and q the reference's mean histogram.
   The direction is current-vs-reference: it asks how surprising this image's grey levels
   are under the training distribution, so mass where the reference has (almost) none costs
   most. Both histograms get additive smoothing `p = (h + eps) / (1 + bins * eps)` with
   `eps = 1e-4` (about 6 pixels of a 250x250 image per bin), so empty bins give finite values.

3. **Contrast polarity** (SEMs only). A detector may expect one polarity
   (`expected_polarity`: the layer's, as the server is configured, or the reference's when
   at least `SINGLE_POLARITY_SHARE` of its train SEMs have one). `with_polarity(result,
   decision, expected, flipped)` then flags an image translated in the other polarity by the
   caller's word (a given polarity), and an auto-translated image when its layer's STREAM
   has flipped: a sequential test on the images' own evidence (log-odds of bright), Page's
   CUSUM of the evidence for the other polarity above `polarity_layer.CUSUM_H`
   (`semlayout.polarity_layer`: the server keeps it per layer in the monitor store and
   passes `expected` / `flipped`; without them the detector keeps one stream's in memory).
   Polarity belongs to the layer, so it is judged on the stream: one image's reading is
   right about 3 times in 4, a run of them rarely misleads. Grey-level features barely see a
   reversed layer (a reversed stream moved them on 7.5 % of images). A reference that mixes
   polarities expects none: both are in distribution (the summary shows the mix).

An image is **drifted** when `max |z| > z_threshold` or `KL > kl_threshold` or its polarity
is not the expected one; its drift score is `max(max|z| / z_threshold, KL / kl_threshold,
POLARITY_SCORE if the polarity is unexpected)`, so drifted <=> score > 1.

Thresholds are calibrated on in-distribution images (`calibrate`): each is set to the
`1 - target_rate / 2` quantile of its statistic over those images times a 1.1 margin
(and never below `MIN_Z` / `MIN_KL`), so in-distribution traffic is flagged at about
`target_rate` (default 1%) or less. `detectors_from_reference` calibrates on the shards'
train + val images when the reference file sits in a shards folder; with the JSON alone, the
z threshold is calibrated on the reference's own per-image features and the KL threshold falls
back to `DEFAULT_KL` unless given. A registered model version carries its reference together
with the thresholds calibrated at registration (`write_drift_bundle`: `reference_stats.json` +
`drift_calibration.json`), which are used as they are. The reference is read (and its shape
checked) by `semlayout.data.reference_stats.load_reference_stats`.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from semlayout.data.reference_stats import load_reference_stats, polarity_mix
from semlayout.errors import SemlayoutError
from semlayout.polarity import BRIGHT, DARK
from semlayout.polarity_auto import PolarityDecision, observed_polarity
from semlayout.polarity_layer import LayerState

EPS = 1e-4
MIN_Z = 3.0
MIN_KL = 0.02
DEFAULT_Z = 4.0
DEFAULT_KL = 0.5
MARGIN = 1.1
POLARITY_SCORE = 2.0  # the score of an image of the unexpected polarity
SINGLE_POLARITY_SHARE = 0.95  # a reference this one-sided expects its polarity
DIRECTION_KIND = {"sem2layout": "sem", "layout2sem": "layout"}
CALIBRATION_FILE = "drift_calibration.json"

FeatureFn = Callable[[np.ndarray], dict[str, float]]
HistogramFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class DriftResult:
    drifted: bool
    score: float
    max_abs_z: float
    worst_feature: str
    kl: float
    z: dict[str, float]
    features: dict[str, float]
    polarity: int | None = None  # the image's polarity, when it was judged
    expected_polarity: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def smoothed(hist: np.ndarray, eps: float = EPS) -> np.ndarray:
    h = np.asarray(hist, dtype=np.float64)
    h = h / max(float(h.sum()), 1e-12)
    return (h + eps) / (1.0 + h.size * eps)


def kl_divergence(p_hist: np.ndarray, q_hist: np.ndarray, eps: float = EPS) -> float:
    """KL(p || q) in nats, both histograms normalised and smoothed with `eps` first."""
    p, q = smoothed(p_hist, eps), smoothed(q_hist, eps)
    if p.shape != q.shape:
        raise SemlayoutError(f"histograms differ in bins: {p.size} vs reference {q.size}")
    return float(np.sum(p * np.log(p / q)))


def _default_fns() -> tuple[FeatureFn, HistogramFn]:
    from semlayout.data.features import histogram, image_features

    return image_features, histogram


class DriftDetector:
    """Per-image drift against one reference (`kind` = "sem" or "layout")."""

    def __init__(
        self,
        mean: Mapping[str, float],
        std: Mapping[str, float],
        histogram: Iterable[float],
        kind: str,
        z_threshold: float = DEFAULT_Z,
        kl_threshold: float = DEFAULT_KL,
        feature_fn: FeatureFn | None = None,
        histogram_fn: HistogramFn | None = None,
        expected_polarity: int | None = None,
    ):
        if not mean:
            raise SemlayoutError(f"drift reference for '{kind}' has no features")
        self.kind = kind
        self.feature_names = list(mean)
        self.mean = {f: float(mean[f]) for f in self.feature_names}
        self.std = {f: float(std.get(f, 0.0)) for f in self.feature_names}
        self.scale = {
            f: max(self.std[f], 1e-3 * (abs(self.mean[f]) + 1.0)) for f in self.feature_names
        }
        self.ref_hist = np.asarray(list(histogram), dtype=np.float64)
        if (
            self.ref_hist.ndim != 1
            or self.ref_hist.size < 2
            or not np.all(np.isfinite(self.ref_hist))
        ):
            raise SemlayoutError(
                f"drift reference for '{kind}': histogram must be a list of >= 2 numbers"
            )
        self.z_threshold = float(z_threshold)
        self.kl_threshold = float(kl_threshold)
        self.expected_polarity = expected_polarity
        self.reference_polarity: dict[str, int] | None = None  # the train split's mix (SEMs)
        self._stream = LayerState()  # the stream's evidence, when no layer state is given
        self._stream_lock = threading.Lock()
        if feature_fn is None or histogram_fn is None:
            df, dh = _default_fns()
            feature_fn, histogram_fn = feature_fn or df, histogram_fn or dh
        self._features = feature_fn
        self._histogram = histogram_fn

    # ------------------------------------------------------------------ scoring
    def z_scores(self, features: Mapping[str, float]) -> dict[str, float]:
        return {f: (float(features[f]) - self.mean[f]) / self.scale[f] for f in self.feature_names}

    def statistics(self, img: np.ndarray) -> tuple[dict[str, float], dict[str, float], float]:
        """(features, z-scores, KL) of one uint8 (H, W) image."""
        feats = {k: float(v) for k, v in self._features(img).items()}
        missing = [f for f in self.feature_names if f not in feats]
        if missing:
            raise SemlayoutError(
                f"reference features {missing} are not computed by the feature function"
            )
        hist = self._histogram(img)
        if len(hist) != self.ref_hist.size:
            raise SemlayoutError(
                f"histogram has {len(hist)} bins, reference has {self.ref_hist.size}"
            )
        return feats, self.z_scores(feats), kl_divergence(hist, self.ref_hist)

    def check(self, img: np.ndarray) -> DriftResult:
        feats, z, kl = self.statistics(img)
        worst = max(z, key=lambda f: abs(z[f]))
        max_z = abs(z[worst])
        score = max(max_z / self.z_threshold, kl / self.kl_threshold)
        finite = math.isfinite(score)
        return DriftResult(
            drifted=bool(score > 1.0 or not finite),
            score=float(score) if finite else 1e9,
            max_abs_z=float(max_z) if math.isfinite(max_z) else 1e9,
            worst_feature=worst,
            kl=float(kl),
            z={f: round(v, 4) for f, v in z.items()},
            features=feats,
        )

    def stream_flipped(self, decision: PolarityDecision) -> bool:
        """Pool one image's evidence into the detector's own stream; whether the stream now
        reads the other polarity than the expected one (see the module docstring)."""
        with self._stream_lock:
            if decision.evidence is not None:
                self._stream = self._stream.fold(decision.evidence)
            return self._stream.flipped(self.expected_polarity)

    def with_polarity(
        self,
        res: DriftResult,
        decision: PolarityDecision,
        expected: int | None = None,
        flipped: bool | None = None,
    ) -> DriftResult:
        """`res` judged also on the polarity (see the module docstring): against `expected`
        (default: the detector's) and, for an image read by auto, `flipped` (the layer's
        sequential test; default: the detector's own stream's)."""
        expected = self.expected_polarity if expected is None else expected
        if expected is None:
            return res
        reading = observed_polarity(decision)
        if decision.source == "given":
            flipped = decision.polarity != expected
        elif flipped is None:
            flipped = self.stream_flipped(decision)
        if not flipped:
            return replace(res, polarity=reading, expected_polarity=expected)
        return replace(
            res,
            drifted=True,
            score=max(res.score, POLARITY_SCORE),
            worst_feature="polarity" if res.score < POLARITY_SCORE else res.worst_feature,
            polarity=reading,
            expected_polarity=expected,
        )

    # ------------------------------------------------------------------ calibration
    def calibrate(
        self, images: Iterable[np.ndarray], target_rate: float = 0.01
    ) -> dict[str, float]:
        """Set both thresholds from in-distribution `images` (see the module docstring)."""
        max_z, kls = [], []
        for img in images:
            _, z, kl = self.statistics(img)
            max_z.append(max(abs(v) for v in z.values()))
            kls.append(kl)
        if len(max_z) < 10:
            raise SemlayoutError(f"drift calibration needs at least 10 images, got {len(max_z)}")
        q = 1.0 - target_rate / 2
        self.z_threshold = max(MIN_Z, MARGIN * float(np.quantile(max_z, q)))
        self.kl_threshold = max(MIN_KL, MARGIN * float(np.quantile(kls, q)))
        return {"z_threshold": self.z_threshold, "kl_threshold": self.kl_threshold, "n": len(max_z)}

    def calibrate_z_from_features(
        self, per_image: Mapping[str, list[float]], target_rate: float = 0.01
    ) -> float:
        """Set the z threshold from per-image reference features (no images needed)."""
        n = min(len(per_image.get(f, [])) for f in self.feature_names)
        if n < 10:
            return self.z_threshold
        cols = np.array(
            [
                [
                    self.z_scores({f: per_image[f][i] for f in self.feature_names})[f]
                    for f in self.feature_names
                ]
                for i in range(n)
            ]
        )
        self.z_threshold = max(
            MIN_Z, MARGIN * float(np.quantile(np.abs(cols).max(axis=1), 1.0 - target_rate / 2))
        )
        return self.z_threshold

    def thresholds(self) -> dict[str, float]:
        return {"z_threshold": self.z_threshold, "kl_threshold": self.kl_threshold}


def expected_polarity(stats: Mapping[str, Any], layer: int | None = None) -> int | None:
    """The polarity a stream should have: the layer's when configured, else the reference's
    when it is one-sided (`SINGLE_POLARITY_SHARE`), else None (both are in distribution)."""
    if layer is not None:
        return layer
    mix = polarity_mix(dict(stats))
    total = mix["+1"] + mix["-1"]
    for p, k in ((BRIGHT, "+1"), (DARK, "-1")):
        if total and mix[k] / total >= SINGLE_POLARITY_SHARE:
            return p
    return None


# ---------------------------------------------------------------------- loading


def _calibration_images(shards_dir: Path, kind: str, limit: int) -> list[np.ndarray]:
    """Up to `limit` in-distribution images of `kind`: the train and val splits pooled (not
    test)."""
    index_path = shards_dir / "index.json"
    if not index_path.is_file():
        return []
    try:
        splits = json.loads(index_path.read_text()).get("splits", {})
    except (json.JSONDecodeError, UnicodeDecodeError):
        return []
    images: list[np.ndarray] = []
    for split in ("train", "val"):
        for rel in splits.get(split, {}).get("shards", []):
            f = shards_dir / rel
            if not f.is_file() or len(images) >= limit:
                continue
            with np.load(f, allow_pickle=False) as npz:
                if kind in npz:
                    images.extend(np.asarray(npz[kind])[: limit - len(images)])
    return images if len(images) >= 20 else []


def _registered_thresholds(path: Path) -> dict[str, dict[str, float]] | None:
    """The thresholds calibrated at registration (`drift_calibration.json` beside the
    reference), or None."""
    folder = path if path.is_dir() else path.parent
    f = folder / CALIBRATION_FILE
    if not f.is_file():
        return None
    try:
        doc = json.loads(f.read_text(encoding="utf-8"))
        return {
            d: {k: float(doc["thresholds"][d][k]) for k in ("z_threshold", "kl_threshold")}
            for d in DIRECTION_KIND
        }
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as err:
        raise SemlayoutError(f"{f}: not a drift calibration ({err})") from None


def detectors_from_reference(
    path: str | Path,
    z_threshold: float | None = None,
    kl_threshold: float | None = None,
    target_rate: float = 0.01,
    calibration_limit: int = 600,
    feature_fn: FeatureFn | None = None,
    histogram_fn: HistogramFn | None = None,
    layer_polarity: int | None = None,
) -> dict[str, DriftDetector]:
    """One calibrated DriftDetector per direction: {"sem2layout": the sem detector (expecting
    the layer's polarity, see `expected_polarity`), "layout2sem": the layout detector}."""
    path = Path(path)
    stats = load_reference_stats(path)
    shards_dir = path if path.is_dir() else path.parent
    registered = _registered_thresholds(path)
    out: dict[str, DriftDetector] = {}
    for direction, kind in DIRECTION_KIND.items():
        block = stats[kind]
        det = DriftDetector(
            block["mean"],
            block["std"],
            block["histogram"],
            kind,
            z_threshold=z_threshold or DEFAULT_Z,
            kl_threshold=kl_threshold or DEFAULT_KL,
            feature_fn=feature_fn,
            histogram_fn=histogram_fn,
            expected_polarity=expected_polarity(stats, layer_polarity) if kind == "sem" else None,
        )
        if kind == "sem":
            det.reference_polarity = polarity_mix(stats)
        if (z_threshold is None or kl_threshold is None) and registered is not None:
            det.z_threshold = z_threshold or registered[direction]["z_threshold"]
            det.kl_threshold = kl_threshold or registered[direction]["kl_threshold"]
        elif z_threshold is None or kl_threshold is None:
            given = det.thresholds()
            images = _calibration_images(shards_dir, kind, calibration_limit)
            if images:
                det.calibrate(images, target_rate)
            elif isinstance(block.get("features"), dict):
                det.calibrate_z_from_features(block["features"], target_rate)
            # explicit thresholds win over calibrated ones
            if z_threshold is not None:
                det.z_threshold = given["z_threshold"]
            if kl_threshold is not None:
                det.kl_threshold = given["kl_threshold"]
        out[direction] = det
    return out


# ---------------------------------------------------------------------- travelling with a model
def write_drift_bundle(
    reference: str | os.PathLike[str], dest: Path, target_rate: float = 0.01
) -> Path:
    """What a registered model version carries for its drift checks, in `dest`:
    `reference_stats.json` (checked) and `drift_calibration.json` (the thresholds calibrated
    now, on the shards' train + val images when the reference sits in a shard folder), so the
    server needs neither the shards nor a calibration run. Returns `dest`."""
    from semlayout.data.reference_stats import REFERENCE_FILE

    src = Path(reference)
    src = src / REFERENCE_FILE if src.is_dir() else src
    detectors = detectors_from_reference(src, target_rate=target_rate)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / REFERENCE_FILE).write_bytes(src.read_bytes())
    doc = {
        "format": "semlayout-drift-calibration/1",
        "target_rate": target_rate,
        "thresholds": {d: det.thresholds() for d, det in detectors.items()},
    }
    (dest / CALIBRATION_FILE).write_text(json.dumps(doc, indent=2) + "\n")
    return dest


@dataclass(frozen=True)
class DriftOptions:
    """How the server builds its detectors: from `override` (`--reference`) when given, else
    from the reference registered with the model version; explicit thresholds win over
    calibrated ones."""

    override: Path | None = None
    z_threshold: float | None = None
    kl_threshold: float | None = None
    target_rate: float = 0.01
    layer_polarity: int | None = None  # the served layer's polarity, when configured

    def detectors(self, reference: Path) -> dict[str, DriftDetector]:
        return detectors_from_reference(
            reference,
            self.z_threshold,
            self.kl_threshold,
            self.target_rate,
            layer_polarity=self.layer_polarity,
        )
