"""Upload validation: header checks before decoding, every hostile image refused with the right
code."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from hostile_images import good_gray, good_uploads, hostile_uploads, png_bomb
from PIL import Image

from semlayout.serving.uploads import UploadRejected, decode_upload, read_header

MAX_PIXELS = 4096 * 4096


@pytest.mark.parametrize("name", sorted(hostile_uploads()))
def test_hostile_upload_is_refused_with_a_reason(name):
    data, statuses = hostile_uploads()[name]
    with pytest.raises(UploadRejected) as info:
        decode_upload(data, "images[2]", MAX_PIXELS, min_side=8)
    assert info.value.status_code in statuses, (name, info.value.status_code, info.value.detail)
    # the reason names the field: a batch or a pair request carries several uploads
    assert info.value.detail.startswith("images[2]: ") and len(info.value.detail) > len(
        "images[2]: "
    )


@pytest.mark.parametrize("name", sorted(good_uploads()))
def test_good_uploads_decode_exactly(name):
    img = decode_upload(good_uploads()[name], "image", MAX_PIXELS, min_side=8)
    assert img.dtype == np.uint8 and img.shape == (64, 64)
    if name != "jpeg":  # lossless formats round-trip exactly
        assert np.array_equal(img, good_gray())


def test_headers_are_read_without_decoding():
    h = read_header(png_bomb(50_000, 40_000))
    assert (h.width, h.height, h.bit_depth, h.kind) == (50_000, 40_000, 8, "grayscale")
    g = good_gray()
    for fmt in ("TIFF", "JPEG", "PNG"):
        buf = io.BytesIO()
        Image.fromarray(g[:, :50]).save(buf, format=fmt)
        h = read_header(buf.getvalue())
        assert (h.width, h.height, h.channels) == (50, 64, 1), fmt
    ok, buf = cv2.imencode(".tiff", g.astype(np.float32))
    assert read_header(buf.tobytes()).kind == "float"


def test_bomb_is_refused_before_any_allocation():
    import tracemalloc

    data = png_bomb(30_000, 30_000)  # 900 Mpx: decoding would allocate ~900 MB
    tracemalloc.start()
    with pytest.raises(UploadRejected) as info:
        decode_upload(data, "image", MAX_PIXELS)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert info.value.status_code == 413 and "30000x30000" in info.value.detail
    assert peak < 5_000_000
