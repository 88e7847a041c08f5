"""The promotion gate: floors, champion tolerance, fine-tune rules, readable reasons."""

from __future__ import annotations

import math

import numpy as np
import pytest

from semlayout.errors import SemlayoutError
from semlayout.gate import GateConfig, GateResult, gate_config, judge, judge_finetune


def _m(s2l: float | None, l2s: float | None, **extra) -> dict:
    out: dict = {"n": 4, "split": "test"}
    if s2l is not None:
        out["sem2layout"] = {"ssim": s2l, "l1": 0.1}
    if l2s is not None:
        out["layout2sem"] = {"ssim": l2s, "l1": 0.2, **extra}
    return out


CFG = GateConfig(floors={"sem2layout": 0.80, "layout2sem": 0.30}, tolerance=0.01)


def test_passes_above_floors_without_champion():
    r = judge(_m(0.85, 0.35), None, CFG)
    assert r.passed
    assert r.judged["sem2layout"]["value"] == 0.85
    assert r.judged["sem2layout"]["passed"] and r.judged["layout2sem"]["passed"]
    assert any("0.8500" in s and "0.8000" in s for s in r.reasons)
    assert r.reasons[-1] == "Gate passed."


def test_floor_is_inclusive_and_below_fails_with_numbers():
    assert judge(_m(0.80, 0.30), None, CFG).passed
    r = judge(_m(0.79, 0.35), None, CFG)
    assert not r.passed
    assert not r.judged["sem2layout"]["passed"] and r.judged["layout2sem"]["passed"]
    assert any("below the floor" in s and "0.7900" in s for s in r.reasons)


@pytest.mark.parametrize(
    ("cand", "champ", "ok"),
    [(0.90, 0.90, True), (0.891, 0.90, True), (0.889, 0.90, False), (0.95, 0.90, True)],
)
def test_champion_tolerance(cand, champ, ok):
    r = judge(_m(cand, 0.4), _m(champ, 0.4), CFG)
    assert r.passed is ok
    assert r.judged["sem2layout"]["champion"] == champ
    if not ok:
        assert any("worse than the champion" in s for s in r.reasons)


def test_layout2sem_reason_states_the_ceiling():
    r = judge(_m(0.9, 0.35, ceiling={"ssim": 0.41}), None, CFG)
    assert any("ceiling" in s and "0.4100" in s for s in r.reasons)


@pytest.mark.parametrize("bad", [None, float("nan"), float("inf"), "0.9", True])
def test_missing_or_non_finite_metric_fails_closed(bad):
    metrics = _m(0.9, 0.4)
    if bad is None:
        del metrics["sem2layout"]
    else:
        metrics["sem2layout"]["ssim"] = bad
    r = judge(metrics, None, CFG)
    assert not r.passed
    assert any("no finite ssim" in s for s in r.reasons)


def test_numpy_scalars_are_numbers():
    r = judge(_m(np.float32(0.9), np.float64(0.4)), None, CFG)
    assert r.passed and math.isclose(r.judged["sem2layout"]["value"], 0.9, rel_tol=1e-6)


def test_champion_missing_direction_judged_on_floor_only():
    champ = _m(0.95, None)
    r = judge(_m(0.9, 0.4), champ, CFG)
    assert not r.passed  # sem2layout 0.9 < 0.95 - 0.01
    assert r.judged["layout2sem"]["passed"]
    assert any("floor only" in s for s in r.reasons)


def test_other_metric_and_one_direction():
    cfg = GateConfig(floors={"sem2layout": 0.5}, metric="l1")
    r = judge({"sem2layout": {"l1": 0.6}}, None, cfg)
    assert r.passed and set(r.judged) >= {"sem2layout"} and "layout2sem" not in r.judged


def test_result_roundtrips_json():
    r = judge(_m(0.85, 0.35), _m(0.84, 0.36), CFG)
    assert GateResult.from_json(r.to_json()) == r


def test_bad_config_is_a_user_error():
    with pytest.raises(SemlayoutError, match="unknown direction"):
        gate_config(floors={"sem2lay": 0.5})
    with pytest.raises(SemlayoutError, match="tolerance"):
        gate_config(floors={"sem2layout": 0.5}, tolerance=-1)


def test_finetune_needs_improvement_and_bounded_loss():
    cfg = GateConfig(floors={"sem2layout": 0.5, "layout2sem": 0.2}, tolerance=0.01)
    ok = judge_finetune(_m(0.80, 0.40), _m(0.70, 0.35), _m(0.895, 0.30), _m(0.90, 0.30), cfg)
    assert ok.passed, ok.reasons
    assert ok.judged["kind"] == "finetune"
    # no improvement on the new pairs (equal is not better)
    r = judge_finetune(_m(0.70, 0.40), _m(0.70, 0.35), _m(0.9, 0.3), _m(0.9, 0.3), cfg)
    assert not r.passed and any("no improvement" in s for s in r.reasons)
    # improved on the new pairs but forgot the original shard
    r = judge_finetune(_m(0.80, 0.40), _m(0.70, 0.35), _m(0.88, 0.30), _m(0.90, 0.30), cfg)
    assert not r.passed and any("lost too much" in s and "-0.0200" in s for s in r.reasons)
    # below the floor on the original shard fails even if the champion was also low
    r = judge_finetune(_m(0.80, 0.40), _m(0.70, 0.35), _m(0.45, 0.30), _m(0.45, 0.30), cfg)
    assert not r.passed and any("below the floor" in s for s in r.reasons)


def test_finetune_min_improvement_and_missing_metrics():
    cfg = GateConfig(floors={"sem2layout": 0.5}, min_improvement=0.05)
    assert not judge_finetune(
        _m(0.74, None), _m(0.70, None), _m(0.9, None), _m(0.9, None), cfg
    ).passed
    assert judge_finetune(_m(0.76, None), _m(0.70, None), _m(0.9, None), _m(0.9, None), cfg).passed
    r = judge_finetune(_m(0.76, None), {}, _m(0.9, None), _m(0.9, None), cfg)
    assert not r.passed and any("new pairs (champion)" in s for s in r.reasons)
