"""A layer's polarity as pooled evidence, through real servers on a real SQLite store and the
real CLI: the `layer` label (query / form, 422 on a bad one), pooling (a stream of one layer
converges and its answers say `pooled`), the admin endpoints (token, bad values, a polarity
the model never learned), persistence across a restart and across two replicas on one store,
drift from the layer's sequential test, and `semlayout predict`'s folder pooling."""

from __future__ import annotations

import csv
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers_serving import (
    aligned_arrays,
    cached_reference,
    drain,
    make_checkpoint,
    running_server,
)
from test_serving_polarity import both_polarities_checkpoint

from semlayout.data.pairs import encode_png
from semlayout.inference import Translator
from semlayout.polarity_layer import CAP, CLIP, CUSUM_H, LayerState
from semlayout.serving.app import create_app
from semlayout.serving.settings import ServeSettings

ADMIN = "layers-admin-token"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return cached_reference(tmp_path_factory)


@pytest.fixture(scope="module")
def model(tmp_path_factory, data):
    return polarity_model(tmp_path_factory.mktemp("layers") / "ckpt", data)


def polarity_model(dest: Path, data: dict) -> dict:
    """A model of both polarities and the SEMs' own evidence under it (the server reads the
    same): two images whose evidence points opposite ways."""
    ckpt = both_polarities_checkpoint(dest)
    sems = aligned_arrays(data["fresh"])[0][:12]
    ev = Translator.load(ckpt).read_evidence(sems)
    pos, neg = int(np.argmax(ev)), int(np.argmin(ev))
    assert ev[pos] > 0.05 and ev[neg] < -0.05, ev  # the random model reads both ways
    return {"ckpt": ckpt, "sems": sems, "ev": ev, "pos": pos, "neg": neg}


def _settings(ckpt: Path, work: Path, **kw) -> ServeSettings:
    return ServeSettings(
        model=str(ckpt),
        monitor_db=work / "monitor.db",
        feedback_dir=work / "feedback",
        poll_interval_s=0,
        admin_token=ADMIN,
        **kw,
    )


def _post(url: str, img: np.ndarray, **params) -> httpx.Response:
    files = {"image": ("x.png", encode_png(img), "image/png")}
    return httpx.post(f"{url}/v1/translate/sem2layout/json", params=params, files=files, timeout=60)


def _layers(url: str) -> dict[str, dict]:
    r = httpx.get(f"{url}/v1/layers", timeout=30)
    assert r.status_code == 200, r.text
    return {row["layer"]: row for row in r.json()}


@pytest.fixture(scope="module")
def served(model, tmp_path_factory):
    work = tmp_path_factory.mktemp("serve-layers")
    app = create_app(_settings(model["ckpt"], work))
    with running_server(app) as url:
        yield app, url


@pytest.fixture(scope="module")
def server(served):
    return served[1]


@pytest.mark.parametrize("bad", ["", "a b", "x" * 65, "../etc", "é"])
def test_a_bad_layer_label_is_a_422(server, model, bad):
    r = _post(server, model["sems"][0], layer=bad)
    assert r.status_code == 422 and "layer" in r.text, r.text
    files = {"image": ("x.png", encode_png(model["sems"][0]), "image/png")}
    r = httpx.post(
        f"{server}/v1/translate/sem2layout",
        params={"layer": "a"}, data={"layer": "b"}, files=files, timeout=60,
    )  # fmt: skip
    assert r.status_code == 422 and "given twice" in r.json()["detail"]


def test_a_layers_stream_converges_and_its_answers_say_pooled(served, model):
    """(A layer settled past CLIP answers in one pass and folds the image's evidence after
    the answer: `drain` waits for it, tests/test_serving_settled.py tests that path.)"""
    app, server = served
    img, e = model["sems"][model["pos"]], float(model["ev"][model["pos"]])
    answers = []
    for _ in range(6):
        answers.append(_post(server, img, layer="conv").json())
        drain(app)
    assert answers[0]["polarity_source"] == "auto" and answers[0]["layer"] == "conv"
    assert {a["polarity_source"] for a in answers[1:]} == {"pooled"}
    margins = [a["polarity_margin"] for a in answers]
    assert margins == sorted(margins) and margins[-1] > margins[0]  # surer image by image
    row = _layers(server)["conv"]
    want = LayerState().fold_all([e] * 6)
    assert row["images"] == 6 and row["pooled_logodds"] == pytest.approx(want.pooled, abs=1e-3)
    assert row["implied"] == 1 and row["configured"] is None
    # the image that reads the other way, alone, is outweighed by its layer once pooled
    other = model["sems"][model["neg"]]
    for _ in range(int(CAP / min(CLIP, e)) + 1):
        _post(server, img, layer="conv")
        drain(app)
    assert _layers(server)["conv"]["pooled_logodds"] == pytest.approx(CAP)
    assert _post(server, other, layer="fresh-one").json()["polarity"] == -1  # alone: dark
    against = _post(server, other, layer="conv").json()
    assert (against["polarity"], against["polarity_source"]) == (1, "pooled")
    # without a label the images pool under `default`
    _post(server, img)
    assert _layers(server)["default"]["images"] >= 1


def test_the_admin_sets_and_clears_a_layers_polarity(served, model, tmp_path):
    app, server = served
    url = f"{server}/v1/layers/adm/polarity"
    assert httpx.put(url, json={"polarity": "dark"}, timeout=30).status_code == 401
    bad = {"Authorization": "Bearer nope"}
    assert httpx.put(url, json={"polarity": "dark"}, headers=bad, timeout=30).status_code == 403
    assert httpx.delete(url, headers=bad, timeout=30).status_code == 403
    r = httpx.put(url, json={"polarity": "grey"}, headers=AUTH, timeout=30)
    assert r.status_code == 422 and "expected one of auto, bright, dark" in r.text
    r = httpx.put(url, json={"polarity": "auto"}, headers=AUTH, timeout=30)
    assert r.status_code == 422 and "bright or dark" in r.text
    r = httpx.put(f"{server}/v1/layers/a%20b/polarity", json={"polarity": "dark"}, headers=AUTH)
    assert r.status_code == 422
    r = httpx.put(url, json={"polarity": "dark"}, headers=AUTH, timeout=30)
    assert r.status_code == 200 and r.json()["configured"] == -1
    img = model["sems"][model["pos"]]  # reads bright; the layer's word is stronger
    done = _post(server, img, layer="adm").json()
    assert (done["polarity"], done["polarity_source"]) == (-1, "layer")
    drain(app)  # one pass in the configured polarity: the evidence is read after the answer
    row = _layers(server)["adm"]
    assert row["configured"] == -1 and row["images"] == 1  # its evidence still pooled
    r = httpx.delete(url, headers=AUTH, timeout=30)
    assert r.status_code == 200 and r.json()["configured"] is None
    assert _post(server, img, layer="adm").json()["polarity_source"] == "pooled"


def test_a_model_that_never_learned_a_polarity_refuses_it_for_a_layer(tmp_path):
    settings = _settings(make_checkpoint(tmp_path / "ckpt"), tmp_path)
    with running_server(create_app(settings)) as url:
        r = httpx.put(f"{url}/v1/layers/x/polarity", json={"polarity": "dark"}, headers=AUTH)
        assert r.status_code == 422 and "learned bright (+1) contrast only" in r.text
        r = httpx.put(f"{url}/v1/layers/x/polarity", json={"polarity": "bright"}, headers=AUTH)
        assert r.status_code == 200
    no_token = _settings(make_checkpoint(tmp_path / "c2"), tmp_path / "w2").model_copy(
        update={"admin_token": None}
    )
    with running_server(create_app(no_token)) as url:
        r = httpx.put(f"{url}/v1/layers/x/polarity", json={"polarity": "bright"})
        assert r.status_code == 503 and "SEMLAYOUT_ADMIN_TOKEN" in r.text


def test_layers_survive_a_restart_and_are_shared_by_two_replicas(model, tmp_path):
    settings = _settings(model["ckpt"], tmp_path)
    img = model["sems"][model["pos"]]
    first = create_app(settings)
    with running_server(first) as url:
        for _ in range(3):
            _post(url, img, layer="keep")
            drain(first)
        httpx.put(f"{url}/v1/layers/set/polarity", json={"polarity": "dark"}, headers=AUTH)
        before = _layers(url)
    app_a, app_b = create_app(settings), create_app(settings)
    with running_server(app_a) as a, running_server(app_b) as b:
        assert _layers(a) == before == _layers(b)  # a restart keeps it
        assert _post(b, img, layer="set").json()["polarity_source"] == "layer"
        # concurrent images of one layer through both replicas: none is lost
        with ThreadPoolExecutor(4) as pool:
            done = list(pool.map(lambda i: _post((a, b)[i % 2], img, layer="keep"), range(12)))
        assert all(r.status_code == 200 for r in done)
        drain(app_a)  # a settled layer's evidence: read after the answers
        drain(app_b)
        assert _layers(a)["keep"]["images"] == 15 == _layers(b)["keep"]["images"]
        want = LayerState().fold_all([float(model["ev"][model["pos"]])] * 15).pooled
        assert _layers(b)["keep"]["pooled_logodds"] == pytest.approx(want, abs=1e-3)


def test_a_layer_whose_images_read_the_other_polarity_drifts(model, data, tmp_path):
    """The layer is configured bright; its images read dark: flagged once the CUSUM of their
    evidence passes CUSUM_H, and from then on; a layer reading its own polarity never is."""
    settings = _settings(model["ckpt"], tmp_path, reference=data["shards"] / "reference_stats.json")
    dark_img, e = model["sems"][model["neg"]], float(model["ev"][model["neg"]])
    bright_img = model["sems"][model["pos"]]
    app = create_app(settings)
    with running_server(app) as url:
        for name in ("flip", "steady"):
            httpx.put(f"{url}/v1/layers/{name}/polarity", json={"polarity": "bright"}, headers=AUTH)
        n = 8 + int(CUSUM_H / min(CLIP, abs(e)))
        flags = []
        for _ in range(n):  # a configured layer answers in one pass: its evidence follows
            answer = _post(url, dark_img, layer="flip").json()
            flags.append(answer["drift"]["worst_feature"] == "polarity")
            drain(app)
        first = int(np.ceil(CUSUM_H / min(CLIP, abs(e)) + 1e-9))  # images until S > H
        assert not any(flags[: first - 1]) and all(flags[first:]), (flags, e)
        steady = [
            _post(url, bright_img, layer="steady").json()["drift"]["worst_feature"]
            for _ in range(n)
        ]
        assert "polarity" not in steady


def _cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "semlayout.cli", *map(str, args)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "predictions.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_predict_reads_a_folder_as_one_layer(model, tmp_path):
    sems = tmp_path / "in"
    sems.mkdir()
    order = [model["pos"], model["neg"], *range(4)]
    for k, i in enumerate(order):
        (sems / f"img{k}.png").write_bytes(encode_png(model["sems"][i]))
    base = ["predict", sems, "--direction", "sem2layout", "--model", model["ckpt"]]
    res = _cli(*base, "--out", tmp_path / "each", "--per-image-polarity")
    assert res.returncode == 0, res.stderr
    each = _rows(tmp_path / "each")
    ev = [int(r["polarity"]) * float(r["polarity_margin"]) for r in each]
    assert {r["polarity_source"] for r in each} == {"auto"}
    # each margin is the image's own evidence, counted at most CLIP
    want_each = [float(np.clip(model["ev"][i], -CLIP, CLIP)) for i in order]
    assert ev == pytest.approx(want_each, abs=1e-3)
    db = tmp_path / "monitor.db"
    for run in (1, 2):
        res = _cli(*base, "--out", tmp_path / f"pooled{run}", "--layer", "L7", "--db", db)
        assert res.returncode == 0, res.stderr
    pooled = _rows(tmp_path / "pooled1")
    want = LayerState().fold_all(ev)
    assert {(r["polarity"], r["polarity_source"], r["layer"]) for r in pooled} == {
        ("+1" if want.pooled >= 0 else "-1", "pooled", "L7")
    }
    assert float(pooled[0]["polarity_margin"]) == pytest.approx(abs(want.pooled), abs=1e-3)
    from semlayout.monitoring.layer_book import LayerBook
    from semlayout.monitoring.store import MonitorStore

    kept = LayerBook(MonitorStore(db)).get("L7")  # both runs pooled into the store's layer
    assert kept.n == 2 * len(order)
    assert kept.pooled == pytest.approx(LayerState().fold_all(ev + ev).pooled, abs=1e-3)
    res = _cli(*base, "--out", tmp_path / "bad", "--layer", "no spaces")
    assert res.returncode == 2 and "--layer" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "bad").exists()
