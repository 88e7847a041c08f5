"""DriftDetector: KL direction and smoothing against scipy, z-scores, calibration on real
synthetic data (in-distribution rarely flagged, a very-low-dose stream flagged)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers_serving import aligned_arrays, cached_reference
from scipy.stats import entropy

from semlayout.data.features import histogram, image_features
from semlayout.errors import SemlayoutError
from semlayout.monitoring.drift import EPS, DriftDetector, detectors_from_reference, kl_divergence


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return cached_reference(tmp_path_factory)


def test_kl_is_current_vs_reference_with_additive_smoothing():
    rng = np.random.default_rng(0)
    p = rng.random(64)
    q = rng.random(64)
    q[:10] = 0.0  # reference never saw these grey levels
    ps, qs = (p / p.sum() + EPS) / (1 + 64 * EPS), (q / q.sum() + EPS) / (1 + 64 * EPS)
    assert kl_divergence(p, q) == pytest.approx(entropy(ps, qs), rel=1e-9)  # scipy: KL(p || q)
    assert kl_divergence(p, q) != pytest.approx(
        entropy(qs, ps), rel=1e-3
    )  # not the other way round
    assert kl_divergence(q, q) == pytest.approx(0.0, abs=1e-12)
    assert np.isfinite(kl_divergence(np.eye(64)[0], q))  # all mass where the reference has none


def test_z_scores_and_verdict():
    feats = {"mean": 0.5, "std": 0.1}
    det = DriftDetector(
        {"mean": 0.4, "std": 0.1},
        {"mean": 0.05, "std": 0.0},
        np.full(4, 0.25),
        "sem",
        z_threshold=3,
        kl_threshold=0.5,
        feature_fn=lambda img: feats,
        histogram_fn=lambda img: np.full(4, 0.25),
    )
    z = det.z_scores(feats)
    assert z["mean"] == pytest.approx(2.0)
    assert z["std"] == pytest.approx(0.0)  # never-varying feature, unchanged value
    r = det.check(np.zeros((4, 4), np.uint8))
    assert not r.drifted and r.score == pytest.approx(2 / 3)
    feats["std"] = 0.2  # a feature that never varied in training moved: drift
    assert det.check(np.zeros((4, 4), np.uint8)).drifted


def test_calibrated_thresholds_flag_in_distribution_rarely_and_low_dose_always(data):
    dets = detectors_from_reference(data["shards"] / "reference_stats.json")
    sem, layout, _ = aligned_arrays(data["fresh"])  # held out: another synth seed, same physics
    for direction, imgs in (("sem2layout", sem), ("layout2sem", layout)):
        flagged = np.mean([dets[direction].check(x).drifted for x in imgs])
        assert flagged <= 0.05, (direction, flagged)
    low, _, _ = aligned_arrays(data["lowdose"])
    assert np.mean([dets["sem2layout"].check(x).drifted for x in low]) >= 0.9
    # a tone-reversed layout stream (mask polarity mix-up) is flagged far more often than fresh ones
    flipped = np.mean([dets["layout2sem"].check(255 - x).drifted for x in layout])
    assert flipped >= 0.3


def test_features_match_the_reference_definition(data):
    ref = json.loads((data["shards"] / "reference_stats.json").read_text())
    det = detectors_from_reference(data["shards"])["sem2layout"]
    sem, _, _ = aligned_arrays(data["fresh"])
    feats, z, kl = det.statistics(sem[0])
    assert feats == image_features(sem[0])
    assert kl == pytest.approx(kl_divergence(histogram(sem[0]), np.array(ref["sem"]["histogram"])))
    f = "mean"
    assert z[f] == pytest.approx((feats[f] - ref["sem"]["mean"][f]) / ref["sem"]["std"][f])


def test_explicit_thresholds_win_and_bad_reference_is_refused(data, tmp_path):
    dets = detectors_from_reference(data["shards"], z_threshold=7.0, kl_threshold=9.0)
    assert dets["sem2layout"].thresholds() == {"z_threshold": 7.0, "kl_threshold": 9.0}
    with pytest.raises(SemlayoutError, match="not found"):
        detectors_from_reference(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text('{"sem": {}}')
    with pytest.raises(SemlayoutError, match="missing 'sem' block"):
        detectors_from_reference(tmp_path / "bad.json")
