"""Issue 17 end to end: a low-confidence stream fires the loop, the review export is labelled
from synthetic truth, comes back through feedback, and the fine-tune's challenger is more
confident and more accurate on that family.

champion (no `NEW_FAMILY`, narrow physics; calibrated on its val split, registered with the
calibration beside the weights) -> `semlayout serve` from the registry -> a stream of the new
family -> `semlayout loop check` fires on `low_confidence_rate` -> `semlayout review export`
-> each exported SEM labelled with the layout its synthetic truth says -> POST /v1/feedback
(which closes the queue entries) -> `semlayout loop run` (the fine-tune pipeline under
kfp.local, whose evaluation calibrates the challenger) -> on fresh pairs of the new family the
challenger's mean confidence and IoU are above the champion's.
"""

from __future__ import annotations

import csv
import hashlib
import json
import resource
import time
from pathlib import Path

import helpers_servers as hs
import httpx
import numpy as np
import pytest
from helpers_loop import (
    NEW_FAMILY,
    ORIG_MIX,
    TINY_ADAPTATION,
    cli,
    e2e_env,
    png,
    ranges,
    serve,
    synth,
    write_config,
    write_loop_config,
)

mlflow_template_db, sqlite_tracking_uri = hs.mlflow_template_db, hs.sqlite_tracking_uri
API = "conf-e2e-token"
MODEL = "semlayout-conf-e2e"
STREAM, EXPORT, JUDGE = 64, 48, 32  # new-family requests, exported for review, fresh pairs judged


def _champion(root: Path, pairs: Path, cfg_path: Path, tracking: str) -> dict:
    """Align -> shard (the fine-tune's original split) -> train -> calibrate on val ->
    log with the calibration beside the weights -> register -> approve."""
    from semlayout.confidence_calibration import staged_with_calibration
    from semlayout.confidence_fit import fit_calibration
    from semlayout.config import load_config
    from semlayout.data.align_folder import align_folder
    from semlayout.data.shards import write_shards
    from semlayout.evaluation import evaluate_model
    from semlayout.gate import GateConfig, judge
    from semlayout.inference import Translator
    from semlayout.registry import Registry
    from semlayout.train.loop import train

    align_folder(pairs, root / "aligned")
    shards = root / "shards"
    write_shards(root / "aligned", shards, val=0.1, test=0.2, seed=0)
    final = Path(train(load_config(cfg_path), shards, root / "run", progress=False))
    cal = fit_calibration(Translator.load(final), shards)
    metrics = evaluate_model(final, shards, split="test")
    metrics.pop("samples", None)
    gate = judge(metrics, None, GateConfig(floors={"sem2layout": 0.0, "layout2sem": 0.0}))
    with staged_with_calibration(final, cal.to_dict()) as staged:
        run_id = Registry(tracking, create=True).log_run("conf-e2e", staged, metrics)
    version = Registry(tracking).register(MODEL, run_id, gate, lineage={"data_uri": str(pairs)})
    Registry(tracking).approve(MODEL, version, by="release-manager", reason="first champion")
    return {"shards": shards, "checkpoint": final}


def _cpu_seconds() -> float:
    """CPU time of this process and its waited-for children (the CLI, the server, kfp.local's
    components): what the test costs on an idle machine, whatever the load while it ran."""
    return sum(
        r.ru_utime + r.ru_stime
        for r in (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
    )


def _stream(n: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(raw 304 px SEM, its 250 px template) pairs of the new family, narrow physics."""
    from semlayout.data.synth import generate_pair

    out = []
    for i in range(n):
        sem, layout, *_ = generate_pair(
            np.random.default_rng([seed, i]), NEW_FAMILY, None, ranges()
        )
        out.append((sem, layout))
    return out


def _judge(model: str, tracking: str, n: int) -> dict:
    """Mean confidence (the version's own calibration) and IoU on cropped pairs at truth."""
    from semlayout import metrics as M
    from semlayout.confidence import assess
    from semlayout.confidence_calibration import load_calibration
    from semlayout.data.synth import generate_pair
    from semlayout.inference import Translator

    tr = Translator.load(model, tracking_uri=tracking)
    cal = load_calibration(Path(tr.info["path"]))
    assert cal is not None, f"{model} has no calibration beside its weights"
    sems, lays = [], []
    for i in range(n):
        sem, layout, _, x, y, _ = generate_pair(
            np.random.default_rng([777, i]), NEW_FAMILY, None, ranges()
        )
        sems.append(np.ascontiguousarray(sem[y : y + 250, x : x + 250]))
        lays.append(layout)
    done = tr.translate_detailed("sem2layout", sems, polarity="bright")
    greys = [t.output for t in done]
    confs = assess(tr, cal, "sem2layout", sems, greys, [t.decision for t in done])
    ious = [M.iou(tr.to_layout(g), lay) for g, lay in zip(greys, lays, strict=True)]
    return {
        "confidence": float(np.mean([c.confidence for c in confs])),
        "predicted_iou": float(np.mean([c.predicted for c in confs])),
        "iou": float(np.mean(ious)),
        "ious": ious,
    }


@pytest.mark.slow
def test_low_confidence_stream_review_feedback_finetune(
    tmp_path: Path, sqlite_tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    t0 = time.perf_counter()
    laps: dict[str, float] = {}

    def lap(name: str) -> None:
        laps[name] = round(time.perf_counter() - t0 - sum(laps.values()), 1)

    tracking = sqlite_tracking_uri
    env = e2e_env(
        monkeypatch,
        tmp_path,
        tracking,
        {
            "SEMLAYOUT_API_TOKEN": API,
            "SEMLAYOUT_REVIEW_KEEP_BELOW": "1.01",
            "OMP_NUM_THREADS": "1",  # one torch thread in every subprocess (a shared CI box)
        },
    )
    work = tmp_path / "work"
    work.mkdir()
    original = synth(tmp_path / "original", 160, seed=1, mix=ORIG_MIX)
    cfg_path = write_config(tmp_path / "e2e.yaml", epochs=24, decay=12, threads=1)
    _champion(tmp_path / "champion", original, cfg_path, tracking)
    lap("champion")
    db, feedback_dir = tmp_path / "serving" / "monitor.db", tmp_path / "serving" / "feedback"
    db.parent.mkdir()
    stream = _stream(STREAM, seed=5)
    truth = {hashlib.sha256(np.ascontiguousarray(s).tobytes()).hexdigest(): t for s, t in stream}
    auth = {"Authorization": f"Bearer {API}"}
    args = ["--model", f"models:/{MODEL}@champion", "--db", str(db)]
    args += ["--feedback-dir", str(feedback_dir), "--poll-interval", "0"]
    with serve(args, env, work) as url:
        # ---- the new family's stream: the champion is unsure of it
        confs = []
        for sem, _ in stream:
            r = httpx.post(
                f"{url}/v1/translate/sem2layout",
                # the full confidence inline: the store has it when the loop checks (the
                # default inline answer's full one follows off the request path)
                params={"polarity": "bright", "cohort": NEW_FAMILY, "confidence": "full"},
                files={"image": ("x.png", png(sem), "image/png")},
                timeout=120,
            )
            assert r.status_code == 200, r.text
            confs.append(float(r.headers["X-Confidence"]))
        summary = httpx.get(f"{url}/v1/monitoring/summary", timeout=120).json()["confidence"]
        rate = summary["directions"]["sem2layout"]["cohorts"][NEW_FAMILY]["low_confidence_rate"]
        print(f"\nnew-family stream: mean confidence {np.mean(confs):.3f}, low rate {rate:.2f}")

        # ---- the loop fires on the low-confidence rate
        policy = {
            "min_new_pairs": 1000,  # only the confidence may fire it here
            "drift_rate_threshold": 1.0,
            "low_confidence_rate_threshold": 0.3,
            "min_confidence_samples": 20,
            "cooldown_minutes": 60,
        }
        loop_cfg = write_loop_config(
            tmp_path / "loop.yaml",
            tmp_path,
            policy=policy,
            serving={
                "monitor_db": str(db),
                "feedback_dir": str(feedback_dir),
                "tracking_uri": tracking,
                "model_name": MODEL,
                "original_data_uri": str(original),
                "config": str(cfg_path),
            },
            finetune_overrides={"train.num_threads": 1},
            # the loop's recipe sized for the tiny model, as long as the fine-tune this test was
            # first seen passing with (24 epochs over the reviewed + replayed pairs)
            adaptation={**TINY_ADAPTATION, "steps": 600, "replay_fraction": 0.5},
            # the tiny champion forgets a few hundredths of SSIM on its original pairs with any
            # fine-tune; what this test judges is the new family (confidence and accuracy)
            tolerance=0.06,
        )
        chk = cli(["loop", "check", "--config", str(loop_cfg), "--json"], env, work)
        assert chk.returncode == 0, chk.stderr
        decision = json.loads(chk.stdout)
        low = next(r for r in decision["reasons"] if r["name"] == "low_confidence_rate")
        assert decision["fire"] and low["fired"], json.dumps(decision, indent=1)

        # ---- review export, labelled from the synthetic truth, back through feedback
        out = tmp_path / "review"
        exp = cli(
            ["review", "export", "--db", str(db), "--out", str(out), "--limit", str(EXPORT)],
            env,
            work,
        )
        assert exp.returncode == 0, exp.stderr
        with open(out / "manifest.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == EXPORT
        from semlayout.data.pairs import read_gray8

        posted = 0
        for row in rows:
            sem = read_gray8(out / row["sem_path"])
            layout = truth[hashlib.sha256(np.ascontiguousarray(sem).tobytes()).hexdigest()]
            r = httpx.post(
                f"{url}/v1/feedback",
                headers=auth,
                data={"pattern_type": NEW_FAMILY},
                files={
                    "sem": ("s.png", png(sem), "image/png"),
                    "layout": ("l.png", png(layout), "image/png"),
                },
                timeout=120,
            )
            assert r.status_code in (200, 422), r.text  # 422: the pair fails alignment QC
            posted += r.status_code == 200
        assert posted >= EXPORT * 2 // 3, posted
        queue = httpx.get(f"{url}/v1/review/queue", params={"limit": 500}, headers=auth).json()
        assert queue["open"] == len(stream) - posted  # the reviewed ones are closed

    lap("serve, stream, check, review, feedback")
    # ---- the fine-tune: a challenger, calibrated at its evaluation
    run = cli(["loop", "run", "--config", str(loop_cfg), "--json"], env, work, timeout=3600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    lap("loop run")
    champion = _judge(f"models:/{MODEL}@champion", tracking, JUDGE)
    challenger = _judge(f"models:/{MODEL}@challenger", tracking, JUDGE)
    lap("judge")
    gain = np.asarray(challenger.pop("ious")) - np.asarray(champion.pop("ious"))
    print("champion", champion, "challenger", challenger)
    print(
        f"IoU gain on {JUDGE} fresh pairs: mean {gain.mean():.3f} (paired SE "
        f"{gain.std(ddof=1) / np.sqrt(len(gain)):.3f}), better on {(gain > 0).sum()}"
    )
    print(
        f"laps (s): {laps}; total {time.perf_counter() - t0:.0f} s wall, {_cpu_seconds():.0f} s CPU"
    )
    assert challenger["iou"] > champion["iou"]
    # more accurate beyond the pairs' noise: the paired gain exceeds its standard error
    assert gain.mean() > gain.std(ddof=1) / np.sqrt(len(gain)), gain
    assert challenger["confidence"] > champion["confidence"]
