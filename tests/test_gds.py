"""GDSII clips: pixel-exact rasterisation at known coordinates, tiling, --render-sem, errors."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import gdstk
import numpy as np
import pytest
from skimage.measure import points_in_poly

from semlayout.data.gds import gds_clips, rasterize, read_layer, tile_origins
from semlayout.data.pairs import check_binary_layout, read_gray8, read_manifest
from semlayout.data.synth import read_truth
from semlayout.errors import SemlayoutError

P = 10.0  # nm per pixel in these tests; a clip is 2500 nm = 2.5 um


def _write(path: Path, build) -> Path:
    lib = gdstk.Library(unit=1e-6, precision=1e-9)  # user unit um, coordinates below in um
    build(lib)
    lib.write_gds(str(path))
    return path


@pytest.fixture()
def design(tmp_path: Path) -> Path:
    """Cell TOP, layer 1: a few rectangles, a triangle, an arrayed via cell, a path;
    layer 2/5 one box."""

    def build(lib: gdstk.Library) -> None:
        via = lib.new_cell("VIA")
        via.add(gdstk.rectangle((0, 0), (0.1, 0.1), layer=1))
        top = lib.new_cell("TOP")
        top.add(gdstk.rectangle((0.1, 0.2), (0.4, 0.7), layer=1))  # clip 0 (top-left tile)
        top.add(gdstk.Polygon([(1.0, 1.0), (2.0, 1.0), (1.0, 2.0)], layer=1))  # triangle
        top.add(
            gdstk.Reference(via, (3.0, 0.5), columns=3, rows=2, spacing=(0.3, 0.3))
        )  # second tile
        top.add(gdstk.FlexPath([(0.5, 2.3), (2.0, 2.3)], 0.1, layer=1))  # horizontal wire
        top.add(gdstk.rectangle((0, 0), (0.05, 0.05), layer=2, datatype=5))

    return _write(tmp_path / "design.gds", build)


def test_rectangle_on_pixel_boundaries_is_exact() -> None:
    rect = np.array([[100, 200], [400, 200], [400, 700], [100, 700]], float)  # nm
    img = rasterize([rect], 0.0, 0.0, P)
    expected = np.zeros((250, 250), np.uint8)
    # x 100..400 nm -> columns 10..39; y 200..700 nm -> rows (2500-700)/10=180 .. 229 (row 0 = top)
    expected[180:230, 10:40] = 1
    np.testing.assert_array_equal(img, expected)


def test_abutting_and_overlapping_polygons_make_a_union() -> None:
    a = np.array([[0, 0], [500, 0], [500, 500], [0, 500]], float)
    b = np.array([[500, 0], [1000, 0], [1000, 500], [500, 500]], float)  # abuts a: no seam
    c = np.array(
        [[200, 200], [200, 800], [800, 800], [800, 200]], float
    )  # clockwise, overlaps a and b
    img = rasterize([a, b, c], 0.0, 0.0, P)
    expected = np.zeros((250, 250), np.uint8)
    expected[200:250, 0:100] = 1
    expected[170:230, 20:80] = 1
    np.testing.assert_array_equal(img, expected)


def test_general_polygons_match_point_in_polygon_reference() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        # random convex-ish star polygon, off-grid vertices
        k = int(rng.integers(3, 9))
        ang = np.sort(rng.uniform(0, 2 * np.pi, k))
        rad = rng.uniform(300, 1100, k)
        cx, cy = rng.uniform(500, 2000, 2)
        poly = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1)
        img = rasterize([poly], 0.0, 0.0, P)
        cols, rows = np.meshgrid(np.arange(250), np.arange(250))
        centres = np.stack([(cols + 0.5) * P, 2500 - (rows + 0.5) * P], -1).reshape(-1, 2)
        ref = points_in_poly(centres, poly).reshape(250, 250)
        assert (img.astype(bool) != ref).sum() == 0


def test_read_layer_flattens_references_and_paths(design: Path) -> None:
    data = read_layer(design, layer=1)
    assert data.cell == "TOP"
    # 1 rect + 1 triangle + 6 arrayed vias + 1 path
    assert len(data.polygons) == 9
    assert data.bbox == pytest.approx((100.0, 200.0, 3700.0, 2350.0))
    assert len(read_layer(design, layer=2, datatype=5).polygons) == 1


def test_tiling_covers_the_bbox() -> None:
    origins = tile_origins((0.0, 0.0, 6000.0, 2500.0), 2500.0, 2500.0)
    assert origins == [(0.0, 0.0), (2500.0, 0.0), (5000.0, 0.0)]
    assert len(tile_origins((0.0, 0.0, 100.0, 100.0), 2500.0, 1000.0)) == 1


def test_gds_clips_pixel_exact_at_known_coordinates(design: Path, tmp_path: Path) -> None:
    res = gds_clips(design, layer=1, pixel_nm=P, out_dir=tmp_path / "clips")
    rows = list(csv.DictReader((tmp_path / "clips" / "clips.csv").read_text().splitlines()))
    assert [r["id"] for r in rows] == [c["id"] for c in res.clips]
    # bbox x 100..3700, y 200..2350 nm -> a 2x1 tiling at stride 2500 nm,
    # origins (100, -150) and (2600, -150)
    assert [(float(r["x_nm"]), float(r["y_nm"])) for r in rows] == [
        (100.0, -150.0),
        (2600.0, -150.0),
    ]
    assert all(r["pattern_type"] == "gds" and r["layer"] == "1" for r in rows)
    first = check_binary_layout(read_gray8(tmp_path / "clips" / rows[0]["layout_path"], (250, 250)))
    # rectangle (100..400, 200..700) nm in a clip with lower-left (100, -150): top = 2350 nm
    # columns (100-100)/10=0 .. 29, rows (2350-700)/10=165 .. (2350-200)/10-1=214
    assert (first[165:215, 0:30] == 255).all()
    assert (
        first[164, 0:30].max() == 0
        and first[215, 0:30].max() == 0
        and first[165:215, 30].max() == 0
    )
    # the wire: y 2250..2350 -> rows 0..9, x 500..2000 -> columns 40..189 (flush ends)
    assert (first[0:10, 40:190] == 255).all() and first[10, 40:190].max() == 0
    assert first[0:10, 39].max() == 0 and first[0:10, 190].max() == 0
    second = read_gray8(tmp_path / "clips" / rows[1]["layout_path"])
    # vias at x 3000+0.3i um, y 500+0.3j um (100 nm squares); clip origin (2600, -150)
    for i in range(3):
        for j in range(2):
            c0 = int((3000 + 300 * i - 2600) / P)
            r0 = int((2350 - (500 + 300 * j + 100)) / P)
            assert (second[r0 : r0 + 10, c0 : c0 + 10] == 255).all()
    assert (second > 0).sum() == 6 * 100  # only the vias in this tile


def test_empty_and_full_clips_are_skipped_and_max_clips(tmp_path: Path) -> None:
    def build(lib: gdstk.Library) -> None:
        top = lib.new_cell("TOP")
        top.add(gdstk.rectangle((0, 0), (0.5, 0.5), layer=1))  # tile 0
        top.add(gdstk.rectangle((2.5, 0), (5.0, 2.5), layer=1))  # covers tile 1 completely
        top.add(gdstk.rectangle((10.0, 2.0), (10.5, 2.5), layer=1))  # tile 4; tiles 2, 3 empty

    gds = _write(tmp_path / "sparse.gds", build)
    res = gds_clips(gds, layer=1, pixel_nm=P, out_dir=tmp_path / "a")
    assert [(float(c["x_nm"]), float(c["y_nm"])) for c in res.clips] == [(0.0, 0.0), (10000.0, 0.0)]
    assert all(0 < float(c["fill"]) < 1 for c in res.clips)
    assert sorted(p.name for p in (tmp_path / "a" / "layout").iterdir()) == [
        "clip-000000.png",
        "clip-000001.png",
    ]
    res2 = gds_clips(
        gds, layer=1, pixel_nm=P, out_dir=tmp_path / "b", stride_nm=1250.0, max_clips=2
    )
    assert res2.n_clips == 2


def test_render_sem_makes_a_pair_folder(design: Path, tmp_path: Path) -> None:
    out = tmp_path / "pairs"
    gds_clips(design, layer=1, pixel_nm=P, out_dir=out, render_sem=True, seed=1)
    records = read_manifest(out)
    truth = read_truth(out)
    plain = tmp_path / "plain"
    gds_clips(design, layer=1, pixel_nm=P, out_dir=plain)
    for r in records:
        assert r.pattern_type == "gds"
        read_gray8(r.sem_path, (304, 304))
        assert r.clean_path is not None
        read_gray8(r.clean_path, (304, 304))
        x, y = truth[r.id]
        assert 2 <= x <= 52 and 2 <= y <= 52
        # the template cut from the rendered field equals the plain rasterised clip
        np.testing.assert_array_equal(
            read_gray8(r.layout_path), read_gray8(plain / "layout" / f"{r.id}.png")
        )


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "semlayout.cli", "gds-clips", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_writes_clips(design: Path, tmp_path: Path) -> None:
    res = _cli(str(design), "--layer", "1", "--pixel-nm", "10", "--out", str(tmp_path / "o"))
    assert res.returncode == 0, res.stderr
    # the command writes what the library call writes: the same table and the same pixels
    gds_clips(design, layer=1, pixel_nm=P, out_dir=tmp_path / "lib")
    cli_rows = (tmp_path / "o" / "clips.csv").read_text().splitlines()
    assert cli_rows == (tmp_path / "lib" / "clips.csv").read_text().splitlines()
    assert len(cli_rows) == 3  # header + the 2x1 tiling of the design's bbox
    for row in csv.DictReader(cli_rows):
        a = read_gray8(tmp_path / "o" / row["layout_path"], (250, 250))
        b = read_gray8(tmp_path / "lib" / row["layout_path"], (250, 250))
        assert np.array_equal(a, b) and 0 < int((a > 0).sum()) < a.size


def _truncated(tmp_path: Path, design: Path) -> Path:
    data = design.read_bytes()
    p = tmp_path / "cut.gds"
    p.write_bytes(data[: len(data) // 2])
    return p


def _two_tops(tmp_path: Path) -> Path:
    def build(lib: gdstk.Library) -> None:
        lib.new_cell("A").add(gdstk.rectangle((0, 0), (1, 1), layer=1))
        lib.new_cell("B").add(gdstk.rectangle((0, 0), (1, 1), layer=1))

    return _write(tmp_path / "two.gds", build)


def _labels_only(tmp_path: Path) -> Path:
    def build(lib: gdstk.Library) -> None:
        lib.new_cell("T").add(gdstk.Label("hello", (0, 0), layer=1))

    return _write(tmp_path / "labels.gds", build)


@pytest.mark.parametrize(
    ("case", "extra", "needle"),
    [
        ("missing", [], "not found"),
        ("text", [], "not a GDSII"),
        ("truncated", [], "cannot read GDSII"),
        ("design", ["--layer", "7"], "layer 7 has no polygons"),
        ("design", ["--cell", "NOPE"], "cell 'NOPE'"),
        ("design", ["--pixel-nm", "0"], "--pixel-nm"),
        ("two_tops", [], "choose one with --cell"),
        ("labels", [], "no polygons"),
    ],
)
def test_cli_bad_input_one_line(
    design: Path, tmp_path: Path, case: str, extra: list[str], needle: str
) -> None:
    path = {
        "missing": tmp_path / "nope.gds",
        "text": tmp_path / "notes.gds",
        "truncated": _truncated(tmp_path, design) if case == "truncated" else design,
        "design": design,
        "two_tops": _two_tops(tmp_path) if case == "two_tops" else design,
        "labels": _labels_only(tmp_path) if case == "labels" else design,
    }[case]
    if case == "text":
        path.write_text("this is not a layout\n")
    args = {"--layer": "1", "--pixel-nm": "10"}
    for k, v in zip(extra[::2], extra[1::2], strict=True):
        args[k] = v
    flat = [t for kv in args.items() for t in kv]
    out = tmp_path / "out"
    res = _cli(str(path), *flat, "--out", str(out))
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], res.stderr
    assert not out.exists()


def test_unknown_layer_lists_what_is_there(design: Path) -> None:
    with pytest.raises(SemlayoutError, match=r"present: 1/0, 2/5"):
        read_layer(design, layer=3)


def test_polygon_with_hole_and_database_units(tmp_path: Path) -> None:
    # a 1000 nm square ring (hole 400 nm), in a library whose user unit is 1 nm
    def build(lib: gdstk.Library) -> None:
        ring = gdstk.boolean(
            gdstk.rectangle((0, 0), (1000, 1000)),
            gdstk.rectangle((300, 300), (700, 700)),
            "not",
            layer=3,
        )
        lib.new_cell("R").add(*ring)

    lib = gdstk.Library(unit=1e-9, precision=1e-12)
    build(lib)
    path = tmp_path / "ring.gds"
    lib.write_gds(str(path))
    data = read_layer(path, layer=3)
    assert data.bbox == pytest.approx((0.0, 0.0, 1000.0, 1000.0))
    img = rasterize(data.polygons, 0.0, 0.0, P)
    expected = np.zeros((250, 250), np.uint8)
    expected[150:250, 0:100] = 1  # y 0..1000 nm -> rows 150..249, x -> columns 0..99
    expected[180:220, 30:70] = 0  # the hole: x, y 300..700 nm
    np.testing.assert_array_equal(img, expected)


def test_cli_render_sem_pair_folder(design: Path, tmp_path: Path) -> None:
    out = tmp_path / "pairs"
    res = _cli(
        str(design),
        "--layer",
        "1",
        "--pixel-nm",
        "10",
        "--out",
        str(out),
        "--render-sem",
        "--seed",
        "3",
    )
    assert res.returncode == 0, res.stderr
    assert len(read_manifest(out)) == len(read_truth(out)) == 2
    assert (out / "clips.csv").is_file()


def test_a_pixel_size_that_would_cut_millions_of_clips_is_refused_at_once(design, tmp_path) -> None:
    from semlayout.data.gds import MAX_TILES, iter_tile_origins, tile_count

    # the design is ~6 x 3 um: at 0.0001 nm/px (a typo) that is ~1e10 windows of 0.025 nm
    assert tile_count((0.0, 0.0, 6000.0, 3000.0), 0.025, 0.025) > MAX_TILES
    with pytest.raises(SemlayoutError, match="clip windows"):
        gds_clips(design, 1, 0.0001, tmp_path / "out", max_clips=5)
    assert not (tmp_path / "out").exists()
    first = next(iter_tile_origins((0.0, 0.0, 1e9, 1e9), 2500.0, 2500.0))  # lazy: no list of 1.6e11
    assert first == (0.0, 1e9 - 2500.0)
