"""Field distortion seen by the aligner: the rotation and magnification error of the SEM
field relative to the layout, estimated after the integer NCC peak.

Method (patches rather than one global estimate such as log-polar phase correlation or
OpenCV's ECC, so that patches caught by a particle or a neighbouring period can be dropped
and each patch constrains only the directions it has structure in; those alternatives were
not benchmarked, docs/alignment.md): the fitted template model
``a*T + b*E`` is cut into a grid of patches; each patch is matched by NCC within a few
pixels of where the integer peak puts it (subpixel by a parabola). A similarity
``d(t) = [[s cos - 1, -s sin], [s sin, s cos - 1]] (t - centre) + shift`` is fitted to the
patch displacements by weighted least squares, each patch weighted by its Fisher
information (the structure tensor of its model patch times the SEM's signal-to-noise), so
a patch holding one straight line constrains only the shift across it and an empty patch
nothing. Iteratively reweighted (Tukey) so that patches that locked onto a neighbouring
period or onto a bright particle drop out; a weak prior (sd `PRIOR_SD` in rotation and
scale) keeps what the patches cannot determine at the identity. The residual chi-square
scales the covariance (never below the Fisher bound), which gives the standard error of
the largest displacement at a template corner: a distortion is corrected only when that
displacement is both large (`AlignConfig.min_distortion_px`) and significant
(`AlignConfig.distortion_z` standard errors).

Conventions are `semlayout.data.field_distortion`'s: image = c + s R(theta) (sample - c).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from semlayout.data.align_config import AlignConfig
from semlayout.data.align_maps import score_map, sem_features
from semlayout.data.align_scene import Scene, rematch
from semlayout.data.field_distortion import warp_field

PRIOR_SD = 0.02  # prior sd of s cos(theta) - 1 and s sin(theta) (about 1.1 deg, 2 %)
MIN_PATCHES = 6  # patches with information needed before anything is estimated
FLOOR_PX = 0.5  # a patch shift is never known better than this (model misfit: LER, bias)
_TUKEY = 3.0  # px (in the information's own metric): beyond this a patch gets no weight


@dataclass(frozen=True)
class FieldDistortion:
    """A similarity estimate: rotation (deg), scale, and how far it moves a template corner."""

    rotation_deg: float = 0.0
    scale: float = 1.0
    corner_px: float = 0.0  # largest displacement of a template corner (px)
    corner_sd: float = math.inf  # its standard error (px)
    n_patches: int = 0  # patches that carried weight in the fit

    def significant(self, min_px: float, min_z: float) -> bool:
        return self.corner_px >= min_px and self.corner_px >= min_z * self.corner_sd

    def describe(self) -> str:
        return f"rotation {self.rotation_deg:+.2f} deg, scale {self.scale:.4f}"


@dataclass(frozen=True)
class Patches:
    """Patch measurements, stacked: n patches."""

    centre: np.ndarray  # (n, 2) patch centre (x, y) relative to the template centre
    shift: np.ndarray  # (n, 2) measured displacement (x, y), px
    info: np.ndarray  # (n, 2, 2) Fisher information of the displacement (1/px^2)

    def __len__(self) -> int:
        return len(self.centre)


_KERNEL3 = np.ones((3, 3), np.uint8)


def _nearest_peak(m: np.ndarray, expected: tuple[int, int]) -> tuple[int, int]:
    """Of the local maxima of `m` within NEAR_PEAK of its maximum, the one closest to the
    expected place: a periodic patch matches every period equally well, and the nearest
    one is the right one while the distortion moves it less than half a pitch."""
    import cv2

    top = float(m.max())
    peaks = (cv2.dilate(m, _KERNEL3) <= m) & (m >= top - NEAR_PEAK * abs(top))
    ys, xs = np.nonzero(peaks)
    k = int(np.argmin((ys - expected[0]) ** 2 + (xs - expected[1]) ** 2))
    return int(ys[k]), int(xs[k])


def _subpixel(m: np.ndarray, y: int, x: int) -> tuple[float, float]:
    """Parabolic subpixel offsets (dy, dx) of a peak; 0 along an axis where it sits on the
    border (along a straight line the peak lands anywhere, and carries no information)."""

    def off(a: float, b: float, c: float) -> float:
        d = a - 2 * b + c
        return 0.0 if d >= 0 else float(min(max(0.5 * (a - c) / d, -0.5), 0.5))

    dy = off(m[y - 1, x], m[y, x], m[y + 1, x]) if 0 < y < m.shape[0] - 1 else 0.0
    dx = off(m[y, x - 1], m[y, x], m[y, x + 1]) if 0 < x < m.shape[1] - 1 else 0.0
    return dy, dx


NEAR_PEAK = 0.1  # patch peaks within this share of the best count as equally good
TAPER_FLAT = 0.5  # share of the window that is flat (0: Hann, 1: no taper)


def _window(n: int) -> np.ndarray:
    """Tukey window: flat in the middle TAPER_FLAT share, cosine tapers to 0 at the ends."""
    t = np.linspace(0.0, 1.0, n)
    edge = max((1.0 - TAPER_FLAT) / 2.0, 1e-9)
    ramp = np.clip(np.minimum(t, 1.0 - t) / edge, 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * ramp)


def _band_weights(
    length: int, cells: int, half: int, w: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Patch starts along one axis (a `cells`-cell lattice of centres, each patch 2*half+1
    long, kept inside `length`) and the (cells, length) matrix of each patch's squared taper
    `w`**2 (zero outside the patch): the patches of one grid row share their rows."""
    n = 2 * half + 1
    starts = np.array(
        [
            min(max(int(round(c)) - half, 0), length - n)
            for c in (np.arange(cells) + 0.5) * length / cells
        ]
    )
    band = np.zeros((cells, length))
    for k, s0 in enumerate(starts):
        band[k, s0 : s0 + n] = w * w
    return starts, band


def _gradient(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(d/dy, d/dx) of a 2-D float array (same dtype out) as `np.gradient` computes them (central
    differences inside, one-sided at the borders), without its generic overhead."""
    out = []
    for axis in (0, 1):
        g = np.empty_like(f)
        a = np.moveaxis(f, axis, 0)
        o = np.moveaxis(g, axis, 0)
        np.subtract(a[2:], a[:-2], out=o[1:-1])
        o[1:-1] /= 2.0
        o[0] = a[1] - a[0]
        o[-1] = a[-1] - a[-2]
        out.append(g)
    return out[0], out[1]


def _strided_gradient(f: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`_gradient(f)` read at every k-th pixel each way (``g[::k, ::k]``), computed only there
    (the same differences, bit for bit: central inside, one-sided on the borders)."""

    def axis_diff(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        at = np.arange(0, n, k)
        lo, hi = np.maximum(at - 1, 0), np.minimum(at + 1, n - 1)
        return lo, hi, (hi - lo).astype(f.dtype)  # 2 inside, 1 on a border: exact divisions

    h, w = f.shape
    lo_r, hi_r, den_r = axis_diff(h)
    lo_c, hi_c, den_c = axis_diff(w)
    rows, cols = f[::k], f[:, ::k]
    gy = (cols[hi_r] - cols[lo_r]) / den_r[:, None]
    gx = (rows[:, hi_c] - rows[:, lo_c]) / den_c[None, :]
    return gy, gx


def patch_shifts(
    sem_f: np.ndarray, model: np.ndarray, y0: int, x0: int, snr2: float, grid: int, search: int
) -> Patches:
    """Displacement of each model patch in the SEM around offset (y0, x0): a grid x grid
    lattice of patch centres, each patch 1.5 cells wide and tapered by a Tukey window, so a
    feature cut by a patch's border (a sliver, easily matched off by pixels) weighs little."""
    import cv2

    h, w = model.shape
    half = min(int(round(0.75 * max(h, w) / grid)), (min(h, w) - 1) // 2)
    n = 2 * half + 1
    win = _window(n)
    taper = np.outer(win, win).astype(np.float32)
    rows, row_w = _band_weights(h, grid, half, win)
    cols, col_w = _band_weights(w, grid, half, win)
    # information of the pattern seen through the window (not of the window's own edges:
    # along a straight line there is none); the taper is separable, so every patch's
    # weighted sums at once: (grid, h) @ (h, w) @ (w, grid)
    gy, gx = _gradient(model.astype(np.float64))
    sxx, sxy, syy = (row_w @ g @ col_w.T for g in (gx * gx, gx * gy, gy * gy))
    H, W = sem_f.shape
    centres, shifts, infos = [], [], []
    for i, r0 in enumerate(rows):
        for j, c0 in enumerate(cols):
            info = snr2 * np.array([[sxx[i, j], sxy[i, j]], [sxy[i, j], syy[i, j]]])
            if float(np.trace(info)) <= 1e-9:
                continue  # nothing drawn here
            top, left = max(0, y0 + r0 - search), max(0, x0 + c0 - search)
            bottom, right = min(H, y0 + r0 + n + search), min(W, x0 + c0 + n + search)
            if bottom - top <= n + 1 or right - left <= n + 1:
                continue
            cut = model[r0 : r0 + n, c0 : c0 + n]
            tpl = (cut - cut.mean()) * taper
            m = cv2.matchTemplate(sem_f[top:bottom, left:right], tpl, cv2.TM_CCOEFF_NORMED)
            py, px = _nearest_peak(m, (y0 + r0 - top, x0 + c0 - left))
            dy, dx = _subpixel(m, py, px)
            shifts.append((left + px + dx - (x0 + c0), top + py + dy - (y0 + r0)))
            centres.append((c0 + half - (w - 1) / 2, r0 + half - (h - 1) / 2))
            infos.append(info)
    if not infos:
        return Patches(np.zeros((0, 2)), np.zeros((0, 2)), np.zeros((0, 2, 2)))
    # the Fisher bound assumes the model is exact; cap it at the misfit floor
    info_arr = np.linalg.inv(
        np.linalg.inv(np.array(infos) + 1e-9 * np.eye(2)) + FLOOR_PX**2 * np.eye(2)
    )
    return Patches(np.array(centres, float), np.array(shifts, float), info_arr)


def _design(c: np.ndarray) -> np.ndarray:
    """(n, 2, 4): d = J p for p = (s cos - 1, s sin, shift x, shift y) at centres c (n, 2)."""
    z, o = np.zeros(len(c)), np.ones(len(c))
    return np.stack(
        [np.stack([c[:, 0], -c[:, 1], o, z], -1), np.stack([c[:, 1], c[:, 0], z, o], -1)], 1
    )


def fit_similarity(patches: Patches, half_extent: float, iters: int = 6) -> FieldDistortion:
    """Robust weighted least squares of the patch displacements (see the module docstring).

    Each patch contributes one scalar observation per direction of its information (the
    eigenvectors): a patch across lines measures the shift across them well and the shift
    along them not at all, and an outlier in one direction does not discard the other."""
    if len(patches) < MIN_PATCHES:
        return FieldDistortion(n_patches=len(patches))
    lam, vec = np.linalg.eigh(patches.info)  # (n, 2), (n, 2, 2): columns are directions
    J = _design(patches.centre)  # (n, 2, 4)
    rows = np.einsum("nkd,nki->ndi", vec, J).reshape(-1, 4)  # v^T J per direction
    obs = np.einsum("nkd,nk->nd", vec, patches.shift).reshape(-1)  # v^T shift
    info = lam.reshape(-1)
    owner = np.repeat(np.arange(len(patches)), 2)
    keep = info > 1e-6 * max(float(info.max()), 1e-12)
    rows, obs, info, owner = rows[keep], obs[keep], info[keep], owner[keep]
    prior = np.diag([1 / PRIOR_SD**2, 1 / PRIOR_SD**2, 0.0, 0.0])
    weights = np.ones(len(obs))

    def solve(w: np.ndarray) -> np.ndarray:
        wi = w * info
        return np.linalg.solve(prior + (rows.T * wi) @ rows + 1e-6 * np.eye(4), (rows.T * wi) @ obs)

    for _ in range(iters):
        r = obs - rows @ solve(weights)  # px along each direction
        weights = (1 - np.minimum(np.abs(r) / _TUKEY, 1.0) ** 2) ** 2
    p = solve(weights)
    r = obs - rows @ p
    used = len(np.unique(owner[weights > 0.05]))
    if used < MIN_PATCHES:
        return FieldDistortion(n_patches=used)
    wi = weights * info
    chi2, dof = float(wi @ (r * r)), float(weights.sum())
    # significance from the data alone (the prior only keeps the estimate tame)
    cov = np.linalg.inv((rows.T * wi) @ rows + 1e-9 * np.eye(4)) * max(chi2 / max(dof - 4, 1), 1)
    a, b = float(p[0]), float(p[1])
    rr = math.hypot(half_extent, half_extent)
    return FieldDistortion(
        rotation_deg=math.degrees(math.atan2(b, 1 + a)),
        scale=math.hypot(1 + a, b),
        corner_px=rr * math.hypot(a, b),
        corner_sd=rr * math.sqrt(float(cov[0, 0] + cov[1, 1])),
        n_patches=used,
    )


def estimate_distortion(
    sem_f: np.ndarray,
    model: np.ndarray,
    y0: int,
    x0: int,
    noise_sd: float,
    grid: int = 4,
    search: int = 5,
) -> FieldDistortion:
    """The field distortion around the integer peak (y0, x0) of `model` (h, w) in the
    high-passed SEM `sem_f`; `noise_sd` is the SEM's noise in `sem_f` units."""
    h, w = model.shape
    win = sem_f[y0 : y0 + h, x0 : x0 + w].astype(np.float64)
    mc = model.astype(np.float64) - float(model.mean())
    gain = float((mc * (win - win.mean())).sum() / max(float((mc * mc).sum()), 1e-12))
    snr2 = (gain / max(noise_sd, 1e-6)) ** 2  # Fisher information per unit model gradient^2
    patches = patch_shifts(sem_f, model.astype(np.float32), y0, x0, snr2, grid, search)
    return fit_similarity(patches, max(h, w) / 2.0)


SCREEN_STRIDE = 2  # pixel stride of `screen_distortion`'s fit


@functools.cache
def _centred_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(X, Y) float32 pixel coordinates relative to the centre of an (h, w) window."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return xs - (w - 1) / 2.0, ys - (h - 1) / 2.0


def screen_distortion(sem_f: np.ndarray, model: np.ndarray, y0: int, x0: int) -> FieldDistortion:
    """A cheap first look (about a tenth of `estimate_distortion`): one linearised
    (Lucas-Kanade) least-squares step of a whole-window similarity, ``window = c + g*model
    - g*grad(model) . d(t)`` with d as in the module docstring, fitted by ordinary least
    squares over the window at the integer peak (y0, x0). Its corner displacement is what
    `AlignConfig.screen_px` gates the patch estimate on: not robust to particles and
    biased low for displacements beyond the blur, but near zero only when the field is
    near undistorted. `corner_sd` is the white-noise standard error (an underestimate)."""
    h, w = model.shape
    k = SCREEN_STRIDE  # every k-th pixel each way: the model is blurred, its gradient smooth
    win = np.ascontiguousarray(sem_f[y0 : y0 + h : k, x0 : x0 + w : k]).reshape(-1)
    gy, gx = _strided_gradient(model, k)
    X, Y = (c[::k, ::k] for c in _centred_grid(h, w))
    m = model[::k, ::k]
    A = np.stack([np.ones_like(m), m, gx, gy, X * gx + Y * gy, X * gy - Y * gx]).reshape(6, -1)
    G = (A @ A.T).astype(np.float64) + 1e-9 * np.eye(6)
    coef = np.linalg.solve(G, (A @ win).astype(np.float64))
    gain = float(coef[1])
    if abs(gain) < 1e-12:
        return FieldDistortion()
    a, b = -float(coef[4]) / gain, -float(coef[5]) / gain
    res = win - (coef.astype(np.float32) @ A)
    s2 = float(res @ res) / max(res.size - 6, 1)
    cov = np.linalg.inv(G) * s2 / (gain * gain)
    rr = math.hypot((h - 1) / 2.0, (w - 1) / 2.0)
    return FieldDistortion(
        rotation_deg=math.degrees(math.atan2(b, 1 + a)),
        scale=math.hypot(1 + a, b),
        corner_px=rr * math.hypot(a, b),
        corner_sd=rr * math.sqrt(max(float(cov[4, 4] + cov[5, 5]), 0.0)),
        n_patches=0,
    )


# ----------------------------------------------------------------------------- undoing it

_FAIR_BLUR = 1.0  # px: blur that hides the smoothing a resampling adds (bilinear: ~0.5 px)


def _peak_model(scene: Scene) -> tuple[int, int, np.ndarray]:
    """(y, x, model): the integer peak of `scene` and the fitted model a*T + b*E there."""
    y, x = (int(v) for v in np.unravel_index(int(np.argmax(scene.maps.R)), scene.maps.R.shape))
    a, b = scene.maps.coefficients(y, x)
    model = np.asarray(a * scene.T + (b * scene.E if scene.E is not None else 0.0), np.float32)
    return y, x, model


def screen(scene: Scene) -> FieldDistortion:
    """`screen_distortion` of a prepared pair around its integer peak."""
    y, x, model = _peak_model(scene)
    return screen_distortion(scene.sem_f, model, y, x)


def needs_estimate(scene: Scene, cfg: AlignConfig) -> bool:
    """Run the patch estimate (`correct_field`)? Yes unless `screen` moves a template corner
    by less than `cfg.distortion_screen_px` (0: always). The gate was set on a tuning set with
    its own seeds (docs/alignment.md): no pair the estimate would correct or refuse was
    screened out there (the smallest such screen value 1.09x the gate) nor on the held-out
    sets' distorted pairs."""
    if cfg.distortion_screen_px <= 0:
        return True
    return screen(scene).corner_px >= cfg.distortion_screen_px


def _estimate(scene: Scene, cfg: AlignConfig) -> FieldDistortion:
    """The distortion still left in `scene`, around its integer peak."""
    y, x, model = _peak_model(scene)
    noise_sd = scene.noise * scene.raw_std
    return estimate_distortion(
        scene.sem_f, model, y, x, noise_sd, cfg.distortion_grid, cfg.distortion_search
    )


def _fits_better(
    scene: Scene, corrected: np.ndarray, current: np.ndarray, cfg: AlignConfig
) -> bool:
    """Does the corrected SEM fit the template better than the current one? Both compared
    after the same extra blur: resampling alone smooths the noise and raises R."""

    def best(img: np.ndarray) -> float:
        f = sem_features(img, max(cfg.blur, _FAIR_BLUR), cfg.highpass)
        return float(score_map(f, scene.T, scene.E, cfg.edges_bright, scene.rho).R.max())

    return best(corrected) > best(current)


def correct_field(
    scene: Scene, cfg: AlignConfig
) -> tuple[Scene, FieldDistortion | None, FieldDistortion | None]:
    """-> (scene to match, distortion undone or None, distortion refused or None).

    Up to `cfg.distortion_steps` times: estimate what is left around the integer peak; if
    it is large and significant, compose it with what was undone so far, resample the raw
    SEM into the layout's frame and match again (kept only if the fit improves). What is
    still significant after that and moves a corner by `residual_px` or more, or a total
    beyond the configured bounds, is refused ("distorted")."""
    rot, scale = 0.0, 1.0
    current = scene
    left: FieldDistortion | None = None
    for _ in range(cfg.distortion_steps + 1):
        est = _estimate(current, cfg)
        left = est if est.significant(cfg.residual_px, cfg.residual_z) else None
        if (
            not est.significant(cfg.min_distortion_px, cfg.distortion_z)
            or _ == cfg.distortion_steps
        ):
            break
        # rounded as alignment.csv writes them, so the recorded values reproduce the crop
        new_rot, new_scale = round(rot + est.rotation_deg, 4), round(scale * est.scale, 6)
        if abs(new_rot) > cfg.max_rotation_deg or abs(new_scale - 1) > cfg.max_scale_error:
            return current, None, FieldDistortion(new_rot, new_scale, est.corner_px, est.corner_sd)
        warped = warp_field(scene.raw.astype(np.float32), new_rot, new_scale, inverse=True)
        if not _fits_better(scene, warped, current.sem, cfg):
            break  # the correction does not explain the image better
        # matched again only once kept (the same scene either way, one score map less when not)
        current, rot, scale, left = rematch(scene, warped, cfg), new_rot, new_scale, None
    applied = None if rot == 0.0 and scale == 1.0 else FieldDistortion(rot, scale)
    if left is not None:
        return (
            current,
            applied,
            FieldDistortion(
                rot + left.rotation_deg, scale * left.scale, left.corner_px, left.corner_sd
            ),
        )
    return current, applied, None
