"""The confidence as a library (issue 17): the calibration (fit, JSON round trip, refusals),
isotonic fitting against scikit-learn's, the signals and `assess` on a real checkpoint
(defeated inputs, unknown without a calibration), the population test, the review queue's
order, and the loop's two new triggers."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from helpers_serving import make_checkpoint

from semlayout.confidence import UNCALIBRATED, assess, input_defect, signals
from semlayout.confidence_calibration import (
    CALIBRATION_FILE,
    Calibration,
    fit_direction,
    load_calibration,
    pav,
    staged_with_calibration,
)
from semlayout.errors import SemlayoutError
from semlayout.inference import Translator
from semlayout.monitoring.population import (
    PopulationDrift,
    by_cohort,
    detectors_for,
    mmd_test,
)
from semlayout.polarity_auto import PolarityDecision
from semlayout.review import Candidate, select
from semlayout.triggers import Observations, TriggerPolicy, decide


def _toy_calibration(rng: np.random.Generator, n: int = 200) -> Calibration:
    x = rng.normal(size=(n, 2))
    y = np.clip(0.6 + 0.15 * x[:, 0] - 0.05 * x[:, 1] + rng.normal(0, 0.03, n), 0, 1)
    names = ("decided", "cycle")
    cal = fit_direction(x, y, names, "iou", 0.6, {"decided": x[:, 0].tolist()})
    return Calibration({"sem2layout": cal}, "toy")


def test_pav_matches_scikit_learns_isotonic_regression():
    from sklearn.isotonic import IsotonicRegression

    rng = np.random.default_rng(0)
    y = np.cumsum(rng.normal(0, 1, 300)) + rng.normal(0, 3, 300)
    ours = pav(y)
    ref = IsotonicRegression().fit_transform(np.arange(len(y)), y)
    assert np.allclose(ours, ref)
    assert np.all(np.diff(ours) >= -1e-12)


def test_calibration_ranks_and_round_trips_as_json(tmp_path):
    rng = np.random.default_rng(1)
    cal = _toy_calibration(rng)
    x = rng.normal(size=(100, 2))
    y = 0.6 + 0.15 * x[:, 0] - 0.05 * x[:, 1]
    pred, conf = cal.directions["sem2layout"].predict(x)
    from scipy.stats import spearmanr

    assert spearmanr(pred, y).statistic > 0.9
    assert np.all((conf >= 0) & (conf <= 1)) and np.all((pred >= 0) & (pred <= 1))
    # monotone in the score: more confident <=> higher predicted quality
    order = np.argsort(cal.directions["sem2layout"].score(x))
    assert np.all(np.diff(pred[order]) >= -1e-12) and np.all(np.diff(conf[order]) >= -1e-12)
    cal.save(tmp_path)
    text = (tmp_path / CALIBRATION_FILE).read_text()
    assert json.loads(text)["format"].startswith("semlayout-confidence-calibration/")
    again = load_calibration(tmp_path)
    assert again is not None
    assert np.allclose(again.directions["sem2layout"].predict(x)[0], pred)


def test_a_missing_calibration_is_none_and_a_broken_one_is_refused(tmp_path):
    assert load_calibration(tmp_path) is None
    (tmp_path / CALIBRATION_FILE).write_text("{not json")
    with pytest.raises(SemlayoutError, match="not JSON"):
        load_calibration(tmp_path)
    doc = _toy_calibration(np.random.default_rng(2)).to_dict()
    doc["directions"]["sem2layout"]["weights"] = [1.0]  # two signals, one weight
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps(doc))
    with pytest.raises(SemlayoutError, match="inconsistent"):
        load_calibration(tmp_path)
    with pytest.raises(SemlayoutError, match="at least"):
        fit_direction(np.zeros((5, 1)), np.zeros(5), ("decided",), "iou", 0.6)


def test_staged_checkpoint_carries_the_calibration_and_leaves_the_input_alone(tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt")
    doc = _toy_calibration(np.random.default_rng(3)).to_dict()
    with staged_with_calibration(ckpt, doc) as staged:
        assert (staged / CALIBRATION_FILE).is_file() and (staged / "weights.safetensors").is_file()
        assert load_calibration(staged) is not None
    assert not (ckpt / CALIBRATION_FILE).exists()
    with staged_with_calibration(ckpt, None) as same:
        assert same == ckpt


@pytest.fixture(scope="module")
def translator(tmp_path_factory):
    return Translator.load(make_checkpoint(tmp_path_factory.mktemp("conf") / "ckpt"))


def test_input_defects_are_named():
    assert "one value" in input_defect(np.full((40, 40), 7, np.uint8))
    blank = np.full((40, 40), 100, np.uint8)
    blank[0, 0] = 101
    assert "blank" in input_defect(blank)
    sat = np.where(np.random.default_rng(0).random((40, 40)) < 0.5, 0, 255).astype(np.uint8)
    assert "saturated" in input_defect(sat)
    assert input_defect(np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)) is None


def test_assess_defeated_inputs_get_the_lowest_confidence_with_a_reason(translator):
    cal = _toy_calibration(np.random.default_rng(4))
    rng = np.random.default_rng(5)
    ok = rng.integers(0, 256, (48, 48), dtype=np.uint8)
    images = [np.zeros((48, 48), np.uint8), np.full((48, 48), 255, np.uint8), ok]
    done = translator.translate_detailed("sem2layout", images, polarity="bright")
    outs = [t.output for t in done]
    res = assess(translator, cal, "sem2layout", images, outs, [t.decision for t in done])
    assert [r.confidence for r in res[:2]] == [0.0, 0.0] and all(r.reason for r in res[:2])
    assert res[2].reason is None and 0.0 <= res[2].confidence <= 1.0
    assert all(np.isfinite(r.predicted) for r in res)
    unknown = assess(translator, None, "sem2layout", images, outs, [t.decision for t in done])
    assert [r.confidence for r in unknown] == [None, None, None]
    assert unknown[2].reason == UNCALIBRATED and set(unknown[2].signals) >= {"decided", "cycle"}


def test_signals_measure_what_they_say(translator):
    rng = np.random.default_rng(6)
    img = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    decided = np.full((32, 32), 255, np.uint8)  # an output at +1 everywhere: fully decided
    undecided = np.full((32, 32), 128, np.uint8)  # ~0 everywhere
    dec = PolarityDecision(1, "given")
    a, b = signals(translator, "sem2layout", [img, img], [decided, undecided], [1, 1], [None, 4.0])
    assert a["decided"] > 0.99 and b["decided"] < 0.01
    assert a["margin"] == 8.0 and b["margin"] == 4.0  # given: as sure as the cap
    assert -1 <= a["cycle"] <= 1 and 0 <= a["dihedral"] <= 1
    [c] = signals(translator, "layout2sem", [img > 127], [img], [dec.polarity], [None])
    assert set(c) == {"cycle_iou", "dihedral"} and 0 <= c["cycle_iou"] <= 1


def test_mmd_tells_a_shifted_population_from_the_same_one():
    rng = np.random.default_rng(7)
    ref = rng.normal(size=(300, 4))
    same = rng.normal(size=(60, 4))
    moved = rng.normal(size=(60, 4)) + np.array([0.8, 0, 0, 0])
    assert mmd_test(same, ref)[1] > 0.01
    assert mmd_test(moved, ref)[1] < 0.01
    det = PopulationDrift({f"f{i}": ref[:, i].tolist() for i in range(4)})
    rows = [(None, {f"f{i}": v for i, v in enumerate(r)}) for r in same]
    rows += [("new", {f"f{i}": v for i, v in enumerate(r)}) for r in moved]
    res = {r.cohort: r for r in by_cohort(det, rows, alpha=0.01)}
    assert res["new"].drifted and res["new"].n == 60
    few = det.test([rows[0][1]] * 5)
    assert not few.drifted and few.p_value is None and "no verdict" in few.detail


def test_population_reference_is_the_train_split_when_the_model_has_one():
    """The drift reference's train-split features first (the larger, training sample); the
    calibration's val features + signals only without one."""
    from types import SimpleNamespace

    rng = np.random.default_rng(9)
    train = {"mean": rng.normal(size=200).tolist(), "std": rng.normal(size=200).tolist()}
    val = {"mean": rng.normal(size=40).tolist(), "cycle": rng.normal(size=40).tolist()}
    cal = SimpleNamespace(get=lambda d: SimpleNamespace(reference=val))
    stats = {"sem": {"features": train}, "layout": {"features": train}}
    served = detectors_for(cal, stats)
    assert (
        served["sem2layout"].names == ["mean", "std"] and len(served["sem2layout"].reference) == 200
    )
    fallback = detectors_for(cal, None)
    assert fallback["sem2layout"].names == ["cycle", "mean"]
    assert len(fallback["sem2layout"].reference) == 40
    assert detectors_for(None, None) == {}


def test_review_queue_is_least_confident_first_and_diverse():
    rng = np.random.default_rng(8)
    cands = []
    for i in range(10):  # one bad batch: ten near-identical images, all unsure
        f = {"a": 5.0 + rng.normal(0, 0.01), "b": 5.0}
        cands.append(Candidate(f"batch{i}", i, "sem2layout", "1", 0.05, 0.3, None, None, f))
    for i in range(10):  # varied traffic, moderately unsure
        f = {"a": float(rng.normal()), "b": float(rng.normal())}
        cands.append(Candidate(f"other{i}", 20 + i, "sem2layout", "1", 0.3, 0.5, None, None, f))
    for i in range(10):  # confident
        f = {"a": float(rng.normal()), "b": float(rng.normal())}
        cands.append(Candidate(f"ok{i}", 40 + i, "sem2layout", "1", 0.95, 0.9, None, None, f))
    picked = [c.prediction_id for c in select(cands, 8)]
    assert picked[0].startswith("batch")
    assert sum(p.startswith("batch") for p in picked) <= 2  # the batch does not fill it
    assert not any(p.startswith("ok") for p in picked)
    no_feats = [
        Candidate(str(i), i, "x", "1", c, None, None, None) for i, c in enumerate([0.9, 0.1])
    ]
    assert [c.prediction_id for c in select(no_feats, 2)] == ["1", "0"]


def test_the_loop_fires_on_low_confidence_and_on_population_drift():
    policy = TriggerPolicy()
    now = datetime.now(UTC)
    quiet = decide(policy, Observations(low_confidence_rate=0.1, confidence_samples=100), now)
    assert not quiet.fire
    low = decide(policy, Observations(low_confidence_rate=0.5, confidence_samples=100), now)
    assert low.fire and [r.name for r in low.fired_reasons] == ["low_confidence_rate"]
    assert "50.0% of the last 100" in low.summary()
    few = decide(policy, Observations(low_confidence_rate=0.9, confidence_samples=3), now)
    assert not few.fire and "no verdict" in few.summary()
    pop = [
        {"direction": "sem2layout", "cohort": "all", "n": 80, "p_value": 0.2},
        {"direction": "sem2layout", "cohort": "fab2", "n": 40, "p_value": 0.0003},
    ]
    drift = decide(policy, Observations(population=pop), now)
    assert drift.fire and [r.name for r in drift.fired_reasons] == ["population_drift"]
    assert "sem2layout/fab2" in drift.summary()


def test_a_calibrated_checkpoint_folder_needs_no_pickle(tmp_path):
    """The saved calibration is plain JSON numbers: nothing to unpickle, nothing executable."""
    cal = _toy_calibration(np.random.default_rng(9))
    path = cal.save(tmp_path)
    doc = json.loads(Path(path).read_text())
    flat = json.dumps(doc)
    assert "pickle" not in flat and "__" not in flat


def _tiered(rng: np.random.Generator, n: int = 120) -> Calibration:
    """A full calibration over the kept signals and the inline tiers, fitted on one sample
    (as `confidence_fit.fit_tiers` does at evaluate time)."""
    from semlayout.confidence_fit import all_signals, fit_tiers

    names = all_signals("sem2layout")
    x = rng.normal(size=(n, len(names)))
    y = np.clip(0.6 + 0.15 * x[:, 0] + rng.normal(0, 0.05, n), 0, 1)
    full, tiers = fit_tiers(x, y, names, "sem2layout", 0.6)
    return Calibration({"sem2layout": full}, "toy", {"sem2layout": tiers})


def _both_polarities(dest: Path) -> Translator:
    import torch

    from semlayout.config import config_from_dict
    from semlayout.train.checkpoint import build_networks, save_checkpoint

    gen = {"image_size": 32, "base_filters": 4, "max_filters": 8, "n_down": 3}
    cfg = config_from_dict(
        {
            "name": "tiers-test",
            "generator": gen | {"polarity_conditioning": "film", "polarity_flip": True},
            "discriminator": {"base_filters": 4, "n_layers": 1},
            "polarity": {"learned": [1, -1]},
        }
    )
    torch.manual_seed(0)
    return Translator.load(save_checkpoint(dest, cfg, build_networks(cfg), step=0, epoch=0))


def test_the_inline_tier_costs_no_forward_and_an_old_calibration_gives_the_full_one(
    tmp_path, monkeypatch
):
    translator = _both_polarities(tmp_path / "ckpt")
    cal = _tiered(np.random.default_rng(8))
    assert [c.signals for c in cal.inline["sem2layout"]] == [
        ["decided", "cycle", "margin"],
        ["decided"],
    ]
    cal.save(tmp_path)
    again = load_calibration(tmp_path)
    assert again is not None and again.to_dict() == cal.to_dict()
    rng = np.random.default_rng(9)
    imgs = [rng.integers(0, 256, (48, 48), dtype=np.uint8) for _ in range(2)]
    auto = translator.translate_detailed("sem2layout", imgs[:1], polarity="auto")
    given = translator.translate_detailed("sem2layout", imgs[1:], polarity="bright")
    done = auto + given
    outs, decs = [t.output for t in done], [t.decision for t in done]
    forwards = []
    real = translator.run_batch
    monkeypatch.setattr(
        translator, "run_batch", lambda *a, **k: forwards.append(a) or real(*a, **k)
    )
    inline = assess(translator, cal, "sem2layout", imgs, outs, decs, "inline")
    assert forwards == []  # free signals only
    assert [c.source for c in inline] == ["inline", "inline"]
    assert set(inline[0].signals) == {"decided", "cycle", "margin"}  # auto computed the cycle
    assert set(inline[1].signals) == {"decided"}  # a given polarity: no cycle, no margin
    assert all(0 <= c.confidence <= 1 and 0 <= c.predicted <= 1 for c in inline)
    full = assess(translator, cal, "sem2layout", imgs, outs, decs)
    assert forwards and [c.source for c in full] == ["full", "full"]
    assert set(full[1].signals) == {"decided", "cycle", "dihedral", "margin"}
    # a calibration fitted before the tiers: the inline tier is the full confidence
    old = Calibration(cal.directions, "old")
    (tmp_path / "old").mkdir()
    old.save(tmp_path / "old")
    loaded = load_calibration(tmp_path / "old")
    assert loaded is not None and loaded.inline == {}
    same = assess(translator, loaded, "sem2layout", imgs, outs, decs, "inline")
    assert [(c.source, c.confidence) for c in same] == [(c.source, c.confidence) for c in full]
    with pytest.raises(ValueError, match="inline, full"):
        assess(translator, cal, "sem2layout", imgs, outs, decs, "cheap")
    doc = cal.to_dict() | {"inline": {"sem2layout": {"not": "a list"}}}
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps(doc))
    with pytest.raises(SemlayoutError, match="inline"):
        load_calibration(tmp_path)
