"""An SEM/layout pair simulator written independently of `semlayout.data.synth`.

Used to judge alignment on data the aligner was not designed around. It differs
from the project's synth on purpose:

* five Manhattan families: interdigitated ``comb``, staggered ``sram`` bricks,
  dense ``contacts`` (holes, mostly imaged dark = reversed contrast), sparse
  ``isolated`` lines with jogs, and a single-wire ``serpentine``;
* SEM model: material contrast (either sign, sometimes ~0) + secondary-electron
  edge bloom on the feature side (exponential in the distance to the edge),
  a two-Gaussian PSF (core + wide tail), a charging gradient (linear or
  exponential from one side), Poisson shot noise at a random dose (down to ~2
  electrons/pixel), scan-line banding and 8-bit clipping;
* a few genuinely unalignable pairs: a blank SEM, or a template cut from
  another field (``wrong_template``) — the right answer there is a QC reject;
* optional (off by default, so the default pairs never change): a ``grating``
  family (textbook line/space, regular pitch, always imaged with normal
  contrast), and a stage that rotates (up to ``max_rotation`` degrees) and
  scales (up to ``max_scale`` relative error) the field and drops bright dust
  particles on a share of the samples (``p_particles``).

Each pair carries the layout *field* under the whole SEM, so correctness is
judged as in the acceptance criterion: the field under the SEM at the reported
offset equals the template (>= 99.5% of pixels).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

SEM = 304
TPL = 250
FAMILIES = ("comb", "sram", "contacts", "isolated", "serpentine")
EXTRA_FAMILIES = ("grating",)


@dataclass
class SimPair:
    id: str
    family: str
    sem: np.ndarray  # (304, 304) uint8
    layout: np.ndarray  # (250, 250) uint8 {0, 255}
    field: np.ndarray  # (304, 304) uint8 {0, 1}: the layout under the whole SEM
    x: int  # truth: template top-left column in the SEM
    y: int
    alignable: bool = True
    kind: str = "normal"  # normal | blank_sem | wrong_template
    dose: float = 0.0
    polarity: int = 1  # +1 features bright, -1 dark
    # 2x3 map sample -> SEM pixel of the stage distortion (None: the identity)
    warp: np.ndarray | None = None
    clean: np.ndarray | None = None  # (304, 304) uint8: the SEM without shot noise and banding


# ----------------------------------------------------------------------------- layouts


def _comb(rng: np.random.Generator) -> np.ndarray:
    f = np.zeros((SEM, SEM), np.uint8)
    pitch = int(rng.integers(14, 40))
    w = int(rng.integers(4, max(5, pitch // 2)))
    bus = int(rng.integers(8, 20))
    gap = int(rng.integers(6, 25))
    top_bus = int(rng.integers(-30, 40))  # bus rows may be outside the field
    bot_bus = SEM - int(rng.integers(-30, 40))
    f[max(0, top_bus) : max(0, top_bus + bus)] = 1
    f[min(SEM, bot_bus - bus) : min(SEM, bot_bus)] = 1
    phase = int(rng.integers(0, 2 * pitch))
    for k, x0 in enumerate(range(-2 * pitch + phase, SEM, pitch)):
        xs = slice(max(0, x0), max(0, x0 + w))
        if k % 2 == 0:
            f[max(0, top_bus) : max(0, bot_bus - bus - gap), xs] = 1
        else:
            f[max(0, top_bus + bus + gap) : max(0, bot_bus), xs] = 1
    return f


def _sram(rng: np.random.Generator) -> np.ndarray:
    f = np.zeros((SEM, SEM), np.uint8)
    length = int(rng.integers(16, 50))
    gap = int(rng.integers(5, 16))
    height = int(rng.integers(6, 16))
    row_pitch = height + int(rng.integers(5, 14))
    stagger = float(rng.choice([0.5, 0.33, 0.25]))
    px = length + gap
    ox, oy = int(rng.integers(0, px)), int(rng.integers(0, row_pitch))
    defects = rng.random() < 0.5
    for r, y0 in enumerate(range(-row_pitch + oy, SEM, row_pitch)):
        shift = int(round((r % 2) * stagger * px))
        for x0 in range(-2 * px + ox + shift, SEM, px):
            if defects and rng.random() < 0.04:
                continue
            f[max(0, y0) : max(0, y0 + height), max(0, x0) : max(0, x0 + length)] = 1
    return f


def _contacts(rng: np.random.Generator) -> np.ndarray:
    f = np.zeros((SEM, SEM), np.uint8)
    pitch = int(rng.integers(12, 30))
    size = int(rng.integers(4, max(5, pitch - 4)))
    ox, oy = int(rng.integers(0, pitch)), int(rng.integers(0, pitch))
    p_missing = float(rng.choice([0.0, 0.03, 0.1]))
    round_holes = rng.random() < 0.5
    for y0 in range(-pitch + oy, SEM, pitch):
        for x0 in range(-pitch + ox, SEM, pitch):
            if rng.random() < p_missing:
                continue
            if round_holes:
                c = (x0 + size // 2, y0 + size // 2)
                cv2.circle(f, c, max(1, size // 2), 1, thickness=-1)
            else:
                f[max(0, y0) : max(0, y0 + size), max(0, x0) : max(0, x0 + size)] = 1
    return f


def _isolated(rng: np.random.Generator) -> np.ndarray:
    f = np.zeros((SEM, SEM), np.uint8)
    for _ in range(int(rng.integers(1, 5))):
        w = int(rng.integers(5, 30))
        x0 = int(rng.integers(60, SEM - 60 - w))
        if rng.random() < 0.6:  # a jog: the line steps sideways at some row
            yj = int(rng.integers(40, SEM - 40))
            dx = int(rng.integers(-25, 26))
            f[:yj, x0 : x0 + w] = 1
            f[yj:, max(0, x0 + dx) : max(0, x0 + dx + w)] = 1
            lo, hi = sorted((x0, x0 + dx))
            f[yj - w // 2 : yj + w // 2 + 1, max(0, lo) : hi + w] = 1
        else:
            f[:, x0 : x0 + w] = 1
    if rng.random() < 0.5:  # a pad
        s = int(rng.integers(20, 60))
        px, py = int(rng.integers(50, SEM - 50 - s)), int(rng.integers(50, SEM - 50 - s))
        f[py : py + s, px : px + s] = 1
    return f


def _serpentine(rng: np.random.Generator) -> np.ndarray:
    f = np.zeros((SEM, SEM), np.uint8)
    pitch = int(rng.integers(14, 36))
    w = int(rng.integers(4, max(5, pitch // 2)))
    top, bot = int(rng.integers(10, 70)), SEM - int(rng.integers(10, 70))
    phase = int(rng.integers(0, 2 * pitch))
    xs = list(range(-2 * pitch + phase, SEM + pitch, pitch))
    for k, x0 in enumerate(xs):
        f[top:bot, max(0, x0) : max(0, x0 + w)] = 1
        if k + 1 < len(xs):
            yb = top if k % 2 == 0 else bot - w
            f[yb : yb + w, max(0, x0) : max(0, xs[k + 1] + w)] = 1
    return f


def _grating(rng: np.random.Generator) -> np.ndarray:
    """Textbook line/space: straight lines, one pitch, one width, no defects."""
    f = np.zeros((SEM, SEM), np.uint8)
    pitch = int(rng.integers(12, 48))
    w = int(round(pitch * rng.uniform(0.3, 0.7)))
    phase = int(rng.integers(0, pitch))
    for x0 in range(phase - pitch, SEM, pitch):
        f[:, max(0, x0) : max(0, x0 + w)] = 1
    return f


_MAKERS = {
    "grating": _grating,
    "comb": _comb,
    "sram": _sram,
    "contacts": _contacts,
    "isolated": _isolated,
    "serpentine": _serpentine,
}


def make_field(family: str, rng: np.random.Generator) -> np.ndarray:
    f = _MAKERS[family](rng)
    if rng.random() < 0.5 and family != "isolated":
        f = np.ascontiguousarray(f.T)
    if family == "isolated" and rng.random() < 0.5:
        f = np.ascontiguousarray(f.T)
    return f


# ----------------------------------------------------------------------------- SEM model


def _stage(
    signal: np.ndarray, rng: np.random.Generator, warp: np.ndarray | None, n_particles: int
) -> np.ndarray:
    """Dust on the sample (bright discs with a halo), then the stage's rotation/scale."""
    yy, xx = np.mgrid[0:SEM, 0:SEM].astype(np.float32)
    for _ in range(n_particles):
        cx, cy, r = rng.uniform(0, SEM), rng.uniform(0, SEM), rng.uniform(2.5, 10.0)
        d = np.hypot(xx - cx, yy - cy)
        disc = np.clip(r + 0.5 - d, 0, 1)
        signal = signal * (1 - disc) + disc * rng.uniform(0.9, 1.3)
        signal = signal + 0.25 * np.exp(-np.clip(d - r, 0, None) / 1.5) * (d > r)
    if warp is not None:
        signal = cv2.warpAffine(signal, warp, (SEM, SEM), borderMode=cv2.BORDER_REFLECT_101)
    return signal


def render_sem(
    field: np.ndarray,
    rng: np.random.Generator,
    polarity: int,
    dose: float,
    warp: np.ndarray | None = None,
    n_particles: int = 0,
) -> np.ndarray:
    return render_sem_and_clean(field, rng, polarity, dose, warp, n_particles)[0]


def render_sem_and_clean(
    field: np.ndarray,
    rng: np.random.Generator,
    polarity: int,
    dose: float,
    warp: np.ndarray | None = None,
    n_particles: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The SEM and its noise-free rendering (the signal before shot noise and banding, through
    the same gain and offset); the random draws are render_sem's, in the same order."""
    f = field.astype(np.float32)
    inside = cv2.distanceTransform(field.astype(np.uint8), cv2.DIST_L2, 3)
    outside = cv2.distanceTransform((1 - field).astype(np.uint8), cv2.DIST_L2, 3)
    # material contrast of the layer (either sign, sometimes ~0: then edges carry the image)
    material = float(rng.uniform(0.0, 0.4) if polarity > 0 else rng.uniform(0.12, 0.45)) * polarity
    bloom_w = float(rng.uniform(1.0, 3.0))
    bloom = float(rng.uniform(0.2, 0.6))
    edge = np.where(
        field > 0,
        np.exp(-(inside - 0.5) / bloom_w),
        0.3 * np.exp(-(outside - 0.5) / (0.5 * bloom_w)),
    )
    signal = 0.35 + material * f + bloom * edge
    if warp is not None or n_particles:
        signal = _stage(signal.astype(np.float32), rng, warp, n_particles)
    core = float(rng.uniform(0.7, 2.2))
    tail = float(rng.uniform(4.0, 8.0))
    mix = float(rng.uniform(0.0, 0.35))
    signal = (1 - mix) * cv2.GaussianBlur(signal, (0, 0), core) + mix * cv2.GaussianBlur(
        signal, (0, 0), tail
    )
    yy, xx = np.mgrid[0:SEM, 0:SEM].astype(np.float32) / SEM
    kind = rng.integers(0, 3)
    amp = float(rng.uniform(0.0, 0.5))
    if kind == 0:
        th = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(th) * xx + np.sin(th) * yy
        signal = signal * (1 + amp * (ramp - ramp.mean()))
    elif kind == 1:
        side = xx if rng.random() < 0.5 else yy
        signal = signal * (1 + amp * np.exp(-side / rng.uniform(0.1, 0.4)))
    signal = np.clip(signal, 0.02, None)
    counts = rng.poisson(signal * dose).astype(np.float32)
    img = counts / (dose * 0.9)  # ~[0, 1.1]
    img += rng.normal(0, float(rng.uniform(0.0, 0.03)), size=(SEM, 1)).astype(np.float32)  # banding
    gain = float(rng.uniform(150, 230))
    offset = float(rng.uniform(-10, 30))
    clean = np.clip(signal / 0.9 * gain + offset, 0, 255).astype(np.uint8)
    return np.clip(img * gain + offset, 0, 255).astype(np.uint8), clean


def make_pair(
    i: int,
    rng: np.random.Generator,
    p_unalignable: float = 0.04,
    p_reversed: float = 0.2,
    families: tuple[str, ...] = FAMILIES,
    max_rotation: float = 0.0,
    max_scale: float = 0.0,
    p_particles: float = 0.0,
    p_reversed_grating: float = 0.0,
    p_reversed_contacts: float = 0.7,
) -> SimPair:
    family = families[i % len(families)]
    field = make_field(family, rng)
    m = 7 if (max_rotation or max_scale) else 0  # the turned template stays inside the SEM
    x, y = int(rng.integers(m, SEM - TPL + 1 - m)), int(rng.integers(m, SEM - TPL + 1 - m))
    # dense contact holes image dark (reversed) most of the time
    p_rev = {"contacts": p_reversed_contacts, "grating": p_reversed_grating}.get(family, p_reversed)
    polarity = -1 if rng.random() < p_rev else 1
    dose = float(np.exp(rng.uniform(np.log(2.5), np.log(60.0))))
    layout = (field[y : y + TPL, x : x + TPL] * 255).astype(np.uint8)
    pair_id = f"{family}-{i:05d}"
    kind = "normal"
    warp = clean = None
    if rng.random() < p_unalignable:
        kind = "blank_sem" if rng.random() < 0.4 else "wrong_template"
    if kind == "blank_sem":
        level = int(rng.integers(20, 230))
        sem = np.clip(level + rng.normal(0, 0.4, (SEM, SEM)), 0, 255).astype(np.uint8)
    else:
        n_particles = 0
        if max_rotation or max_scale:
            angle = float(rng.uniform(-max_rotation, max_rotation))
            scale = 1.0 + float(rng.uniform(-max_scale, max_scale))
            warp = cv2.getRotationMatrix2D(((SEM - 1) / 2, (SEM - 1) / 2), angle, scale)
        if p_particles and rng.random() < p_particles:
            n_particles = int(rng.integers(1, 5))
        sem, clean = render_sem_and_clean(field, rng, polarity, dose, warp, n_particles)
    if kind == "wrong_template":
        other = make_field(family, rng)  # same family, different field: looks plausible
        ox, oy = int(rng.integers(0, SEM - TPL + 1)), int(rng.integers(0, SEM - TPL + 1))
        layout = (other[oy : oy + TPL, ox : ox + TPL] * 255).astype(np.uint8)
    return SimPair(
        pair_id,
        family,
        sem,
        layout,
        field,
        x,
        y,
        kind == "normal",
        kind,
        dose,
        polarity,
        warp if kind != "blank_sem" else None,
        clean,
    )


def make_pairs(n: int, seed: int = 0, **kw: Any) -> list[SimPair]:
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        p = make_pair(len(out), rng, **kw)
        # a template with (almost) nothing on it cannot be placed by anyone: not a test case
        share = float((p.layout > 0).mean())
        if p.kind != "wrong_template" and min(share, 1 - share) < 0.01:
            continue
        out.append(p)
    return out


def placement_right(
    field: np.ndarray, layout: np.ndarray, x: int | None, y: int | None, tol: float = 0.005
) -> bool:
    """The acceptance judgement: the field under the SEM at (x, y) equals the template."""
    if x is None or y is None:
        return False
    h, w = layout.shape
    if not (0 <= x <= field.shape[1] - w and 0 <= y <= field.shape[0] - h):
        return False
    under = field[y : y + h, x : x + w] > 0
    return float(np.mean(under != (layout > 0))) <= tol


def placement_right_mapped(
    field: np.ndarray,
    layout: np.ndarray,
    tpl_to_sem: np.ndarray,
    warp: np.ndarray | None = None,
    tol: float = 0.005,
) -> bool:
    """The judgement under a field distortion. `tpl_to_sem` (2x3) maps a template pixel to
    the SEM pixel the aligner puts it on, `warp` (2x3) a field pixel to the SEM pixel that
    images it. Right when the template agrees with the field within about a pixel: for all
    but `tol` of the template's pixels, the field holds the same value within one pixel
    (3x3) of where the pixel lands. A shift along a pattern's invariance (a line's own
    direction, a whole pitch) is right, as it is for `placement_right`."""
    if warp is None:
        warp = np.float64([[1, 0, 0], [0, 1, 0]])
    inv = cv2.invertAffineTransform(np.asarray(warp, np.float64))
    to_sem = np.asarray(tpl_to_sem, np.float64)
    m = inv[:, :2] @ to_sem[:, :2]
    t = inv[:, :2] @ to_sem[:, 2] + inv[:, 2]
    h, w = layout.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    fx = np.rint(m[0, 0] * xs + m[0, 1] * ys + t[0]).astype(int)
    fy = np.rint(m[1, 0] * xs + m[1, 1] * ys + t[1]).astype(int)
    inside = (fx >= 0) & (fx < field.shape[1]) & (fy >= 0) & (fy < field.shape[0])
    k = np.ones((3, 3), np.uint8)
    any_on = (
        cv2.dilate(field.astype(np.uint8), k)[
            fy.clip(0, field.shape[0] - 1), fx.clip(0, field.shape[1] - 1)
        ]
        > 0
    )
    any_off = (
        cv2.erode(field.astype(np.uint8), k)[
            fy.clip(0, field.shape[0] - 1), fx.clip(0, field.shape[1] - 1)
        ]
        == 0
    )
    on = layout > 0
    agree = inside & np.where(on, any_on, any_off)
    return float(1.0 - agree.mean()) <= tol


def judge(pairs: list[SimPair], results: list, to_sem: list | None = None) -> dict[str, float]:
    """right: placement right (alignable) or rejected (unalignable);
    wrong_passed: QC passed and not right. `to_sem`: per result, its 2x3 template -> SEM map
    (for aligners that correct a field distortion; default: the offset (x, y))."""
    n = len(pairs)
    right = wrong_passed = passed_right = 0
    for i, (p, r) in enumerate(zip(pairs, results, strict=True)):
        if to_sem is None and p.warp is None:
            ok = p.alignable and placement_right(p.field, p.layout, r.x, r.y)
        else:
            m = to_sem[i] if to_sem is not None else None
            if m is None and r.x is not None:
                m = np.float64([[1, 0, r.x], [0, 1, r.y]])
            ok = (
                p.alignable
                and m is not None
                and placement_right_mapped(p.field, p.layout, m, p.warp)
            )
        if ok or (not p.alignable and not r.qc_pass):
            right += 1
        if r.qc_pass and not ok:
            wrong_passed += 1
        if r.qc_pass and ok:
            passed_right += 1
    return {"n": n, "right": right / n, "wrong_passed": wrong_passed / n, "yield": passed_right / n}
