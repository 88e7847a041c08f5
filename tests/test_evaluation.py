"""evaluate_model against independent recomputation (skimage), baselines, ceiling, the CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers_eval import make_tiny_checkpoint, make_tiny_shards
from skimage.filters import gaussian, threshold_otsu
from skimage.metrics import structural_similarity

from semlayout.cli import main
from semlayout.evaluation import (
    _layout_scores,
    evaluate_model,
    fit_otsu_polarity,
    metrics_json_ready,
    otsu_layout_baseline,
    select_indices,
)
from semlayout.inference import Translator


def sk_ssim(a, b):
    return structural_similarity(
        a / 255.0,
        b / 255.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ev")
    ckpt = make_tiny_checkpoint(root / "run" / "final")
    shards = make_tiny_shards(root / "shards", n_test=6)
    return ckpt, shards, root


@pytest.fixture(scope="module")
def result(setup):
    ckpt, shards, _ = setup
    return evaluate_model(ckpt, shards, split="test")


def test_result_follows_the_contract_and_is_json(result):
    assert result["n"] == 6 and result["split"] == "test"
    s2l, l2s = result["sem2layout"], result["layout2sem"]
    for k in ("l1", "ssim", "psnr", "iou", "epe_px", "cd_error_px", "per_family", "baseline_otsu"):
        assert k in s2l
    for k in ("l1", "ssim", "psnr", "iou", "per_family"):
        assert k in s2l["baseline_otsu"]
    for k in (
        "l1",
        "ssim",
        "psnr",
        "iou",
        "ssim_vs_clean",
        "l1_vs_clean",
        "psnr_vs_clean",
        "ceiling",
        "per_family",
    ):
        assert k in l2s
    assert set(l2s["ceiling"]) == {"ssim", "psnr", "l1"}
    assert sum(r["n"] for r in s2l["per_family"].values()) == 6
    assert set(s2l["per_family"]) == {"line_space", "via_array"}
    assert s2l["per_family"]["via_array"]["cd_error_px"] is None  # CD is line/space only
    text = json.dumps(metrics_json_ready(result), allow_nan=False)
    assert "samples" not in json.loads(text)
    assert len(result["samples"]) == 8  # 4 pairs (both families first) x 2 directions
    assert {s["direction"] for s in result["samples"]} == {"sem2layout", "layout2sem"}


def test_numbers_match_an_independent_recomputation(setup, result):
    ckpt, shards, _ = setup
    from semlayout.data.shards import load_split_arrays

    d = load_split_arrays(shards, "test")
    tr = Translator.load(ckpt)
    pred_l = tr.translate("sem2layout", list(d["sem"]))
    pred_s = tr.translate("layout2sem", list(d["layout"]))
    s2l, l2s = result["sem2layout"], result["layout2sem"]
    assert s2l["ssim"] == pytest.approx(
        np.mean([sk_ssim(p, t) for p, t in zip(pred_l, d["layout"], strict=True)]), abs=1e-6
    )
    assert s2l["l1"] == pytest.approx(
        np.mean(
            [np.abs(p / 255 - t / 255).mean() for p, t in zip(pred_l, d["layout"], strict=True)]
        )
    )

    def iou(a, b):
        return np.logical_and(a > 127, b > 127).sum() / max(
            np.logical_or(a > 127, b > 127).sum(), 1
        )

    # IoU of the output thresholded alone, and of the drawn layout the product returns (+ fit)
    assert s2l["iou_threshold"] == pytest.approx(
        np.mean([iou(p, t) for p, t in zip(pred_l, d["layout"], strict=True)]), abs=1e-9
    )
    drawn = tr.translate("sem2layout", list(d["sem"]), binarize=True)
    assert s2l["iou"] == pytest.approx(
        np.mean([iou(p, t) for p, t in zip(drawn, d["layout"], strict=True)]), abs=1e-9
    )
    assert l2s["ssim"] == pytest.approx(
        np.mean([sk_ssim(p, t) for p, t in zip(pred_s, d["sem"], strict=True)]), abs=1e-6
    )
    assert l2s["ssim_vs_clean"] == pytest.approx(
        np.mean([sk_ssim(p, t) for p, t in zip(pred_s, d["clean"], strict=True)]), abs=1e-6
    )
    ceiling = np.mean([sk_ssim(c, s) for c, s in zip(d["clean"], d["sem"], strict=True)])
    assert l2s["ceiling"]["ssim"] == pytest.approx(ceiling, abs=1e-6)
    assert 0 < ceiling < 0.9  # noisy targets: nobody reaches 1


def test_otsu_baseline_matches_skimage_and_its_polarity_comes_from_train_only(
    setup, result, tmp_path
):
    _, shards, _ = setup
    from semlayout.data.shards import load_split_arrays

    d = load_split_arrays(shards, "test")
    base = result["sem2layout"]["baseline_otsu"]
    assert base["polarity"] == "bright"  # the helpers' train pairs have bright lines
    ious = []
    for sem, lay in zip(d["sem"], d["layout"], strict=True):
        # independent reference: skimage blur + Otsu, bright side = pattern
        blurred = gaussian(sem / 255.0, sigma=2.0)
        mask = blurred > threshold_otsu(blurred)
        t = lay > 127
        ious.append((mask & t).sum() / (mask | t).sum())
        ours = otsu_layout_baseline(sem, "bright") > 127
        assert (ours != mask).mean() < 0.01
    assert base["iou"] == pytest.approx(np.mean(ious), abs=0.01)
    assert (
        base["iou"] > 0.6
    )  # a real baseline, not a strawman (one reversed-contrast pair included)
    # the polarity is fitted on train: dark-line training pairs flip it, test targets never do
    dark = tmp_path / "dark"
    shutil.copytree(shards, dark)
    with np.load(dark / "train" / "shard-00000.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["sem"] = 255 - arrays["sem"]
    np.savez(dark / "train" / "shard-00000.npz", **arrays)
    assert fit_otsu_polarity(dark) == "dark"
    with np.load(shards / "test" / "shard-00000.npz") as z:
        arrays = {k: z[k] for k in z.files}
    inverted = tmp_path / "inverted"
    shutil.copytree(shards, inverted)
    arrays["layout"] = 255 - arrays["layout"]
    np.savez(inverted / "test" / "shard-00000.npz", **arrays)
    assert fit_otsu_polarity(inverted) == "bright"
    # a perfect prediction scores perfectly under the same scoring code
    perfect = _layout_scores(d["layout"], d["layout"], d["families"])
    assert min(perfect["iou"]) == 1.0 and max(perfect["epe_px"]) == 0.0
    assert np.nanmax(perfect["cd_error_px"]) == 0.0


def test_max_samples_is_stratified_and_no_clean_drops_clean_keys(setup, tmp_path):
    fams = np.array(["a"] * 8 + ["b"] * 2)
    idx = select_indices(fams, 3)
    assert len(idx) == 3 and set(fams[idx]) == {"a", "b"}
    ckpt, _, _ = setup
    shards = make_tiny_shards(tmp_path / "noclean", n_test=5, with_clean=False)
    res = evaluate_model(Translator.load(ckpt), shards, max_samples=2, n_report_samples=1)
    assert res["n"] == 2 and not res["has_clean"]
    assert "ceiling" not in res["layout2sem"] and "ssim_vs_clean" not in res["layout2sem"]
    assert len(res["samples"]) == 2


def test_onnx_backend_gives_the_same_numbers(setup, result):
    ckpt, shards, _ = setup
    res = evaluate_model(ckpt, shards, backend="onnx")
    for direction in ("sem2layout", "layout2sem"):
        assert res[direction]["ssim"] == pytest.approx(result[direction]["ssim"], abs=2e-3)


def test_cli_evaluate_writes_metrics_and_report(setup, capsys):
    ckpt, shards, root = setup
    (root / "run" / "history.json").write_text(
        json.dumps({"epochs": [{"epoch": 1, "loss_G": 3.0}, {"epoch": 2, "loss_G": 2.0}]})
    )
    out, rep = root / "o" / "metrics.json", root / "o" / "report.html"
    code = main(
        [
            "evaluate",
            "--model",
            str(ckpt),
            "--data",
            str(shards),
            "--out",
            str(out),
            "--report",
            str(rep),
        ]
    )
    assert code == 0
    m = json.loads(out.read_text())
    assert m["n"] == 6 and "sem2layout" in m and "samples" not in m
    html = rep.read_text()
    assert html.count("data:image/png;base64,") == 32 and "<polyline" in html
    assert f"{m['sem2layout']['ssim']:.4f}" in html
    assert "ceiling" in capsys.readouterr().out


def test_cli_evaluate_user_errors(setup, tmp_path, capsys):
    ckpt, shards, _ = setup
    cases = [
        (["--model", str(tmp_path), "--data", str(shards)], "not a checkpoint"),
        (["--model", str(ckpt), "--data", str(tmp_path)], "index.json"),
        (["--model", str(ckpt), "--data", str(shards), "--split", "dev"], "unknown split 'dev'"),
    ]
    for args, msg in cases:
        assert main(["evaluate", *args, "--out", str(tmp_path / "m.json")]) == 2
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.json").exists()


def test_evaluate_on_the_shared_synthetic_shards(tiny_shards, setup):
    """The real data path (synth -> align -> shard), not just the helpers' pairs."""
    ckpt, _, _ = setup
    from semlayout.data.shards import read_index

    res = evaluate_model(ckpt, tiny_shards, max_samples=4)
    assert res["n"] == min(4, read_index(tiny_shards)["splits"]["test"]["n"])
    assert 0 <= res["sem2layout"]["baseline_otsu"]["iou"] <= 1
    json.dumps(metrics_json_ready(res), allow_nan=False)
