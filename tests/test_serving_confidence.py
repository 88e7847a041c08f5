"""Confidence through the product against a real server and the real CLI (issue 17): the
X-Confidence / X-Predicted-IoU|SSIM headers and JSON fields (numbers with a calibration,
"unknown" without, the lowest with a reason for a blank input), the Prometheus histogram, the
summary's per-cohort low-confidence rates, predicted vs true on ground truth, the review queue
(token, 422 on a bad limit, least confident first, closed by ground truth or feedback), and
`semlayout review export` (the skeleton; refusals)."""

from __future__ import annotations

import csv
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers_serving import make_checkpoint, running_server

from semlayout.confidence import KEPT
from semlayout.confidence_calibration import Calibration, fit_direction
from semlayout.data.pairs import encode_png
from semlayout.serving.app import create_app
from semlayout.serving.settings import ServeSettings

TOKEN = "review-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def calibrate(ckpt: Path) -> Path:
    """A calibration over the kept signals' names (random but valid numbers), saved beside the
    weights as evaluation does."""
    rng = np.random.default_rng(0)
    dirs = {}
    for direction, metric in (("sem2layout", "iou"), ("layout2sem", "ssim")):
        names = KEPT[direction]
        x = rng.normal(size=(60, len(names)))
        y = np.clip(0.6 + 0.2 * x[:, 0] + rng.normal(0, 0.05, 60), 0, 1)
        dirs[direction] = fit_direction(x, y, names, metric, 0.6)
    Calibration(dirs, "test").save(ckpt)
    return ckpt


def _settings(ckpt: Path, work: Path, **kw) -> ServeSettings:
    return ServeSettings(
        model=str(ckpt),
        monitor_db=work / "monitor.db",
        feedback_dir=work / "feedback",
        poll_interval_s=0,
        api_token=TOKEN,
        review_keep_below=1.01,  # keep every input: the export needs them
        **kw,
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    work = tmp_path_factory.mktemp("serve-conf")
    ckpt = calibrate(make_checkpoint(work / "ckpt"))
    settings = _settings(ckpt, work)
    with running_server(create_app(settings)) as url:
        yield {"url": url, "settings": settings, "work": work}


@pytest.fixture(scope="module")
def uncalibrated(tmp_path_factory):
    work = tmp_path_factory.mktemp("serve-noconf")
    with running_server(create_app(_settings(make_checkpoint(work / "ckpt"), work))) as url:
        yield url


def _img(seed: int, size: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


def _post(url: str, img: np.ndarray, path: str = "", **params) -> httpx.Response:
    files = {"image": ("x.png", encode_png(img), "image/png")}
    return httpx.post(
        f"{url}/v1/translate/sem2layout{path}", files=files, params=params, timeout=60
    )


def test_every_prediction_says_how_sure_it_is(served):
    r = _post(served["url"], _img(1), polarity="bright")
    assert r.status_code == 200, r.text
    conf, pred = float(r.headers["X-Confidence"]), float(r.headers["X-Predicted-IoU"])
    assert 0 <= conf <= 1 and 0 <= pred <= 1 and "X-Confidence-Reason" not in r.headers
    j = _post(served["url"], _img(1), "/json", polarity="bright").json()
    assert j["confidence"] == pytest.approx(conf, abs=1e-4) and j["predicted_ssim"] is None
    files = {"image": ("x.png", encode_png(_img(2) > 127), "image/png")}
    lay = httpx.post(f"{served['url']}/v1/translate/layout2sem", files=files, timeout=60)
    assert 0 <= float(lay.headers["X-Predicted-SSIM"]) <= 1 and "X-Predicted-IoU" not in lay.headers


def test_a_blank_input_gets_the_lowest_confidence_with_a_reason_never_a_500(served):
    for img in (np.zeros((64, 64), np.uint8), np.full((64, 64), 255, np.uint8)):
        r = _post(served["url"], img)
        assert r.status_code == 200, r.text
        assert r.headers["X-Confidence"] == "0.0000" and r.headers["X-Predicted-IoU"] == "0.0000"
        assert "one value" in r.headers["X-Confidence-Reason"]


def test_a_version_without_calibration_says_unknown(uncalibrated):
    r = _post(uncalibrated, _img(3))
    assert r.headers["X-Confidence"] == "unknown" and r.headers["X-Predicted-IoU"] == "unknown"
    assert r.headers["X-Confidence-Reason"] == "uncalibrated"
    j = _post(uncalibrated, _img(3), "/json").json()
    assert j["confidence"] is None and j["confidence_reason"] == "uncalibrated"
    metrics = httpx.get(f"{uncalibrated}/metrics", timeout=30).text
    assert 'semlayout_confidence_unknown_total{direction="sem2layout"}' in metrics


def test_histogram_summary_and_cohorts(served):
    url = served["url"]
    for i in range(4):
        assert _post(url, _img(10 + i), cohort="fab7").status_code == 200
    bad = _post(url, _img(20), cohort="bad label!")
    assert bad.status_code == 422
    metrics = httpx.get(f"{url}/metrics", timeout=30).text
    assert 'semlayout_confidence_bucket{direction="sem2layout",le="0.5"}' in metrics
    summ = httpx.get(f"{url}/v1/monitoring/summary", timeout=60).json()["confidence"]
    cohort = summ["directions"]["sem2layout"]["cohorts"]["fab7"]
    assert cohort["n"] == 4 and cohort["known"] == 4
    assert 0 <= cohort["low_confidence_rate"] <= 1
    assert summ["calibrated"] == {"sem2layout": True, "layout2sem": True}
    assert "sem2layout" in summ["calibration_error"]


def test_review_queue_token_limits_order_and_closing(served):
    url = served["url"]
    ids = [_post(url, _img(30 + i), "/json").json()["prediction_id"] for i in range(5)]
    q = f"{url}/v1/review/queue"
    assert httpx.get(q, timeout=30).status_code == 401
    for bad in (0, 501, -3):
        assert httpx.get(q, params={"limit": bad}, headers=AUTH, timeout=30).status_code == 422
    items = httpx.get(q, params={"limit": 50}, headers=AUTH, timeout=60).json()["items"]
    got = [it["prediction_id"] for it in items]
    assert set(ids) <= set(got)
    confs = [it["confidence"] for it in items if it["confidence"] is not None]
    assert confs[0] == min(confs)  # the least confident first
    # ground truth closes an entry
    truth = (_img(99) > 127).astype(np.uint8) * 255
    files = {"image": ("t.png", encode_png(truth), "image/png")}
    gt = httpx.post(f"{url}/v1/ground-truth/{ids[0]}", files=files, headers=AUTH, timeout=60)
    assert gt.status_code == 200, gt.text
    assert gt.json()["predicted_quality"] is not None
    items = httpx.get(q, params={"limit": 50}, headers=AUTH, timeout=60).json()["items"]
    assert ids[0] not in [it["prediction_id"] for it in items]
    summ = httpx.get(f"{url}/v1/monitoring/summary", timeout=60).json()["confidence"]
    assert summ["calibration_error"]["sem2layout"]["n"] >= 1


def _cli(*args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "semlayout.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_review_export_writes_a_skeleton_and_refuses_bad_destinations(served, tmp_path):
    url = served["url"]
    for i in range(3):
        _post(url, _img(60 + i))
    db = served["settings"].monitor_db
    out = tmp_path / "export"
    res = _cli("review", "export", "--db", db, "--out", out, "--limit", "3")
    assert res.returncode == 0, res.stderr
    with open(out / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and list(rows[0])[:4] == ["id", "sem_path", "layout_path", "pattern_type"]
    for r in rows:
        assert (out / r["sem_path"]).is_file() and not (out / r["layout_path"]).exists()
        assert r["prediction_id"] == r["id"]
    assert (out / "README.txt").is_file()
    # the exported SEM is the input the model saw: its pixels hash to the prediction's input
    con = sqlite3.connect(db)
    sha = con.execute("select input_sha256 from predictions where id=?", (rows[0]["id"],))
    import hashlib

    import cv2

    sem = cv2.imread(str(out / rows[0]["sem_path"]), cv2.IMREAD_UNCHANGED)
    assert hashlib.sha256(np.ascontiguousarray(sem).tobytes()).hexdigest() == sha.fetchone()[0]
    for args, needle in (
        (["--out", out], "not an empty folder"),
        (["--out", db], "monitoring store"),
        (["--out", Path(db).parent], "monitoring store"),
        (["--out", tmp_path / "x", "--limit", "0"], "--limit 0"),
    ):
        res = _cli("review", "export", "--db", db, *args)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert res.stderr.strip().startswith("error: ") and needle in res.stderr, res.stderr
    assert not (tmp_path / "x").exists()


def test_a_feedback_pair_closes_its_queue_entry(served):
    from helpers_serving import alignable_pair

    url = served["url"]
    sem, layout = alignable_pair(5)
    pid = _post(url, sem, "/json").json()["prediction_id"]
    q = f"{url}/v1/review/queue"
    items = httpx.get(q, params={"limit": 500}, headers=AUTH, timeout=60).json()["items"]
    assert pid in [it["prediction_id"] for it in items]
    files = {
        "sem": ("s.png", encode_png(sem), "image/png"),
        "layout": ("l.png", encode_png(layout), "image/png"),
    }
    data = {"pattern_type": "line_space"}
    fb = httpx.post(f"{url}/v1/feedback", files=files, data=data, headers=AUTH, timeout=120)
    assert fb.status_code in (200, 201), fb.text
    items = httpx.get(q, params={"limit": 500}, headers=AUTH, timeout=60).json()["items"]
    assert pid not in [it["prediction_id"] for it in items]


def test_the_drift_reports_confidence_section_shows_served_predictions(served):
    """Predicted vs true for the ground truths that arrived, the least confident with images."""
    from semlayout.confidence_report import confidence_section
    from semlayout.monitoring.confidence_store import served_confidence
    from semlayout.monitoring.store import MonitorStore

    url = served["url"]
    for i in range(3):  # three predictions whose truth arrives
        pid = _post(url, _img(70 + i), "/json").json()["prediction_id"]
        truth = (_img(80 + i) > 127).astype(np.uint8) * 255
        files = {"image": ("t.png", encode_png(truth), "image/png")}
        r = httpx.post(f"{url}/v1/ground-truth/{pid}", files=files, headers=AUTH, timeout=60)
        assert r.status_code == 200, r.text
    store = MonitorStore(served["settings"].monitor_db, create=False)
    try:
        block = served_confidence(store, "sem2layout")
    finally:
        store.close()
    assert len(block["sem2layout"]["points"]) >= 3 and "spearman" in block["sem2layout"]
    page = confidence_section(block, "Confidence of the served predictions")
    assert "<svg" in page and "Least confident" in page and "data:image/png;base64," in page


def test_predict_writes_the_confidence_of_a_calibrated_model(served, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.png").write_bytes(encode_png(_img(90)))
    (src / "blank.png").write_bytes(encode_png(np.zeros((64, 64), np.uint8)))
    ckpt = served["settings"].model
    res = _cli(
        "predict", src, "--model", ckpt, "--direction", "sem2layout", "--out", tmp_path / "o"
    )
    assert res.returncode == 0, res.stderr
    with open(tmp_path / "o" / "predictions.csv", newline="") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    assert 0 <= float(rows["a"]["confidence"]) <= 1 and 0 <= float(rows["a"]["predicted_iou"]) <= 1
    assert (
        rows["blank"]["confidence"] == "0.0000"
        and "one value" in rows["blank"]["confidence_reason"]
    )


def test_answers_carry_the_inline_confidence_and_the_store_gets_the_full_one(tmp_path):
    """With a calibration that has inline tiers the answer carries the inline confidence (no
    extra forward on the request), `confidence=full` asks for the full one, a bad value is a
    422 naming the choices, and the full one replaces the inline one in the store off the
    request path (every deferred job is run by the shutdown at the latest)."""
    from semlayout.confidence_fit import all_signals, fit_tiers

    rng = np.random.default_rng(1)
    dirs, inline = {}, {}
    for direction in ("sem2layout", "layout2sem"):
        names = all_signals(direction)
        x = rng.normal(size=(60, len(names)))
        y = np.clip(0.6 + 0.2 * x[:, 0] + rng.normal(0, 0.05, 60), 0, 1)
        dirs[direction], inline[direction] = fit_tiers(x, y, names, direction, 0.6)
    ckpt = make_checkpoint(tmp_path / "ckpt")
    Calibration(dirs, "test", inline).save(ckpt)
    settings = _settings(ckpt, tmp_path)
    with running_server(create_app(settings)) as url:
        r = _post(url, _img(70), polarity="bright")
        assert r.status_code == 200, r.text
        assert r.headers["X-Confidence-Source"] == "inline"
        inline_conf = float(r.headers["X-Confidence"])
        full = _post(url, _img(70), polarity="bright", confidence="full")
        assert full.headers["X-Confidence-Source"] == "full"
        j = _post(url, _img(70), "/json", polarity="bright", confidence="full").json()
        assert j["confidence_source"] == "full"
        assert j["confidence"] == pytest.approx(float(full.headers["X-Confidence"]), abs=1e-4)
        files = {"image": ("x.png", encode_png(_img(70)), "image/png")}
        form = httpx.post(
            f"{url}/v1/translate/sem2layout/json",
            files=files,
            data={"confidence": "inline", "polarity": "bright"},
            timeout=60,
        ).json()
        assert form["confidence_source"] == "inline"
        assert form["confidence"] == pytest.approx(inline_conf, abs=1e-4)
        bad = _post(url, _img(70), polarity="bright", confidence="cheap")
        assert bad.status_code == 422 and "inline, full" in bad.json()["detail"]
        files = {"image": ("x.png", encode_png(_img(71) > 127), "image/png")}
        lay = httpx.post(f"{url}/v1/translate/layout2sem", files=files, timeout=60)
        assert lay.headers["X-Confidence-Source"] == "inline"
    db = sqlite3.connect(tmp_path / "monitor.db")
    rows = db.execute(
        "SELECT id, confidence, confidence_signals FROM predictions WHERE direction = ?",
        ("sem2layout",),
    ).fetchall()
    db.close()
    by_id = {pid: (conf, sig) for pid, conf, sig in rows}
    stored, signals = by_id[r.headers["X-Prediction-Id"]]
    assert stored == pytest.approx(float(full.headers["X-Confidence"]), abs=1e-4)
    assert '"dihedral"' in signals  # the full signals, computed after the answer
    assert all('"dihedral"' in sig for _, sig in by_id.values())
