"""Hostile and odd uploads, shared by the upload unit tests, the HTTP hostile suite and the bench.

Each entry: name -> (bytes, acceptable HTTP statuses). Built with independent encoders
(OpenCV, Pillow, hand-written headers with zlib/struct) rather than the code under test.
"""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
from PIL import Image


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png_bomb(width: int, height: int) -> bytes:
    """A valid-looking 8-bit gray PNG claiming width x height px; IDAT holds only the first rows."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = b"".join(b"\x00" + b"\x00" * width for _ in range(4))
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(rows, 9))
        + png_chunk(b"IEND", b"")
    )


def tiff_header_only(width: int, height: int) -> bytes:
    """Little-endian TIFF with one IFD claiming width x height 8-bit gray, strip data missing."""
    entries = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, 8),
        (277, 3, 1, 1),
        (278, 4, 1, height),
        (279, 4, 1, width * height),
    ]
    ifd = (
        struct.pack("<H", len(entries))
        + b"".join(
            struct.pack("<HHI", t, typ, c)
            + (struct.pack("<HH", v, 0) if typ == 3 else struct.pack("<I", v))
            for t, typ, c, v in entries
        )
        + struct.pack("<I", 0)
    )
    return b"II*\x00" + struct.pack("<I", 8) + ifd


def jpeg_header_only(width: int, height: int) -> bytes:
    sof = struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof + b"\xff\xd9"


def _cv(ext: str, img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


def _pil(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def good_gray(size: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


def hostile_uploads() -> dict[str, tuple[bytes, set[int]]]:
    g = good_gray()
    png = _cv(".png", g)
    return {
        "zero_bytes": (b"", {422}),
        "text": (b"hello, I am not an image\n" * 10, {415}),
        "html": (b"<html><script>alert(1)</script></html>", {415}),
        "random_binary": (
            bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)),
            {415},
        ),
        "png_signature_only": (png[:8], {422}),
        "truncated_png": (png[: len(png) // 2], {422}),
        "png_bad_crc_body": (png[:40] + b"\x00" * 64, {422}),
        "png_16bit": (_cv(".png", (g.astype(np.uint16) * 257)), {422}),
        "png_rgb": (_cv(".png", np.dstack([g, g, g])), {422}),
        "png_rgba": (_cv(".png", np.dstack([g, g, g, g])), {422}),
        "png_gray_alpha": (_pil(Image.fromarray(np.dstack([g, g]), "LA"), "PNG"), {422}),
        "png_palette": (_pil(Image.fromarray(g).convert("P"), "PNG"), {422}),
        "png_1bit": (_pil(Image.fromarray(g).convert("1"), "PNG"), {422}),
        "png_bomb_50k": (png_bomb(50_000, 50_000), {413}),
        "png_bomb_5k": (png_bomb(5_000, 5_000), {413}),
        "png_zero_width": (png_bomb(0, 10), {422}),
        "png_1x1": (_cv(".png", g[:1, :1]), {422}),
        "tiff_float32": (_cv(".tiff", g.astype(np.float32) / 255), {422}),
        "tiff_16bit": (_cv(".tiff", g.astype(np.uint16) * 257), {422}),
        "tiff_rgb": (_cv(".tiff", np.dstack([g, g, g])), {422}),
        "tiff_huge_header": (tiff_header_only(60_000, 60_000), {413}),
        "tiff_truncated": (_cv(".tiff", g)[:20], {422}),
        "bigtiff": (b"II+\x00" + b"\x00" * 40, {415}),
        "jpeg_colour": (_cv(".jpg", np.dstack([g, g, g])), {422}),
        "jpeg_huge_header": (jpeg_header_only(65_000, 65_000), {413}),
        "jpeg_no_frame": (b"\xff\xd8\xff\xd9", {422}),
        "bmp": (_cv(".bmp", g), {415}),
        "gif": (_pil(Image.fromarray(g), "GIF"), {415}),
        "webp": (_cv(".webp", g), {415}),
    }


def good_uploads() -> dict[str, bytes]:
    g = good_gray()
    return {
        "png": _cv(".png", g),
        "tiff": _cv(".tiff", g),
        "jpeg": _cv(".jpg", g),
        "tiff_pillow": _pil(Image.fromarray(g), "TIFF"),
        "png_pillow": _pil(Image.fromarray(g), "PNG"),
    }
