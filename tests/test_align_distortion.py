"""Field distortion: the synthetic physics can draw it (off by default), the aligner finds a
rotation and magnification within the stated tolerance, undoes it (the crop it writes is
the corrected one), names it in the QC verdict, refuses what it cannot undo, leaves an
undistorted pair alone, and bad settings are refused."""

from __future__ import annotations

import numpy as np
import pytest
from independent_sim import judge, make_pairs, placement_right_mapped
from test_align import blobs_field, cut, render

from semlayout.cli import main as cli_main
from semlayout.data import synth
from semlayout.data.align import AlignConfig, AlignResult, align_pair, aligned_crop
from semlayout.data.align_distortion import _gradient, _strided_gradient
from semlayout.data.field_distortion import (
    add_particles,
    max_displacement,
    similarity_matrix,
    warp_field,
)
from semlayout.data.sem_physics import PhysicsRanges, sample_params
from semlayout.errors import SemlayoutError

CFG = AlignConfig()
# the stated tolerance (docs/alignment.md): on high-dose pairs the estimate is within 0.2 deg
# and 0.3 % (a template corner within ~0.8 px); synth's scan drift shears an image by up to
# the equivalent of 0.28 deg, which a similarity partly reads as rotation
ROT_TOL, SCALE_TOL = 0.2, 0.003


def to_sem(r: AlignResult) -> np.ndarray:
    """The 2x3 template -> SEM map a result stands for."""
    s = similarity_matrix(r.rotation_deg or 0.0, r.scale or 1.0, (304, 304))
    return np.hstack([s[:, :2], (s[:, :2] @ np.array([r.x, r.y]) + s[:, 2])[:, None]])


def distorted_blobs(rot: float, scale: float, seed: int = 0, particles: int = 0):
    """A non-periodic field rendered, then turned and scaled like a stage would."""
    field = blobs_field(seed, n=60)
    x, y = 27, 20
    signal = field.astype(np.float32)
    if particles:
        signal = add_particles(signal, particles, 0.5, 2.0, np.random.default_rng(seed))
    img = warp_field(signal, rot, scale)
    img = render_float(img, seed)
    return field, img, cut(field, x, y), similarity_matrix(rot, scale, (304, 304))


def render_float(signal: np.ndarray, seed: int, dose: float = 200.0) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(seed)
    sig = cv2.GaussianBlur(0.2 + 0.6 * np.clip(signal, 0, 1.5), (0, 0), 1.5)
    return np.clip(rng.poisson(sig * dose) / dose * 255, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- the transform


@pytest.mark.parametrize("shape", [(250, 250), (251, 250), (250, 249), (7, 5), (3, 3)])
def test_the_screen_gradient_on_every_other_pixel_is_the_full_one_subsampled(shape):
    """The screen computes its gradient only where it reads it (issue 20); bit for bit the
    full gradient's every 2nd pixel, borders included."""
    f = (np.random.default_rng(sum(shape)).normal(size=shape) * 50).astype(np.float32)
    gy, gx = _gradient(f)
    sy, sx = _strided_gradient(f, 2)
    assert sy.dtype == np.float32 and sx.dtype == np.float32
    assert np.array_equal(sy, gy[::2, ::2]) and np.array_equal(sx, gx[::2, ::2])


def test_the_transform_and_its_inverse():
    m = similarity_matrix(1.0, 1.02, (304, 304))
    c = np.array([151.5, 151.5])
    np.testing.assert_allclose(m[:, :2] @ c + m[:, 2], c)  # the centre stays
    corner = m[:, :2] @ np.zeros(2) + m[:, 2]
    assert np.hypot(*corner) == pytest.approx(max_displacement(1.0, 1.02, 151.5), rel=1e-6)
    # a smooth image survives the round trip (bilinear twice only blurs it a little)
    yy, xx = np.mgrid[0:304, 0:304].astype(np.float32)
    img = np.sin(xx / 9.0) * np.cos(yy / 13.0)
    back = warp_field(warp_field(img, 0.7, 1.015), 0.7, 1.015, inverse=True)
    np.testing.assert_allclose(back[60:-60, 60:-60], img[60:-60, 60:-60], atol=0.02)
    assert warp_field(img, 0.0, 1.0) is img


# ----------------------------------------------------------------------------- the aligner


@pytest.mark.parametrize("rot, scale", [(0.9, 1.0), (0.0, 1.018), (-0.7, 0.985), (0.5, 1.01)])
def test_distortion_is_recovered_within_tolerance(rot, scale):
    field, sem, tpl, warp = distorted_blobs(rot, scale, seed=3)
    r = align_pair(sem, tpl, CFG)
    assert r.qc_pass, r.qc_summary()
    assert abs(r.rotation_deg - rot) <= ROT_TOL and abs(r.scale - scale) <= SCALE_TOL, r
    assert placement_right_mapped(field, tpl, to_sem(r), warp)
    assert f"rotation {r.rotation_deg:+.2f} deg, scale {r.scale:.4f}" in r.qc_summary()


def test_synth_draws_distortion_and_the_aligner_recovers_it():
    ranges = PhysicsRanges(rotation_deg=(-1, 1), magnification=(0.98, 1.02))
    errors = []
    for i, fam in enumerate(["via_array", "l_shape", "random_routing", "line_end"]):
        sem, layout, _, x, y, meta = synth.generate_pair(
            np.random.default_rng([5, i]),
            fam,
            params={"dose": 800.0, "rotation_deg": 0.8 - 0.5 * i, "magnification": 1.015},
            ranges=ranges,
        )
        p = meta["params"]
        r = align_pair(sem, layout, CFG)
        warp = similarity_matrix(p.rotation_deg, p.magnification, sem.shape)
        assert r.qc_pass and placement_right_mapped(meta["field"], layout, to_sem(r), warp)
        errors.append((r.rotation_deg - p.rotation_deg, r.scale - p.magnification))
    err = np.abs(np.array(errors))
    assert err[:, 0].max() <= ROT_TOL and err[:, 1].max() <= SCALE_TOL, errors


def test_particles_do_not_throw_it_off():
    field, sem, tpl, warp = distorted_blobs(0.8, 1.012, seed=4, particles=4)
    r = align_pair(sem, tpl, CFG)
    assert r.qc_pass and placement_right_mapped(field, tpl, to_sem(r), warp), r.qc_summary()


def test_an_undistorted_pair_is_left_alone():
    field = blobs_field(6)
    r = align_pair(render(field, dose=100), cut(field, 17, 33), CFG)
    assert (r.x, r.y, r.rotation_deg, r.scale, r.qc_pass) == (17, 33, 0.0, 1.0, True)
    assert not r.corrected and "rotation" not in r.qc_summary()


@pytest.mark.parametrize("rot, scale", [(0.6, 1.01), (0.3, 1.0), (0.0, 0.996)])
def test_a_distorted_pair_gets_the_estimate_and_a_clean_one_skips_it(rot, scale):
    """The screen (`distortion_screen_px`) lets the patch estimate run on a distorted pair,
    down to a corner shift of ~0.7-0.9 px, and clears a clean one with the same answer as
    running the estimate on it anyway (the gate is judged through the result, not timing)."""
    field, sem, tpl, warp = distorted_blobs(rot, scale, seed=5)
    r = align_pair(sem, tpl, CFG)
    assert r.distortion_estimated is True and r.qc_pass, r.qc_summary()
    assert r.corrected or rot < 0.6  # a small one may stay below what is worth undoing
    if r.corrected:
        assert abs(r.rotation_deg - rot) <= ROT_TOL and abs(r.scale - scale) <= SCALE_TOL, r
    assert placement_right_mapped(field, tpl, to_sem(r), warp)
    clean = blobs_field(7)
    pair = (render(clean, dose=100), cut(clean, 21, 12))
    skipped = align_pair(*pair, CFG)
    assert skipped.distortion_estimated is False and skipped.qc_pass and not skipped.corrected
    always = align_pair(*pair, AlignConfig(distortion_screen_px=0.0))
    assert always.distortion_estimated is True
    assert {**vars(always), "distortion_estimated": False} == vars(skipped)
    off = align_pair(*pair, AlignConfig(correct_distortion=False))
    assert off.distortion_estimated is None and (off.x, off.y) == (21, 12)


def test_a_distortion_beyond_the_bounds_is_refused_and_named():
    field, sem, tpl, _ = distorted_blobs(2.5, 1.0, seed=3)
    r = align_pair(sem, tpl, AlignConfig(max_rotation_deg=1.5))
    assert (r.qc_pass, r.reason) == (False, "distorted")
    assert r.rotation_deg > 1.5 and "rotation" in r.qc_summary()


def test_the_crop_is_the_corrected_one():
    field, sem, tpl, _ = distorted_blobs(0.9, 1.015, seed=3)
    r = align_pair(sem, tpl, CFG)
    crop = aligned_crop(sem, r, tpl.shape)
    plain = sem[r.y : r.y + 250, r.x : r.x + 250]
    fg = tpl > 0

    def contrast(img: np.ndarray) -> float:  # pattern minus background, in grey levels
        return float(img[fg].mean() - img[~fg].mean())

    assert crop.shape == tpl.shape and crop.dtype == np.uint8
    assert contrast(crop) > contrast(plain) + 5  # the corners line up with the layout again
    with pytest.raises(ValueError, match="placed result"):
        aligned_crop(sem, AlignResult(reason="blank_sem"), tpl.shape)


@pytest.mark.slow
def test_quality_on_distorted_pairs():
    """Rotation within +-1 deg, magnification within +-2 %, particles on 20 %: the issue's
    set, on the independent simulator (measured on these 200: right 0.985, wrong+QC 0; the
    aligner before issue 16: right 0.47, wrong+QC 0.245)."""
    pairs = make_pairs(200, seed=2025, max_rotation=1.0, max_scale=0.02, p_particles=0.2)
    res = [align_pair(p.sem, p.layout, CFG) for p in pairs]
    q = judge(pairs, res, [None if r.x is None else to_sem(r) for r in res])
    assert q["right"] >= 0.9 and q["wrong_passed"] <= 0.005, q
    old = judge(
        pairs, [align_pair(p.sem, p.layout, AlignConfig(correct_distortion=False)) for p in pairs]
    )
    assert q["right"] >= old["right"] + 0.3, (q, old)


# ----------------------------------------------------------------------------- physics


def test_distortion_is_off_by_default_and_drawn_when_asked():
    p = sample_params(np.random.default_rng(0))
    assert (p.rotation_deg, p.magnification, p.particles) == (0.0, 1.0, 0)
    a = synth.generate_pair(np.random.default_rng([1, 2]), "via_array")
    b = synth.generate_pair(
        np.random.default_rng([1, 2]),
        "via_array",
        ranges=PhysicsRanges(rotation_deg=(0, 0), magnification=(1, 1), particle_fraction=0.0),
    )
    assert np.array_equal(a[0], b[0]) and (a[3], a[4]) == (b[3], b[4])
    ranges = PhysicsRanges(rotation_deg=(-1, 1), magnification=(0.98, 1.02), particle_fraction=1)
    drawn = [sample_params(np.random.default_rng(i), ranges) for i in range(20)]
    assert all(-1 <= d.rotation_deg <= 1 and 0.98 <= d.magnification <= 1.02 for d in drawn)
    assert all(1 <= d.particles <= 4 for d in drawn)
    assert synth.offset_margin(ranges) == 6 and synth.offset_margin(PhysicsRanges()) == 0
    sem, layout, _, x, y, meta = synth.generate_pair(
        np.random.default_rng(3), "l_shape", ranges=ranges
    )
    assert 27 - 19 <= x <= 27 + 19 and 27 - 19 <= y <= 27 + 19


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"particle_fraction": 1.5}, "particle_fraction"),
        ({"rotation_deg": (-20.0, 20.0)}, "rotation_deg"),
        ({"magnification": (0.0, 1.0)}, "magnification"),
        ({"particle_count": (0, 2)}, "particle_count"),
    ],
)
def test_bad_physics_ranges_are_refused(kw, match):
    with pytest.raises(SemlayoutError, match=match):
        PhysicsRanges(**kw)


@pytest.mark.parametrize(
    "kw",
    [
        {"residual_px": 0.2},
        {"distortion_grid": 2},
        {"max_scale_error": 1.5},
        {"prior_min_share": 0.4},
        {"distortion_screen_px": 0.6},
        {"distortion_screen_px": -0.1},
    ],
)
def test_bad_align_settings_are_refused(kw):
    with pytest.raises(SemlayoutError, match="invalid align setting"):
        AlignConfig(**kw)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--rotation-range", "x,1"], "--rotation-range 'x,1': expected LOW,HIGH numbers"),
        (["--magnification-range", "1.02,0.98"], "expected LOW,HIGH with LOW <= HIGH"),
        (["--particle-fraction", "2"], "particle_fraction=2.0: expected a value in [0, 1]"),
    ],
)
def test_synth_cli_bad_distortion_options_are_one_line(tmp_path, capsys, args, message):
    code = cli_main(["synth", str(tmp_path / "out"), "--n", "2", *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_synth_cli_writes_distorted_pairs(tmp_path):
    out = tmp_path / "pairs"
    code = cli_main(
        [
            "synth", str(out), "--n", "3", "--seed", "1", "--workers", "1",
            "--rotation-range", "-1,1", "--magnification-range", "0.98,1.02",
            "--particle-fraction", "1",
        ]
    )  # fmt: skip
    assert code == 0
    import csv

    with open(out / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert all(-1 <= float(r["rotation_deg"]) <= 1 for r in rows)
    assert all(int(r["particles"]) >= 1 for r in rows)
