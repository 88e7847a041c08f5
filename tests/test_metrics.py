"""Metrics against independent references (scikit-image, brute force, hand-computed geometry)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from semlayout import metrics as M
from semlayout.errors import SemlayoutError


def sk_ssim(a: np.ndarray, b: np.ndarray) -> float:
    a = a / 255.0 if a.dtype == np.uint8 else a
    b = b / 255.0 if b.dtype == np.uint8 else b
    return structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
    )


def _structured_pairs(rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    pairs = []
    for _ in range(6):
        h, w = rng.integers(11, 90, size=2)
        img = np.zeros((h, w), np.uint8)
        for _ in range(rng.integers(1, 6)):
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            img[y0 : y0 + rng.integers(2, 30), x0 : x0 + rng.integers(2, 30)] = 255
        noisy = np.clip(img + rng.normal(0, rng.uniform(5, 80), img.shape), 0, 255).astype(np.uint8)
        blurred = cv2.GaussianBlur(img, (7, 7), 2.0)
        shifted = np.roll(img, rng.integers(-3, 4), axis=1)
        pairs += [(noisy, img), (blurred, img), (shifted, img), (img, img), (255 - img, img)]
    const = np.full((32, 32), 77, np.uint8)
    pairs += [(const, const), (const, np.zeros_like(const))]
    return pairs


def test_ssim_matches_skimage_on_structured_pairs():
    rng = np.random.default_rng(0)
    for a, b in _structured_pairs(rng):
        assert M.ssim(a, b) == pytest.approx(sk_ssim(a, b), abs=1e-3)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    h=st.integers(11, 64),
    w=st.integers(11, 64),
    noise=st.floats(0.0, 0.6),
)
def test_ssim_matches_skimage_on_random_pairs(seed, h, w, noise):
    rng = np.random.default_rng(seed)
    a = rng.random((h, w))
    b = np.clip(a + rng.normal(0, noise, a.shape), 0, 1)
    assert M.ssim(a, b) == pytest.approx(sk_ssim(a, b), abs=1e-3)


def test_ssim_batch_matches_per_image_and_skimage():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (70, 40, 33)).astype(np.uint8)  # > one chunk
    b = cv2.GaussianBlur(a.transpose(1, 2, 0).copy(), (5, 5), 1.0).transpose(2, 0, 1)
    got = M.ssim_batch(a, b)
    ref = np.array([sk_ssim(x, y) for x, y in zip(a, b, strict=True)])
    assert got.shape == (70,)
    np.testing.assert_allclose(got, ref, atol=1e-3)
    assert M.ssim(a[3], b[3]) == pytest.approx(got[3], abs=1e-12)


def test_ssim_identity_and_too_small():
    x = np.random.default_rng(2).random((20, 20))
    assert M.ssim(x, x) == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(SemlayoutError, match="at least 11x11"):
        M.ssim(np.zeros((8, 8)), np.zeros((8, 8)))


def test_l1_and_psnr_known_values():
    a = np.zeros((10, 10), np.float64)
    b = np.full((10, 10), 0.1)
    assert M.l1(a, b) == pytest.approx(0.1)
    assert M.psnr(a, b) == pytest.approx(20.0)  # mse 0.01
    u = np.full((5, 5), 255, np.uint8)
    assert M.l1(u, np.zeros_like(u)) == pytest.approx(1.0)
    rng = np.random.default_rng(3)
    x, y = rng.random((30, 30)), rng.random((30, 30))
    assert M.psnr(x, y) == pytest.approx(peak_signal_noise_ratio(x, y, data_range=1.0))
    assert M.psnr(x, x) == M.PSNR_CAP_DB
    assert math.isfinite(M.psnr_batch(np.stack([x, y]), np.stack([x, x]))[0])


def test_iou_rectangles_and_empty():
    p = np.zeros((20, 20), np.uint8)
    t = np.zeros((20, 20), np.uint8)
    assert M.iou(p, t) == 1.0  # both empty
    t[0:10, 0:10] = 255
    assert M.iou(p, t) == 0.0
    p[5:15, 0:10] = 255  # overlap 5x10, union 15x10
    assert M.iou(p, t) == pytest.approx(50 / 150)
    # float prediction thresholded at 0.5
    pf = np.where(p > 0, 0.6, 0.4)
    assert M.iou(pf, t) == pytest.approx(50 / 150)
    assert M.iou(pf, t, threshold=0.7) == 0.0


def _brute_epe(p: np.ndarray, t: np.ndarray) -> float:
    ep = np.argwhere(M.binary_edges(p))
    et = np.argwhere(M.binary_edges(t))
    d = np.sqrt(((ep[:, None, :] - et[None, :, :]) ** 2).sum(-1))
    return 0.5 * (d.min(axis=1).mean() + d.min(axis=0).mean())


def test_epe_shifted_stripe_is_the_shift():
    t = np.zeros((40, 60), np.uint8)
    t[:, 20:30] = 255
    assert M.edge_placement_error(t, t) == 0.0
    for d in (1, 2, 3):
        p = np.roll(t, d, axis=1)
        assert M.edge_placement_error(p, t) == pytest.approx(d, abs=1e-6)


def test_epe_matches_brute_force_on_random_blobs():
    rng = np.random.default_rng(4)
    for _ in range(10):
        t = (cv2.GaussianBlur(rng.random((48, 48)), (0, 0), 4) > 0.5).astype(np.uint8) * 255
        p = (cv2.GaussianBlur(rng.random((48, 48)), (0, 0), 4) > 0.5).astype(np.uint8) * 255
        if not (M.binary_edges(t > 0).any() and M.binary_edges(p > 0).any()):
            continue
        assert M.edge_placement_error(p, t) == pytest.approx(_brute_epe(p > 0, t > 0), abs=1e-3)


def test_epe_empty_cases():
    e = np.zeros((30, 40), np.uint8)
    assert M.edge_placement_error(e, e) == 0.0
    t = e.copy()
    t[10:20, 10:20] = 255
    assert M.edge_placement_error(e, t) == pytest.approx(50.0)  # the diagonal of 30x40


def _lines(shape, width, pitch, offset=3, vertical=True):
    img = np.zeros(shape, np.uint8)
    for s in range(offset, (shape[1] if vertical else shape[0]), pitch):
        if vertical:
            img[:, s : s + width] = 255
        else:
            img[s : s + width, :] = 255
    return img


def test_cd_measures_line_width_both_orientations():
    for vertical in (True, False):
        t = _lines((100, 100), 10, 24, vertical=vertical)
        assert M.critical_dimension(t) == pytest.approx(10.0)  # a line cut by the frame is ignored
        p = _lines((100, 100), 13, 24, vertical=vertical)
        assert M.cd_error(p, t) == pytest.approx(3.0)
        assert M.cd_error(t, t) == 0.0
    # a few noisy pixels in the space do not flip the orientation
    t = _lines((100, 100), 8, 20)
    t[50, 15] = 255
    assert M.critical_dimension(t) == pytest.approx(8.0, abs=0.05)
    assert math.isnan(M.critical_dimension(np.zeros((20, 20), np.uint8)))


def test_bad_inputs_are_user_errors():
    a = np.zeros((20, 20), np.uint8)
    with pytest.raises(SemlayoutError, match="shape mismatch"):
        M.l1(a, np.zeros((20, 21), np.uint8))
    with pytest.raises(SemlayoutError, match="dtype int32"):
        M.ssim(a.astype(np.int32), a)
    with pytest.raises(SemlayoutError, match=r"\[0, 1\]"):
        M.psnr(a.astype(np.float32) + 3, a)


def test_aggregate_per_family_skips_nan():
    out = M.aggregate(
        {"ssim": [0.5, 0.7, 0.9], "cd_error_px": [1.0, float("nan"), 3.0]},
        ["line_space", "via", "line_space"],
    )
    assert out["ssim"] == pytest.approx(0.7)
    assert out["cd_error_px"] == pytest.approx(2.0)
    fam = out["per_family"]
    assert fam["line_space"] == {
        "ssim": pytest.approx(0.7),
        "cd_error_px": pytest.approx(2.0),
        "n": 2,
    }
    assert fam["via"]["cd_error_px"] is None and fam["via"]["n"] == 1


def test_ssim_lowpass_separates_the_noise_free_prediction_from_a_noise_imitation():
    """Against a noisy SEM, plain SSIM scores both the noise-free prediction and one with
    other noise of the same law near the noise floor (0.19 vs 0.13 here); after the low-pass
    (`ssim_lowpass`) the noise-free one is near 1 and ahead by more."""
    rng = np.random.default_rng(3)
    clean = np.zeros((1, 96, 96), np.float64)
    clean[:, 20:76, 30:50] = 0.7
    clean += 0.15
    noisy = np.clip(clean + rng.normal(0, 0.12, clean.shape), 0, 1)
    imitation = np.clip(clean + rng.normal(0, 0.12, clean.shape), 0, 1)  # other noise, same law
    blurred = np.clip(M.ssim_lowpass_batch(clean, clean), 0, 1)
    assert blurred[0] == pytest.approx(1.0)
    plain = M.ssim_batch(clean, noisy)[0], M.ssim_batch(imitation, noisy)[0]
    low = M.ssim_lowpass_batch(clean, noisy)[0], M.ssim_lowpass_batch(imitation, noisy)[0]
    assert low[0] > low[1] and low[0] - low[1] > plain[0] - plain[1], (plain, low)
    assert M.ssim_lowpass_batch(clean[:0], clean[:0]).shape == (0,)


def test_ssim_lowpass_sigma_follows_the_image_width():
    """The low-pass is 2 px at the product's 256 px and scales with the width (the 250 -> S
    INTER_AREA resize has averaged the noise already): 0.5 px at 64 px."""
    rng = np.random.default_rng(4)
    for width, sigma in ((256, 2.0), (64, 0.5)):
        a, b = rng.random((2, 2, width, width))
        got = M.ssim_lowpass_batch(a, b)
        assert np.array_equal(got, M.ssim_lowpass_batch(a, b, sigma=sigma)), width
        assert not np.array_equal(got, M.ssim_lowpass_batch(a, b, sigma=2 * sigma)), width
