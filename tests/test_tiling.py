"""Whole fields by overlapping tiles: coverage, exactness away from the seams, no seam."""

from __future__ import annotations

import numpy as np
import pytest
from helpers_serving import make_checkpoint

from semlayout.errors import SemlayoutError
from semlayout.tiling import (
    OVERLAP,
    WINDOW,
    tile_origins,
    translate_field,
    translator_forward,
    windows,
)


@pytest.mark.parametrize("length", [250, 251, 436, 437, 600, 1024, 2048])
def test_windows_cover_the_field_and_end_flush(length: int) -> None:
    starts = tile_origins(length, WINDOW, OVERLAP)
    assert starts[0] == 0 and starts[-1] + WINDOW == length
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s : s + WINDOW] = True
    assert covered.all()
    # neighbours overlap by at least OVERLAP (the blend band) and never leave a gap
    assert all(b - a <= WINDOW - OVERLAP for a, b in zip(starts, starts[1:], strict=False))


def test_an_identity_network_gives_the_field_back_exactly() -> None:
    img = np.random.default_rng(0).integers(0, 256, (700, 540), dtype=np.uint8)
    out = translate_field(img, lambda b: b.astype(np.float32) / 127.5 - 1.0, batch_size=3)
    assert np.allclose(out, img / 127.5 - 1.0, atol=1e-6)


def test_one_window_alone_is_exact_and_overlaps_are_convex() -> None:
    img = np.zeros((600, 600), np.uint8)
    calls = iter(range(1000))

    def constant_per_window(batch: np.ndarray) -> np.ndarray:
        # every window answers its own constant, so each pixel shows who covered it
        return np.stack([np.full(b.shape, next(calls) / 10.0, np.float32) for b in batch])

    out = translate_field(img, constant_per_window, batch_size=2)
    origins = list(windows(img.shape, WINDOW, OVERLAP))
    count = np.zeros(img.shape, int)
    for r, c in origins:
        count[r : r + WINDOW, c : c + WINDOW] += 1
    values = [k / 10.0 for k in range(len(origins))]
    alone = count == 1
    assert alone.any() and (count > 1).any()
    for k, (r, c) in enumerate(origins):
        own = np.zeros(img.shape, bool)
        own[r : r + WINDOW, c : c + WINDOW] = True
        assert np.allclose(out[alone & own], values[k])
    assert out.min() >= min(values) - 1e-6 and out.max() <= max(values) + 1e-6


@pytest.fixture(scope="module")
def translator(tmp_path_factory: pytest.TempPathFactory):
    from semlayout.inference import Translator

    ckpt = make_checkpoint(tmp_path_factory.mktemp("ckpt") / "c", seed=3, image_size=64)
    return Translator.load(ckpt)


def _field(shape: tuple[int, int]) -> np.ndarray:
    """A line/space field with vias: structure everywhere, so seams would show."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    lines = ((xx // 12) % 2 == 0).astype(np.uint8) * 160
    vias = (((yy // 20) % 3 == 0) & ((xx // 20) % 4 == 0)).astype(np.uint8) * 90
    noise = np.random.default_rng(1).normal(0, 6, shape)
    return np.clip(40 + lines + vias + noise, 0, 255).astype(np.uint8)


def test_the_field_equals_its_crops_away_from_the_seams(translator: object) -> None:
    img = _field((620, 700))
    forward = translator_forward(translator, "sem2layout")
    out = translate_field(img, forward, batch_size=4)
    origins = list(windows(img.shape, WINDOW, OVERLAP))
    count = np.zeros(img.shape, int)
    for r, c in origins:
        count[r : r + WINDOW, c : c + WINDOW] += 1
    for r, c in origins:
        crop = img[r : r + WINDOW, c : c + WINDOW]
        alone = count[r : r + WINDOW, c : c + WINDOW] == 1
        single = forward(crop[None])[0]
        assert np.allclose(out[r : r + WINDOW, c : c + WINDOW][alone], single[alone], atol=1e-5)


def test_no_seam_where_windows_meet() -> None:
    # a network whose answer depends on its whole window (like a U-Net's does): each window is
    # shifted by its own mean, and a brightness gradient gives every window a different mean
    img = _field((560, 560))
    img = np.clip(img.astype(int) + np.linspace(0, 60, 560)[None, :].astype(int), 0, 255)
    img = img.astype(np.uint8)

    def forward(batch: np.ndarray) -> np.ndarray:
        x = batch.astype(np.float32) / 127.5 - 1.0
        return x - x.mean(axis=(1, 2), keepdims=True)

    out = translate_field(img, forward, batch_size=4)
    hard = np.zeros_like(out)  # the windows pasted without blending
    for r, c in windows(img.shape, WINDOW, OVERLAP):
        hard[r : r + WINDOW, c : c + WINDOW] = forward(img[r : r + WINDOW, c : c + WINDOW][None])[0]

    def steps(field: np.ndarray) -> np.ndarray:
        # the mean step across every column boundary, beyond the image's own structure there
        return np.abs((field[:, 1:] - field[:, :-1]).mean(axis=0) - own)

    whole = forward(img[None])[0]  # the field seen as one window: no seams by construction
    own = (whole[:, 1:] - whole[:, :-1]).mean(axis=0)
    assert steps(out).max() <= 0.005, steps(out).max()
    # the check can fail: without the blend, the window edges are seams
    assert steps(hard).max() > 0.02


def test_bad_fields_are_refused() -> None:
    ident = lambda b: b.astype(np.float32)  # noqa: E731
    with pytest.raises(SemlayoutError, match="smaller than one window"):
        translate_field(np.zeros((100, 800), np.uint8), ident)
    with pytest.raises(SemlayoutError, match="2048 px limit"):
        translate_field(np.zeros((300, 2100), np.uint8), ident)
    with pytest.raises(SemlayoutError, match="uint8"):
        translate_field(np.zeros((300, 300), np.float32), ident)
