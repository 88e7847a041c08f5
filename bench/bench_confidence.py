"""Issue 17's must-show numbers: is the confidence right, and what does it cost?

On the held-out mix (`bench/heldout_mix.py`: the test split, the independent simulator, an
unseen family, very low dose, reversed contrast with polarity unknown, shifted crops), with
the model `make run` trained (`SEMLAYOUT_BENCH_MODEL`, else outputs/latest/summary.json) and
its calibration (saved beside the weights; fitted on its validation split now if missing):

1. SEM->Layout: Spearman(predicted IoU, true IoU) (bar >= 0.6); share of the bad predictions
   (true IoU < 0.6) among the 20 % least confident (bar >= 80 %); calibration error of the
   predicted IoU (bar <= 0.08), overall and per source. Layout->SEM: the same for SSIM.
2. Review: bad predictions among the review queue's first 20 (`semlayout.review.select`) vs
   what 20 random picks hold on average (bar: >= 2x).
3. Population drift (`semlayout.monitoring.population`): requests of an unseen-family stream
   until the test fires (bar <= 100); false alarms over 20 in-distribution windows of 100
   requests drawn from the test split (bar <= 5 %).
4. Latency at batch 1 (eager): the translate call alone vs translate + confidence (the full
   tier, and the inline tier the API answers with), interleaved round-robin, medians and IQR,
   and each signal's share; the load average before and after.

Items 1-3 are printed for both confidence tiers: the full one (every kept signal; what the
monitors and `semlayout predict` use) and the inline one (free signals only; what an answer
carries by default).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import cpu_model, heldout_mix

ROOT = Path(__file__).resolve().parents[1]


def _latest() -> dict[str, Any]:
    f = ROOT / "outputs" / "latest" / "summary.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def _model_and_shards() -> tuple[str | None, str | None]:
    model = os.environ.get("SEMLAYOUT_BENCH_MODEL") or _latest().get("checkpoint")
    shards = os.environ.get("SEMLAYOUT_BENCH_SHARDS")
    if not shards:
        ev = ROOT / "outputs" / "latest" / "evaluation.json"
        if ev.is_file():
            shards = json.loads(ev.read_text()).get("metrics", {}).get("shards")
    return (str(model) if model else None), shards


def calibration_for(tr: Any, model: str, shards: str) -> tuple[Any, float]:
    from semlayout.confidence_calibration import load_calibration
    from semlayout.confidence_fit import fit_calibration

    cal = load_calibration(Path(tr.info["path"]))
    if cal is not None and cal.inline:
        return cal, 0.0
    if cal is not None:
        print("the saved calibration has no inline tier (fitted before them): refitting")
    t0 = time.perf_counter()
    cal = fit_calibration(tr, shards)
    return cal, time.perf_counter() - t0


def _loadavg() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def assess_mix(tr: Any, cal: Any, pairs: list) -> dict[str, np.ndarray]:
    """The mix's true IoU, source, features and both tiers' predictions (`pred`, `conf`: the
    full tier; `pred_inline`, `conf_inline`)."""
    from semlayout import metrics as M
    from semlayout.confidence import assess

    keys = ("iou", "pred", "conf", "pred_inline", "conf_inline", "source", "feats")
    rows: dict[str, list[Any]] = {k: [] for k in keys}
    from semlayout.data.features import image_features

    for s in range(0, len(pairs), 16):
        chunk = pairs[s : s + 16]
        sems = [p.sem for p in chunk]
        done = tr.translate_detailed("sem2layout", sems, polarity="auto")
        greys = [t.output for t in done]
        decisions = [t.decision for t in done]
        confs = assess(tr, cal, "sem2layout", sems, greys, decisions)
        inline = assess(tr, cal, "sem2layout", sems, greys, decisions, "inline")
        for p, g, c, ci in zip(chunk, greys, confs, inline, strict=True):
            rows["iou"].append(M.iou(tr.to_layout(g), p.layout))
            rows["pred"].append(c.predicted)
            rows["conf"].append(c.confidence)
            rows["pred_inline"].append(ci.predicted)
            rows["conf_inline"].append(ci.confidence)
            rows["source"].append(p.source)
            rows["feats"].append(image_features(p.sem))
    out = {k: np.asarray(v, float) for k, v in rows.items() if k not in ("source", "feats")}
    out["source"] = np.asarray(rows["source"])
    out["feats"] = np.asarray(rows["feats"], dtype=object)
    return out


def print_judgement(title: str, res: dict[str, np.ndarray], good: float) -> dict[str, Any]:
    from semlayout.confidence_fit import judge

    out: dict[str, Any] = {}
    print(
        f"{title:<16} {'n':>4} {'bad':>4} {'mean q':>7} {'spearman':>8} {'capture20':>9} "
        f"{'(max)':>6} {'cap@bad':>7} {'cal.err':>7} {'MAE':>6}"
    )
    groups = {"all": np.ones(len(res["iou"]), bool)}
    groups.update({s: res["source"] == s for s in heldout_mix.SOURCES})
    for name, m in groups.items():
        if m.sum() < 3:
            continue
        j = judge(res["pred"][m], res["conf"][m], res["iou"][m], good)
        out[name] = {k: v for k, v in j.items() if k != "reliability"} | {
            "mean_true": float(res["iou"][m].mean())
        }
        cap, ceil, atb = (
            "-" if j[k] is None else f"{j[k]:.0%}"
            for k in ("capture_20", "capture_20_ceiling", "capture_at_bad")
        )
        print(
            f"  {name:<14} {j['n']:>4} {j['bad']:>4} {res['iou'][m].mean():7.3f} "
            f"{j['spearman']:8.3f} {cap:>9} {ceil:>6} {atb:>7} {j['calibration_error']:7.3f} "
            f"{j['mae']:6.3f}"
        )
    out["reliability"] = judge(res["pred"], res["conf"], res["iou"], good)["reliability"]
    return out


# A production-like stream, stated before it was measured: mostly the layers the model was
# trained for (the test split: in-distribution synth), and each stress source an occasional
# minority (a new tool / simulator, a new pattern, a low-dose scan, a reversed-contrast layer
# with its polarity unknown, a misaligned crop: 4 % each, 20 % in all).
PRODUCTION_WEIGHTS = {"test split": 0.8} | {
    s: 0.04 for s in heldout_mix.SOURCES if s != "test split"
}


def production_mix(
    res: dict[str, np.ndarray], good: float, weights: dict[str, float], draws: int = 20
) -> dict[str, Any]:
    """`judge` on the mix re-weighted to `weights` per source: `draws` resamples of 2000
    predictions (each source's share drawn with replacement from its rows, fixed seeds);
    medians and ranges over the draws."""
    from semlayout.confidence_fit import judge

    keys = ("spearman", "capture_20", "capture_20_ceiling", "capture_at_bad", "calibration_error")
    got: dict[str, list[float]] = {k: [] for k in keys}
    for d in range(draws):
        rng = np.random.default_rng([17, d])
        idx = np.concatenate(
            [
                rng.choice(np.flatnonzero(res["source"] == s), int(round(w * 2000)))
                for s, w in weights.items()
            ]
        )
        j = judge(res["pred"][idx], res["conf"][idx], res["iou"][idx], good)
        for k in keys:
            got[k].append(float(j[k]))
    bad = float(sum(w * np.mean(res["iou"][res["source"] == s] < good) for s, w in weights.items()))
    out = {k: {"median": float(np.median(v)), "min": min(v), "max": max(v)} for k, v in got.items()}
    mix = ", ".join(f"{s} {w:.0%}" for s, w in weights.items())
    print(f"production-like mix ({mix}; bad share {bad:.0%}; {draws} resamples of 2000):")
    for k in keys:
        v = out[k]
        print(f"  {k:<20} {v['median']:.3f} [{v['min']:.3f}-{v['max']:.3f}]")
    return out | {"weights": weights, "bad_share": bad}


def review_vs_random(res: dict[str, np.ndarray], good: float, k: int = 20) -> dict[str, Any]:
    from semlayout.review import Candidate, select

    cands = [
        Candidate(str(i), float(i), "sem2layout", "1", float(c), float(p), None, s, dict(f))
        for i, (c, p, s, f) in enumerate(
            zip(res["conf"], res["pred"], res["source"], res["feats"], strict=True)
        )
    ]
    picked = [int(c.prediction_id) for c in select(cands, k)]
    bad = res["iou"] < good
    queue_bad = int(bad[picked].sum())
    random_bad = float(bad.mean() * k)
    ratio = queue_bad / random_bad if random_bad else float("inf")
    print(
        f"review: {queue_bad} bad of the queue's first {k} vs {random_bad:.1f} expected from "
        f"{k} random picks: {ratio:.2f}x (bar >= 2x)"
    )
    return {"queue_bad": queue_bad, "random_bad": random_bad, "ratio": ratio, "k": k}


def stream_rows(tr: Any, cal: Any, pairs: list) -> list[dict[str, float]]:
    """What the store keeps of each request for the population test: features + signals."""
    from semlayout.confidence import assess
    from semlayout.data.features import image_features

    rows = []
    for s in range(0, len(pairs), 16):
        sems = [p.sem for p in pairs[s : s + 16]]
        done = tr.translate_detailed("sem2layout", sems, polarity="auto")
        confs = assess(
            tr, cal, "sem2layout", sems, [t.output for t in done], [t.decision for t in done]
        )
        rows += [{**image_features(im), **c.signals} for im, c in zip(sems, confs, strict=True)]
    return rows


def population(tr: Any, cal: Any, shards: str, quick: bool) -> dict[str, Any]:
    """Unseen-family stream: requests until the test fires (bar <= 100). False alarms (bar
    <= 5 %) over windows of 100 requests of the reference's own population: the test split
    (QC-passed pairs the model never trained on, disjoint from both references) - 20 windows
    drawn from it without replacement inside a window (fixed seeds; the windows overlap, the
    split has fewer than 2000 pairs). Also, for contrast, windows of fresh synth as `make run`
    draws it BEFORE alignment QC (a third of those draws, the noisiest, never reach training:
    a real population shift, not a false alarm). Both references: the train split's features
    (what `detectors_for` serves when the model has a drift reference) and the calibration's
    val sample of features + signals (its fallback)."""
    from semlayout.data.reference_stats import load_reference_stats
    from semlayout.monitoring.population import detectors_for

    ref = load_reference_stats(Path(shards) / "reference_stats.json")
    tests = {  # what the API and the loop use, and the calibration's sample (no drift ref.)
        "served: train features": detectors_for(cal, ref)["sem2layout"],
        "val features+signals": detectors_for(cal, None)["sem2layout"],
    }
    unseen = stream_rows(tr, cal, heldout_mix.unseen(100, 4242))
    windows = 5 if quick else 20
    pool = stream_rows(tr, cal, heldout_mix.test_split(shards, 10_000))
    size = min(100, len(pool))
    in_dist = [
        [pool[i] for i in np.random.default_rng([99, w]).choice(len(pool), size, replace=False)]
        for w in range(windows)
    ]
    raw = [
        stream_rows(tr, cal, heldout_mix.in_distribution(100, 5000 + w))
        for w in range(2 if quick else 5)
    ]
    out: dict[str, Any] = {"test_split_pool": len(pool)}
    for name, det in tests.items():
        fired_at = next((n for n in range(30, 101, 10) if det.test(unseen[:n]).drifted), None)
        alarms = sum(det.test(rows).drifted for rows in in_dist)
        raw_fired = sum(det.test(rows).drifted for rows in raw)
        out[name] = {
            "unseen_fired_at": fired_at,
            "false_alarms": alarms,
            "windows": windows,
            "raw_synth_fired": raw_fired,
            "raw_synth_windows": len(raw),
        }
        print(
            f"population drift ({name}): unseen-family stream fired after {fired_at} requests "
            f"(bar <= 100); {alarms}/{windows} in-distribution windows of {size} (test split, "
            f"{len(pool)} pairs) fired ({alarms / windows:.0%}, bar <= 5 %); fresh synth "
            f"before alignment QC: {raw_fired}/{len(raw)} windows fired"
        )
    return out


def latency(tr: Any, cal: Any, pairs: list, rounds: int) -> dict[str, Any]:
    """Batch 1, eager, polarity auto (the API default) and given; round-robin with warm-up."""
    from semlayout.confidence import KEPT, assess, signals

    sems = [p.sem for p in pairs[:8]]

    def plain(img: np.ndarray, pol: str) -> Any:
        return tr.translate_detailed("sem2layout", [img], polarity=pol)

    def with_conf(img: np.ndarray, pol: str) -> Any:
        done = plain(img, pol)
        return assess(tr, cal, "sem2layout", [img], [done[0].output], [done[0].decision])

    def with_inline(img: np.ndarray, pol: str) -> Any:
        done = plain(img, pol)
        d = done[0]
        return assess(tr, cal, "sem2layout", [img], [d.output], [d.decision], "inline")

    def one_signal(name: str) -> Any:
        def f(img: np.ndarray, pol: str) -> Any:
            done = plain(img, pol)
            return signals(tr, "sem2layout", [img], [done[0].output], [1], [None], (name,))

        return f

    variants = {
        "translate": plain,
        "translate+confidence": with_conf,
        "translate+inline conf.": with_inline,
    }
    variants |= {f"translate+{s}": one_signal(s) for s in KEPT["sem2layout"]}
    out: dict[str, Any] = {"cpu": cpu_model(), "load_before": _loadavg()}
    for pol in ("auto", "bright"):
        times: dict[str, list[float]] = {k: [] for k in variants}
        for r in range(rounds):
            names = list(variants)
            names = names[r % len(names) :] + names[: r % len(names)]  # rotating start
            for name in names:
                img = sems[r % len(sems)]
                variants[name](img, pol)  # warm-up call of the same variant
                t0 = time.perf_counter()
                variants[name](img, pol)
                times[name].append((time.perf_counter() - t0) * 1000)
        base = float(np.median(times["translate"]))
        print(f"latency, batch 1, polarity {pol} (ms; median [IQR]; vs translate):")
        res = {}
        for name, ts in times.items():
            q1, med, q3 = np.percentile(ts, [25, 50, 75])
            res[name] = {"median_ms": med, "iqr_ms": q3 - q1, "ratio": med / base}
            print(f"  {name:<26} {med:7.1f} [{q1:6.1f}-{q3:6.1f}] {med / base:5.2f}x")
        out[pol] = res
    out["load_after"] = _loadavg()
    print(f"load average before {out['load_before']}, after {out['load_after']}")
    return out


def main(quick: bool = False) -> dict[str, Any]:
    from semlayout.confidence_calibration import GOOD_IOU
    from semlayout.inference import Translator

    model, shards = _model_and_shards()
    if not model or not shards or not Path(shards).is_dir():
        print(
            "confidence: needs a model and its shards (make run, or SEMLAYOUT_BENCH_MODEL and "
            "SEMLAYOUT_BENCH_SHARDS); skipped"
        )
        return {"skipped": True}
    print(f"model {model}; shards {shards}; CPU {cpu_model()}; load average {_loadavg()}")
    tr = Translator.load(model)
    cal, fit_s = calibration_for(tr, model, shards)
    how = f"fitted now in {fit_s:.0f} s" if fit_s else "saved beside the weights"
    print(f"calibration: {cal.source} ({how})")
    n = 8 if quick else int(os.environ.get("SEMLAYOUT_BENCH_N", "40"))
    t0 = time.perf_counter()
    pairs = heldout_mix.mix(shards, n)
    res = assess_mix(tr, cal, pairs)
    print(f"held-out mix: {len(pairs)} pairs in {time.perf_counter() - t0:.0f} s")
    out: dict[str, Any] = {"model": model, "n_per_source": n}
    out["sem2layout"] = print_judgement("SEM->Layout", res, GOOD_IOU)
    out["review"] = review_vs_random(res, GOOD_IOU)
    out["production_mix"] = production_mix(res, GOOD_IOU, PRODUCTION_WEIGHTS)
    inl = res | {"pred": res["pred_inline"], "conf": res["conf_inline"]}
    print("inline tier (free signals only: what an answer carries by default):")
    out["sem2layout_inline"] = print_judgement("SEM->Layout", inl, GOOD_IOU)
    out["review_inline"] = review_vs_random(inl, GOOD_IOU)
    out["production_mix_inline"] = production_mix(inl, GOOD_IOU, PRODUCTION_WEIGHTS)
    out["population"] = population(tr, cal, shards, quick)
    out["latency"] = latency(tr, cal, pairs, 6 if quick else 30)
    a = out["sem2layout"]["all"]
    print("\nissue 17, must show:")
    print(f"  Spearman(predicted, true IoU) {a['spearman']:.3f} (bar >= 0.6)")
    print(
        f"  20 % least confident hold {a['capture_20']:.0%} of the IoU < 0.6 (bar >= 80 %; at "
        f"most {a['capture_20_ceiling']:.0%} with {a['bad']} bad of {a['n']}); of the "
        f"{a['bad']} least confident, {a['capture_at_bad']:.0%} are bad"
    )
    print(f"  calibration error {a['calibration_error']:.3f} (bar <= 0.08)")
    lat = out["latency"]["auto"]["translate+confidence"]["ratio"]
    print(f"  full confidence latency at batch 1 (auto): +{lat - 1:.0%} (bar <= 25 %)")
    for pol in ("auto", "bright"):
        r = out["latency"][pol]["translate+inline conf."]["ratio"]
        print(f"  inline confidence (the answer's) at batch 1 ({pol}): {r - 1:+.0%} (bar <= 25 %)")
    return out
