"""Translator.load on `models:/` URIs through a real SQLite MLflow registry (set up with the
`Registry.log_run` / `register` / `approve`); ONNX export to the
cache."""

from __future__ import annotations

import helpers_servers as hs
import numpy as np
import pytest
from helpers_eval import make_tiny_checkpoint

from semlayout.directions import DIRECTIONS
from semlayout.errors import SemlayoutError
from semlayout.gate import GateConfig, judge
from semlayout.inference import Translator
from semlayout.registry import Registry

sqlite_tracking_uri, mlflow_template_db = hs.sqlite_tracking_uri, hs.mlflow_template_db


def _metrics() -> dict:
    return {
        "n": 2,
        "split": "test",
        "sem2layout": {"l1": 0.1, "ssim": 0.9, "psnr": 20.0, "iou": 0.9},
        "layout2sem": {"l1": 0.2, "ssim": 0.4, "psnr": 15.0, "iou": 0.5, "ceiling": {"ssim": 0.45}},
    }


@pytest.mark.slow
def test_models_uri_loads_the_registered_checkpoint_and_keeps_the_download_clean(
    sqlite_tracking_uri, tmp_path, monkeypatch
):
    monkeypatch.setenv("SEMLAYOUT_CACHE_DIR", str(tmp_path / "cache"))
    uri = sqlite_tracking_uri
    ckpt = make_tiny_checkpoint(tmp_path / "ckpt", seed=11)
    metrics = _metrics()
    run_id = Registry(uri, create=True).log_run("exp", ckpt, metrics, params={"seed": 0})
    gate = judge(
        metrics, None, GateConfig(floors={"sem2layout": 0.5, "layout2sem": 0.2}, tolerance=0.01)
    )
    version = Registry(uri).register("tiny", run_id, gate)
    Registry(uri).approve("tiny", version, by="tester", reason="test")

    local = Translator.load(ckpt)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 36)).astype(np.uint8) for _ in range(3)]
    for model in (f"models:/tiny/{version}", "models:/tiny@champion"):
        for backend in ("eager", "onnx"):
            tr = Translator.load(model, backend=backend, tracking_uri=uri)
            assert tr.info["from_registry"] and tr.source == model
            for d in DIRECTIONS:
                for a, b in zip(tr.translate(d, images), local.translate(d, images), strict=True):
                    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
            if backend == "onnx":
                downloaded = tr.info["path"]
                onnx_paths = tr.info["onnx"].values()
                # exported into the ONNX cache, never into the downloaded artifact folder
                assert all(str(tmp_path / "cache" / "onnx") in p for p in onnx_paths)
                assert not any(p.startswith(downloaded) for p in onnx_paths)
    with pytest.raises(SemlayoutError, match="nope"):
        Translator.load("models:/tiny@nope", tracking_uri=uri)
