"""Whole fields through the product: `Translator.translate` (both directions, one polarity per
field), `semlayout predict` and the API against a real server. A field equals its crops
translated alone wherever one tile alone covers it; the limit is its own setting, refused with
a reason before any work."""

from __future__ import annotations

import subprocess
import sys

import cv2
import httpx
import numpy as np
import pytest
from helpers_serving import make_checkpoint, running_server
from test_serving_polarity import both_polarities_checkpoint

from semlayout.data.pairs import encode_png
from semlayout.errors import SemlayoutError
from semlayout.inference import Translator
from semlayout.polarity import PolarityChoice
from semlayout.polarity_layer import LayerPrior, LayerState
from semlayout.predict_folder import translate_folder
from semlayout.serving.app import create_app
from semlayout.serving.settings import ServeSettings
from semlayout.tiling import OVERLAP, SINGLE_MAX, WINDOW, field_reading, is_field, windows


def _field(shape: tuple[int, int], seed: int = 1) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    lines = ((xx // 12) % 2 == 0).astype(np.uint8) * 150
    vias = (((yy // 20) % 3 == 0) & ((xx // 20) % 4 == 0)).astype(np.uint8) * 80
    noise = np.random.default_rng(seed).normal(0, 6, shape)
    return np.clip(30 + lines + vias + noise, 0, 255).astype(np.uint8)


def _layout_field(shape: tuple[int, int]) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.where(((xx // 16) % 2 == 0) | ((yy // 40) % 5 == 0), 255, 0).astype(np.uint8)


def _alone(shape: tuple[int, int]) -> np.ndarray:
    """How many windows cover each pixel."""
    count = np.zeros(shape, int)
    for r, c in windows(shape, WINDOW, OVERLAP):
        count[r : r + WINDOW, c : c + WINDOW] += 1
    return count


@pytest.fixture(scope="module")
def translator(tmp_path_factory: pytest.TempPathFactory) -> Translator:
    return Translator.load(make_checkpoint(tmp_path_factory.mktemp("f") / "c", seed=4))


def test_which_images_are_fields() -> None:
    assert not is_field((304, 304)) and not is_field((250, 250))  # what the models learned
    assert is_field((SINGLE_MAX + 1, 250)) and is_field((2048, 2048))
    assert not is_field((2000, 100))  # a strip thinner than a window stays one image


@pytest.mark.parametrize(
    ("direction", "make"), [("sem2layout", _field), ("layout2sem", _layout_field)]
)
def test_a_field_equals_its_crops_where_one_tile_covers_it(translator, direction, make) -> None:
    img = make((611, 733))
    [out] = translator.translate(direction, [img], batch_size=5)
    assert out.shape == img.shape and out.dtype == np.uint8
    count = _alone(img.shape)
    for r, c in windows(img.shape, WINDOW, OVERLAP):
        crop = img[r : r + WINDOW, c : c + WINDOW]
        [alone] = translator.translate(direction, [crop])  # a 250 px image: one window
        own = count[r : r + WINDOW, c : c + WINDOW] == 1
        assert own.sum() > 0
        diff = np.abs(out[r : r + WINDOW, c : c + WINDOW].astype(int) - alone.astype(int))
        # the same float numbers quantised once in both: at most a rounding apart
        assert diff[own].max() <= 1, (r, c, diff[own].max())


def test_no_seam_in_a_translated_field(translator) -> None:
    """On a field with no structure along its columns (one row repeated, under a brightness
    gradient), every step between consecutive output rows is the network's own texture: the
    rows at tile borders are no rougher than the rest. Pasting the tiles without the blend
    leaves an edge there (the U-Net's zero padding sees each window's border)."""
    row = _field((1, 700))[0]
    ramp = np.linspace(0, 80, 620)[:, None].astype(int)
    img = np.clip(np.repeat(row[None], 620, axis=0).astype(int) + ramp, 0, 255).astype(np.uint8)
    [out] = translator.translate("sem2layout", [img])
    hard = np.zeros(img.shape, np.uint8)
    for r, c in windows(img.shape, WINDOW, OVERLAP):
        [t] = translator.translate("sem2layout", [img[r : r + WINDOW, c : c + WINDOW]])
        hard[r : r + WINDOW, c : c + WINDOW] = t

    def steps(f: np.ndarray) -> np.ndarray:  # mean |step| from row i to row i + 1
        return np.abs(np.diff(f.astype(float), axis=0)).mean(axis=1)

    seams = sorted({r for r, _ in windows(img.shape, WINDOW, OVERLAP)} - {0})
    assert seams  # the field has tile borders across its rows
    near = np.zeros(len(steps(out)), bool)
    for s in seams:
        near[s - 3 : s + 3] = True
    interior = steps(hard)[~near].max()  # the texture of single windows, away from borders
    assert steps(out).max() <= 1.25 * interior + 0.05, (steps(out).max(), interior)
    # the check can fail: without the blend the tile borders are edges
    assert steps(hard)[near].max() > 1.8 * steps(out).max()


def test_a_field_takes_one_polarity_and_the_limit_is_checked_first(tmp_path) -> None:
    tr = Translator.load(both_polarities_checkpoint(tmp_path / "both"))
    img = _field((520, 480))
    done = tr.translate_detailed("sem2layout", [img, img[:250, :250]])
    assert done[0].output.shape == img.shape and done[0].decision.source == "auto"
    assert done[0].decision.margin is not None and done[0].decision.evidence is not None
    dark = tr.translate_detailed("sem2layout", [img], polarity="dark")[0]
    bright = tr.translate_detailed("sem2layout", [img], polarity="bright")[0]
    assert (dark.decision.polarity, bright.decision.polarity) == (-1, 1)
    auto = done[0].output
    assert np.array_equal(auto, dark.output if done[0].decision.polarity < 0 else bright.output)
    with pytest.raises(SemlayoutError, match="600 px limit"):
        tr.translate("sem2layout", [img[:250, :250], _field((300, 700))], max_field_side=600)
    with pytest.raises(SemlayoutError, match="binarize applies to sem2layout"):
        tr.translate("layout2sem", [img], binarize=True)


def test_a_field_in_a_folder_is_read_by_its_windows_and_takes_the_layers_word(tmp_path) -> None:
    tr = Translator.load(both_polarities_checkpoint(tmp_path / "both"))
    img = _field((520, 480))
    crop = img[:250, :250]
    ev = tr.read_evidence([crop, img], batch_size=4)
    assert ev[0] == pytest.approx(tr.read_evidence([crop])[0])
    assert ev[1] == pytest.approx(field_reading(tr, img, 4)[0])
    squeezed = cv2.resize(img, (250, 250), interpolation=cv2.INTER_AREA)
    assert ev[1] != pytest.approx(tr.read_evidence([squeezed])[0])  # not the field downsampled
    # the folder is one layer: the field's reading is pooled with the crop's
    done, after = translate_folder(
        tr, "sem2layout", [crop, img], PolarityChoice.auto, LayerState(), batch_size=4
    )
    assert [t.decision.source for t in done] == ["pooled", "pooled"] and after.n == 2
    assert done[1].output.shape == img.shape
    assert {t.decision.polarity for t in done} == {-1 if after.pooled < 0 else 1}
    # a configured layer polarity decides a field as it decides one image
    for configured in (1, -1):
        got = tr.translate_detailed("sem2layout", [img], prior=LayerPrior(configured=configured))
        assert (got[0].decision.polarity, got[0].decision.source) == (configured, "layer")
    with pytest.raises(SemlayoutError, match="600 px limit"):
        translate_folder(
            tr,
            "sem2layout",
            [crop, _field((300, 700))],
            PolarityChoice.auto,
            LayerState(),
            max_field_side=600,
        )


def _cli(*args: object) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "semlayout.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_predict_translates_fields_and_refuses_one_over_the_limit(tmp_path, translator) -> None:
    ckpt = make_checkpoint(tmp_path / "ckpt", seed=4)
    src = tmp_path / "in"
    src.mkdir()
    field, crop = _field((700, 560)), _field((250, 250), seed=2)
    (src / "field.png").write_bytes(encode_png(field))
    (src / "crop.png").write_bytes(encode_png(crop))
    base = ["predict", src, "--model", ckpt, "--direction", "sem2layout", "--binarize"]
    res = _cli(*base, "--out", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    out = cv2.imread(str(tmp_path / "out" / "field.png"), cv2.IMREAD_UNCHANGED)
    assert out.shape == field.shape and set(np.unique(out)) <= {0, 255}
    expect = translator.translate("sem2layout", [field], binarize=True)[0]
    assert np.array_equal(out, expect)
    res = _cli(*base, "--out", tmp_path / "refused", "--max-field-side", "600")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.startswith("error: field.png: ") and "600 px limit" in res.stderr
    assert not (tmp_path / "refused").exists()


def test_the_api_translates_a_field_and_refuses_one_over_its_own_limit(tmp_path) -> None:
    ckpt = make_checkpoint(tmp_path / "ckpt", seed=4)
    settings = ServeSettings(
        model=str(ckpt),
        monitor_db=tmp_path / "m.db",
        feedback_uri=tmp_path / "fb",
        poll_interval_s=0,
        max_field_side=1024,
    )
    tr = Translator.load(ckpt)
    field = _field((1024, 900))
    with running_server(create_app(settings)) as url:
        r = httpx.post(
            f"{url}/v1/translate/layout2sem",
            files={"image": ("f.png", encode_png(_layout_field((1024, 900))), "image/png")},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        got = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(got, tr.translate("layout2sem", [_layout_field((1024, 900))])[0])
        r = httpx.post(
            f"{url}/v1/translate/sem2layout/json",
            files={"image": ("f.png", encode_png(field), "image/png")},
            timeout=120,
        )
        assert r.status_code == 200 and (r.json()["width"], r.json()["height"]) == (900, 1024)
        r = httpx.post(
            f"{url}/v1/translate/sem2layout",
            files={"image": ("f.png", encode_png(_field((400, 1100))), "image/png")},
            timeout=120,
        )
        assert r.status_code == 422 and "1024 px limit" in r.json()["detail"], r.text
        summary = httpx.get(f"{url}/v1/monitoring/summary", timeout=30).json()
        assert summary["inference"]["requests_by_direction"] == {"layout2sem": 1, "sem2layout": 1}


def test_the_input_batch_is_preprocess_exactly_and_reused(translator) -> None:
    rng = np.random.default_rng(9)
    imgs = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((250, 250), (32, 32))]
    first = translator.input_batch(imgs)
    expect = np.stack([translator.preprocess(im) for im in imgs])[:, None]
    assert first.dtype == np.float32 and np.array_equal(first, expect)  # bit for bit
    again = translator.input_batch(imgs[:1])
    assert np.shares_memory(first, again)  # the same buffer: no allocation per request
