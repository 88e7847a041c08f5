"""End to end against a REAL uvicorn server on 127.0.0.1: both directions, drift on shifted
traffic (and not on in-distribution traffic), ground truth -> quality metrics, feedback pair
folder, Prometheus metrics, monitoring summary, the `semlayout serve` / `monitor` commands."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time

import cv2
import httpx
import numpy as np
import pytest
from helpers_serving import (
    alignable_pair,
    aligned_arrays,
    cached_reference,
    free_port,
    make_checkpoint,
    png_bytes,
    running_server,
)
from prometheus_client.parser import text_string_to_metric_families
from skimage.metrics import structural_similarity

from semlayout.data.pairs import decode_gray8, read_gray8, read_manifest
from semlayout.inference import Translator
from semlayout.monitoring.feedback import feedback_rows
from semlayout.monitoring.store import MonitorStore
from semlayout.serving.app import create_app
from semlayout.serving.settings import ServeSettings
from semlayout.storage import open_store

API, ADMIN = "test-api-token-1", "test-admin-token-2"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return cached_reference(tmp_path_factory)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "c0", seed=0)


@pytest.fixture(scope="module")
def server(data, ckpt, tmp_path_factory):
    work = tmp_path_factory.mktemp("serve")
    settings = ServeSettings(
        model=str(ckpt),
        reference=data["shards"] / "reference_stats.json",
        monitor_db=work / "monitor.db",
        feedback_uri=work / "feedback",
        api_token=API,
        admin_token=ADMIN,
        poll_interval_s=0,
    )
    with running_server(create_app(settings)) as url:
        yield {"url": url, "settings": settings, "work": work}


def _post(url: str, path: str, img: np.ndarray, **kw) -> httpx.Response:
    return httpx.post(
        f"{url}{path}", files={"image": ("x.png", png_bytes(img), "image/png")}, timeout=60, **kw
    )


def _decode(content: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_UNCHANGED)


def test_translate_both_directions_matches_the_translator(server, data, ckpt):
    url = server["url"]
    sem, layout, _ = aligned_arrays(data["fresh"])
    ref = Translator.load(ckpt)
    odd = np.ascontiguousarray(sem[1][:180, :237])  # not square, not the model size
    for direction, img in (("sem2layout", sem[0]), ("layout2sem", layout[0]), ("sem2layout", odd)):
        r = _post(url, f"/v1/translate/{direction}", img)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "image/png"
        out = _decode(r.content)
        assert out.dtype == np.uint8 and out.shape == img.shape
        assert np.array_equal(out, ref.translate(direction, [img])[0])
        assert r.headers["x-model-version"].startswith("local-")
        assert len(r.headers["x-prediction-id"]) == 32
        assert float(r.headers["x-drift-score"]) >= 0
    r = _post(url, "/v1/translate/sem2layout?binarize=true", sem[0])
    assert set(np.unique(_decode(r.content)).tolist()) <= {0, 255}

    r = _post(url, "/v1/translate/layout2sem/json", layout[2])
    body = r.json()
    assert r.status_code == 200 and body["direction"] == "layout2sem"
    assert (body["width"], body["height"]) == (250, 250)
    assert np.array_equal(
        _decode(base64.b64decode(body["image_png_base64"])),
        ref.translate("layout2sem", [layout[2]])[0],
    )
    assert body["drift"]["drifted"] in (True, False) and body["drift"]["z_threshold"] > 0

    files = [("images", (f"{i}.png", png_bytes(s), "image/png")) for i, s in enumerate(sem[:3])]
    r = httpx.post(f"{url}/v1/translate/sem2layout/batch", files=files, timeout=60)
    assert r.status_code == 200
    outs = [_decode(base64.b64decode(b["image_png_base64"])) for b in r.json()]
    for o, e in zip(outs, ref.translate("sem2layout", sem[:3]), strict=True):
        assert np.array_equal(o, e)
    assert len({b["prediction_id"] for b in r.json()}) == 3


def test_drift_flagged_for_shifted_traffic_only(server, data):
    url = server["url"]
    store = MonitorStore(server["settings"].monitor_db)
    sem, layout, _ = aligned_arrays(data["fresh"])
    low, _, _ = aligned_arrays(data["lowdose"])

    def stream(direction: str, imgs: list[np.ndarray]) -> float:
        flags = []
        for img in imgs:
            r = _post(url, f"/v1/translate/{direction}", img)
            assert r.status_code == 200
            score = float(r.headers["x-drift-score"])
            assert (r.headers["x-drifted"] == "true") == (score > 1)
            flags.append(score > 1)
        return float(np.mean(flags))

    assert stream("sem2layout", sem) <= 0.05
    assert stream("layout2sem", layout) <= 0.05
    assert store.drift_rate(len(sem) + len(layout)) <= 0.05
    assert stream("sem2layout", low) >= 0.9  # very low dose: shot noise the model never saw
    assert store.drift_rate(len(low)) >= 0.9  # the window the loop reads
    assert store.drift_rate(len(low), "layout2sem") <= 0.05
    summary = httpx.get(f"{url}/v1/monitoring/summary", params={"window": len(low)}).json()
    assert summary["drift"]["rate"] >= 0.9 and summary["drift"]["n"] == len(low)
    store.close()


def test_ground_truth_gives_quality_metrics(server, data):
    url = server["url"]
    sem, layout, _ = aligned_arrays(data["fresh"])
    r = _post(url, "/v1/translate/sem2layout", sem[5])
    pid, pred = r.headers["x-prediction-id"], _decode(r.content)
    auth = {"Authorization": f"Bearer {API}"}
    g = _post(url, f"/v1/ground-truth/{pid}", layout[5], headers=auth)
    assert g.status_code == 200, g.text
    m = g.json()["metrics"]
    a, b = pred / 255.0, layout[5] / 255.0
    assert m["l1"] == pytest.approx(np.abs(a - b).mean(), abs=1e-9)
    assert m["ssim"] == pytest.approx(
        structural_similarity(
            a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
        ),
        abs=1e-3,
    )
    inter, union = np.logical_and(a > 0.5, b > 0.5).sum(), np.logical_or(a > 0.5, b > 0.5).sum()
    assert m["iou"] == pytest.approx(inter / union)
    assert m["psnr"] == pytest.approx(10 * np.log10(1 / np.mean((a - b) ** 2)), rel=1e-6)
    assert (
        _post(url, "/v1/ground-truth/0123456789abcdef", layout[5], headers=auth).status_code == 404
    )
    assert _post(url, f"/v1/ground-truth/{pid}", layout[5][:100], headers=auth).status_code == 422
    # the truth of a layout prediction is a layout: a grey image (the SEM, by mistake) is refused
    # and does not replace the truth already given
    wrong = _post(url, f"/v1/ground-truth/{pid}", sem[5], headers=auth)
    assert wrong.status_code == 422 and "only 0 and 255" in wrong.json()["detail"], wrong.text
    s = httpx.get(f"{url}/v1/monitoring/summary").json()
    assert s["quality"]["sem2layout"]["n"] >= 1 and s["quality"]["sem2layout"]["ssim"] is not None


def test_feedback_is_stored_as_objects_and_rows(server, data):
    url = server["url"]
    auth = {"Authorization": f"Bearer {API}"}

    def post(sem: np.ndarray, lay: np.ndarray) -> httpx.Response:
        return httpx.post(
            f"{url}/v1/feedback",
            headers=auth,
            data={"pattern_type": "line_space"},
            files={
                "sem": ("s.png", png_bytes(sem), "image/png"),
                "layout": ("l.png", png_bytes(lay), "image/png"),
            },
            timeout=60,
        )

    sent = []
    for i in range(2):
        sem, lay = alignable_pair(300 + i)
        r = post(sem, lay)
        assert r.status_code == 200, r.text
        assert r.json()["feedback_count"] == i + 1
        sent.append((r.json()["id"], sem, lay))
    # refused, nothing stored: the same pair again, the same SEM with another layout, and a
    # template that does not align with its SEM (the fine-tune would drop it; the trigger would
    # count it)
    again = post(sent[0][1], sent[0][2])
    assert again.status_code == 409 and sent[0][0] in again.json()["detail"], again.text
    corrected = sent[0][2].copy()
    corrected[100:110, 100:110] = 255 - corrected[100:110, 100:110]
    assert post(sent[0][1], corrected).status_code == 409
    noise = np.random.default_rng(3).integers(0, 256, (304, 304), dtype=np.uint8)
    unaligned = post(noise, sent[1][2])
    assert unaligned.status_code == 422 and "align" in unaligned.json()["detail"], unaligned.text
    store = MonitorStore(server["settings"].monitor_db)
    rows = {r.id: r for r in feedback_rows(store)}
    store.close()
    assert set(rows) == {s[0] for s in sent}
    objects = open_store(server["settings"].feedback_uri)
    for pid, sem, lay in sent:
        assert np.array_equal(decode_gray8(objects.get_bytes(rows[pid].sem_path)), sem)
        assert np.array_equal(decode_gray8(objects.get_bytes(rows[pid].layout_path)), lay)
        assert rows[pid].pattern_type == "line_space"
    assert len(objects.list("objects/")) == 4, "nothing of the refused posts was written"
    assert httpx.get(f"{url}/v1/monitoring/summary").json()["feedback_count"] == 2


def test_health_readiness_and_prometheus(server):
    url = server["url"]
    health = httpx.get(f"{url}/healthz")
    assert health.json() == {"status": "ok"}
    assert health.headers["Server-Timing"].startswith("app;dur=")  # no stages: the app's time
    ready = httpx.get(f"{url}/readyz").json()
    assert ready["ready"] and ready["model_loaded"] and ready["db_writable"]
    r = httpx.get(f"{url}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    fams = {f.name: f for f in text_string_to_metric_families(r.text)}
    for name in (
        "semlayout_requests",
        "semlayout_translations",
        "semlayout_request_latency_seconds",
        "semlayout_forward_seconds",
        "semlayout_drift_alerts",
        "semlayout_model_info",
        "semlayout_inflight_requests",
        "semlayout_queue_depth",
        "semlayout_errors",
    ):
        assert name in fams, name
    ok = sum(
        s.value
        for s in fams["semlayout_translations"].samples
        if s.name.endswith("_total") and s.labels["status"] == "ok"
    )
    assert ok >= 1
    info = [s for s in fams["semlayout_model_info"].samples][0]
    assert info.labels["version"].startswith("local-") and info.value == 1


@pytest.mark.slow
def test_serve_and_monitor_commands(data, ckpt, tmp_path):
    """The real `semlayout serve` process, then `semlayout monitor summary / drift-report`
    on its DB."""
    port = free_port()
    db = tmp_path / "monitor.db"
    env = {**os.environ, "SEMLAYOUT_API_TOKEN": API}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "semlayout.cli",
            "serve",
            "--model",
            str(ckpt),
            "--port",
            str(port),
            "--reference",
            str(data["shards"] / "reference_stats.json"),
            "--db",
            str(db),
            "--feedback-uri",
            str(tmp_path / "fb"),
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "serve did not become ready"
            time.sleep(0.2)
        sem, _, _ = aligned_arrays(data["fresh"])
        low, _, _ = aligned_arrays(data["lowdose"])
        for img in sem[:15] + low[:15]:
            assert _post(url, "/v1/translate/sem2layout", img).status_code == 200
    finally:
        proc.terminate()
        proc.wait(30)
    out = subprocess.run(
        [sys.executable, "-m", "semlayout.cli", "monitor", "summary", "--db", str(db), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    import json

    summ = json.loads(out.stdout)
    assert summ["inference"]["requests"] == 30 and summ["drift"]["n"] == 30
    assert 0.4 <= summ["drift"]["rate"] <= 0.6
    html = tmp_path / "drift.html"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "semlayout.cli",
            "monitor",
            "drift-report",
            "--db",
            str(db),
            "--reference",
            str(data["shards"]),
            "--window",
            "15",
            "--out",
            str(html),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["n_current"] == 15 and res["detector_flagged_rate"] >= 0.9
    assert res["dataset_drift"] is True
    text = html.read_text()
    assert text.lstrip().lower().startswith("<!doctype html>")
    assert "laplacian_var" in text and "edge_density" in text  # the per-image feature columns
    # it says which model served the window, and when
    assert res["model_versions"] and res["from"] <= res["to"]
    header = text.split('id="semlayout-header"', 1)[1].split("</div>", 1)[0]
    assert f"model version {res['model_versions'][0]}" in header and res["from"] in header
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "semlayout.cli",
            "monitor",
            "drift-report",
            "--db",
            str(tmp_path / "none.db"),
            "--reference",
            str(data["shards"]),
        ],
        capture_output=True,
        text=True,
    )
    assert (
        bad.returncode == 2
        and bad.stderr.startswith("error:")
        and len(bad.stderr.strip().splitlines()) == 1
    )


def test_align_endpoint_finds_the_template_and_translates_the_crop(server, data, ckpt):
    from semlayout.data.synth import read_truth

    url = server["url"]
    pairs = data["fresh"].parent / "pairs"
    truth = read_truth(pairs)
    ref = Translator.load(ckpt)
    hits = 0
    recs = read_manifest(pairs)[:4]
    for rec in recs:
        sem, lay = read_gray8(rec.sem_path, (304, 304)), read_gray8(rec.layout_path, (250, 250))
        r = httpx.post(
            f"{url}/v1/align",
            params={"translate": "true"},
            timeout=60,
            files={
                "sem": ("s.png", png_bytes(sem), "image/png"),
                "template": ("t.png", png_bytes(lay), "image/png"),
            },
        )
        assert r.status_code == 200, r.text
        body = r.json()
        x, y = body["x"], body["y"]
        assert 0 <= x <= 54 and 0 <= y <= 54
        hits += (x, y) == truth[rec.id] or body["n_equivalent"] > 1
        crop = np.ascontiguousarray(sem[y : y + 250, x : x + 250])
        out = _decode(base64.b64decode(body["translated"]["image_png_base64"]))
        assert np.array_equal(out, ref.translate("sem2layout", [crop])[0])
    assert (
        hits >= len(recs) - 1
    )  # the aligner's own accuracy is tested elsewhere; this checks the plumbing
