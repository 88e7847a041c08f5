"""The confidence calibration: confidence signals -> predicted quality and P(good), per direction.

Fitted at evaluate time on the validation split (`fit`), saved beside the weights as JSON
(`CALIBRATION_FILE`; no pickle) and logged with the registered version. Per direction:
```
z      = (signals - mean) / scale                      standardised kept signals (N, F)
score  = z . weights + bias                            ridge regression of the true quality
predicted = iso(score)                                 isotonic (monotone) map to the quality:
                                                       IoU for sem2layout, SSIM for layout2sem
confidence = good(score)                               isotonic map to P(quality >= good_threshold)
```
Both maps are piecewise linear through the pool-adjacent-violators blocks (`iso_x`,
`iso_y`, `good_y`), flat beyond the ends: an input past anything seen in validation gets the
value of the most extreme validation images, never an extrapolation.
Two tiers (issue 17's latency bar): the **full** calibration (`directions`: every kept signal,
some of which cost a forward) and the **inline** ones (`inline`: per direction a list of
calibrations of signals that cost no forward on the request, the first whose signals an image
has is used), fitted on the same samples. A file without `inline` (fitted before the tiers)
loads with an empty one: its answers carry the full confidence, computed inline.
`good_threshold` is the issue's bar for a usable SEM->Layout prediction (IoU 0.6); for
Layout->SEM, whose SSIM against a noisy SEM is capped by the dose, it is `GOOD_SSIM_SHARE` of
the validation median.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from semlayout.errors import SemlayoutError

CALIBRATION_FILE = "confidence_calibration.json"
FORMAT = "semlayout-confidence-calibration/1"
METRIC = {"sem2layout": "iou", "layout2sem": "ssim"}
GOOD_IOU = 0.6
GOOD_SSIM_SHARE = 0.8
RIDGE = 1.0  # ridge penalty, in units of the standardised signals' sample count
MIN_FIT = 12  # pairs below which no calibration is fitted


@dataclass(frozen=True)
class DirectionCalibration:
    metric: str
    signals: list[str]
    mean: list[float]
    scale: list[float]
    weights: list[float]
    bias: float
    iso_x: list[float]
    iso_y: list[float]
    good_y: list[float]
    good_threshold: float
    n: int
    fit: dict[str, float] = field(default_factory=dict)  # in-sample numbers, for the record
    # the validation inputs' image features and signals, column-wise: the population-drift
    # test's reference sample (`semlayout.monitoring.population`)
    reference: dict[str, list[float]] = field(default_factory=dict)

    def score(self, signals: np.ndarray) -> np.ndarray:
        """(N, F) signals in `self.signals` order -> (N,) regression score."""
        z = (np.asarray(signals, np.float64) - np.asarray(self.mean)) / np.asarray(self.scale)
        return z @ np.asarray(self.weights) + self.bias

    def predict(self, signals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(predicted quality, confidence = P(good)), each (N,), in [0, 1]."""
        s = self.score(signals)
        pred = np.interp(s, self.iso_x, self.iso_y)
        conf = np.interp(s, self.iso_x, self.good_y)
        return np.clip(pred, 0.0, 1.0), np.clip(conf, 0.0, 1.0)


def pav(y: np.ndarray) -> np.ndarray:
    """Pool adjacent violators: the non-decreasing fit of `y` (already ordered by the score)."""
    vals: list[float] = []
    wts: list[int] = []
    for v in np.asarray(y, np.float64):
        vals.append(float(v))
        wts.append(1)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            w = wts[-2] + wts[-1]
            vals[-2] = (vals[-2] * wts[-2] + vals[-1] * wts[-1]) / w
            wts[-2] = w
            vals.pop()
            wts.pop()
    return np.repeat(vals, wts)


def _knots(x: np.ndarray, y: np.ndarray, n: int = 24) -> tuple[list[float], list[float]]:
    """At most `n` knots of the piecewise-linear map x -> y (x sorted), ends included."""
    idx = np.unique(np.linspace(0, len(x) - 1, min(n, len(x))).round().astype(int))
    xs, ys = x[idx], y[idx]
    keep = np.concatenate([[True], np.diff(xs) > 0])  # np.interp needs increasing x
    return [float(v) for v in xs[keep]], [float(v) for v in ys[keep]]


def fit_direction(
    signals: np.ndarray,
    quality: np.ndarray,
    names: Sequence[str],
    metric: str,
    good: float,
    reference: Mapping[str, Sequence[float]] | None = None,
) -> DirectionCalibration:
    """Fit one direction's calibration on (N, F) `signals` and the (N,) true `quality`."""
    x = np.asarray(signals, np.float64)
    y = np.asarray(quality, np.float64)
    ok = np.isfinite(x).all(axis=1) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(y) < MIN_FIT:
        raise SemlayoutError(
            f"confidence calibration needs at least {MIN_FIT} validation pairs with finite "
            f"signals, got {len(y)}"
        )
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-9
    z = (x - mean) / scale
    w = np.linalg.solve(z.T @ z + RIDGE * len(y) * 0.01 * np.eye(z.shape[1]), z.T @ (y - y.mean()))
    s = z @ w + y.mean()
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    iso = pav(y[order])
    good_fit = pav((y[order] >= good).astype(np.float64))
    kx, ky = _knots(s_sorted, iso)
    _, kg = _knots(s_sorted, good_fit)
    from scipy.stats import spearmanr

    rho = float(spearmanr(s, y).statistic) if np.ptp(s) > 0 and np.ptp(y) > 0 else 0.0
    return DirectionCalibration(
        metric=metric,
        signals=list(names),
        mean=mean.tolist(),
        scale=scale.tolist(),
        weights=w.tolist(),
        bias=float(y.mean()),
        iso_x=kx,
        iso_y=ky,
        good_y=kg,
        good_threshold=float(good),
        n=int(len(y)),
        fit={
            "spearman": rho,
            "mean_quality": float(y.mean()),
            "good_share": float(np.mean(y >= good)),
        },
        reference={k: [float(v) for v in vals] for k, vals in (reference or {}).items()},
    )


@dataclass(frozen=True)
class Calibration:
    """Both directions' calibrations (a direction may be missing: its confidence is unknown)."""

    directions: dict[str, DirectionCalibration]
    source: str = ""  # what it was fitted on (shards folder, split)
    # the cheap tiers: per direction, calibrations of free signals only, most signals first
    inline: dict[str, list[DirectionCalibration]] = field(default_factory=dict)

    def get(self, direction: str) -> DirectionCalibration | None:
        return self.directions.get(str(direction))

    def inline_for(self, direction: str, available: Sequence[str]) -> DirectionCalibration | None:
        """The first inline calibration of `direction` whose signals are all `available`."""
        have = set(available)
        for cal in self.inline.get(str(direction), []):
            if set(cal.signals) <= have:
                return cal
        return None

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "format": FORMAT,
            "source": self.source,
            "directions": {d: asdict(c) for d, c in self.directions.items()},
        }
        if self.inline:
            doc["inline"] = {d: [asdict(c) for c in cs] for d, cs in self.inline.items()}
        return doc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def save(self, folder: str | Path) -> Path:
        from semlayout.atomic import atomic_write_text

        dest = Path(folder) / CALIBRATION_FILE
        atomic_write_text(dest, self.to_json())
        return dest


def _direction_from(d: Mapping[str, Any], where: str) -> DirectionCalibration:
    try:
        cal = DirectionCalibration(**d)
    except TypeError as err:
        raise SemlayoutError(f"{where}: not a confidence calibration ({err})") from None
    n = len(cal.signals)
    sizes = {len(cal.mean), len(cal.scale), len(cal.weights)}
    knots = {len(cal.iso_x), len(cal.iso_y), len(cal.good_y)}
    numbers = [*cal.mean, *cal.scale, *cal.weights, cal.bias, *cal.iso_x, *cal.iso_y, *cal.good_y]
    if sizes != {n} or len(knots) != 1 or not all(math.isfinite(float(v)) for v in numbers):
        raise SemlayoutError(f"{where}: inconsistent or non-finite calibration numbers")
    return cal


def load_calibration(folder: str | Path) -> Calibration | None:
    """The calibration saved in a checkpoint folder, or None when it has none (a model
    calibrated before issue 17, or evaluated without a validation split)."""
    f = Path(folder) / CALIBRATION_FILE
    if not f.is_file():
        return None
    try:
        doc = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SemlayoutError(f"{f}: not JSON ({err})") from None
    return calibration_from_dict(doc, str(f))


def calibration_from_dict(doc: Any, where: str) -> Calibration:
    """A `Calibration` from its JSON document (`to_dict`), checked; `where` names it."""
    f = where
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise SemlayoutError(f"{f}: expected format '{FORMAT}'")
    dirs = doc.get("directions")
    if not isinstance(dirs, dict):
        raise SemlayoutError(f"{f}: 'directions' must be an object")
    inline = doc.get("inline", {})
    if not isinstance(inline, dict) or not all(isinstance(v, list) for v in inline.values()):
        raise SemlayoutError(f"{f}: 'inline' must map a direction to a list of calibrations")
    return Calibration(
        {str(k): _direction_from(v, f"{f} [{k}]") for k, v in dirs.items()},
        str(doc.get("source", "")),
        {
            str(k): [_direction_from(c, f"{f} [inline {k} {i}]") for i, c in enumerate(v)]
            for k, v in inline.items()
        },
    )


@contextlib.contextmanager
def staged_with_calibration(
    checkpoint: Path, calibration: Mapping[str, Any] | None
) -> Iterator[Path]:
    """`checkpoint` itself without a calibration; else a temporary folder holding its files
    (hard links where possible) and `CALIBRATION_FILE`, checked, so what is logged carries the
    calibration beside the weights without writing into the step's input artifact."""
    if not calibration:
        yield checkpoint
        return
    cal = calibration_from_dict(calibration, "the evaluation's confidence calibration")
    with tempfile.TemporaryDirectory(prefix="semlayout-calibrated-") as tmp:
        staged = Path(tmp) / checkpoint.name
        staged.mkdir()
        for src in checkpoint.iterdir():
            if src.is_file():
                try:
                    os.link(src, staged / src.name)
                except OSError:
                    shutil.copyfile(src, staged / src.name)
        cal.save(staged)
        yield staged
