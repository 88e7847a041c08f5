"""Hot reload against a real MLflow registry and a real uvicorn server: when the `champion`
alias moves, the server loads the new version and swaps it in while traffic keeps flowing;
every response is computed entirely by the version it names — its weights and the drift
reference registered with it."""

from __future__ import annotations

import threading
import time

import cv2
import httpx
import numpy as np
import pytest
from helpers_serving import cached_reference, make_checkpoint, png_bytes, running_server

from semlayout.gate import GateConfig, judge
from semlayout.inference import Translator
from semlayout.monitoring.drift import detectors_from_reference
from semlayout.registry import Registry
from semlayout.serving.app import create_app
from semlayout.serving.settings import ServeSettings

ADMIN = "reload-admin"


def _metrics(s2l: float) -> dict:
    return {
        "n": 6,
        "split": "test",
        "sem2layout": {"l1": 0.1, "ssim": s2l, "psnr": 20.0, "iou": 0.8},
        "layout2sem": {"l1": 0.2, "ssim": 0.3, "psnr": 15.0, "iou": 0.5},
    }


@pytest.mark.slow
def test_alias_move_is_picked_up_and_swapped_atomically(
    tmp_path, monkeypatch, tiny_shards, tmp_path_factory
):
    monkeypatch.setenv("SEMLAYOUT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    cfg = GateConfig(floors={"sem2layout": 0.1, "layout2sem": 0.1}, tolerance=0.5)
    ckpts = [make_checkpoint(tmp_path / f"c{i}", seed=10 + i) for i in range(2)]
    # each version is registered with the drift reference of other training shards
    references = [cached_reference(tmp_path_factory)["shards"], tiny_shards]
    for i, ck in enumerate(ckpts):
        m = _metrics(0.6 + 0.1 * i)
        run = Registry(uri, create=True).log_run("serving-test", ck, m, params={"seed": i})
        version = Registry(uri).register(
            "semlayout",
            run,
            judge(m, None, cfg),
            lineage={"data_uri": "test"},
            drift_reference=references[i],
        )
        assert version == i + 1
    Registry(uri).approve("semlayout", 1, by="rm", reason="first")

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (96, 80), dtype=np.uint8)
    expected = {
        str(i + 1): Translator.load(ck).translate("sem2layout", [img])[0]
        for i, ck in enumerate(ckpts)
    }
    assert not np.array_equal(expected["1"], expected["2"])  # the two versions are distinguishable
    drift = {  # the drift score each version's own reference gives the image
        str(i + 1): f"{detectors_from_reference(ref)['sem2layout'].check(img).score:.4f}"
        for i, ref in enumerate(references)
    }
    assert drift["1"] != drift["2"]

    settings = ServeSettings(
        model="models:/semlayout@champion",
        tracking_uri=uri,
        monitor_db=tmp_path / "m.db",
        feedback_uri=tmp_path / "fb",
        admin_token=ADMIN,
        poll_interval_s=0.5,
        backend="eager",  # the metric below names it (auto would name what it measured)
    )
    with running_server(create_app(settings), timeout=120) as url:

        def call() -> tuple[int, str, np.ndarray | None]:
            r = httpx.post(
                f"{url}/v1/translate/sem2layout",
                files={"image": ("x.png", png_bytes(img), "image/png")},
                timeout=60,
            )
            out = (
                cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_UNCHANGED)
                if r.status_code == 200
                else None
            )
            version = r.headers.get("x-model-version", "")
            # the drift score comes from the reference registered with the version that answered
            assert r.status_code != 200 or r.headers["x-drift-score"] == drift[version]
            return r.status_code, version, out

        status, version, out = call()
        assert (status, version) == (200, "1") and np.array_equal(out, expected["1"])
        ready = httpx.get(f"{url}/readyz").json()
        assert ready["drift_reference"] == "registered with models:/semlayout/1", ready
        summary = httpx.get(f"{url}/v1/monitoring/summary").json()
        assert summary["quality"]["sem2layout"]["baseline"] == pytest.approx(
            0.6
        )  # promotion SSIM of v1

        seen: list[tuple[int, str, np.ndarray | None]] = []
        stop = threading.Event()

        def traffic() -> None:
            while not stop.is_set():
                seen.append(call())

        t = threading.Thread(target=traffic)
        t.start()
        try:
            time.sleep(0.5)
            Registry(uri).approve("semlayout", 2, by="rm", reason="better")
            deadline = time.monotonic() + 90
            while not (seen and seen[-1][1] == "2"):
                assert time.monotonic() < deadline, "the server never picked up version 2"
                time.sleep(0.2)
            time.sleep(0.5)
        finally:
            stop.set()
            t.join(60)
        assert all(s == 200 for s, _, _ in seen)
        versions = [v for _, v, _ in seen]
        assert versions[0] == "1" and versions[-1] == "2"
        assert versions == sorted(versions)  # once swapped, never back
        for _, v, o in seen:
            assert np.array_equal(o, expected[v])  # output and version header agree: no mixed model
        metrics = httpx.get(f"{url}/metrics").text
        assert (
            'semlayout_model_info{backend="eager",source="models:/semlayout/2",version="2"} 1.0'
            in metrics
        )
        assert 'semlayout_model_reloads_total{result="swapped"} 1.0' in metrics
        ready = httpx.get(f"{url}/readyz").json()
        assert ready["drift_reference"] == "registered with models:/semlayout/2", ready

        # rollback, then the admin endpoint instead of waiting for the poller
        Registry(uri).rollback("semlayout", by="rm", reason="regression")
        r = httpx.post(
            f"{url}/v1/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=120
        )
        assert r.status_code == 200, r.text
        body = r.json()
        # the poller may have won the race; either way the server now serves version 1
        assert body["new_version"] == "1" and (body["changed"] or body["old_version"] == "1")
        status, version, out = call()
        assert (status, version) == (200, "1") and np.array_equal(out, expected["1"])
