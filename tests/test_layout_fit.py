"""Layout fit: threshold + Manhattan fit of the SEM->Layout output (semlayout.layout_fit)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from semlayout import metrics as M
from semlayout.config import config_from_dict
from semlayout.errors import SemlayoutError
from semlayout.layout_fit import fit_layout, manhattan_fit


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return float((a & b).sum() / (a | b).sum())


def test_a_rounded_via_becomes_its_drawn_square() -> None:
    drawn = np.zeros((40, 40), np.uint8)
    drawn[14:22, 16:24] = 1  # an 8 px square via
    blurred = cv2.GaussianBlur(
        drawn.astype(np.float32), (0, 0), 2.0
    )  # what a printed via looks like
    grey = np.clip(np.rint(blurred * 255), 0, 255).astype(np.uint8)
    thresholded = fit_layout(grey, "threshold") > 0
    fitted = fit_layout(grey, "manhattan") > 0
    assert _iou(thresholded, drawn) < 0.9  # corners rounded off
    assert np.array_equal(fitted, drawn.astype(bool))  # exactly the square


def test_edge_roughness_is_straightened_to_the_majority_edge() -> None:
    drawn = np.zeros((64, 64), bool)
    drawn[:, 20:28] = True  # an 8 px wide vertical line, through the whole image
    rough = drawn.copy()
    rng = np.random.default_rng(0)
    for r in range(64):  # one-pixel bumps and bites on 30 % of the rows, each edge
        if rng.random() < 0.3:
            rough[r, 28] = True
        if rng.random() < 0.3:
            rough[r, 20] = False
    fitted = manhattan_fit(rough)
    assert np.array_equal(fitted, drawn)  # not the bounding box (which would be 9 px wide)


def test_non_rectangular_shapes_are_kept_as_thresholded() -> None:
    ell = np.zeros((50, 50), bool)
    ell[5:45, 5:15] = True
    ell[35:45, 5:45] = True  # an L: no rectangle covers it with IoU >= 0.75
    box = np.zeros((50, 50), bool)
    box[5:20, 25:40] = True
    nicked = box.copy()
    nicked[5, 25] = False  # a square with a nicked corner
    fitted = manhattan_fit(ell | nicked)
    assert np.array_equal(fitted & ~box, ell)  # the L untouched
    assert fitted[5:20, 25:40].all() and fitted.sum() == ell.sum() + 15 * 15  # the box mended


def test_fit_never_invents_shapes_and_threshold_method_is_the_binarisation() -> None:
    rng = np.random.default_rng(1)
    grey = cv2.GaussianBlur(rng.integers(0, 256, (80, 80)).astype(np.uint8), (0, 0), 2.5)
    grey = cv2.normalize(grey, None, 0, 255, cv2.NORM_MINMAX)
    plain = fit_layout(grey, "threshold")
    assert np.array_equal(plain > 0, M.binarize(grey))  # the IoU metric's own binarisation
    fitted = fit_layout(grey, "manhattan")
    assert set(np.unique(fitted)) <= {0, 255} and fitted.dtype == np.uint8
    n_in = cv2.connectedComponents((plain > 0).astype(np.uint8), connectivity=4)[0]
    n_out = cv2.connectedComponents((fitted > 0).astype(np.uint8), connectivity=4)[0]
    assert n_out <= n_in


def test_an_island_inside_a_fitted_rectangle_does_not_punch_a_hole_in_it() -> None:
    block = np.zeros((40, 40), bool)
    block[5:25, 5:25] = True
    mask = block.copy()
    mask[11:19, 11:19] = False  # a hole: the block's rectangle still covers it with IoU 0.84
    mask[13:16, 13:16] = True  # an island in the hole ...
    mask[12, 14] = True  # ... with a one-pixel bump its own rectangle drops
    assert np.array_equal(manhattan_fit(mask), block)  # decided on the input, applied together


@pytest.mark.parametrize("family", ["line_space", "via_array", "line_end"])
def test_fit_recovers_the_drawing_from_simulated_prints(family: str) -> None:
    """On prints of the project's designs (corner rounding, LER, CD bias), the fit is closer
    to the drawn layout than the print itself."""
    from semlayout.data.sem_physics import print_pattern
    from semlayout.data.synth import generate_pair

    gains = []
    for seed in range(6):
        _, _, _, _, _, meta = generate_pair(
            seed, family, {"corner_sigma": 2.0, "ler_sigma": 0.8, "bias": 0.0}
        )
        cov, _ = print_pattern(meta["field"], meta["params"], np.random.default_rng(seed))
        grey = np.clip(np.rint(cov * 255), 0, 255).astype(np.uint8)
        drawn = meta["field"].astype(bool)
        gains.append(
            _iou(fit_layout(grey) > 0, drawn) - _iou(fit_layout(grey, "threshold") > 0, drawn)
        )
    assert np.mean(gains) > 0.005 and min(gains) > -0.005


def test_bad_input_is_refused_by_name() -> None:
    with pytest.raises(SemlayoutError, match="layout fit 'snap'"):
        fit_layout(np.zeros((8, 8), np.uint8), "snap")
    with pytest.raises(SemlayoutError, match="uint8"):
        fit_layout(np.zeros((8, 8), np.float32))
    with pytest.raises(SemlayoutError, match=r"\(H, W\)"):
        fit_layout(np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(SemlayoutError, match="unknown key 'layout_fit.snap'"):
        config_from_dict({"layout_fit": {"snap": True}})
    with pytest.raises(SemlayoutError, match="layout_fit.min_iou"):
        config_from_dict({"layout_fit": {"min_iou": 2}})


def test_configs_without_a_layout_fit_section_get_the_manhattan_default() -> None:
    cfg = config_from_dict(
        {"name": "old-checkpoint"}
    )  # config.json written before the section existed
    assert cfg.layout_fit.method == "manhattan" and cfg.layout_fit.threshold == 0.5
