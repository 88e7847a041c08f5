"""backend="auto": which backends are candidates, that ONNX Runtime matches eager within its
bound (and bf16 within its stated one where the CPU has bf16 units), that a backend whose
outputs differ is never chosen, and that the choice is the fastest eligible one measured."""

from __future__ import annotations

import numpy as np
import pytest
from helpers_serving import make_checkpoint

from semlayout.backend_probe import BOUNDS, Bound, candidates, choose, native_bf16, probe_batch
from semlayout.directions import DIRECTIONS
from semlayout.inference import Translator


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("probe") / "c", seed=5, image_size=64)


def test_bf16_is_a_candidate_only_with_native_units() -> None:
    assert native_bf16({"avx512_bf16"}) and native_bf16({"amx_bf16", "avx2"})
    assert not native_bf16({"avx2", "avx512f"})
    assert "bf16" not in candidates({"avx2", "avx512f"})
    assert candidates({"amx_bf16"}) == ["eager", "onnx", "bf16"]


def test_onnx_matches_eager_within_its_bound(ckpt) -> None:
    eager, onnx = Translator.load(ckpt), Translator.load(ckpt, backend="onnx")
    for d, batch in probe_batch(eager.image_size).items():
        ok, seen = BOUNDS["onnx"].judge(onnx.run_batch(d, batch), eager.run_batch(d, batch))
        assert ok and seen["max_abs"] <= 1e-3, (d, seen)


@pytest.mark.skipif(not native_bf16(), reason="this CPU has no bf16 units: bf16 is not offered")
def test_bf16_stays_within_the_stated_bound(ckpt) -> None:
    eager, bf16 = Translator.load(ckpt), Translator.load(ckpt, backend="bf16")
    for d, batch in probe_batch(eager.image_size).items():
        ok, seen = BOUNDS["bf16"].judge(bf16.run_batch(d, batch), eager.run_batch(d, batch))
        assert ok and seen["max_abs"] > 0, (d, seen)  # within the bound, and bf16 really ran


def test_auto_picks_the_fastest_backend_that_matches(ckpt) -> None:
    tr = Translator.load(ckpt, backend="auto")
    probe = tr.info["backend_probe"]
    assert probe["chosen"] == tr.backend and tr.backend in candidates()
    report = probe["candidates"]
    assert set(report) == set(candidates())
    timed = {n: r["batch1_ms"] for n, r in report.items() if "batch1_ms" in r}
    assert tr.backend == min(timed, key=lambda n: timed[n])
    assert all(report[n]["matches_eager"] for n in timed if n != "eager")
    eager = Translator.load(ckpt)
    for d, batch in probe_batch(eager.image_size).items():  # the chosen one answers as eager
        np.testing.assert_allclose(tr.run_batch(d, batch), eager.run_batch(d, batch), atol=0.1)


def test_a_backend_that_does_not_match_is_never_chosen(ckpt, tmp_path, monkeypatch) -> None:
    other = make_checkpoint(tmp_path / "other", seed=6, image_size=64)  # other weights
    wrong = Translator.load(other, backend="onnx")
    chosen, report = choose({"eager": Translator.load(ckpt), "onnx": wrong}, rounds=2)
    assert chosen == "eager" and report["onnx"]["matches_eager"] is False
    assert "batch1_ms" not in report["onnx"]
    assert report["onnx"]["difference"][DIRECTIONS[0]]["max_abs"] > 1e-3
    # and a bound is a bound: nothing passes a zero tolerance unless it is bit-identical
    monkeypatch.setitem(BOUNDS, "onnx", Bound(max_abs=0.0))
    onnx = Translator.load(ckpt, backend="onnx")
    chosen, report = choose({"eager": Translator.load(ckpt), "onnx": onnx}, rounds=2)
    assert chosen == "eager" or report["onnx"]["difference"][DIRECTIONS[0]]["max_abs"] == 0
