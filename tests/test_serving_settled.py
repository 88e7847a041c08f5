"""One generator pass when the layer has settled its polarity (issue 20), through real
servers on a real SQLite store: a configured layer and a layer whose pooled evidence is
beyond what one image can move answer `polarity=auto` in one pass (`X-Polarity-Evidence:
deferred`), the image's own evidence is read after the answer (in the deferred thread) and
folded into the layer; a stream that reads the other polarity is flagged in the stored drift
rows (later, not lost) and the layer goes back to the full decision (four passes)."""

from __future__ import annotations

import sqlite3
import threading
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers_serving import cached_reference, drain, running_server
from test_serving_layers import polarity_model

from semlayout.data.pairs import encode_png
from semlayout.monitoring.drift import POLARITY_SCORE
from semlayout.polarity_layer import CAP, CLIP, CUSUM_H, LayerState, clip
from semlayout.serving.app import create_app
from semlayout.serving.settings import ServeSettings

ADMIN = "settled-admin-token"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """test_serving_layers' model (two SEMs reading opposite ways) and its reference data."""
    data = cached_reference(tmp_path_factory)
    return {**polarity_model(tmp_path_factory.mktemp("settled") / "ckpt", data), "data": data}


def _app(model, work: Path, reference: Path | None = None):  # type: ignore[no-untyped-def]
    settings = ServeSettings(
        model=str(model["ckpt"]),
        monitor_db=work / "monitor.db",
        feedback_dir=work / "feedback",
        poll_interval_s=0,
        admin_token=ADMIN,
        reference=reference,
    )
    return create_app(settings)


class Passes:
    """Counts the generator passes of the served model by thread: the request's (batcher)
    and the deferred thread's."""

    def __init__(self, app):  # type: ignore[no-untyped-def]
        self.count: Counter[str] = Counter()
        runners = app.state.svc.engine.current.translator._runners
        for name, run in list(runners.items()):
            runners[name] = self._counting(run)

    def _counting(self, run):  # type: ignore[no-untyped-def]
        def counted(*args):  # type: ignore[no-untyped-def]
            deferred = threading.current_thread().name == "semlayout-deferred"
            self.count["deferred" if deferred else "request"] += 1
            return run(*args)

        return counted

    def take(self) -> Counter[str]:
        out, self.count = self.count, Counter()
        return out


def _post(url: str, img: np.ndarray, **params) -> httpx.Response:
    files = {"image": ("x.png", encode_png(img), "image/png")}
    r = httpx.post(f"{url}/v1/translate/sem2layout", params=params, files=files, timeout=60)
    assert r.status_code == 200, r.text
    return r


STAGES = ["parse", "decode", "before", "model", "forward", "after", "record", "app"]


def _check_server_timing(r: httpx.Response) -> None:
    """The answer says where its time went (`serving.server_timing`): every stage of the
    translate path in order, `app` last and covering the stages that do not overlap."""
    parts = [p.split(";dur=") for p in r.headers["Server-Timing"].split(", ")]
    assert [name for name, _ in parts] == STAGES, parts
    ms = {name: float(dur) for name, dur in parts}
    assert all(v >= 0 for v in ms.values()), ms
    serial = ms["parse"] + ms["before"] + ms["model"] + ms["after"] + ms["record"]
    assert ms["decode"] <= ms["before"], ms  # the uploads are decoded in the first worker hop
    assert ms["forward"] <= ms["app"] and serial <= ms["app"] + 0.05, ms


def _layer(url: str, name: str) -> dict:
    rows = httpx.get(f"{url}/v1/layers", timeout=30).json()
    return next(row for row in rows if row["layer"] == name)


def test_a_configured_layer_answers_in_one_pass_and_reads_the_image_after(model, tmp_path):
    app = _app(model, tmp_path)
    img, e = model["sems"][model["pos"]], float(model["ev"][model["pos"]])
    with running_server(app) as url:
        passes = Passes(app)
        r = _post(url, img, layer="free")  # nothing settled: the image decides, four passes
        drain(app)
        assert passes.take()["request"] == 4  # (the full confidence's forward: deferred)
        assert (r.headers["X-Polarity-Source"], r.headers["X-Polarity-Evidence"]) == (
            "auto",
            "image",
        )
        given = _post(url, img, polarity="bright")  # one pass; its full confidence later
        drain(app)
        passes.take()
        assert "X-Polarity-Evidence" not in given.headers
        httpx.put(f"{url}/v1/layers/cfg/polarity", json={"polarity": "dark"}, headers=AUTH)
        r = _post(url, img, layer="cfg")
        assert r.headers["X-Polarity"] == "-1" and r.headers["X-Polarity-Source"] == "layer"
        assert r.headers["X-Polarity-Evidence"] == "deferred"
        assert "X-Polarity-Margin" not in r.headers  # a configured layer has no margin
        # the inline confidence is there, from the signals a given polarity has
        assert r.headers["X-Confidence-Source"] == "inline"
        assert r.headers["X-Confidence"] == given.headers["X-Confidence"]
        drain(app)
        counted = passes.take()
        # after the answer: the reading's three passes (the answer's own pass reused) and
        # the full confidence's one (its dihedral; the cycle comes from the reading)
        assert counted == {"request": 1, "deferred": 4}, counted
        _check_server_timing(r)
        row = _layer(url, "cfg")  # the image's evidence reached the layer, after the answer
        assert row["images"] == 1 and row["pooled_logodds"] == pytest.approx(clip(e), abs=1e-3)
        body = httpx.post(
            f"{url}/v1/translate/sem2layout/json",
            params={"layer": "cfg"},
            files={"image": ("x.png", encode_png(img), "image/png")},
            timeout=60,
        ).json()
        assert (body["polarity_source"], body["polarity_evidence"]) == ("layer", "deferred")


def test_pooled_evidence_beyond_one_image_settles_and_a_flip_unsettles(model, tmp_path):
    """A layer's pooled evidence past CLIP answers in one pass (margin: the layer's); images
    reading the other way fold in after their answers, and the layer goes back to the full
    decision once it is no longer settled."""
    app = _app(model, tmp_path)
    img, e = model["sems"][model["pos"]], float(model["ev"][model["pos"]])
    other, f = model["sems"][model["neg"]], float(model["ev"][model["neg"]])
    with running_server(app) as url:
        state = LayerState("pool")
        seen = []
        while abs(state.pooled) < CAP:
            settled = abs(state.pooled) > CLIP
            r = _post(url, img, layer="pool")
            drain(app)
            seen.append(r.headers["X-Polarity-Evidence"])
            assert seen[-1] == ("deferred" if settled else "image"), (state, seen)
            if settled:
                assert r.headers["X-Polarity-Source"] == "pooled"
                margin = float(r.headers["X-Polarity-Margin"])
                assert margin == pytest.approx(abs(state.pooled), abs=1e-3)  # the layer's
            state = state.fold(e)
            assert _layer(url, "pool")["pooled_logodds"] == pytest.approx(state.pooled, abs=1e-3)
        assert "deferred" in seen
        # the other way: answered in the layer's polarity while it is settled, then decided
        # image by image again
        for _ in range(200):
            before = state
            r = _post(url, other, layer="pool")
            drain(app)
            state = state.fold(f)
            expected = before.expected()
            settled = abs(before.pooled) > CLIP and not before.flipped(expected)
            assert r.headers["X-Polarity-Evidence"] == ("deferred" if settled else "image")
            if not settled:
                break
        else:
            pytest.fail("the layer never left its settled polarity")
        assert _layer(url, "pool")["images"] == state.n


def test_a_flipped_stream_on_a_settled_layer_is_flagged_in_the_store(model, tmp_path):
    """The layer is configured bright; its images read dark. One-pass answers cannot carry
    the image's verdict, but its stored drift row gets it once the evidence is read (the
    same verdict the full path gives, image by image), and once flagged the layer answers
    with the full decision again: the answers are flagged too. A steady stream never is."""
    app = _app(model, tmp_path, reference=model["data"]["shards"] / "reference_stats.json")
    dark_img, e = model["sems"][model["neg"]], float(model["ev"][model["neg"]])
    bright_img = model["sems"][model["pos"]]
    with running_server(app) as url:
        for name in ("flip", "steady"):
            httpx.put(f"{url}/v1/layers/{name}/polarity", json={"polarity": "bright"}, headers=AUTH)
        n = 8 + int(CUSUM_H / min(CLIP, abs(e)))
        answers = []
        for _ in range(n):
            answers.append(_post(url, dark_img, layer="flip").headers)
            drain(app)
        steady = []
        for _ in range(n):
            steady.append(_post(url, bright_img, layer="steady").headers)
            drain(app)
        rows = _stored_drift(tmp_path / "monitor.db")
    state, want = LayerState("flip", configured=1), []
    for _ in range(n):
        state = state.fold(e)
        want.append(state.flipped(1))
    first = want.index(True)  # the image whose evidence passes CUSUM_H
    flagged = [rows[h["X-Prediction-Id"]][1] >= POLARITY_SCORE for h in answers]
    assert flagged == want  # every verdict of the full path, in the store
    assert all(rows[h["X-Prediction-Id"]][0] == 1 for h in answers[first:])
    evidence = [h["X-Polarity-Evidence"] for h in answers]
    assert evidence[: first + 1] == ["deferred"] * (first + 1)  # settled until then
    assert evidence[first + 1 :] == ["image"] * (n - first - 1)  # flipped: full decision
    assert all(float(h["X-Drift-Score"]) >= POLARITY_SCORE for h in answers[first + 1 :])
    assert float(answers[first]["X-Drift-Score"]) < POLARITY_SCORE  # answered before known
    assert {h["X-Polarity-Evidence"] for h in steady} == {"deferred"}
    assert all(rows[h["X-Prediction-Id"]][1] < POLARITY_SCORE for h in steady)


def _stored_drift(db: Path) -> dict[str, tuple[int, float]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT prediction_id, drifted, score FROM drift_events").fetchall()
    return {pid: (drifted, score) for pid, drifted, score in rows}
