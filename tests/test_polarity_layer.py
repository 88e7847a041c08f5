"""The layer's pooled polarity evidence (`semlayout.polarity_layer`): clipping, the cap that
lets a layer flip, the established polarity, the CUSUM drift test and the layer label."""

from __future__ import annotations

import numpy as np
import pytest

from semlayout.errors import SemlayoutError
from semlayout.polarity_layer import (
    CAP,
    CLIP,
    CUSUM_H,
    ESTABLISHED,
    LayerPrior,
    LayerState,
    check_layer,
    pooled_polarity,
)


def test_pooling_clips_each_image_and_caps_the_layer_so_it_can_flip():
    s = LayerState("L").fold(50.0)
    assert (s.pooled, s.n, s.implied, s.established) == (CLIP, 1, 1, None)
    s = s.fold_all([50.0] * 20)
    assert s.pooled == CAP and s.established == 1 and s.n == 21
    # the layer's polarity changes: contrary images bring it back within CAP / CLIP images
    steps = 0
    while s.implied != -1:
        s = s.fold(-10.0)
        steps += 1
    assert steps == int(CAP / CLIP) + 1
    assert s.fold_all([-10.0] * 3).established == -1 and ESTABLISHED <= CAP


def test_the_cusum_flags_a_flipped_stream_and_forgets_an_odd_image():
    rng = np.random.default_rng(0)
    normal = rng.normal(2.0, 2.0, 400)  # a bright layer's readings: mostly bright
    s, flags = LayerState(), []
    for e in normal:
        s = s.fold(e)
        flags.append(s.flipped(1))
    assert np.mean(flags) < 0.02
    flags = []
    for e in -normal:  # the same layer, reversed
        s = s.fold(e)
        flags.append(s.flipped(1))
    assert np.mean(flags) > 0.95 and all(flags[10:])
    assert not LayerState().fold(-100.0).flipped(1) and CLIP < CUSUM_H  # one image is not a stream
    assert not LayerState().fold_all([-100.0] * 5).flipped(None)  # nothing expected: no drift


def test_expected_polarity_configured_over_fallback_over_established():
    s = LayerState().fold_all([3.0] * 5)  # established bright
    assert s.expected() == 1 and s.expected(-1) == -1
    assert LayerState(configured=-1).fold_all([3.0] * 5).expected(1) == -1
    assert LayerState().expected() is None


def test_the_layer_label_and_the_prior():
    assert check_layer(None) == "default" and check_layer("M1_poly-2.b") == "M1_poly-2.b"
    for bad in ("", "a b", "x" * 65, "a/b"):
        with pytest.raises(SemlayoutError, match="1-64 characters"):
            check_layer(bad)
    assert LayerPrior.of(-1) == LayerPrior(configured=-1) and LayerPrior.of(None) == LayerPrior()
    assert LayerState("x", 1, 4.0, 3).prior() == LayerPrior(1, 4.0, 3)
    assert pooled_polarity([1.0, -0.5, -0.4]) == (1, pytest.approx(0.1))
    assert pooled_polarity([-1.0])[0] == -1
