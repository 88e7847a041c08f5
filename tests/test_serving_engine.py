"""InferenceEngine and MicroBatcher: batched results equal one-by-one results, errors are user
errors."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from helpers_serving import make_checkpoint

from semlayout.errors import SemlayoutError
from semlayout.inference import Translator
from semlayout.serving.batcher import ImageResult, MicroBatcher, QueueFull
from semlayout.serving.engine import InferenceEngine, load_model, parse_alias


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "c", seed=4)


def test_micro_batches_give_the_same_outputs_as_single_calls(ckpt):
    engine = InferenceEngine.load(str(ckpt))
    ref = Translator.load(ckpt)
    rng = np.random.default_rng(0)
    jobs = [
        (
            "sem2layout" if i % 3 else "layout2sem",
            rng.integers(0, 256, (40 + 7 * i, 33 + 5 * i), dtype=np.uint8),
        )
        for i in range(12)
    ]
    sizes: list[int] = []

    async def main() -> list:
        b = MicroBatcher(engine, max_batch=4, on_batch=lambda d, n, ms: sizes.append(n))
        b.start()
        try:
            done = await asyncio.gather(*[b.submit_many(d, [img]) for d, img in jobs])
            return [one for (one,) in done]
        finally:
            await b.stop()

    results = asyncio.run(main())
    for (direction, img), res in zip(jobs, results, strict=True):
        assert res.output.shape == img.shape and 1 <= res.batch_size <= 4
        assert np.array_equal(res.output, ref.translate(direction, [img])[0])
        assert res.model.version.startswith("local-")
    assert max(sizes) > 1 and sum(sizes) == len(jobs)  # queued requests shared forward passes


def test_queue_limit_is_a_user_facing_error(ckpt):
    engine = InferenceEngine.load(str(ckpt))

    async def main() -> None:
        b = MicroBatcher(engine, max_queue=2)
        b.start()
        img = np.zeros((16, 16), np.uint8)
        try:
            results = await asyncio.gather(
                *[b.submit_many("sem2layout", [img]) for _ in range(10)], return_exceptions=True
            )
        finally:
            await b.stop()
        assert any(isinstance(r, QueueFull) for r in results)
        assert any(isinstance(r, list) and isinstance(r[0], ImageResult) for r in results)

    asyncio.run(main())


def test_a_batch_is_queued_whole_or_not_at_all(ckpt):
    engine = InferenceEngine.load(str(ckpt))
    sizes: list[int] = []

    async def main() -> None:
        b = MicroBatcher(
            engine, max_batch=8, max_queue=5, on_batch=lambda d, n, ms: sizes.append(n)
        )
        b.start()
        img = np.zeros((16, 16), np.uint8)
        try:
            # the first batch fills 4 of 5 places; the second (3 images) does not fit: refused
            # before any of its images is queued, so none of them is run (or recorded by the API)
            first = asyncio.ensure_future(b.submit_many("sem2layout", [img] * 4))
            await asyncio.sleep(0)
            with pytest.raises(QueueFull, match="3 more would pass the limit of 5"):
                await b.submit_many("sem2layout", [img] * 3)
            assert len(await first) == 4
            assert len(await b.submit_many("layout2sem", [img] * 5)) == 5  # exactly the limit
        finally:
            await b.stop()

    asyncio.run(main())
    assert sum(sizes) == 9, sizes  # 4 + 5 forwards: the refused batch never reached the model


def test_engine_errors_and_forced_reload(ckpt, tmp_path):
    engine = InferenceEngine.load(str(ckpt))
    with pytest.raises(SemlayoutError, match="unknown direction"):
        engine.translate("photo2art", [np.zeros((8, 8), np.uint8)])
    before = engine.current
    res = engine.reload(force=True)
    assert res["changed"] and res["new_version"] == before.version and engine.current is not before
    assert not engine.follows_alias and parse_alias("models:/m@champion") == ("m", "champion")
    with pytest.raises(SemlayoutError, match="no model"):
        load_model("")
    with pytest.raises(SemlayoutError, match="model not found"):
        load_model(str(tmp_path / "missing"))
    with pytest.raises(SemlayoutError, match="cannot resolve"):
        load_model("models:/nothing@champion", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_drift_detectors_come_with_the_model_or_the_override(ckpt, tiny_shards, caplog):
    """No reference registered and no override: no detectors, and a warning says drift checks
    are off (not silently); an override serves every model the engine loads, kept across a
    reload without being rebuilt."""
    from semlayout.monitoring.drift import DriftOptions

    with caplog.at_level("WARNING", logger="semlayout.serving"):
        bare = InferenceEngine.load(str(ckpt))
    assert bare.current.detectors == {} and bare.current.drift_source is None
    assert "drift checks are off" in caplog.text
    engine = InferenceEngine.load(str(ckpt), drift=DriftOptions(override=tiny_shards))
    first = engine.current.detectors
    assert set(first) == {"sem2layout", "layout2sem"}
    assert engine.current.drift_source == f"override {tiny_shards}"
    engine.reload(force=True)
    assert engine.current.detectors is first
