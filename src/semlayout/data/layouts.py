"""Synthetic layout families: the drawn design over the whole SEM field.

Every family draws a binary design (uint8, 1 = pattern, 0 = background) over
the full 304x304 field the SEM sees; the 250x250 layout template is a window of
that field. Geometry is randomised per image from the generator passed in, so
a seed fixes the design. Families are deliberately not perfectly periodic
(breaks, jogs, missing vias, irregular pitch) so alignment has a unique answer
more often than a textbook grating would give it.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

FIELD = 304

Drawer = Callable[[np.random.Generator, int], np.ndarray]


def _rect(img: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> None:
    """Fill the half-open pixel box [x0, x1) x [y0, y1), clipped to the image."""
    h, w = img.shape
    c0, c1 = max(int(round(x0)), 0), min(int(round(x1)), w)
    r0, r1 = max(int(round(y0)), 0), min(int(round(y1)), h)
    if c1 > c0 and r1 > r0:
        img[r0:r1, c0:c1] = 1


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    # feature sizes in px span a magnification range: equal weight per octave
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _maybe_transpose(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    # Draw horizontally, then rotate half of them so both orientations appear.
    return np.ascontiguousarray(img.T) if rng.random() < 0.5 else img


def line_space(rng: np.random.Generator, size: int = FIELD) -> np.ndarray:
    """Parallel lines, pitch 10-60 px, duty 0.3-0.7; sometimes breaks, jogs, irregular pitch."""
    img = np.zeros((size, size), np.uint8)
    pitch = _log_uniform(rng, 10, 60)
    duty = rng.uniform(0.3, 0.7)
    width = max(3.0, pitch * duty)
    irregular = rng.random() < 0.3
    p_break = rng.choice([0.0, 0.0, 0.15, 0.35])
    p_jog = rng.choice([0.0, 0.0, 0.2])
    y = -rng.uniform(0, pitch)
    while y < size:
        w = width * (rng.uniform(0.8, 1.2) if irregular else 1.0)
        if rng.random() < p_jog:
            # a jog: the line steps sideways by a few px part-way along
            xj = rng.uniform(0.2, 0.8) * size
            dy = rng.choice([-1, 1]) * rng.uniform(2, max(3.0, 0.25 * (pitch - w) + 2))
            _rect(img, 0, y, xj + w / 2, y + w)
            _rect(img, xj - w / 2, y + dy, size, y + dy + w)
        else:
            _rect(img, 0, y, size, y + w)
        if rng.random() < p_break:
            gap = rng.uniform(8, 40)
            xb = rng.uniform(0, size - gap)
            img[max(int(round(y)), 0) : max(int(round(y + w + 3)), 0), int(xb) : int(xb + gap)] = 0
        y += pitch * (rng.uniform(0.85, 1.15) if irregular else 1.0)
    return _maybe_transpose(rng, img)


def via_array(rng: np.random.Generator, size: int = FIELD) -> np.ndarray:
    """Square (or slightly rectangular) contacts on a grid, some missing."""
    img = np.zeros((size, size), np.uint8)
    side = _log_uniform(rng, 4, 24)
    aspect = 1.0 if rng.random() < 0.7 else rng.uniform(0.6, 1.6)
    wx, wy = side, side * aspect
    px = max(wx + 4, side * rng.uniform(1.6, 3.0))
    py = px if rng.random() < 0.6 else max(wy + 4, side * rng.uniform(1.6, 3.0))
    p_missing = rng.choice([0.0, 0.05, 0.15])
    ox, oy = rng.uniform(0, px), rng.uniform(0, py)
    for y in np.arange(-oy, size, py):
        for x in np.arange(-ox, size, px):
            if rng.random() >= p_missing:
                _rect(img, x, y, x + wx, y + wy)
    return img


def contact_staggered(rng: np.random.Generator, size: int = FIELD) -> np.ndarray:
    """Round (or square) contacts with every other row shifted by half a pitch."""
    img = np.zeros((size, size), np.uint8)
    r = _log_uniform(rng, 2.5, 12)
    pitch = 2 * r * rng.uniform(1.5, 2.8)
    row_pitch = pitch * rng.uniform(0.5, 1.0)
    round_ = rng.random() < 0.75
    p_missing = rng.choice([0.0, 0.05, 0.1])
    ox, oy = rng.uniform(0, pitch), rng.uniform(0, row_pitch)
    for k, y in enumerate(np.arange(-oy, size + row_pitch, row_pitch)):
        shift = pitch / 2 if k % 2 else 0.0
        for x in np.arange(-ox + shift, size + pitch, pitch):
            if rng.random() < p_missing:
                continue
            if round_:
                # cv2 draws with 4 fractional bits so centres need not be whole pixels
                cv2.circle(img, (int(x * 16), int(y * 16)), int(r * 16), 1, -1, cv2.LINE_8, 4)
            else:
                _rect(img, x - r, y - r, x + r, y + r)
    return img


def line_end(rng: np.random.Generator, size: int = FIELD) -> np.ndarray:
    """Lines cut into segments: tip-to-tip gaps of 8-30 px at staggered positions."""
    img = np.zeros((size, size), np.uint8)
    pitch = _log_uniform(rng, 12, 56)
    width = pitch * rng.uniform(0.35, 0.6)
    seg_len = rng.uniform(50, 160)
    y = -rng.uniform(0, pitch)
    while y < size:
        x = -rng.uniform(0, seg_len)
        while x < size:
            length = seg_len * rng.uniform(0.6, 1.4)
            _rect(img, x, y, x + length, y + width)
            x += length + rng.uniform(8, 30)
        y += pitch
    return _maybe_transpose(rng, img)


def _wire(img: np.ndarray, pts: list[tuple[float, float]], width: float) -> None:
    """Manhattan wire through the points (consecutive points share x or y)."""
    h = width / 2
    for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:], strict=True):
        _rect(img, min(x0, x1) - h, min(y0, y1) - h, max(x0, x1) + h, max(y0, y1) + h)


def l_shape(rng: np.random.Generator, size: int = FIELD) -> np.ndarray:
    """L shapes and bent (multi-corner) routing wires, non-overlapping-ish, several per field."""
    img = np.zeros((size, size), np.uint8)
    width = _log_uniform(rng, 4, 22)
    n = int(rng.integers(6, 14))
    for _ in range(n):
        x, y = rng.uniform(-20, size), rng.uniform(-20, size)
        pts = [(x, y)]
        horizontal = rng.random() < 0.5
        for _ in range(int(rng.integers(2, 5))):
            step = rng.uniform(30, 120) * rng.choice([-1, 1])
            x, y = (x + step, y) if horizontal else (x, y + step)
            pts.append((x, y))
            horizontal = not horizontal
        _wire(img, pts, width)
    return img


def t_shape(rng: np.random.Generator, size: int = FIELD) -> np.ndarray:
    """T junctions (and occasional crosses): a bar with a perpendicular stem."""
    img = np.zeros((size, size), np.uint8)
    width = _log_uniform(rng, 4, 22)
    n = int(rng.integers(5, 11))
    for _ in range(n):
        cx, cy = rng.uniform(0, size), rng.uniform(0, size)
        half = rng.uniform(25, 80)
        stem = rng.uniform(25, 90)
        _wire(img, [(cx - half, cy), (cx + half, cy)], width)
        sign = rng.choice([-1, 1])
        _wire(img, [(cx, cy), (cx, cy + sign * stem)], width)
        if rng.random() < 0.2:
            _wire(img, [(cx, cy), (cx, cy - sign * stem * 0.7)], width)
    return _maybe_transpose(rng, img)


def random_routing(rng: np.random.Generator, size: int = FIELD) -> np.ndarray:
    """Manhattan polygons: unions of grid-snapped rectangles and track segments."""
    img = np.zeros((size, size), np.uint8)
    grid = float(rng.choice([3, 4, 6, 8]))
    track = grid * float(rng.integers(4, 9))
    width = track * rng.uniform(0.35, 0.55)

    def snap(v: float) -> float:
        return round(v / grid) * grid

    # horizontal track segments
    for y in np.arange(snap(rng.uniform(0, track)), size, track):
        x = snap(rng.uniform(-60, 20))
        while x < size:
            length = snap(rng.uniform(20, 140))
            if rng.random() < 0.7:
                _rect(img, x, y, x + length, y + width)
            x += length + snap(rng.uniform(grid * 2, 40))
    # vertical jumpers and blocks make the union non-trivial polygons
    for _ in range(int(rng.integers(3, 10))):
        x = snap(rng.uniform(0, size))
        y = snap(rng.uniform(0, size))
        if rng.random() < 0.6:
            _rect(img, x, y, x + width, y + snap(rng.uniform(track, 3 * track)))
        else:
            _rect(img, x, y, x + snap(rng.uniform(20, 60)), y + snap(rng.uniform(20, 60)))
    return img


FAMILIES: dict[str, Drawer] = {
    "line_space": line_space,
    "via_array": via_array,
    "contact_staggered": contact_staggered,
    "line_end": line_end,
    "l_shape": l_shape,
    "t_shape": t_shape,
    "random_routing": random_routing,
}

# Imbalanced on purpose (line/space dominates, as in real metrology data sets).
DEFAULT_MIX: dict[str, float] = {
    "line_space": 0.50,
    "via_array": 0.12,
    "contact_staggered": 0.10,
    "line_end": 0.10,
    "l_shape": 0.06,
    "t_shape": 0.05,
    "random_routing": 0.07,
}


def draw_layout(family: str, rng: np.random.Generator, size: int = FIELD) -> np.ndarray:
    """(size, size) uint8 in {0, 1}. Redraws (a few times) a field that came out blank or full."""
    drawer = FAMILIES[family]
    for _ in range(8):
        field = drawer(rng, size)
        fill = float(field.mean())
        if 0.05 < fill < 0.9:
            return field
    return field
