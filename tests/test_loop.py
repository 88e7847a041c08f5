"""The loop's bookkeeping against a real monitoring store and feedback folder.

The launcher here is the seam where the fine-tune pipeline plugs in; the end-to-end
test (tests/test_loop_e2e.py) runs the real pipeline under kfp.local.
"""

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from semlayout.errors import SemlayoutError
from semlayout.loop import LaunchResult, LoopConfig, check, load_loop_config, run
from semlayout.monitoring.feedback import FeedbackStore
from semlayout.monitoring.store import MonitorStore


def _pair(seed):
    rng = np.random.default_rng(seed)
    layout = np.zeros((250, 250), np.uint8)
    layout[:, ::20] = 255
    sem = rng.integers(0, 255, (304, 304), dtype=np.uint8)
    return sem, layout


@pytest.fixture
def loop_env(tmp_path):
    db = tmp_path / "monitor.db"
    store = MonitorStore(db)
    fb = FeedbackStore(tmp_path / "feedback", store=store)
    cfg = LoopConfig(monitor_db=str(db), feedback_dir=str(tmp_path / "feedback"),
                     workdir=str(tmp_path / "loop"),
                     policy={"min_new_pairs": 3, "cooldown_minutes": 30})
    return cfg, store, fb


def test_config_errors_name_the_key(tmp_path):
    p = tmp_path / "loop.yaml"
    p.write_text("policy:\n  min_pairs: 3\n")
    with pytest.raises(SemlayoutError, match="policy.min_pairs"):
        load_loop_config(p)
    with pytest.raises(SemlayoutError, match="not found"):
        load_loop_config(tmp_path / "missing.yaml")
    cfg = load_loop_config(None, {"policy.min_new_pairs": 7, "model_name": "m"})
    assert cfg.policy.min_new_pairs == 7 and cfg.model_name == "m"


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(SemlayoutError, match="monitoring store not found"):
        check(LoopConfig(monitor_db=str(tmp_path / "nope.db")))


def test_fires_on_feedback_runs_once_then_cooldown(loop_env):
    cfg, store, fb = loop_env
    for i in range(3):
        fb.add(*_pair(i), pattern_type="via_array")
    decision, obs = check(cfg)
    assert decision.fire and obs.new_pairs_feedback == 3

    seen = []

    def launcher(req):
        seen.append(req)
        from semlayout.data.pairs import read_manifest

        assert len(read_manifest(req.reviewed_dir)) == 3
        return LaunchResult(run_id="run-1", gate_passed=True, model_version="2")

    out = run(cfg, launcher)
    assert out["status"] == "registered" and out["n_reviewed"] == 3 and len(seen) == 1
    assert store.last_trigger_time() is not None
    # the pairs are consumed: and even with new ones, the cooldown holds the next run
    for i in range(3, 6):
        fb.add(*_pair(i), pattern_type="via_array")
    again = run(cfg, launcher)
    assert again["status"] == "held_by_cooldown" and len(seen) == 1
    later = datetime.now(UTC) + timedelta(minutes=31)
    d, obs = check(cfg, now=later)
    assert d.fire and obs.new_pairs_feedback == 3


def test_failed_launch_does_not_start_the_cooldown(loop_env):
    cfg, store, fb = loop_env
    for i in range(3):
        fb.add(*_pair(i), pattern_type="line_space")

    def broken(req):
        raise SemlayoutError("fine-tune pipeline failed at task 'align-qc': all pairs rejected")

    out = run(cfg, broken)
    assert out["status"] == "failed" and "align-qc" in out["message"]
    assert store.last_trigger_time() is None
    d, _ = check(cfg)
    assert d.fire, "the next check starts clean with the same pairs"


def test_forced_run_without_pairs_reports_and_stops(loop_env):
    cfg, store, _ = loop_env
    called = []
    out = run(cfg, lambda req: called.append(req), force=True)
    assert out["status"] == "no_reviewed_pairs" and not called
    assert store.last_trigger_time() is None
