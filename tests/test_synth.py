"""`semlayout synth`: the pair-folder contract, ground truth, determinism, physics, CLI errors."""

from __future__ import annotations

import csv
import hashlib
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from semlayout.data.layouts import DEFAULT_MIX, FAMILIES
from semlayout.data.pairs import check_binary_layout, read_gray8, read_manifest
from semlayout.data.sem_physics import PhysicsRanges, sample_params
from semlayout.data.synth import assign_families, generate_pair, parse_mix, read_truth, synthesize
from semlayout.errors import SemlayoutError


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    return float(
        structural_similarity(
            a / 255.0,
            b / 255.0,
            data_range=1.0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
    )


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "pairs"
    synthesize(out, 40, seed=7, progress=False)
    return out


def test_folder_follows_the_pair_contract(synth_dir: Path) -> None:
    records = read_manifest(synth_dir)
    assert len(records) == 40
    header = (synth_dir / "manifest.csv").read_text().splitlines()[0].split(",")
    assert header[:5] == ["id", "sem_path", "layout_path", "pattern_type", "clean_path"]
    assert {"dose", "polarity", "blur_sigma"} <= set(header)
    for r in records:
        sem = read_gray8(r.sem_path, (304, 304))
        layout = check_binary_layout(read_gray8(r.layout_path, (250, 250)))
        assert r.clean_path is not None
        clean = read_gray8(r.clean_path, (304, 304))
        assert sem.dtype == layout.dtype == clean.dtype == np.uint8
        assert r.pattern_type in FAMILIES
        # a template with structure: neither empty nor full
        assert 0.02 < (layout > 0).mean() < 0.98


def test_truth_offsets_in_range_and_match_the_drawn_field(synth_dir: Path) -> None:
    truth = read_truth(synth_dir)
    records = read_manifest(synth_dir)
    assert set(truth) == {r.id for r in records}
    xs = [x for x, _ in truth.values()]
    ys = [y for _, y in truth.values()]
    assert min(xs) >= 2 and max(xs) <= 52 and min(ys) >= 2 and max(ys) <= 52
    assert len(set(truth.values())) > 20  # offsets really vary
    # regenerate pair i in memory: its field window at the truth offset is the written template
    for i, r in enumerate(records[:10]):
        seed = int(r.extra["seed"])
        _, layout, _, x, y, meta = generate_pair(np.random.default_rng([seed, i]), r.pattern_type)
        assert (x, y) == truth[r.id]
        np.testing.assert_array_equal(read_gray8(r.layout_path), layout)
        np.testing.assert_array_equal(layout, meta["field"][y : y + 250, x : x + 250] * 255)


def test_same_seed_byte_identical_and_other_seed_differs(tmp_path: Path) -> None:
    synthesize(tmp_path / "a", 12, seed=3, progress=False)
    synthesize(tmp_path / "b", 12, seed=3, progress=False)
    synthesize(tmp_path / "c", 12, seed=4, progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_parallel_workers_give_the_same_bytes(tmp_path: Path) -> None:
    synthesize(tmp_path / "serial", 70, seed=5, workers=1, progress=False)
    synthesize(tmp_path / "parallel", 70, seed=5, workers=2, progress=False)
    assert _digest(tmp_path / "serial") == _digest(tmp_path / "parallel")


def test_family_mix_is_respected() -> None:
    fams = assign_families(1000, parse_mix(None), np.random.default_rng(0))
    counts = Counter(fams)
    for name, w in DEFAULT_MIX.items():
        assert abs(counts[name] - 1000 * w) <= 1
    assert counts.most_common(1)[0][0] == "line_space"
    mix = parse_mix("via_array=3,line_end=1")
    assert mix == {"via_array": 0.75, "line_end": 0.25}
    fams = assign_families(8, mix, np.random.default_rng(1))
    assert Counter(fams) == {"via_array": 6, "line_end": 2}


def test_mix_errors_name_the_bad_value() -> None:
    with pytest.raises(SemlayoutError, match="unknown family 'vias'"):
        parse_mix("vias=1")
    with pytest.raises(SemlayoutError, match="not a number"):
        parse_mix("via_array=lots")
    with pytest.raises(SemlayoutError, match="no positive weight"):
        parse_mix("via_array=0")
    with pytest.raises(SemlayoutError, match=">= 0"):
        parse_mix("via_array=-1,line_end=2")


def test_written_mix_matches_request(tmp_path: Path) -> None:
    out = synthesize(
        tmp_path / "p", 10, seed=0, mix="contact_staggered=0.5,t_shape=0.5", progress=False
    )
    assert Counter(r.pattern_type for r in read_manifest(out)) == {
        "contact_staggered": 5,
        "t_shape": 5,
    }


def test_reversed_polarity_appears_and_inverts_material_contrast() -> None:
    # default: one layer, one contrast; --reverse-fraction mixes in reversed images
    assert all(sample_params(np.random.default_rng(i)).polarity == 1 for i in range(100))
    ps = [
        sample_params(np.random.default_rng(i), PhysicsRanges(reverse_fraction=0.3))
        for i in range(400)
    ]
    share = np.mean([p.polarity == -1 for p in ps])
    assert 0.2 < share < 0.4
    # pattern brighter than background for +1, darker for -1 (measured far from edges)
    for pol in (1, -1):
        _, _, clean, x, y, meta = generate_pair(
            11, "line_space", {"polarity": pol, "edge_gain": 0.0, "gradient": 0.0, "charging": 0.0}
        )
        import cv2

        field = meta["field"]
        inner = cv2.erode(field, np.ones((7, 7), np.uint8))
        outer = cv2.erode(1 - field, np.ones((7, 7), np.uint8))
        diff = clean[inner > 0].mean() - clean[outer > 0].mean()
        assert np.sign(diff) == pol, (pol, diff)


def test_edges_are_brighter_than_both_materials() -> None:
    import cv2

    for pol in (1, -1):
        _, _, clean, _, _, meta = generate_pair(
            5,
            "via_array",
            {
                "polarity": pol,
                "edge_gain": 0.6,
                "edge_width": 2.0,
                "blur_sigma": 0.8,
                "gradient": 0.0,
                "charging": 0.0,
                "corner_sigma": 0.8,
                "ler_sigma": 0.2,
                "jitter_px": 0.0,
                "drift_px": 0.0,
            },
        )
        field = meta["field"]
        k = np.ones((3, 3), np.uint8)
        edge = (cv2.dilate(field, k) - cv2.erode(field, k)) > 0
        inner = cv2.erode(field, np.ones((9, 9), np.uint8)) > 0
        outer = cv2.erode(1 - field, np.ones((9, 9), np.uint8)) > 0
        assert clean[edge].mean() > max(clean[inner].mean(), clean[outer].mean()) + 10


def test_printed_shape_differs_from_drawn_layout() -> None:
    _, _, _, _, _, meta = generate_pair(2, "via_array", {"corner_sigma": 2.0, "ler_sigma": 1.0})
    from semlayout.data.sem_physics import print_pattern

    cov, _ = print_pattern(meta["field"], meta["params"], np.random.default_rng(0))
    drawn = meta["field"].astype(bool)
    printed = cov > 0.5
    disagree = (drawn != printed).mean()
    assert 0.005 < disagree < 0.2  # rounded corners + LER, but still the same design
    assert ((drawn & printed).sum() / (drawn | printed).sum()) > 0.7


def test_low_dose_is_very_noisy_high_dose_is_not() -> None:
    for fam in ("line_space", "via_array", "random_routing"):
        for s in range(2):
            sem, _, clean, *_ = generate_pair(s, fam, {"dose": 5.0})
            assert _ssim(clean, sem) < 0.5
            sem, _, clean, *_ = generate_pair(s, fam, {"dose": 3000.0})
            assert _ssim(clean, sem) > 0.7


def test_default_dose_range_spans_both_regimes() -> None:
    r = PhysicsRanges()
    assert r.dose[0] <= 2 and r.dose[1] >= 3000


def test_generate_pair_is_deterministic_per_seed() -> None:
    a = generate_pair(9, "l_shape")
    b = generate_pair(9, "l_shape")
    for u, v in zip(a[:3], b[:3], strict=True):
        np.testing.assert_array_equal(u, v)
    assert a[3:5] == b[3:5]
    assert a[0].shape == a[2].shape == (304, 304) and a[1].shape == (250, 250)
    assert set(np.unique(a[1]).tolist()) <= {0, 255}


def test_every_family_renders() -> None:
    for fam in FAMILIES:
        sem, layout, clean, x, y, meta = generate_pair(0, fam)
        assert meta["family"] == fam
        assert 0.02 < (layout > 0).mean() < 0.98
        assert clean.std() > 5


def test_preview_written(tmp_path: Path, synth_dir: Path) -> None:
    from semlayout.data.synth import write_preview

    dest = write_preview(synth_dir, tmp_path / "grid.png")
    img = read_gray8(dest)
    assert img.shape[1] == 3 * 304 + 4 * 6
    assert img.shape[0] > 3 * 304


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "semlayout.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_synth_with_preview(tmp_path: Path) -> None:
    res = _cli(
        "synth",
        str(tmp_path / "out"),
        "--n",
        "6",
        "--seed",
        "2",
        "--preview",
        str(tmp_path / "prev.png"),
        "--dose-range",
        "10,20",
        "--workers",
        "1",
    )
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "prev.png").is_file()
    rows = list(csv.DictReader((tmp_path / "out" / "manifest.csv").read_text().splitlines()))
    assert len(rows) == 6 and all(10 <= float(r["dose"]) <= 20 for r in rows)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--n", "0"], "n=0"),
        (["--n", "-3"], "n=-3"),
        (["--n", "3", "--mix", "squares=1"], "unknown family 'squares'"),
        (["--n", "3", "--dose-range", "100,1"], "--dose-range"),
        (["--n", "3", "--reverse-fraction", "1.5"], "reverse_fraction"),
    ],
)
def test_cli_bad_input_one_line_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    out = tmp_path / "out"
    res = _cli("synth", str(out), *args)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], res.stderr
    assert "Traceback" not in res.stderr
    assert not out.exists()


def test_cli_unwritable_out(tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    res = _cli("synth", str(blocker / "out"), "--n", "2")
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "file.txt" in res.stderr


def test_failure_leaves_no_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import semlayout.data.synth as synth_mod

    calls = {"n": 0}
    real = synth_mod._make_one

    def flaky(job):  # fails on the 4th pair, after files have been written
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("disk full")
        return real(job)

    monkeypatch.setattr(synth_mod, "_make_one", flaky)
    out = tmp_path / "pairs"
    with pytest.raises(RuntimeError):
        synthesize(out, 8, seed=0, workers=1, progress=False)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


# --- physics stages against analytic expectations -------------------------------------------


def _params(**kw: float):
    base = dict(
        dose=100.0,
        polarity=1,
        background=0.2,
        contrast=0.3,
        texture=0.0,
        texture_corr=1.0,
        corner_sigma=1.0,
        bias=0.0,
        ler_sigma=0.0,
        ler_corr=4.0,
        edge_width=2.0,
        edge_gain=0.0,
        shadow=0.0,
        blur_sigma=1.0,
        astigmatism=1.0,
        psf_tail=0.0,
        psf_tail_sigma=8.0,
        gradient=0.0,
        charging=0.0,
        gain=1.0,
        offset=0.0,
        detector_sigma=0.0,
        streak=0.0,
        streak_len=2.0,
        jitter_px=0.0,
        vibration_px=0.0,
        vibration_period=32.0,
        drift_px=0.0,
    )
    base.update(kw)
    return sample_params(np.random.default_rng(0), **base)


def _wide_line() -> np.ndarray:
    field = np.zeros((304, 304), np.uint8)
    field[:, 100:200] = 1  # a 100 px wide vertical line
    return field


def test_print_bias_moves_each_edge_by_bias() -> None:
    from semlayout.data.sem_physics import print_pattern

    for bias in (-1.0, 0.0, 1.0):
        cov, _ = print_pattern(_wide_line(), _params(bias=bias), np.random.default_rng(0))
        width = cov[150].sum()  # sub-pixel coverage along one row
        assert width == pytest.approx(100 + 2 * bias, abs=0.15)


def test_ler_rms_matches_ler_sigma() -> None:
    from semlayout.data.sem_physics import print_pattern

    for ler in (0.5, 1.0):
        cov, _ = print_pattern(
            _wide_line(), _params(ler_sigma=ler, ler_corr=4.0), np.random.default_rng(1)
        )
        # sub-pixel edge positions per row from the coverage in a band around each edge
        left_edge = 130 - cov[20:284, 60:130].sum(axis=1)
        right_edge = 170 + cov[20:284, 170:240].sum(axis=1)
        # per-edge displacement along the normal is one axis of the 2-D field: RMS = ler / sqrt(2)
        spread = np.concatenate(
            [left_edge - left_edge.mean(), right_edge - right_edge.mean()]
        ).std()
        assert spread == pytest.approx(ler / np.sqrt(2), rel=0.35)


def test_corner_rounding_removes_corner_pixels() -> None:
    from semlayout.data.sem_physics import print_pattern

    field = np.zeros((304, 304), np.uint8)
    field[100:200, 100:200] = 1
    sharp, _ = print_pattern(field, _params(corner_sigma=0.6), np.random.default_rng(0))
    round_, _ = print_pattern(field, _params(corner_sigma=2.5), np.random.default_rng(0))
    assert round_[100, 100] < sharp[100, 100] - 0.3  # the corner pixel is eaten
    assert round_[150, 100] == pytest.approx(sharp[150, 100], abs=0.1)  # straight edge stays


def test_minority_width_is_a_line_width_or_half_a_square() -> None:
    from semlayout.data.sem_physics import minority_width, print_scale

    lines = np.zeros((304, 304), np.uint8)
    lines[:, 10:290:20] = 1
    for k in range(1, 6):  # 6 px wide lines at pitch 20
        lines[:, 10 + k : 290 : 20] = 1
    assert minority_width(lines) == pytest.approx(6.0, abs=0.1)
    vias = np.zeros((304, 304), np.uint8)
    for y in range(8, 296, 24):
        for x in range(8, 296, 24):
            vias[y : y + 8, x : x + 8] = 1
    assert minority_width(vias) == pytest.approx(4.0, abs=0.01)  # narrower than the gaps
    assert minority_width(np.zeros((50, 50), np.uint8)) == 0.0
    assert print_scale(vias) == pytest.approx(0.5)
    assert print_scale(_wide_line()) == 1.0


def test_fine_designs_still_print_as_drawn() -> None:
    """The heaviest print blur and LER of the ranges leave a 4 px via array recognisable: scaled
    with the design's CD, every via prints, as one blob of roughly its drawn area."""
    import cv2

    from semlayout.data.sem_physics import print_pattern

    field = np.zeros((304, 304), np.uint8)
    for y in range(6, 296, 10):
        for x in range(6, 296, 10):
            field[y : y + 4, x : x + 4] = 1
    heavy = _params(corner_sigma=2.5, ler_sigma=1.2)
    cov, _ = print_pattern(field, heavy, np.random.default_rng(0))
    drawn, printed = field.astype(bool), cov > 0.5
    assert (drawn & printed).sum() / (drawn | printed).sum() > 0.6
    n_drawn = cv2.connectedComponents(field)[0] - 1
    n_printed = cv2.connectedComponents(printed.astype(np.uint8))[0] - 1
    assert n_printed == n_drawn  # none vanished, none merged
    assert 0.7 < printed.sum() / drawn.sum() < 1.3


def test_astigmatic_beam_blurs_x_and_y_differently() -> None:
    from semlayout.data.sem_physics import beam_blur

    img = np.zeros((101, 101), np.float32)
    img[50, 50] = 1.0
    out = beam_blur(img, _params(blur_sigma=2.0, astigmatism=1.6))
    xs = np.arange(101) - 50
    var_x = float((out.sum(0) * xs**2).sum() / out.sum())
    var_y = float((out.sum(1) * xs**2).sum() / out.sum())
    assert var_x / var_y == pytest.approx(1.6**2, rel=0.1)
    assert np.sqrt(np.sqrt(var_x * var_y)) == pytest.approx(2.0, rel=0.1)
    assert out.sum() == pytest.approx(1.0, rel=1e-3)


def test_detector_lag_is_causal_along_the_scan() -> None:
    from semlayout.data.sem_physics import detector_lag

    img = np.zeros((5, 64), np.float32)
    img[:, 30] = 1.0
    out = detector_lag(img, _params(streak=0.15, streak_len=3.0))
    assert out[2, :30].max() == 0.0  # nothing before the bright pixel
    assert out[2, 31] > out[2, 34] > 0  # a decaying tail after it
    assert out[2].sum() == pytest.approx(1.0, rel=1e-4)


def test_scan_shifts_zero_mean_and_bounded() -> None:
    from semlayout.data.sem_physics import scan_shifts

    dx = scan_shifts(
        304, _params(jitter_px=0.4, vibration_px=0.4, drift_px=1.5), np.random.default_rng(0)
    )
    assert abs(float(dx.mean())) < 1e-5
    assert float(np.abs(dx).max()) < 0.4 * 4 + 0.4 + 0.75


def test_sample_params_and_ranges_validate() -> None:
    with pytest.raises(SemlayoutError, match="unknown physics parameter"):
        sample_params(np.random.default_rng(0), doze=3)
    with pytest.raises(SemlayoutError, match="dose range"):
        PhysicsRanges(dose=(0.0, 10.0))
    with pytest.raises(SemlayoutError, match="low <= high"):
        PhysicsRanges(blur_sigma=(3.0, 1.0))
    r = PhysicsRanges(dose=(7.0, 7.0), reverse_fraction=1.0)
    p = sample_params(np.random.default_rng(0), r)
    assert p.dose == pytest.approx(7.0) and p.polarity == -1


def test_outputs_have_normal_permissions(tmp_path: Path) -> None:
    import os
    import stat

    out = synthesize(tmp_path / "p", 2, seed=0, preview=tmp_path / "g.png", progress=False)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((tmp_path / "g.png").stat().st_mode) == 0o666 & ~umask


def test_detector_shadow_brightens_one_side_only_when_enabled() -> None:
    from semlayout.data.sem_physics import render_clean

    field = np.zeros((304, 304), np.uint8)
    field[:, 100:200] = 1
    diffs = []
    for shadow in (0.0, 0.4):
        clean = render_clean(field, _params(edge_gain=0.6, shadow=shadow), np.random.default_rng(3))
        left, right = clean[20:284, 98:103].mean(), clean[20:284, 197:202].mean()
        diffs.append(abs(float(left - right)))
    assert diffs[0] < 1e-3 and diffs[1] > 0.02


def test_pinned_ranges_draw_nothing() -> None:
    a = sample_params(np.random.default_rng(0), PhysicsRanges())
    b = sample_params(np.random.default_rng(0), PhysicsRanges(shadow=(0.0, 0.0)))
    assert a == b


def test_parallel_from_an_unguarded_script_after_cv2_use(tmp_path: Path) -> None:
    # no `if __name__ == "__main__"` guard, cv2's thread pool already busy in the parent:
    # workers must neither re-run the script nor hang
    script = tmp_path / "make.py"
    script.write_text(
        "import numpy as np, cv2\n"
        "a = np.random.default_rng(0).random((800, 800), dtype=np.float32)\n"
        "for _ in range(5):\n    a = cv2.GaussianBlur(a, (0, 0), 4.0)\n"
        "from semlayout.data.synth import synthesize\n"
        f"synthesize({str(tmp_path / 'out')!r}, 66, seed=2, workers=2, progress=False)\n"
        "print('done')\n"
    )
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("done") == 1
    assert len(read_manifest(tmp_path / "out")) == 66
