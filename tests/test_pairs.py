"""The pair folder reader/writer (`semlayout.data.pairs`): what it accepts and what it refuses."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from semlayout.data.pairs import (
    ImageRejected,
    PairArrays,
    check_binary_layout,
    decode_gray8,
    encode_png,
    read_gray8,
    read_manifest,
    write_pair_folder,
)
from semlayout.errors import SemlayoutError

HEADER = "id,sem_path,layout_path,pattern_type\n"


def _folder(tmp_path: Path, text: str) -> Path:
    d = tmp_path / "pairs"
    d.mkdir(exist_ok=True)
    (d / "manifest.csv").write_text(text, encoding="utf-8")
    return d


# --- read_manifest -------------------------------------------------------------------------------


def test_reads_records_with_extra_columns_and_optional_clean(tmp_path: Path) -> None:
    d = _folder(
        tmp_path,
        "id,sem_path,layout_path,pattern_type,clean_path,dose\n"
        "a,sem/a.png,layout/a.png,via_array,clean/a.png,12.5\n"
        "b,sem/b.png,layout/b.png,,,\n",
    )
    recs = read_manifest(d)
    assert [r.id for r in recs] == ["a", "b"]
    assert recs[0].sem_path == d / "sem/a.png" and recs[0].clean_path == d / "clean/a.png"
    assert recs[0].extra == {"dose": "12.5"} and recs[0].pattern_type == "via_array"
    assert recs[1].clean_path is None and recs[1].pattern_type == "unknown"


def test_missing_folder_and_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(SemlayoutError, match="pair folder not found"):
        read_manifest(tmp_path / "nope")
    with pytest.raises(SemlayoutError, match="manifest.csv is missing"):
        read_manifest(tmp_path)


def test_missing_columns_named(tmp_path: Path) -> None:
    d = _folder(tmp_path, "id,sem_path\na,sem/a.png\n")
    with pytest.raises(SemlayoutError, match="missing column\\(s\\) layout_path, pattern_type"):
        read_manifest(d)


def test_duplicate_ids(tmp_path: Path) -> None:
    d = _folder(tmp_path, HEADER + "a,sem/a.png,layout/a.png,x\na,sem/b.png,layout/b.png,x\n")
    with pytest.raises(SemlayoutError, match="line 3: duplicate id 'a'"):
        read_manifest(d)


@pytest.mark.parametrize("bad", ["../a.png", "sem/../../a.png", "sem/../../../etc/passwd"])
def test_paths_escaping_the_folder(tmp_path: Path, bad: str) -> None:
    d = _folder(tmp_path, HEADER + f"a,{bad},layout/a.png,x\n")
    with pytest.raises(SemlayoutError, match="escapes the pair folder"):
        read_manifest(d)


def test_dotdot_that_stays_inside_is_fine(tmp_path: Path) -> None:
    d = _folder(tmp_path, HEADER + "a,sem/../sem/a.png,layout/a.png,x\n")
    assert read_manifest(d)[0].sem_path == d / "sem/../sem/a.png"


@pytest.mark.parametrize("bad", ["/etc/passwd", "C:/data/a.png", "\\\\server\\a.png"])
def test_absolute_paths(tmp_path: Path, bad: str) -> None:
    d = _folder(tmp_path, HEADER + f"a,sem/a.png,{bad},x\n")
    with pytest.raises(SemlayoutError, match="must be relative"):
        read_manifest(d)


def test_empty_path(tmp_path: Path) -> None:
    d = _folder(tmp_path, HEADER + "a,,layout/a.png,x\n")
    with pytest.raises(SemlayoutError, match="empty sem_path"):
        read_manifest(d)


def test_empty_manifest(tmp_path: Path) -> None:
    with pytest.raises(SemlayoutError, match="no pairs listed"):
        read_manifest(_folder(tmp_path, HEADER))
    with pytest.raises(SemlayoutError, match="manifest.csv is empty"):
        read_manifest(_folder(tmp_path, ""))


@pytest.mark.parametrize("bad", ["", "has space", "-lead", "a/b", "x" * 129])
def test_invalid_ids(tmp_path: Path, bad: str) -> None:
    d = _folder(tmp_path, HEADER + f"{bad},sem/a.png,layout/a.png,x\n")
    with pytest.raises(SemlayoutError, match="is not valid"):
        read_manifest(d)


def test_not_utf8(tmp_path: Path) -> None:
    d = tmp_path / "p"
    d.mkdir()
    (d / "manifest.csv").write_bytes(HEADER.encode() + b"\xff\xfe,a,b,c\n")
    with pytest.raises(SemlayoutError, match="not UTF-8"):
        read_manifest(d)


def test_excel_bom_and_padded_header_are_accepted(tmp_path: Path) -> None:
    # spreadsheet exports: a UTF-8 byte-order mark, spaces after the commas
    d = tmp_path / "p"
    d.mkdir()
    (d / "manifest.csv").write_bytes(
        b"\xef\xbb\xbfid, sem_path, layout_path, pattern_type\r\n" b"a,sem/a.png,layout/a.png,x\r\n"
    )
    rec = read_manifest(d)[0]
    assert rec.id == "a" and rec.sem_path == d / "sem/a.png"


# --- read_gray8 / decode_gray8 ------------------------------------------------------------------


def _png(path: Path, img: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), img)
    return path


def test_reads_gray8(tmp_path: Path) -> None:
    img = np.arange(304 * 304, dtype=np.uint32).reshape(304, 304).astype(np.uint8)
    out = read_gray8(_png(tmp_path / "g.png", img), (304, 304))
    assert out.dtype == np.uint8 and out.shape == (304, 304)
    np.testing.assert_array_equal(out, img)


@pytest.mark.parametrize(
    ("make", "reason", "needle"),
    [
        (lambda: np.zeros((8, 8, 3), np.uint8), "not_grayscale", "RGB"),
        (lambda: np.zeros((8, 8, 4), np.uint8), "not_grayscale", "RGBA"),
        (lambda: np.zeros((8, 8), np.uint16), "bit_depth", "16-bit"),
    ],
)
def test_refuses_colour_and_16_bit(tmp_path: Path, make, reason: str, needle: str) -> None:
    p = _png(tmp_path / "x.png", make())
    with pytest.raises(ImageRejected) as ei:
        read_gray8(p)
    assert ei.value.reason == reason and needle in str(ei.value) and str(p) in str(ei.value)


def test_refuses_wrong_size(tmp_path: Path) -> None:
    p = _png(tmp_path / "s.png", np.zeros((250, 300), np.uint8))
    with pytest.raises(ImageRejected, match="expected 250x250 px, got 300x250") as ei:
        read_gray8(p, (250, 250))
    assert ei.value.reason == "wrong_size"


def test_refuses_truncated_text_empty_and_missing(tmp_path: Path) -> None:
    full = encode_png(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    cut = tmp_path / "cut.png"
    cut.write_bytes(full[: len(full) // 2])
    text = tmp_path / "notes.png"
    text.write_text("hello, not an image\n")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    for p in (cut, text, empty):
        with pytest.raises(ImageRejected) as ei:
            read_gray8(p)
        assert ei.value.reason == "unreadable", p
    with pytest.raises(ImageRejected) as ei:
        read_gray8(tmp_path / "gone.png")
    assert ei.value.reason == "missing"


def test_decode_gray8_from_bytes_and_binary_check() -> None:
    img = np.zeros((10, 10), np.uint8)
    img[2:5] = 255
    out = check_binary_layout(decode_gray8(encode_png(img), "up.png", (10, 10)))
    np.testing.assert_array_equal(out, img)
    img[0, 0] = 7
    with pytest.raises(ImageRejected) as ei:
        check_binary_layout(img, "t.png")
    assert ei.value.reason == "not_binary"


def test_image_rejected_is_a_semlayout_error() -> None:
    assert issubclass(ImageRejected, SemlayoutError)


# --- write_pair_folder ------------------------------------------------------------------------


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    pairs = [
        PairArrays(
            f"p{i}",
            rng.integers(0, 255, (304, 304), dtype=np.uint8),
            (rng.random((250, 250)) > 0.5).astype(np.uint8) * 255,
            "line_space",
            clean=rng.integers(0, 255, (304, 304), dtype=np.uint8),
            extra={"dose": str(i)},
        )
        for i in range(3)
    ]
    ids = write_pair_folder(tmp_path / "out", pairs)
    assert ids == ["p0", "p1", "p2"]
    recs = read_manifest(tmp_path / "out")
    for p, r in zip(pairs, recs, strict=True):
        np.testing.assert_array_equal(read_gray8(r.sem_path, (304, 304)), p.sem)
        np.testing.assert_array_equal(read_gray8(r.layout_path, (250, 250)), p.layout)
        assert r.clean_path is not None
        np.testing.assert_array_equal(read_gray8(r.clean_path), p.clean)
        assert r.extra == p.extra


def test_write_is_atomic(tmp_path: Path) -> None:
    def pairs():
        yield PairArrays("a", np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8), "x")
        raise RuntimeError("source died")

    with pytest.raises(RuntimeError):
        write_pair_folder(tmp_path / "out", pairs())
    assert list(tmp_path.iterdir()) == []
