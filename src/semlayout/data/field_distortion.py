"""Field distortion: a rotation and a magnification error of the whole field about its centre,
and bright particles lying on the sample. One parametrisation for the synthetic physics that
makes it (`sem_physics.render_clean`) and the aligner that undoes it (`align_distortion`).

Coordinates are pixels, x right and y down, centre c = ((W-1)/2, (H-1)/2):

    image = c + scale * R(rotation_deg) * (sample - c),   R(t) = [[cos t, -sin t], [sin t, cos t]]

so a positive angle turns the pattern clockwise on screen, and scale 1.02 shows it 2 % larger.
"""

from __future__ import annotations

import math

import numpy as np

PARTICLE_RADIUS = (3.0, 12.0)  # px, radius range of a particle
PARTICLE_YIELD = (0.6, 1.0)  # SE yield of a particle (bright: it charges and sticks out)


def similarity_matrix(rotation_deg: float, scale: float, shape: tuple[int, int]) -> np.ndarray:
    """2x3 float64 affine map sample -> image of the distortion, for a (H, W) field."""
    h, w = shape
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    t = math.radians(rotation_deg)
    a, b = scale * math.cos(t), scale * math.sin(t)
    return np.array([[a, -b, cx - a * cx + b * cy], [b, a, cy - b * cx - a * cy]], np.float64)


def is_identity(rotation_deg: float, scale: float) -> bool:
    return rotation_deg == 0.0 and scale == 1.0


def warp_field(
    img: np.ndarray, rotation_deg: float, scale: float, inverse: bool = False
) -> np.ndarray:
    """`img` (H, W) float32 seen through the distortion (sample -> image), or with `inverse`
    the image mapped back to the sample frame (what the aligner does). Same shape; pixels
    from outside the field are reflected; the identity returns `img` itself."""
    import cv2

    if is_identity(rotation_deg, scale):
        return img
    h, w = img.shape[:2]
    m = similarity_matrix(rotation_deg, scale, (h, w))
    # warpAffine samples src at M^-1(dst) by default: M = sample -> image distorts;
    # WARP_INVERSE_MAP samples src at M(dst): the image pulled back to the sample frame
    flags = cv2.INTER_LINEAR | (cv2.WARP_INVERSE_MAP if inverse else 0)
    return cv2.warpAffine(img, m, (w, h), flags=flags, borderMode=cv2.BORDER_REFLECT)


def max_displacement(rotation_deg: float, scale: float, half_extent: float) -> float:
    """Largest shift (px) the distortion gives a point within `half_extent` px (per axis) of
    the centre: |c + sR(v - c) - v| at a corner."""
    r = math.hypot(half_extent, half_extent)
    t = math.radians(rotation_deg)
    return r * math.hypot(scale * math.cos(t) - 1.0, scale * math.sin(t))


def add_particles(
    signal: np.ndarray, n: int, edge_gain: float, edge_width: float, rng: np.random.Generator
) -> np.ndarray:
    """`n` bright discs (dust) on the sample-frame `signal` (H, W) float32, each with its own
    bright edge rim; they hide the pattern under them. Draws from `rng` only when n > 0."""
    if n <= 0:
        return signal
    h, w = signal.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = signal.copy()
    for _ in range(n):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        r = float(rng.uniform(*PARTICLE_RADIUS))
        level = float(rng.uniform(*PARTICLE_YIELD))
        d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
        alpha = np.clip(r - d + 0.5, 0.0, 1.0)  # anti-aliased disc
        rim = np.exp(-np.clip(r - d, 0.0, None) / max(edge_width, 0.5)) * alpha
        out = (1.0 - alpha) * out + alpha * level + edge_gain * rim
    return out.astype(np.float32)
