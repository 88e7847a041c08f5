"""The HTML report: parses, is self-contained, carries the numbers, the images and the gate."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser

import cv2
import numpy as np

from semlayout.evaluation_report import (
    abs_diff_heatmap,
    curves_from_history,
    group_curves,
    layout_error_overlay,
    write_report_html,
)


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _metrics() -> dict:
    fam = {
        "line_space": {"ssim": 0.91234, "iou": 0.95, "n": 3},
        "via<array>": {"ssim": 0.81, "iou": 0.9, "n": 1},
    }
    return {
        "n": 4,
        "split": "test",
        "sem2layout": {
            "l1": 0.0412,
            "ssim": 0.8876,
            "psnr": 18.2345,
            "iou": 0.9371,
            "epe_px": 0.7321,
            "cd_error_px": 1.2468,
            "per_family": fam,
            "baseline_otsu": {
                "l1": 0.1111,
                "ssim": 0.5432,
                "psnr": 9.8765,
                "iou": 0.6543,
                "per_family": {"line_space": {"iou": 0.7007, "n": 3}},
            },
        },
        "layout2sem": {
            "l1": 0.1357,
            "ssim": 0.2468,
            "psnr": 15.1515,
            "iou": 0.5,
            "ssim_vs_clean": 0.7777,
            "l1_vs_clean": 0.0555,
            "psnr_vs_clean": 24.2424,
            "ceiling": {"ssim": 0.3141, "psnr": 17.1717, "l1": 0.0999},
            "per_family": {"line_space": {"ssim": 0.25, "ssim_vs_clean": 0.78, "n": 3}},
        },
    }


def _samples() -> list[dict]:
    rng = np.random.default_rng(0)
    lay = np.zeros((32, 32), np.uint8)
    lay[:, 8:16] = 255
    sem = rng.integers(0, 256, (32, 32)).astype(np.uint8)
    pred = np.roll(lay, 2, axis=1)
    return [
        {
            "direction": "sem2layout",
            "id": "p1",
            "family": "line_space",
            "input": sem,
            "prediction": pred,
            "target": lay,
            "ssim": 0.5,
            "iou": 0.6,
        },
        {
            "direction": "layout2sem",
            "id": "p1",
            "family": "line_space",
            "input": lay,
            "prediction": sem,
            "target": 255 - sem,
        },
    ]


def test_report_parses_and_contains_numbers_images_gate_curves(tmp_path):
    history = {
        "epochs": [
            {
                "epoch": e,
                "step": 10 * e,
                "seconds": 3.0 * e,
                "lr": 2e-4,
                "loss_G": 10.0 / e,
                "loss_D": 0.5,
                "l1_A": 50.0 / e,
                "val_sem2layout_iou": 0.5 + e / 20,
            }
            for e in range(1, 6)
        ]
    }
    (tmp_path / "history.json").write_text(json.dumps(history))
    dest = write_report_html(
        tmp_path / "r" / "report.html",
        _metrics(),
        _samples(),
        curves=tmp_path / "history.json",
        gate={"passed": False, "reasons": ["layout2sem: ssim 0.2468 < floor 0.3000"]},
        title="Run 7",
    )
    text = dest.read_text()
    p = _Collect()
    p.feed(text)
    p.close()
    body = "".join(p.text)
    for number in (
        "0.8876",
        "0.9371",
        "0.6543",
        "0.5432",
        "0.7321",
        "1.2468",
        "0.2468",
        "0.3141",
        "0.7777",
        "0.9123",
        "0.7007",
    ):
        assert number in body, number
    assert "FAILED" in body and "layout2sem: ssim 0.2468 < floor 0.3000" in body
    assert "via<array>" in body  # escaped in the markup, intact in the text
    assert "ceiling" in body.lower()
    imgs = [a["src"] for t, a in p.tags if t == "img"]
    assert len(imgs) == 8  # 2 samples x (input, prediction, target, error)
    for src in imgs:
        assert src.startswith("data:image/png;base64,")
        png = cv2.imdecode(
            np.frombuffer(base64.b64decode(src.split(",", 1)[1]), np.uint8), cv2.IMREAD_UNCHANGED
        )
        assert png is not None and png.shape[:2] == (32, 32)
    # nothing external: no links, scripts or remote URLs
    assert not [t for t, _ in p.tags if t in ("link", "script", "iframe")]
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in text
    polylines = [a for t, a in p.tags if t == "polyline"]
    assert len(polylines) == 5  # loss_G, loss_D | l1_A | val iou | lr; never seconds
    assert all(len(a["points"].split()) == 5 for a in polylines)


def test_report_without_optional_parts(tmp_path):
    dest = write_report_html(tmp_path / "r.html", {"sem2layout": {"ssim": 0.5}}, [])
    p = _Collect()
    p.feed(dest.read_text())
    assert "0.5000" in "".join(p.text)
    assert not [t for t, _ in p.tags if t in ("img", "svg")]


def test_overlay_colours_and_heatmap():
    t = np.zeros((4, 4), np.uint8)
    t[:, :2] = 255
    pr = np.zeros((4, 4), np.uint8)
    pr[:, 1:3] = 255
    ov = layout_error_overlay(pr, t)
    assert tuple(ov[0, 0]) == (230, 30, 30)  # missing -> red
    assert tuple(ov[0, 2]) == (40, 90, 240)  # extra -> blue
    assert ov[0, 1, 0] == ov[0, 1, 1] == ov[0, 1, 2]  # agreement -> gray
    hm = abs_diff_heatmap(t, t)
    assert hm.shape == (4, 4, 3) and hm.max() < 10  # equal -> black


def test_curve_groups():
    g = group_curves(
        {"loss_G": [1.0], "l1_A": [40.0], "val_x": [0.5], "lr": [1e-3], "seconds": [9.0]}
    )
    assert g == {
        "losses": {"loss_G": [1.0]},
        "losses (large terms)": {"l1_A": [40.0]},
        "validation": {"val_x": [0.5]},
        "learning rate": {"lr": [1e-3]},
    }


def test_curves_from_history_forms():
    assert curves_from_history([{"epoch": 1, "a": 1.0}, {"epoch": 2, "a": 2.0, "note": "x"}]) == {
        "a": [1.0, 2.0]
    }
    assert curves_from_history({"a": [1, 2], "b": "x"}) == {"a": [1.0, 2.0]}
