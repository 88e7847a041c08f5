"""The loop's bookkeeping against a real monitoring store and feedback folder.

The launcher here is the seam where the fine-tune pipeline plugs in; the end-to-end
test (tests/test_loop_e2e.py) runs the real pipeline under kfp.local.
"""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import helpers_postgres as hp
import helpers_servers as hs
import numpy as np
import pytest

from semlayout.continual import LaunchResult, LoopConfig, check, load_loop_config, run
from semlayout.data.pairs import read_gray8, read_manifest
from semlayout.errors import SemlayoutError
from semlayout.monitoring.feedback import FeedbackStore
from semlayout.monitoring.store import MonitorStore
from semlayout.reviewed import ConsumedLedger, collect_reviewed, pending_pairs

moto_server, s3_env, s3_bucket = hs.moto_server, hs.s3_env, hs.s3_bucket
postgres, pg_url = hp.postgres, hp.pg_url
LATER = timedelta(minutes=31)  # past the loop_env cooldown


def _pair(seed):
    rng = np.random.default_rng(seed)
    layout = np.zeros((250, 250), np.uint8)
    layout[:, ::20] = 255
    sem = rng.integers(0, 255, (304, 304), dtype=np.uint8)
    return sem, layout


@pytest.fixture(params=["sqlite", "postgresql"])
def loop_env(request, tmp_path):
    """The loop over a SQLite store or a real PostgreSQL one (the same code, the same tests)."""
    db = str(tmp_path / "monitor.db")
    if request.param == "postgresql":
        db = request.getfixturevalue("pg_url")
    store = MonitorStore(db)
    fb = FeedbackStore(
        tmp_path / "feedback", store=store, check_alignment=False
    )  # noise pairs: loop logic only
    cfg = LoopConfig(
        monitor_db=db,
        feedback_uri=str(tmp_path / "feedback"),
        workdir=str(tmp_path / "loop"),
        policy={"min_new_pairs": 3, "cooldown_minutes": 30},
    )
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
    # the key's name before the feedback store could be on S3 still reads
    assert load_loop_config(None, {"feedback_dir": "fb"}).feedback_uri == "fb"
    with pytest.raises(SemlayoutError, match="'policy' is not a mapping"):
        load_loop_config(None, {"policy": 5, "policy.min_new_pairs": 3})
    with pytest.raises(SemlayoutError, match="policy.min_new_pairs") as err:
        load_loop_config(None, {"policy": {"min_new_pairs": "many"}})
    assert "\n" not in str(err.value)


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


def _ids(folder: Path) -> set[str]:
    return {r.id for r in read_manifest(folder)}


def test_a_completed_run_consumes_its_pairs_even_when_the_gate_fails(loop_env):
    """Issue #7: every run used to collect every feedback pair ever received."""
    cfg, store, fb = loop_env
    first = {fb.add(*_pair(i), pattern_type="via_array")["id"] for i in range(3)}
    seen: list[set[str]] = []

    def launcher(req):
        seen.append(_ids(req.reviewed_dir))
        return LaunchResult(
            run_id=f"run-{len(seen)}", gate_passed=False, gate_reasons=["no better"]
        )

    out = run(cfg, launcher)
    assert out["status"] == "gate_failed" and out["n_consumed"] == 3 and seen == [first]
    d, obs = check(cfg, now=datetime.now(UTC) + LATER)
    assert obs.new_pairs_feedback == 0 and not d.fire, "consumed pairs are not new any more"
    second = {fb.add(*_pair(i), pattern_type="via_array")["id"] for i in range(3, 6)}
    d, obs = check(cfg, now=datetime.now(UTC) + LATER)
    assert d.fire and obs.new_pairs_feedback == 3
    out = run(cfg, launcher, now=datetime.now(UTC) + LATER)
    assert out["n_reviewed"] == 3 and seen[-1] == second, "only the pairs no run has used"
    assert ConsumedLedger(store).keys() == {("feedback", i) for i in first | second}


def test_a_crashed_run_consumes_nothing(loop_env):
    cfg, store, fb = loop_env
    ids = {fb.add(*_pair(i), pattern_type="via_array")["id"] for i in range(3)}

    def crash(req):
        raise RuntimeError("killed midway")

    with pytest.raises(RuntimeError, match="killed midway"):
        run(cfg, crash)
    assert ConsumedLedger(store).keys() == set() and store.last_trigger_time() is None
    seen = []
    out = run(
        cfg,
        lambda req: seen.append(_ids(req.reviewed_dir))
        or LaunchResult(run_id="r", gate_passed=True),
    )
    assert out["status"] == "registered" and seen == [
        ids
    ], "the next run starts clean with the same pairs"


def test_the_count_is_what_a_run_would_collect(loop_env, tmp_path):
    """Feedback rows in the store whose folder the loop does not read are not 'new pairs' it
    could use: counting them fired the trigger forever with nothing to fine-tune on."""
    cfg, store, fb = loop_env
    for i in range(3):
        fb.add(*_pair(i), pattern_type="via_array")
    elsewhere = cfg.model_copy(update={"feedback_uri": ""})
    d, obs = check(elsewhere)
    assert obs.new_pairs_feedback == 0 and not d.fire
    d, obs = check(cfg)
    got = collect_reviewed(cfg, store, tmp_path / "collected")
    assert obs.new_pairs_feedback == len(got) == len(_ids(tmp_path / "collected")) == 3


def test_qc_failed_pairs_are_consumed_and_reported(loop_env, tiny_pairs, tiny_aligned):
    """The launcher runs the real alignment QC where the fine-tune pipeline's align step keeps
    its artifact; two pairs with a pure-noise SEM fail it, the run completes on the others."""
    import csv

    from semlayout.data.align_folder import align_folder

    cfg, store, fb = loop_env
    with open(tiny_aligned / "alignment.csv", newline="") as f:
        passing = {  # on their own: not placed by the polarity the whole tiny set shows
            r["id"]
            for r in csv.DictReader(f)
            if r["qc_pass"].lower() in ("true", "1") and r["polarity_source"] == "pair"
        }
    for rec in [r for r in read_manifest(tiny_pairs) if r.id in passing][:4]:
        fb.add(read_gray8(rec.sem_path), read_gray8(rec.layout_path), pattern_type=rec.pattern_type)
    noisy = {fb.add(*_pair(100 + i), pattern_type="via_array")["id"] for i in range(2)}

    def launcher(req):
        align_folder(req.reviewed_dir, req.run_dir / "pipeline" / "align-qc" / "aligned")
        return LaunchResult(run_id="run-qc", gate_passed=True, model_version="2")

    out = run(cfg, launcher)
    assert out["status"] == "registered" and out["n_reviewed"] == 6 and out["n_consumed"] == 6
    assert out["n_qc_failed"] == 2 and set(out["qc_failed_ids"]) == noisy
    d, obs = check(cfg, now=datetime.now(UTC) + LATER)
    assert obs.new_pairs_feedback == 0 and not d.fire, "QC-failed pairs are not collected again"


def test_intake_pairs_are_consumed_by_content(loop_env, tiny_pairs, tmp_path, s3_bucket):
    """A second batch that repeats pairs of the first (same content) counts only its new ones."""
    from semlayout.data.pairs import PairArrays, write_pair_folder
    from semlayout.intake import upload_batch

    cfg, store, _ = loop_env
    cfg = cfg.model_copy(update={"intake_uri": f"s3://{s3_bucket}/intake"})
    recs = read_manifest(tiny_pairs)

    def folder(name, part):
        return (
            write_pair_folder(
                tmp_path / name,
                [
                    PairArrays(
                        r.id, read_gray8(r.sem_path), read_gray8(r.layout_path), r.pattern_type
                    )
                    for r in part
                ],
            )
            and tmp_path / name
        )

    b1 = upload_batch(folder("b1", recs[:6]), cfg.intake_uri, skip_invalid=True)
    d, obs = check(cfg)
    assert obs.new_pairs_intake == b1.n_pairs >= 3 and d.fire
    seen = []
    out = run(
        cfg,
        lambda req: seen.append(_ids(req.reviewed_dir))
        or LaunchResult(run_id="r1", gate_passed=False),
    )
    assert out["n_reviewed"] == b1.n_pairs and out["n_consumed"] == b1.n_pairs

    b2 = upload_batch(folder("b2", recs[:10]), cfg.intake_uri, skip_invalid=True)
    d, obs = check(cfg, now=datetime.now(UTC) + LATER)
    assert obs.new_pairs_intake == b2.n_pairs - b1.n_pairs
    pending = pending_pairs(cfg, store)
    assert len(pending) == obs.new_pairs_intake and all(p.source == "intake" for p in pending)
    got = collect_reviewed(cfg, store, tmp_path / "collected", pending)
    assert _ids(tmp_path / "collected") == set(got) == {p.id for p in pending}
    assert not set(got) & seen[0]
