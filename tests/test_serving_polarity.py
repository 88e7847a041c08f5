"""Polarity through the product against real servers and the real CLI: the translate endpoints'
`polarity` field (query or form), its answers (`X-Polarity`, `X-Polarity-Margin`, JSON), refusals
(an unknown value, a polarity the model never learned), the drift monitor's expectation, the
summary's polarity mix, the store's added column, and `semlayout predict --polarity`."""

from __future__ import annotations

import csv
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from helpers_serving import aligned_arrays, cached_reference, make_checkpoint, running_server

from semlayout.config import config_from_dict
from semlayout.data.pairs import encode_png
from semlayout.monitoring.store import MonitorStore, Prediction, TranslationRecord
from semlayout.serving.app import create_app
from semlayout.serving.settings import ServeSettings
from semlayout.train.checkpoint import build_networks, save_checkpoint

CHOICES = "expected one of auto, bright, dark"


def both_polarities_checkpoint(dest: Path) -> Path:
    cfg = config_from_dict(
        {
            "name": "serving-polarity-test",
            "generator": {
                "image_size": 32,
                "base_filters": 4,
                "max_filters": 8,
                "n_down": 3,
                "polarity_conditioning": "film",
                "polarity_flip": True,
            },
            "discriminator": {"base_filters": 4, "n_layers": 1},
            "polarity": {"learned": [1, -1]},
        }
    )
    torch.manual_seed(0)
    return Path(save_checkpoint(dest, cfg, build_networks(cfg), step=0, epoch=0))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return cached_reference(tmp_path_factory)


def _settings(model: Path, work: Path, reference: Path | None = None, **kw) -> ServeSettings:
    return ServeSettings(
        model=str(model),
        reference=reference,
        monitor_db=work / "monitor.db",
        feedback_dir=work / "feedback",
        poll_interval_s=0,
        **kw,
    )


@pytest.fixture(scope="module")
def both(data, tmp_path_factory):
    work = tmp_path_factory.mktemp("serve-both")
    ckpt = both_polarities_checkpoint(work / "ckpt")
    settings = _settings(ckpt, work, data["shards"] / "reference_stats.json")
    with running_server(create_app(settings)) as url:
        yield {"url": url, "settings": settings}


@pytest.fixture(scope="module")
def bright_only(tmp_path_factory):
    work = tmp_path_factory.mktemp("serve-bright")
    settings = _settings(make_checkpoint(work / "ckpt"), work)
    with running_server(create_app(settings)) as url:
        yield url


def _files(img: np.ndarray, name: str = "image") -> dict:
    return {name: ("x.png", encode_png(img), "image/png")}


def _sem(data, i: int = 0) -> np.ndarray:
    return aligned_arrays(data["fresh"])[0][i]


@pytest.mark.parametrize("path", ["", "/json", "/batch"])
def test_an_unknown_polarity_is_a_422_naming_the_choices(both, data, path):
    field = "images" if path == "/batch" else "image"
    url = f"{both['url']}/v1/translate/sem2layout{path}"
    r = httpx.post(url, params={"polarity": "grey"}, files=_files(_sem(data), field), timeout=60)
    assert r.status_code == 422 and CHOICES in r.json()["detail"], r.text
    r = httpx.post(url, data={"polarity": "up"}, files=_files(_sem(data), field), timeout=60)
    assert r.status_code == 422 and CHOICES in r.json()["detail"], r.text


def test_query_and_form_give_the_polarity_and_the_answer_says_which(both, data):
    url = f"{both['url']}/v1/translate/sem2layout"
    sem = _sem(data)
    by_query = httpx.post(url, params={"polarity": "dark"}, files=_files(sem), timeout=60)
    by_form = httpx.post(url, data={"polarity": "dark"}, files=_files(sem), timeout=60)
    for r in (by_query, by_form):
        assert r.status_code == 200, r.text
        assert r.headers["X-Polarity"] == "-1" and r.headers["X-Polarity-Source"] == "given"
        assert "X-Polarity-Margin" not in r.headers
    assert by_query.content == by_form.content
    bright = httpx.post(url, params={"polarity": "bright"}, files=_files(sem), timeout=60)
    assert bright.headers["X-Polarity"] == "+1" and bright.content != by_query.content
    # default auto; a layer of its own, which has read nothing yet: the image alone decides
    auto = httpx.post(url, params={"layer": "t-query"}, files=_files(sem), timeout=60)
    assert auto.headers["X-Polarity-Source"] == "auto" and auto.headers["X-Layer"] == "t-query"
    assert float(auto.headers["X-Polarity-Margin"]) >= 0
    assert auto.content == (bright if auto.headers["X-Polarity"] == "+1" else by_query).content
    clash = httpx.post(
        url, params={"polarity": "dark"}, data={"polarity": "bright"}, files=_files(sem), timeout=60
    )
    assert clash.status_code == 422 and "given twice" in clash.json()["detail"]


def test_json_and_batch_carry_polarity_fields(both, data):
    url = f"{both['url']}/v1/translate/sem2layout"
    one = httpx.post(f"{url}/json", data={"layer": "t-json"}, files=_files(_sem(data)), timeout=60)
    one = one.json()
    assert one["polarity"] in (1, -1) and one["polarity_source"] == "auto"
    assert one["layer"] == "t-json"
    assert one["polarity_margin"] >= 0
    files = [("images", ("a.png", encode_png(_sem(data, i)), "image/png")) for i in range(3)]
    many = httpx.post(f"{url}/batch", params={"polarity": "bright"}, files=files, timeout=60)
    assert [(d["polarity"], d["polarity_source"], d["polarity_margin"]) for d in many.json()] == [
        (1, "given", None)
    ] * 3
    lay = aligned_arrays(data["fresh"])[1][0]
    r = httpx.post(f"{both['url']}/v1/translate/layout2sem/json", files=_files(lay), timeout=60)
    assert (r.json()["polarity"], r.json()["polarity_source"]) == (1, "given")  # rule: bright


def test_drift_expects_the_references_polarity_and_the_summary_shows_the_mix(both, data):
    url = both["url"]
    before = httpx.get(f"{url}/v1/monitoring/summary", timeout=30).json()["polarity"]
    assert before["reference"]["-1"] == 0 and before["reference"]["+1"] > 0
    assert before["expected"] == 1  # the reference is all bright: a dark image is drift
    sem = _sem(data, 2)
    r = httpx.post(
        f"{url}/v1/translate/sem2layout/json", params={"polarity": "dark"}, files=_files(sem)
    )
    drift = r.json()["drift"]
    assert drift["drifted"] and drift["worst_feature"] == "polarity"
    assert drift["expected_polarity"] == 1 and drift["score"] > 1
    r = httpx.post(
        f"{url}/v1/translate/sem2layout/json", params={"polarity": "bright"}, files=_files(sem)
    )
    assert r.json()["drift"]["worst_feature"] != "polarity"
    after = httpx.get(f"{url}/v1/monitoring/summary", timeout=30).json()["polarity"]
    assert after["mix"]["-1"] == before["mix"]["-1"] + 1
    assert after["mix"]["+1"] == before["mix"]["+1"] + 1
    known = after["mix"]["+1"] + after["mix"]["-1"]
    assert after["share_dark"] == pytest.approx(after["mix"]["-1"] / known)


def test_a_model_of_one_polarity_refuses_the_other(bright_only, data):
    url = f"{bright_only}/v1/translate/sem2layout"
    r = httpx.post(url, params={"polarity": "dark"}, files=_files(_sem(data)), timeout=60)
    assert r.status_code == 422 and "learned bright (+1) contrast only" in r.json()["detail"]
    r = httpx.post(url, files=_files(_sem(data)), timeout=60)
    assert r.status_code == 200
    assert (r.headers["X-Polarity"], r.headers["X-Polarity-Source"]) == ("+1", "only")


def test_an_older_monitoring_database_gets_the_polarity_column(tmp_path):
    db = tmp_path / "old.db"
    con = sqlite3.connect(db)  # the schema as released before migrations (and polarity)
    con.executescript(Path(__file__).with_name("legacy_monitor_schema.sql").read_text())
    con.execute("INSERT INTO predictions VALUES ('old', 1.0, 'sem2layout', '1', 'h', 4, 4, NULL)")
    con.commit()
    con.close()
    store = MonitorStore(db, create=False)
    event = {"endpoint": "/t", "status": "ok", "http_status": 200, "latency_ms": 1.0}
    for pid, ts, pol in (("dark", 2.0, -1), ("bright", 3.0, 1)):
        pred = Prediction(pid, ts, "sem2layout", "2", "h", 4, 4, None, polarity=pol)
        store.record_translations([TranslationRecord(pred, event, None)])
    assert store.get_prediction("old").polarity is None
    assert store.get_prediction("dark").polarity == -1
    assert store.polarity_mix(10) == {"+1": 1, "-1": 1, "unknown": 1}
    assert store.polarity_mix(1) == {"+1": 1, "-1": 0, "unknown": 0}  # the newest only
    store.close()


def _cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "semlayout.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_predict_writes_predictions_csv_and_refuses_bad_polarities(data, tmp_path):
    both_ckpt = both_polarities_checkpoint(tmp_path / "both")
    bright_ckpt = make_checkpoint(tmp_path / "bright")
    sems = tmp_path / "in"
    sems.mkdir()
    for i in range(3):
        (sems / f"img{i}.png").write_bytes(encode_png(_sem(data, i)))
    base = ["predict", sems, "--direction", "sem2layout"]
    res = _cli(*base, "--model", both_ckpt, "--out", tmp_path / "auto")
    assert res.returncode == 0, res.stderr
    with open(tmp_path / "auto" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [
        "id",
        "direction",
        "polarity",
        "confidence",
        "predicted_iou",
        "polarity_margin",
        "polarity_source",
        "confidence_reason",
        "layer",
    ]
    assert {r["confidence"] for r in rows} == {"unknown"}  # no calibration beside the weights
    assert [r["id"] for r in rows] == ["img0", "img1", "img2"]
    # the folder is one layer: one pooled polarity for all, its margin the pooled log-odds
    assert len({(r["polarity"], r["polarity_margin"]) for r in rows}) == 1
    assert all(r["polarity"] in ("+1", "-1") and r["polarity_source"] == "pooled" for r in rows)
    assert all(float(r["polarity_margin"]) >= 0 and r["layer"] == "default" for r in rows)
    res = _cli(*base, "--model", both_ckpt, "--out", tmp_path / "dark", "--polarity", "dark")
    with open(tmp_path / "dark" / "predictions.csv", newline="") as f:
        assert {(r["polarity"], r["polarity_margin"]) for r in csv.DictReader(f)} == {("-1", "")}
    for extra, needle in (
        (["--model", both_ckpt, "--polarity", "grey"], CHOICES),
        (["--model", bright_ckpt, "--polarity", "dark"], "learned bright (+1) contrast only"),
        (["--model", both_ckpt, "--layer-polarity", "auto"], "must be bright or dark"),
    ):
        out = tmp_path / "refused"
        res = _cli(*base, *extra, "--out", out)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert res.stderr.strip().startswith("error: ") and needle in res.stderr, res.stderr
        assert not out.exists()
