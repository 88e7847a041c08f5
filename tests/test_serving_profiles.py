"""Issue 21: the API's `layer` label selects the served model's tool / layer profile, through
real uvicorn servers on a real SQLite monitor store: the answer says which profile answered
(`X-Profile`, JSON `profile`) on every translate endpoint and equals `Translator.load(...,
profile=...)`'s; an unknown layer gets the shared network; concurrent requests of different
profiles are never mixed in one forward; the predictions record the profile and the summary
slices by it; the ONNX backend (shared network only) says so at start-up and answers `none`."""

from __future__ import annotations

import base64
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from helpers_serving import running_server
from test_profiles import _film_cfg
from test_serving_polarity import _settings

from semlayout.config import apply_overrides
from semlayout.data.pairs import encode_png
from semlayout.inference import Translator
from semlayout.serving.app import create_app

PROFILE = "tool-b"
TOKEN = "profiles-api-token"


def decode_png(data: bytes) -> np.ndarray:
    import cv2

    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def profile_checkpoint(dest: Path) -> Path:
    """A tiny film model that learned profile `PROFILE` (its rows set away from zero: what a
    profile fine-tune changes; `tests/test_profiles.py` trains one for real)."""
    from semlayout.train.checkpoint import build_networks, save_checkpoint

    cfg = apply_overrides(_film_cfg([PROFILE]), {"generator.profile_adapter_rank": 2})
    torch.manual_seed(0)
    nets = build_networks(cfg)
    with torch.no_grad():
        for name in ("G_A", "G_B"):
            for key, p in nets[name].named_parameters():
                if key.startswith(("profile_down.", "profile_up.", "profile_adapt.")):
                    p.add_(torch.randn_like(p) * 0.5)
    return Path(save_checkpoint(dest, cfg, nets, step=0, epoch=0))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return profile_checkpoint(tmp_path_factory.mktemp("profile-model") / "ckpt")


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (40, 48), dtype=np.uint8) for _ in range(4)]


@pytest.fixture(scope="module")
def served(ckpt, tmp_path_factory):
    work = tmp_path_factory.mktemp("serve-profiles")
    # eager: answers compared byte for byte (auto may pick bf16, within a grey level)
    settings = _settings(ckpt, work, backend="eager", api_token=TOKEN)
    with running_server(create_app(settings)) as url:
        yield url, work / "monitor.db"


def _png(url: str, img: np.ndarray, **params) -> httpx.Response:
    files = {"image": ("x.png", encode_png(img), "image/png")}
    return httpx.post(f"{url}/v1/translate/sem2layout", params=params, files=files, timeout=60)


def _expected(ckpt: Path, imgs: list[np.ndarray], profile: str | None) -> list[np.ndarray]:
    tr = Translator.load(ckpt, profile=profile)
    return tr.translate("sem2layout", imgs, polarity="bright")


def test_the_layer_label_selects_the_learned_profile_on_every_endpoint(served, ckpt, images):
    url, _ = served
    img = images[0]
    [shared] = _expected(ckpt, [img], None)
    [tool] = _expected(ckpt, [img], PROFILE)
    assert not np.array_equal(shared, tool)  # the profile really answers differently

    r = _png(url, img, layer=PROFILE, polarity="bright")
    assert r.status_code == 200, r.text
    assert r.headers["X-Profile"] == PROFILE and r.headers["X-Layer"] == PROFILE
    assert np.array_equal(decode_png(r.content), tool)

    r = _png(url, img, layer=PROFILE, polarity="bright", confidence="full")
    assert r.status_code == 200 and r.headers["X-Confidence-Source"] == "full"
    assert r.headers["X-Profile"] == PROFILE and np.array_equal(decode_png(r.content), tool)

    r = _png(url, img, polarity="bright")  # no label: layer "default", no such profile
    assert r.status_code == 200 and r.headers["X-Profile"] == "none"
    assert np.array_equal(decode_png(r.content), shared)

    files = {"image": ("x.png", encode_png(img), "image/png")}
    r = httpx.post(
        f"{url}/v1/translate/sem2layout/json",
        data={"layer": PROFILE, "polarity": "bright"},  # the form fields work too
        files=files,
        timeout=60,
    )
    body = r.json()
    assert r.status_code == 200 and body["profile"] == PROFILE and body["layer"] == PROFILE
    assert np.array_equal(decode_png(base64.b64decode(body["image_png_base64"])), tool)

    r = httpx.post(
        f"{url}/v1/translate/sem2layout/json",
        params={"layer": "another-layer", "polarity": "bright"},
        files=files,
        timeout=60,
    )
    assert r.status_code == 200 and r.json()["profile"] is None  # unknown: the shared network
    assert np.array_equal(decode_png(base64.b64decode(r.json()["image_png_base64"])), shared)

    batch = [("images", (f"{i}.png", encode_png(im), "image/png")) for i, im in enumerate(images)]
    r = httpx.post(
        f"{url}/v1/translate/sem2layout/batch",
        params={"layer": PROFILE, "polarity": "bright"},
        files=batch,
        timeout=60,
    )
    assert r.status_code == 200, r.text
    want = _expected(ckpt, images, PROFILE)
    for row, exp in zip(r.json(), want, strict=True):
        assert row["profile"] == PROFILE
        assert np.array_equal(decode_png(base64.b64decode(row["image_png_base64"])), exp)


def test_layout2sem_answers_with_the_profile_too(served, ckpt, images):
    url, _ = served
    lay = np.where(images[1] > 128, 255, 0).astype(np.uint8)
    files = {"image": ("x.png", encode_png(lay), "image/png")}
    r = httpx.post(
        f"{url}/v1/translate/layout2sem",
        params={"layer": PROFILE, "polarity": "bright"},
        files=files,
        timeout=60,
    )
    assert r.status_code == 200 and r.headers["X-Profile"] == PROFILE
    [want] = Translator.load(ckpt, profile=PROFILE).translate(
        "layout2sem", [lay], polarity="bright"
    )
    assert np.array_equal(decode_png(r.content), want)


def test_concurrent_requests_of_different_profiles_are_never_mixed(served, ckpt, images):
    url, _ = served
    jobs = [(im, lab) for im in images for lab in (PROFILE, None, PROFILE, "other")]
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(
                lambda job: _png(
                    url, job[0], polarity="bright", **({"layer": job[1]} if job[1] else {})
                ),
                jobs,
            )
        )
    want = {
        lab: _expected(ckpt, images, lab if lab == PROFILE else None) for lab in (PROFILE, None)
    }
    for (im, lab), r in zip(jobs, answers, strict=True):
        i = next(k for k, x in enumerate(images) if x is im)
        used = PROFILE if lab == PROFILE else None
        assert r.status_code == 200, r.text
        assert r.headers["X-Profile"] == (used or "none")
        assert np.array_equal(decode_png(r.content), want[used][i])


def test_a_bad_layer_label_is_still_a_422(served, images):
    url, _ = served
    r = _png(url, images[0], layer="no spaces")
    assert r.status_code == 422 and "layer" in r.text


def test_predictions_record_the_profile_and_the_summary_slices_by_it(served, images):
    url, db = served
    before = httpx.get(f"{url}/v1/monitoring/summary", timeout=30).json()["profiles"]
    n_tool = before["profiles"].get(PROFILE, {}).get("n", 0)
    n_none = before["profiles"].get("none", {}).get("n", 0)
    for lab in (PROFILE, PROFILE, "x-layer"):
        assert _png(url, images[2], layer=lab, polarity="bright").status_code == 200
    summary = httpx.get(f"{url}/v1/monitoring/summary", timeout=30).json()["profiles"]
    assert summary["served"] == [PROFILE]
    assert summary["profiles"][PROFILE]["n"] == n_tool + 2
    assert summary["profiles"]["none"]["n"] == n_none + 1
    assert summary["profiles"][PROFILE]["directions"]["sem2layout"]["with_truth"] == 0
    # the quality per profile: a ground truth for one profile prediction (its own output:
    # SSIM 1) and one for a shared-network prediction (its inverse: SSIM far lower)
    truths = {}
    for lab in (PROFILE, "x-layer"):
        files = {"image": ("x.png", encode_png(images[3]), "image/png")}
        r = httpx.post(
            f"{url}/v1/translate/sem2layout/json",
            params={"layer": lab, "polarity": "bright", "binarize": "true"},
            files=files,
            timeout=60,
        ).json()
        out = decode_png(base64.b64decode(r["image_png_base64"]))
        truth = out if lab == PROFILE else 255 - out
        g = httpx.post(
            f"{url}/v1/ground-truth/{r['prediction_id']}",
            files={"image": ("t.png", encode_png(truth), "image/png")},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=60,
        )
        assert g.status_code == 200, g.text
        truths[lab] = g.json()["metrics"]["ssim"]
    summary = httpx.get(f"{url}/v1/monitoring/summary", timeout=30).json()["profiles"]
    tool = summary["profiles"][PROFILE]["directions"]["sem2layout"]
    shared = summary["profiles"]["none"]["directions"]["sem2layout"]
    assert tool["with_truth"] == 1 and tool["ssim"] == pytest.approx(truths[PROFILE])
    assert shared["with_truth"] == 1 and shared["ssim"] == pytest.approx(truths["x-layer"])
    assert truths[PROFILE] > truths["x-layer"]
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT profile, COUNT(*) FROM predictions GROUP BY profile").fetchall()
    counts = dict(rows)
    assert counts[PROFILE] == summary["profiles"][PROFILE]["n"]
    assert counts[None] == summary["profiles"]["none"]["n"]


def test_readyz_names_the_served_profiles(served):
    url, _ = served
    body = httpx.get(f"{url}/readyz", timeout=30).json()
    assert body["profiles"] == [PROFILE] and body["profile_note"] is None


def test_the_onnx_backend_says_it_serves_the_shared_network_only(ckpt, images, tmp_path):
    with running_server(create_app(_settings(ckpt, tmp_path, backend="onnx"))) as url:
        body = httpx.get(f"{url}/readyz", timeout=30).json()
        assert body["profiles"] == [] and "shared network only" in body["profile_note"]
        r = _png(url, images[0], layer=PROFILE, polarity="bright")
        assert r.status_code == 200 and r.headers["X-Profile"] == "none"
        [shared] = _expected(ckpt, [images[0]], None)
        got = decode_png(r.content).astype(int)
        assert np.abs(got - shared.astype(int)).max() <= 1  # ONNX vs eager: a grey level


def test_auto_picks_a_backend_that_serves_the_profiles(ckpt):
    tr = Translator.load(ckpt, backend="auto")
    assert tr.backend != "onnx" and tr.eager is not None
    from semlayout.inference_profiles import profile_translators

    views = profile_translators(tr)
    assert list(views) == [PROFILE]
    assert views[PROFILE].eager is tr.eager  # one set of weights: views over the same nets
    assert views[PROFILE].info["profile"] == PROFILE and tr.info["profile"] is None


def test_the_full_confidence_runs_the_profile_that_answered(served, ckpt, images):
    """The full confidence's own forwards (cycle, dihedral) use the answering profile: the
    stored signals equal `assess` with the profile's translator, not the shared network's."""
    import json

    from semlayout.confidence import assess
    from semlayout.polarity_auto import PolarityDecision

    url, db = served
    img = images[1]
    got = {}
    for lab in (PROFILE, "x-layer"):
        r = httpx.post(
            f"{url}/v1/translate/sem2layout/json",
            params={"layer": lab, "polarity": "bright", "confidence": "full"},
            files={"image": ("x.png", encode_png(img), "image/png")},
            timeout=60,
        ).json()
        with sqlite3.connect(db) as conn:
            [(sig,)] = conn.execute(
                "SELECT confidence_signals FROM predictions WHERE id = ?", (r["prediction_id"],)
            ).fetchall()
        got[lab] = json.loads(sig)
    decision = PolarityDecision(1, "given")
    for lab, profile in ((PROFILE, PROFILE), ("x-layer", None)):
        tr = Translator.load(ckpt, profile=profile)
        [grey] = tr.translate("sem2layout", [img], polarity="bright")
        [want] = assess(tr, None, "sem2layout", [img], [grey], [decision], "full")
        assert got[lab] == pytest.approx(want.signals), lab
    assert got[PROFILE] != got["x-layer"]
