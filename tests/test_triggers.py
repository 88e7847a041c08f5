"""The trigger policy: each reason with its numbers, and the cooldown."""

from datetime import datetime, timedelta

import pytest

from semlayout.triggers import Observations, TriggerPolicy, decide

NOW = datetime(2026, 11, 24, 12, 0, 0)


def _policy(**kw):
    base = dict(
        min_new_pairs=10,
        drift_rate_threshold=0.3,
        min_drift_samples=20,
        ssim_drop_margin=0.05,
        min_ssim_samples=5,
        cooldown_minutes=60,
    )
    base.update(kw)
    return TriggerPolicy(**base)


def _reason(decision, name):
    return next(r for r in decision.reasons if r.name == name)


def test_quiet_system_does_not_fire():
    d = decide(
        _policy(), Observations(new_pairs_feedback=3, drift_rate=0.02, drift_samples=100), NOW
    )
    assert not d.fire and not d.held_by_cooldown
    assert not any(r.fired for r in d.reasons)
    assert "3 new reviewed pairs" in _reason(d, "new_pairs").detail


def test_enough_pairs_counts_both_sources():
    d = decide(_policy(), Observations(new_pairs_feedback=4, new_pairs_intake=6), NOW)
    assert d.fire
    r = _reason(d, "new_pairs")
    assert r.fired and r.value == 10 and r.threshold == 10


def test_drift_needs_enough_samples():
    few = decide(_policy(), Observations(drift_rate=0.9, drift_samples=5), NOW)
    assert not few.fire and "no verdict" in _reason(few, "drift").detail
    many = decide(_policy(), Observations(drift_rate=0.45, drift_samples=50), NOW)
    assert many.fire and _reason(many, "drift").fired
    assert "45.0%" in _reason(many, "drift").detail


def test_ssim_drop_against_baseline_minus_margin():
    obs = Observations(
        rolling_ssim={"sem2layout": 0.80},
        ssim_samples={"sem2layout": 8},
        baseline_ssim={"sem2layout": 0.90, "layout2sem": 0.3},
    )
    d = decide(_policy(), obs, NOW)
    r = _reason(d, "ssim_drop_sem2layout")
    assert d.fire and r.fired and r.threshold == pytest.approx(0.85)
    ok = Observations(
        rolling_ssim={"sem2layout": 0.86},
        ssim_samples={"sem2layout": 8},
        baseline_ssim={"sem2layout": 0.90},
    )
    assert not decide(_policy(), ok, NOW).fire
    # without a baseline there is no verdict, whatever the score
    nob = Observations(rolling_ssim={"sem2layout": 0.1}, ssim_samples={"sem2layout": 8})
    assert not decide(_policy(), nob, NOW).fire


def test_cooldown_holds_and_then_releases():
    obs = Observations(new_pairs_feedback=50, last_run_at=NOW - timedelta(minutes=10))
    held = decide(_policy(), obs, NOW)
    assert not held.fire and held.held_by_cooldown
    assert held.cooldown_until == NOW + timedelta(minutes=50)
    assert "HELD by cooldown" in held.summary()
    later = decide(_policy(), obs, NOW + timedelta(minutes=61))
    assert later.fire and not later.held_by_cooldown


def test_policy_rejects_unknown_keys():
    with pytest.raises(Exception, match="min_pairs"):
        TriggerPolicy(min_pairs=3)


def test_decision_serialises():
    d = decide(_policy(), Observations(new_pairs_feedback=11), NOW)
    data = d.to_dict()
    assert data["fire"] is True
    assert {r["name"] for r in data["reasons"]} == {
        "new_pairs",
        "drift",
        "ssim_drop_sem2layout",
        "ssim_drop_layout2sem",
        "low_confidence_rate",  # issue 17
        "population_drift",
    }
