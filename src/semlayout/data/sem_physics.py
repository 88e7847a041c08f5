"""SEM image formation for a drawn layout, after NIST ARTIMAGEN's model.

Stages, in the order they act (docs/physics.md gives the ranges and reasons):
1. print: the drawn layout is printed with rounded corners, a CD bias and
   line-edge roughness (LER) -> a sub-pixel coverage map (rendered at 2x, then
   area-averaged);
2. material contrast: pattern vs. background yield with a fine grain texture,
   polarity reversed on a fraction of images (pattern dark on a bright
   background);
3. secondary-electron edge effect: bright rims at every printed edge, mostly
   on the pattern side, bright whatever the polarity, brighter on the side
   facing the detector (shadowing);
4. probe PSF: an astigmatic Gaussian core plus a broad backscatter tail;
5. charging / slow background: a ramp, broad bumps and a halo around dense
   pattern;
6. detector gain and offset;
7. scan distortion: per-row jitter, a sinusoidal vibration and a slow
   linear drift (row shifts, zero mean);
   field distortion (off by default): a stage rotation and a magnification error of the
   whole field about its centre, and bright particles on the sample (a share of images);
8. detector lag: a short causal smear along each scan line;
9. noise: Poisson shot noise at a dose (electrons per pixel) and Gaussian
   detector noise.
`render_clean` runs 1-8 (the noise-free image of the same scan, jitter
included); `add_noise` runs 9. Everything stochastic is drawn from the
generator passed in, so a seed fixes the image.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import cv2
import numpy as np

from semlayout.data.field_distortion import add_particles, warp_field
from semlayout.errors import SemlayoutError

SUPERSAMPLE = 2

Range = tuple[float, float]


@dataclass(frozen=True)
class PhysicsRanges:
    """Per-image parameter ranges; each image draws uniformly (dose: log-uniformly) inside them."""

    dose: Range = (2.0, 3000.0)  # electrons / pixel (log-uniform)
    # share of images with reversed polarity. 0 by default: material contrast is a property of the
    # layer stack and the detector, fixed for a data set (docs/physics.md); set it to mix layers
    reverse_fraction: float = 0.0
    background: Range = (0.12, 0.32)  # SE yield of the darker material
    # yield difference between materials (low: edges carry the image)
    contrast: Range = (0.04, 0.35)
    texture: Range = (0.0, 0.08)  # relative RMS of the materials' grain (yield x (1 + t n))
    texture_corr: Range = (0.8, 2.5)  # px, grain size
    # px, print blur that rounds corners (x print_scale for fine designs)
    corner_sigma: Range = (0.6, 2.5)
    bias: Range = (-0.3, 0.3)  # px, printed edge moves outward (+) / inward (-)
    ler_sigma: Range = (0.2, 1.2)  # px, RMS edge displacement (x print_scale for fine designs)
    ler_corr: Range = (2.0, 8.0)  # px, correlation length of the roughness
    edge_width: Range = (1.0, 4.0)  # px, decay length of the SE rim
    edge_gain: Range = (0.30, 0.70)  # rim brightness at the edge (yield units)
    rim_outside: Range = (0.2, 0.7)  # rim amplitude just outside the pattern, relative to inside
    # detector shadowing: rims facing the detector brighter by this share. Off by default:
    # it moves intensity-based alignment by ~1 px (docs/physics.md); e.g. (0.0, 0.4) to stress-test
    shadow: Range = (0.0, 0.0)
    blur_sigma: Range = (0.8, 2.5)  # px, Gaussian beam (geometric mean of x and y)
    astigmatism: Range = (0.8, 1.25)  # sigma_x / sigma_y of the beam
    psf_tail: Range = (0.0, 0.25)  # share of signal in the broad backscatter tail
    psf_tail_sigma: Range = (4.0, 12.0)  # px, width of that tail
    # ramp + bump amplitude (yield units): charging shades whole fields
    gradient: Range = (0.0, 0.25)
    charging: Range = (0.0, 0.10)  # halo amplitude around dense pattern
    gain: Range = (0.7, 1.4)  # detector brightness/contrast settings differ by tool and operator
    offset: Range = (-0.05, 0.10)
    detector_sigma: Range = (0.002, 0.015)  # Gaussian read noise (yield units, 1.0 = 255)
    streak: Range = (0.0, 0.15)  # detector lag: share of signal smeared along the scan
    streak_len: Range = (1.0, 5.0)  # px, decay length of that smear
    jitter_px: Range = (0.0, 0.4)  # px, RMS per-row shift
    vibration_px: Range = (0.0, 0.4)  # px, amplitude of a sinusoidal row shift (mains hum)
    vibration_period: Range = (8.0, 64.0)  # rows per vibration cycle
    drift_px: Range = (0.0, 1.5)  # px, linear x drift top -> bottom (mean zero)
    # field distortion, all off by default (pinned ranges draw nothing: data stay as they were).
    # image = c + magnification * R(rotation_deg) * (sample - c) about the field centre c
    rotation_deg: Range = (0.0, 0.0)  # stage rotation, degrees (x right, y down: + = clockwise)
    magnification: Range = (1.0, 1.0)  # scale error of the image (1.02 = 2 % too large)
    particle_fraction: float = 0.0  # share of images with bright particles (dust) on the sample
    particle_count: tuple[int, int] = (1, 4)  # particles on such an image (inclusive)

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, tuple):
                lo, hi = v
                if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
                    raise SemlayoutError(
                        f"physics range {f.name}={v}: expected finite (low, high) with low <= high"
                    )
        if self.dose[0] <= 0:
            raise SemlayoutError(f"dose range {self.dose}: expected positive electrons/pixel")
        for name in ("reverse_fraction", "particle_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise SemlayoutError(f"{name}={getattr(self, name)}: expected a value in [0, 1]")
        if self.magnification[0] <= 0 or self.particle_count[0] < 1:
            raise SemlayoutError(
                f"magnification {self.magnification} and particle_count {self.particle_count}: "
                "expected positive values"
            )
        if max(abs(v) for v in self.rotation_deg) > 10:
            raise SemlayoutError(
                f"rotation_deg {self.rotation_deg}: expected degrees within [-10, 10]"
            )


@dataclass(frozen=True)
class SemParams:
    """The physics drawn for one image (written to the manifest as extra columns)."""

    dose: float
    polarity: int  # +1 pattern bright, -1 pattern dark (reversed)
    background: float
    contrast: float
    texture: float
    texture_corr: float
    corner_sigma: float
    bias: float
    ler_sigma: float
    ler_corr: float
    edge_width: float
    edge_gain: float
    rim_outside: float
    shadow: float
    blur_sigma: float
    astigmatism: float
    psf_tail: float
    psf_tail_sigma: float
    gradient: float
    charging: float
    gain: float
    offset: float
    detector_sigma: float
    streak: float
    streak_len: float
    jitter_px: float
    vibration_px: float
    vibration_period: float
    drift_px: float
    rotation_deg: float = 0.0
    magnification: float = 1.0
    particles: int = 0  # bright particles on the sample

    def as_columns(self) -> dict[str, str]:
        return {k: (str(v) if isinstance(v, int) else f"{v:.4g}") for k, v in asdict(self).items()}


def sample_params(
    rng: np.random.Generator, ranges: PhysicsRanges | None = None, **fixed: float
) -> SemParams:
    """Draw one image's physics; `fixed` pins chosen parameters (e.g. dose=5.0, polarity=-1)."""
    r = ranges or PhysicsRanges()
    unknown = set(fixed) - {f.name for f in fields(SemParams)}
    if unknown:
        raise SemlayoutError(
            f"unknown physics parameter(s) {sorted(unknown)}; expected names of SemParams fields"
        )

    def u(name: str) -> float:
        lo, hi = getattr(r, name)
        # a pinned range draws nothing, so switching an effect off leaves the other draws as
        # they were
        return float(lo) if lo == hi else float(rng.uniform(lo, hi))

    lo, hi = r.dose
    values: dict[str, float] = {
        "dose": float(math.exp(rng.uniform(math.log(lo), math.log(hi)))),
        "polarity": -1 if rng.random() < r.reverse_fraction else 1,
    }
    for f in fields(SemParams):
        if f.name not in values and f.name != "particles":
            values[f.name] = u(f.name)
    # drawn last, and only when asked for, so the draws above do not move
    has_particles = r.particle_fraction > 0 and rng.random() < r.particle_fraction
    lo_n, hi_n = r.particle_count
    values["particles"] = int(rng.integers(lo_n, hi_n + 1)) if has_particles else 0
    values.update(fixed)
    values["polarity"] = int(values["polarity"])
    values["particles"] = int(values["particles"])
    return SemParams(**values)  # type: ignore[arg-type]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian random field with unit standard deviation and correlation length ~sigma.

    Drawn on a grid `sigma/2` times coarser and upsampled: the field is smooth
    at that scale anyway, and it costs a fraction of a full-resolution blur.
    """
    k = max(1, int(sigma // 2))
    small = (max(2, -(-shape[0] // k)), max(2, -(-shape[1] // k)))
    n: np.ndarray = rng.standard_normal(small, dtype=np.float32)
    n = cv2.GaussianBlur(n, (0, 0), sigma / k, borderType=cv2.BORDER_REFLECT)
    n = (n / max(float(n.std()), 1e-6)).astype(np.float32)
    if k > 1:
        n = cv2.resize(n, (small[1] * k, small[0] * k), interpolation=cv2.INTER_CUBIC)[
            : shape[0], : shape[1]
        ]
    return n


# px: `corner_sigma` and `ler_sigma` hold as drawn for designs this coarse or coarser
PRINT_CD_REF = 8.0


def minority_width(field: np.ndarray) -> float:
    """Mean width (px) of the minority phase of a binary field: 2 x area / perimeter of
    whichever of pattern and background covers less.

    A line's width, half a square's side: the scale at which printing starts to
    lose a design (its critical dimension, estimated from area and edge length alone;
    `semlayout.metrics.critical_dimension` measures line widths of an image instead).
    0 for a blank or full field.
    """
    f = field.astype(np.int16)
    perimeter = int(np.abs(np.diff(f, axis=0)).sum() + np.abs(np.diff(f, axis=1)).sum())
    if perimeter == 0:
        return 0.0
    area = int(f.sum())
    return 2.0 * min(area, f.size - area) / perimeter


def print_scale(field: np.ndarray) -> float:
    """Factor on the print blur and LER of a design: min(1, minority_width / PRINT_CD_REF).

    A process that prints a design resolves it: its corner rounding and edge
    roughness are a fraction of the design's own critical dimension, not fixed
    pixel counts. Without this, a 4 px via under the full 2.5 px corner blur
    would print as a faint blob and its drawn square could not be recovered.
    """
    cd = minority_width(field)
    return 1.0 if cd <= 0 else min(1.0, cd / PRINT_CD_REF)


def print_pattern(
    field: np.ndarray, p: SemParams, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Printed shape of a drawn binary field.

    Returns (coverage (H,W) float32 in [0,1], printed (sH,sW) bool at SUPERSAMPLE x).
    A Gaussian print blur thresholded at 0.5 rounds corners; a smooth random
    displacement field (RMS `ler_sigma` px, correlation `ler_corr` px) warps
    the blurred image so edges wander (LER) without creating or deleting
    features far from edges; a threshold shift moves every edge by `bias` px.
    Blur and LER are scaled by `print_scale(field)` for designs finer than
    PRINT_CD_REF px.
    The blur runs at 1x; one bilinear remap both warps and upsamples it to the
    SUPERSAMPLE grid, where it is thresholded (the blurred level is smooth, so
    this loses nothing visible and costs a quarter of a 2x blur).
    """
    h, w = field.shape
    s = SUPERSAMPLE
    scale = print_scale(field)
    corner_sigma = p.corner_sigma * scale
    level = cv2.GaussianBlur(
        field.astype(np.float32), (0, 0), corner_sigma, borderType=cv2.BORDER_REFLECT
    )
    amp = (
        p.ler_sigma * scale / math.sqrt(2.0)
    )  # per axis: the total RMS displacement is ler_sigma * scale
    # centre of supersampled pixel i, in 1x pixel coordinates
    cx = (np.arange(w * s, dtype=np.float32) + 0.5) / s - 0.5
    cy = (np.arange(h * s, dtype=np.float32) + 0.5) / s - 0.5
    gx = cx[None, :] + amp * _smooth_noise(rng, (h * s, w * s), p.ler_corr * s)
    gy = cy[:, None] + amp * _smooth_noise(rng, (h * s, w * s), p.ler_corr * s)
    level = cv2.remap(level, gx, gy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    # slope of the blurred level across a straight edge: 1/(sqrt(2 pi) sigma) per px;
    # the threshold stays inside (0.15, 0.85) so bias never prints the empty background
    slope = 1.0 / (math.sqrt(2 * math.pi) * corner_sigma)
    threshold = min(max(0.5 - p.bias * slope, 0.15), 0.85)
    printed = level > threshold
    coverage = cv2.resize(printed.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
    return coverage, printed


_LUT_STEP = 4  # distance-lookup bins per supersampled px (0.125 px at 2x)


def edge_rim(printed: np.ndarray, p: SemParams, out_shape: tuple[int, int]) -> np.ndarray:
    """SE edge effect: exp(-d / edge_width) inside the pattern, a weaker (`rim_outside`),
    narrower tail outside.

    (H,W) float32 in [0,1], from distance transforms of the supersampled print;
    the exponentials are table lookups on the quantised distance (cv2.LUT).
    """
    s = SUPERSAMPLE
    fg = printed.astype(np.uint8)
    d_in = cv2.distanceTransform(fg, cv2.DIST_L2, 5)  # 0 outside, >= 1 inside
    d_out = cv2.distanceTransform(1 - fg, cv2.DIST_L2, 5)  # 0 inside, >= 1 outside
    w = p.edge_width * s
    k = np.arange(256, dtype=np.float64) / _LUT_STEP
    lut_in = np.exp(-(k - 0.5) / w)
    lut_out = p.rim_outside * np.exp(-(k - 0.5) / (0.7 * w))
    lut_in[0] = lut_out[0] = 0.0  # distance 0 = the other side of the edge
    rim_in = cv2.LUT(cv2.convertScaleAbs(d_in, alpha=_LUT_STEP), lut_in.astype(np.float32)[None, :])
    rim = rim_in + cv2.LUT(
        cv2.convertScaleAbs(d_out, alpha=_LUT_STEP), lut_out.astype(np.float32)[None, :]
    )
    return cv2.resize(rim, (out_shape[1], out_shape[0]), interpolation=cv2.INTER_AREA)


def detector_shadow(coverage: np.ndarray, p: SemParams, rng: np.random.Generator) -> np.ndarray:
    """Rim gain 1 + shadow * cos(angle between the edge's outward normal and the detector
    direction).

    An off-axis (Everhart-Thornley) detector collects more electrons from edges that face
    it: rims on one side of a feature are brighter than on the other. (H,W) float32.
    """
    if p.shadow <= 0:
        return np.ones_like(coverage)
    theta = rng.uniform(0, 2 * math.pi)
    smooth = cv2.GaussianBlur(coverage, (0, 0), 1.5, borderType=cv2.BORDER_REFLECT)
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3)
    norm = np.sqrt(gx * gx + gy * gy) + 1e-6
    # outward normal of the pattern = -gradient of its coverage; image y points down
    facing = -(gx * math.cos(theta) + gy * math.sin(theta)) / norm
    weight = norm / (norm + 0.02)  # ~0 far from edges, where the direction is meaningless
    return (1.0 + p.shadow * facing * weight).astype(np.float32)


def background_field(
    shape: tuple[int, int], coverage: np.ndarray, p: SemParams, rng: np.random.Generator
) -> np.ndarray:
    """Slow additive field: a ramp, two broad bumps and a charging halo over dense pattern.

    All three vary over tens of pixels, so they are built at 1/4 scale and upsampled once.
    """
    h, w = shape
    hs, ws = h // 4, w // 4
    yy, xx = np.mgrid[0:hs, 0:ws].astype(np.float32)
    yy, xx = (yy + 0.5) / hs - 0.5, (xx + 0.5) / ws - 0.5
    theta = rng.uniform(0, 2 * math.pi)
    slow = (math.cos(theta) * xx + math.sin(theta) * yy) * p.gradient
    for _ in range(2):
        cx, cy = rng.uniform(-0.3, 0.3, 2)
        r = rng.uniform(0.2, 0.5)
        slow += (
            rng.uniform(-1, 1)
            * p.gradient
            * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        )
    # charging halo: a 12-30 px blur of the local pattern density
    density = cv2.resize(coverage, (ws, hs), interpolation=cv2.INTER_AREA)
    slow += p.charging * cv2.GaussianBlur(
        density, (0, 0), rng.uniform(12, 30) / 4, borderType=cv2.BORDER_REFLECT
    )
    return cv2.resize(slow.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)


def scan_shifts(h: int, p: SemParams, rng: np.random.Generator) -> np.ndarray:
    """Per-row x shift (px): white jitter + vibration + linear drift, zero mean so the truth
    offset stays exact."""
    rows = np.arange(h, dtype=np.float32)
    jitter = rng.standard_normal(h).astype(np.float32) * p.jitter_px
    phase = rng.uniform(0, 2 * math.pi)
    vibration = p.vibration_px * np.sin(2 * math.pi * rows / p.vibration_period + phase).astype(
        np.float32
    )
    drift = (rows / max(h - 1, 1) - 0.5) * p.drift_px
    dx = jitter + vibration + drift
    return (dx - dx.mean()).astype(np.float32)


def beam_blur(signal: np.ndarray, p: SemParams) -> np.ndarray:
    """Probe PSF: an (astigmatic) Gaussian core plus a broad backscatter tail holding
    `psf_tail` of the signal."""
    sx = p.blur_sigma * math.sqrt(p.astigmatism)
    sy = p.blur_sigma / math.sqrt(p.astigmatism)
    core = cv2.GaussianBlur(signal, (0, 0), sigmaX=sx, sigmaY=sy, borderType=cv2.BORDER_REFLECT)
    if p.psf_tail <= 0:
        return core
    h, w = signal.shape
    # the tail is wide, so blur at half scale
    half = cv2.resize(signal, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    half = cv2.GaussianBlur(half, (0, 0), p.psf_tail_sigma / 2, borderType=cv2.BORDER_REFLECT)
    tail = cv2.resize(half, (w, h), interpolation=cv2.INTER_LINEAR)
    return (1.0 - p.psf_tail) * core + p.psf_tail * tail


def detector_lag(signal: np.ndarray, p: SemParams) -> np.ndarray:
    """Causal exponential smear along each scan line (left to right): bright edges leave a
    short tail.

    The kernel's centroid moves by ~streak * streak_len px (<= 0.75 px with the default ranges).
    """
    if p.streak <= 0:
        return signal
    n = max(2, int(math.ceil(4 * p.streak_len)))
    tail = np.exp(-np.arange(1, n + 1) / p.streak_len)
    tail = p.streak * tail / tail.sum()
    # filter2D correlates: kernel[j] weighs signal[x + j - anchor]; anchor at the right end
    # -> past pixels only
    kernel = np.concatenate([tail[::-1], [1.0 - p.streak]]).astype(np.float32)[None, :]
    return cv2.filter2D(signal, -1, kernel, anchor=(n, 0), borderType=cv2.BORDER_REFLECT)


def scan_distort(signal: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Row r of the image is seen shifted right by dx[r] px (sub-pixel, bilinear)."""
    h, w = signal.shape
    map_x = np.ascontiguousarray(np.arange(w, dtype=np.float32)[None, :] - dx[:, None])
    map_y = np.ascontiguousarray(np.broadcast_to(np.arange(h, dtype=np.float32)[:, None], (h, w)))
    return cv2.remap(signal, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def render_clean(field: np.ndarray, p: SemParams, rng: np.random.Generator) -> np.ndarray:
    """Noise-free SEM signal of a drawn field: (H,W) float32, yield units (1.0 -> 255)."""
    h, w = field.shape
    coverage, printed = print_pattern(field, p, rng)
    rim = edge_rim(printed, p, (h, w))
    if p.polarity >= 0:
        pattern, back = p.background + p.contrast, p.background
    else:
        pattern, back = p.background, p.background + p.contrast
    material = back + (pattern - back) * coverage
    if p.texture > 0:
        # grain of the sample surface: part of the scene (in the clean image), not of the noise
        material = material * (1.0 + p.texture * _smooth_noise(rng, (h, w), p.texture_corr))
    signal = material + p.edge_gain * rim * detector_shadow(coverage, p, rng)
    # the sample (particles included) as the distorted scan sees it; the probe, the background
    # and the scan itself act in the image frame
    signal = add_particles(signal, p.particles, p.edge_gain, p.edge_width, rng)
    signal = warp_field(signal, p.rotation_deg, p.magnification)
    coverage = warp_field(coverage, p.rotation_deg, p.magnification)
    signal = beam_blur(signal, p)
    signal = signal + background_field((h, w), coverage, p, rng)
    signal = p.gain * signal + p.offset
    signal = scan_distort(signal, scan_shifts(h, p, rng))
    signal = detector_lag(signal, p)  # acts on the recorded time series, after the beam's path
    return np.clip(signal, 0.0, 1.0).astype(np.float32)


def add_noise(clean: np.ndarray, p: SemParams, rng: np.random.Generator) -> np.ndarray:
    """Shot noise (Poisson counts at `dose` e-/px, rescaled) plus Gaussian detector noise."""
    counts = rng.poisson(clean.astype(np.float64) * p.dose)
    noisy = counts / p.dose + rng.standard_normal(clean.shape, dtype=np.float32) * p.detector_sigma
    return noisy.astype(np.float32)


def to_u8(signal: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(signal * 255.0), 0, 255).astype(np.uint8)
