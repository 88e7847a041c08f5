"""Translator: the resize/normalise pipeline, eager vs direct forward, ONNX vs eager, errors,
threads."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
import torch
from helpers_eval import make_tiny_checkpoint

from semlayout.config import config_from_dict
from semlayout.directions import DIRECTIONS
from semlayout.errors import SemlayoutError
from semlayout.inference import Translator
from semlayout.inference_backends import onnx_files
from semlayout.train.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("inf") / "ckpt")


def _identity_translator(size: int, fit: str = "threshold") -> Translator:
    runners = {d: (lambda b, _pol: b.copy()) for d in DIRECTIONS}
    cfg = config_from_dict({"layout_fit": {"method": fit}})
    return Translator(runners, config=cfg, image_size=size, source="identity", backend="test")


def test_pipeline_round_trips_at_model_size_and_matches_cv2_when_resized():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (32, 32)).astype(np.uint8)
    tr = _identity_translator(32)
    assert np.array_equal(tr.translate("layout2sem", [img])[0], img)  # x/127.5-1 and back is exact
    big = rng.integers(0, 256, (50, 70)).astype(np.uint8)
    down = cv2.resize(big, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32) / 127.5 - 1
    up = cv2.resize(down, (70, 50), interpolation=cv2.INTER_LINEAR)
    expected = np.clip(np.rint((up + 1) * 127.5), 0, 255).astype(np.uint8)
    out = tr.translate("layout2sem", [big])[0]
    assert out.shape == (50, 70) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1
    binary = tr.translate("sem2layout", [big], binarize=True)[0]
    assert set(np.unique(binary)) <= {0, 255}
    assert np.array_equal(binary, np.where(up > 0, 255, 0).astype(np.uint8))
    # the checkpoint's layout_fit decides what binarize returns: the Manhattan fit squares a blob
    blob = np.zeros((32, 32), np.uint8)
    cv2.circle(blob, (16, 16), 6, 255, -1)
    square = _identity_translator(32, "manhattan").translate("sem2layout", [blob], binarize=True)[0]
    ys, xs = np.nonzero(square)
    assert square[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].all()  # filled rectangle
    assert not np.array_equal(
        square, _identity_translator(32).translate("sem2layout", [blob], binarize=True)[0]
    )


def test_eager_matches_a_direct_forward_of_the_generators(ckpt):
    tr = Translator.load(ckpt)
    assert tr.image_size == 32 and tr.backend == "eager" and tr.info["step"] == 3
    _, nets, _ = load_checkpoint(ckpt)
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 256, (32, 32)).astype(np.uint8) for _ in range(5)]
    x = torch.from_numpy(np.stack(imgs)[:, None].astype(np.float32) / 127.5 - 1)
    for direction, net in (("sem2layout", "G_A"), ("layout2sem", "G_B")):
        with torch.no_grad():
            ref = nets[net].eval()(x)[:, 0].numpy()
        ref_u8 = np.clip(np.rint((ref + 1) * 127.5), 0, 255).astype(np.uint8)
        got = tr.translate(direction, imgs, batch_size=2)  # batching must not change results
        assert len(got) == 5
        for g, r in zip(got, ref_u8, strict=True):
            assert np.abs(g.astype(int) - r.astype(int)).max() <= 1
    # the two directions use different generators
    assert not np.array_equal(
        tr.translate("sem2layout", imgs[:1])[0], tr.translate("layout2sem", imgs[:1])[0]
    )


def test_bf16_backend_stays_within_a_grey_level_of_fp32(ckpt):
    eager, bf16 = Translator.load(ckpt), Translator.load(ckpt, backend="bf16")
    assert bf16.backend == "bf16"
    rng = np.random.default_rng(2)
    batch = rng.uniform(-1, 1, (3, 1, 32, 32)).astype(np.float32)
    for d in DIRECTIONS:
        ref, got = eager.run_batch(d, batch), bf16.run_batch(d, batch)
        assert got.dtype == np.float32 and got.shape == ref.shape
        assert 0 < np.abs(got - ref).max() < 2 / 127.5  # bf16 really ran, and under 2 grey levels


def test_onnx_matches_eager_and_exports_into_the_local_checkpoint(ckpt):
    eager = Translator.load(ckpt)
    onnx = Translator.load(ckpt, backend="onnx")
    for d in DIRECTIONS:
        assert (ckpt / f"{d}.onnx").is_file()
    rng = np.random.default_rng(2)
    batch = rng.uniform(-1, 1, (3, 1, 32, 32)).astype(np.float32)
    for d in DIRECTIONS:
        np.testing.assert_allclose(onnx.run_batch(d, batch), eager.run_batch(d, batch), atol=1e-4)
        # dynamic batch axis: batch 1 and 5 work too
        assert onnx.run_batch(d, batch[:1]).shape == (1, 1, 32, 32)
    imgs = [rng.integers(0, 256, (40, 29)).astype(np.uint8) for _ in range(5)]
    for d in DIRECTIONS:
        for a, b in zip(onnx.translate(d, imgs), eager.translate(d, imgs), strict=True):
            assert a.shape == (40, 29) and np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_onnx_for_a_registry_folder_goes_to_the_cache_and_leaves_the_folder_alone(tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path / "downloaded", seed=5)
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in ckpt.iterdir()}
    _, nets, _ = load_checkpoint(ckpt)
    files = onnx_files(ckpt, registry=True, cache_dir=tmp_path / "cache", nets=nets, size=32)
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in ckpt.iterdir()}
    assert before == after
    for d in DIRECTIONS:
        assert files[d].is_file() and (tmp_path / "cache") in files[d].parents
    # second call reuses the cached export
    stamp = files["sem2layout"].stat().st_mtime_ns
    again = onnx_files(ckpt, registry=True, cache_dir=tmp_path / "cache", nets=nets, size=32)
    assert again["sem2layout"].stat().st_mtime_ns == stamp


def test_user_errors(ckpt, tmp_path):
    tr = Translator.load(ckpt)
    img = np.zeros((32, 32), np.uint8)
    with pytest.raises(SemlayoutError, match="unknown direction 'sem2sem'"):
        tr.translate("sem2sem", [img])
    with pytest.raises(SemlayoutError, match="uint16"):
        tr.translate("sem2layout", [img.astype(np.uint16)])
    with pytest.raises(SemlayoutError, match=r"shape \(32, 32, 3\)"):
        tr.translate("sem2layout", [np.zeros((32, 32, 3), np.uint8)])
    with pytest.raises(SemlayoutError, match="non-empty list"):
        tr.translate("sem2layout", [])
    with pytest.raises(SemlayoutError, match="binarize"):
        tr.translate("layout2sem", [img], binarize=True)
    with pytest.raises(SemlayoutError, match="unknown backend 'tensorrt'"):
        Translator.load(ckpt, backend="tensorrt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SemlayoutError, match="not a checkpoint"):
        Translator.load(tmp_path / "empty")


@pytest.mark.parametrize("backend", ["eager", "onnx"])
def test_concurrent_calls_give_the_sequential_results(ckpt, backend):
    tr = Translator.load(ckpt, backend=backend)
    rng = np.random.default_rng(3)
    jobs = [
        (DIRECTIONS[i % 2], [rng.integers(0, 256, (32 + i, 30)).astype(np.uint8)])
        for i in range(16)
    ]
    sequential = [tr.translate(d, imgs)[0] for d, imgs in jobs]
    with ThreadPoolExecutor(max_workers=6) as pool:
        concurrent = list(pool.map(lambda job: tr.translate(job[0], job[1])[0], jobs))
    for a, b in zip(sequential, concurrent, strict=True):
        assert np.array_equal(a, b)


# ---------------------------------------------------------------- `semlayout predict`
def _write_png(path, img):
    ok, buf = cv2.imencode(".png", img)
    assert ok
    path.write_bytes(buf.tobytes())


def test_cli_predict_writes_same_names_and_sizes(ckpt, tmp_path, capsys):
    from semlayout.cli import main

    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(4)
    shapes = {"a.png": (250, 250), "b.png": (64, 90)}
    for name, shape in shapes.items():
        _write_png(src / name, rng.integers(0, 256, shape).astype(np.uint8))
    (src / "notes.txt").write_text("ignored")
    for backend in ("eager", "bf16", "onnx"):
        out = tmp_path / f"out-{backend}"
        code = main(
            [
                "predict",
                "--model",
                str(ckpt),
                "--direction",
                "sem2layout",
                str(src),
                "--out",
                str(out),
                "--backend",
                backend,
                "--binarize",
            ]
        )
        assert code == 0, capsys.readouterr().err
        # the images under their own names, and one row per image in predictions.csv
        assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "predictions.csv"]
        rows = (out / "predictions.csv").read_text().splitlines()
        assert rows[0].startswith("id,direction,polarity") and len(rows) == 3
        for name, shape in shapes.items():
            img = cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED)
            assert img.shape == shape and img.dtype == np.uint8 and set(np.unique(img)) <= {0, 255}
    # predict output equals the Python API's output
    tr = Translator.load(ckpt)
    a = cv2.imread(str(src / "b.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(
        cv2.imread(str(tmp_path / "out-eager" / "b.png"), cv2.IMREAD_UNCHANGED),
        tr.translate("sem2layout", [a], binarize=True)[0],
    )


def test_cli_predict_refuses_bad_input_in_one_line(ckpt, tmp_path, capsys):
    from semlayout.cli import main

    good = tmp_path / "good"
    good.mkdir()
    _write_png(good / "x.png", np.zeros((40, 40), np.uint8))
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    _write_png(rgb / "ok.png", np.zeros((40, 40), np.uint8))
    _write_png(rgb / "colour.png", np.zeros((40, 40, 3), np.uint8))
    deep = tmp_path / "deep"
    deep.mkdir()
    _write_png(deep / "d16.png", np.zeros((40, 40), np.uint16))
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        ([str(rgb), "--model", str(ckpt), "--direction", "sem2layout"], "colour.png"),
        ([str(deep), "--model", str(ckpt), "--direction", "sem2layout"], "d16.png"),
        ([str(empty), "--model", str(ckpt), "--direction", "sem2layout"], "no .png"),
        ([str(good), "--model", str(ckpt), "--direction", "up"], "unknown direction 'up'"),
        ([str(good), "--model", str(empty), "--direction", "sem2layout"], "not a checkpoint"),
        (
            [str(good), "--model", str(ckpt), "--direction", "layout2sem", "--binarize"],
            "--binarize",
        ),
    ]
    for args, msg in cases:
        out = tmp_path / "out"
        assert main(["predict", *args, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()
    assert (
        main(
            [
                "predict",
                str(good),
                "--model",
                str(ckpt),
                "--direction",
                "sem2layout",
                "--out",
                str(good),
            ]
        )
        == 2
    )
    assert (good / "x.png").is_file()


def test_only_the_generators_are_needed_and_a_wrong_generator_is_named(ckpt, tmp_path):
    from safetensors.torch import load_file, save_file

    flat = load_file(str(ckpt / "weights.safetensors"))
    g_only = tmp_path / "g_only"
    g_only.mkdir()
    (g_only / "config.json").write_text((ckpt / "config.json").read_text())
    save_file(
        {k: v for k, v in flat.items() if k.startswith("G_")}, str(g_only / "weights.safetensors")
    )
    rng = np.random.default_rng(6)
    imgs = [rng.integers(0, 256, (32, 32)).astype(np.uint8)]
    assert np.array_equal(
        Translator.load(g_only).translate("sem2layout", imgs)[0],
        Translator.load(ckpt).translate("sem2layout", imgs)[0],
    )
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((ckpt / "config.json").read_text())
    key = next(k for k in flat if k.startswith("G_B.") and flat[k].ndim == 4)
    save_file({**flat, key: torch.zeros(1, 1, 1, 1)}, str(bad / "weights.safetensors"))
    with pytest.raises(SemlayoutError, match=key.replace(".", r"\.")):
        Translator.load(bad)
    (bad / "weights.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(SemlayoutError, match="not a readable safetensors"):
        Translator.load(bad)


def test_torchscript_fallback_exporter_matches_eager(ckpt, tmp_path):
    """Used when semlayout.train.export is not importable (e.g. a serving-only install)."""
    import onnxruntime as ort

    from semlayout.inference_backends import export_generator_onnx

    _, nets, _ = load_checkpoint(ckpt)
    path = export_generator_onnx(nets["G_A"], tmp_path / "g.onnx", 32)
    x = np.random.default_rng(7).uniform(-1, 1, (3, 1, 32, 32)).astype(np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        ref = nets["G_A"].eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4)
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary file was renamed away
