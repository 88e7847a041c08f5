"""The maps the aligner scores with: NCC of the SEM against the template model, and
the template's self-comparison under shifts (what sets the noise of a score difference).

Everything is plain OpenCV/numpy on float32 arrays; `semlayout.data.align` decides
what they mean (peak, equivalence, confidence, QC). Offsets are (row, column) of the
template's top-left inside the SEM, over the valid placements (H - h + 1, W - w + 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _box_highpass(img: np.ndarray, size: int) -> np.ndarray:
    """img minus a two-pass box blur (~Gaussian of sigma size/sqrt(6)); keeps float32."""
    import cv2

    if size <= 1:
        return img
    low = cv2.blur(
        cv2.blur(img, (size, size), borderType=cv2.BORDER_REFLECT),
        (size, size),
        borderType=cv2.BORDER_REFLECT,
    )
    return img - low


def _gauss(img: np.ndarray, sigma: float) -> np.ndarray:
    import cv2

    if sigma <= 0:
        return img
    return cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)


def template_features(
    tpl01: np.ndarray, sigma: float, use_edges: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """(T, E): the template and the map of its boundary pixels, each blurred by the PSF
    model `sigma` (px), float32 (H, W); E is None without `use_edges`."""
    import cv2

    t = tpl01.astype(np.float32)
    T = _gauss(t, sigma)
    if not use_edges:
        return T, None
    # boundary = pixel whose 4-neighbourhood holds the other value; both sides of the edge
    cross = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8)
    b = cv2.morphologyEx(tpl01, cv2.MORPH_GRADIENT, cross, borderType=cv2.BORDER_REPLICATE).astype(
        np.float32
    )
    E = _gauss(b, sigma)
    return T, E


def sem_features(sem: np.ndarray, blur: float, highpass: int) -> np.ndarray:
    """The SEM as matched: float32, Gaussian `blur` (px, 0 = none), minus its background
    (box high-pass of size `highpass`, 0 = off)."""
    return _box_highpass(_gauss(sem.astype(np.float32), blur), highpass)


@dataclass
class ScoreMaps:
    """NCC maps of the SEM against T and E over the valid offsets, (H-h+1, W-w+1) each."""

    R: np.ndarray  # multiple correlation of the fit c + a*T + b*E, in [0, 1]
    rT: np.ndarray
    rE: np.ndarray | None
    rho: float  # correlation of T and E (fixed by the template)
    edges_bright: bool

    def coefficients(self, y: int, x: int) -> tuple[float, float]:
        """(a, b) of the fit at (y, x) for unit-norm zero-mean T~, E~ (times the window norm)."""
        rt = float(self.rT[y, x])
        if self.rE is None:
            return rt, 0.0
        re, rho = float(self.rE[y, x]), self.rho
        a, b = (rt - rho * re) / (1 - rho * rho), (re - rho * rt) / (1 - rho * rho)
        if self.edges_bright and b < 0:
            return rt, 0.0
        return a, b


def signed_fit(maps: ScoreMaps, sign: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(R_s, a_s, b_s) maps: the fit c + a*T + b*E constrained to sign*a >= 0 (pattern bright
    for +1, dark for -1) and, with `edges_bright`, b >= 0; each (H-h+1, W-w+1).

    The constrained least-squares optimum is the best feasible one among the full fit and
    the fits on the faces a = 0 (edges alone) and b = 0 (material alone), so R_s is the
    largest feasible of their multiple correlations; max(R_+, R_-) is `maps.R`.
    """
    rT, rE, rho = maps.rT, maps.rE, maps.rho
    t_ok = sign * rT > 0
    if rE is None:
        return np.where(t_ok, np.abs(rT), 0).astype(np.float32), np.where(t_ok, rT, 0), 0 * rT
    d = 1 - rho * rho
    a = (rT - rho * rE) / d
    b = (rE - rho * rT) / d
    full_ok = (sign * a >= 0) & ((b >= 0) | (not maps.edges_bright))
    cand = np.stack(
        [
            np.where(full_ok, (rT * rT + rE * rE - 2 * rho * rT * rE) / d, -1.0),  # full fit
            np.where(t_ok, rT * rT, -1.0),  # material only
            np.where((rE > 0) | (not maps.edges_bright), rE * rE, -1.0),  # edges only
            np.zeros_like(rT),  # nothing fits: a = b = 0
        ]
    )
    k = np.argmax(cand, axis=0)
    r2 = np.take_along_axis(cand, k[None], 0)[0]
    zero = np.zeros_like(rT)
    coef_a = np.choose(k, [a, rT, zero, zero])
    coef_b = np.choose(k, [b, zero, rE, zero])
    return np.sqrt(np.clip(r2, 0, 1)).astype(np.float32), coef_a, coef_b


def unit64(v: np.ndarray) -> np.ndarray:
    """`v` zero-mean and unit-norm, in float64 (unchanged when constant)."""
    return _unit64_inplace(np.array(v, dtype=np.float64), float(v.mean()))


def _unit64_inplace(v: np.ndarray, mean: float | None = None) -> np.ndarray:
    """`unit64` of a float64 array it may overwrite (the same arithmetic, no copies);
    `mean`: the mean as computed in the input's own dtype."""
    v -= float(v.mean()) if mean is None else mean
    n = float(np.sqrt(np.square(v).sum()))
    if n > 0:
        v /= n
    return v


def pair_model_dist2(
    T: np.ndarray,
    E: np.ndarray | None,
    p: tuple[int, int],
    coef_p: tuple[float, float],
    q: tuple[int, int],
    coef_q: tuple[float, float],
    units: tuple[np.ndarray, np.ndarray | None] | None = None,
) -> float:
    """|m_p - m_q|^2 of the unit-norm fitted models m = a T~ + b E~ placed at offsets p and q
    (row, column) of the SEM, zero outside each model's window; in [0, 4]. `units`:
    (`unit64(T)`, `unit64(E)`) when the caller has them already."""
    tu, eu = units if units is not None else (unit64(T), None if E is None else unit64(E))
    h, w = tu.shape
    dy, dx = q[0] - p[0], q[1] - p[1]
    if abs(dy) >= h or abs(dx) >= w:
        return 2.0
    # m_p(i) overlaps m_q(i - d): rows/columns of m_p from max(0, d) to min(h, h + d). The
    # inner product of the two models expands into the four overlap products of T~ and E~
    # (no model images built); their norms are a^2 + b^2 + 2ab<T~, E~>.
    ip = (slice(max(0, dy), h + min(0, dy)), slice(max(0, dx), w + min(0, dx)))
    iq = (slice(max(0, -dy), h + min(0, -dy)), slice(max(0, -dx), w + min(0, -dx)))
    (a1, b1), (a2, b2) = coef_p, coef_q

    def dot(u: np.ndarray, v: np.ndarray) -> float:
        return float(np.einsum("ij,ij->", u, v))

    inner, rho = a1 * a2 * dot(tu[ip], tu[iq]), 0.0
    if eu is None:
        b1 = b2 = 0.0
    else:
        rho = dot(tu, eu)
        inner += b1 * b2 * dot(eu[ip], eu[iq])
        inner += a1 * b2 * dot(tu[ip], eu[iq]) + b1 * a2 * dot(eu[ip], tu[iq])
    n2 = (a1 * a1 + b1 * b1 + 2 * a1 * b1 * rho) * (a2 * a2 + b2 * b2 + 2 * a2 * b2 * rho)
    cos = inner / np.sqrt(n2) if n2 > 0 else 0.0  # a zero model: no overlap
    return float(np.clip(2.0 * (1.0 - cos), 1e-6, 4.0))


@dataclass(frozen=True)
class ModelTables:
    """Correlations of the unit-norm template features under every shift in [-ry, ry] x
    [-rx, rx] (indexed [dy + ry, dx + rx], zero outside each copy): what the distance
    between two fitted models a T~ + b E~ placed at different offsets is made of."""

    tt: np.ndarray  # sum_i T~(i) T~(i + d)
    ee: np.ndarray | None  # the same for E~
    te: np.ndarray | None  # sum_i T~(i) E~(i + d)
    rho: float  # <T~, E~>

    @classmethod
    def of(cls, T: np.ndarray, E: np.ndarray | None, ry: int, rx: int) -> ModelTables:
        h, w = T.shape
        shape = (_dft_size(h + ry), _dft_size(w + rx))
        rows, cols = np.arange(-ry, ry + 1) % shape[0], np.arange(-rx, rx + 1) % shape[1]

        def unit(v: np.ndarray) -> np.ndarray:
            v = v.astype(np.float32) - float(v.mean())
            n = float(np.sqrt((v * v).sum()))
            return v / n if n > 0 else v

        def lag(fa: np.ndarray, fb: np.ndarray) -> np.ndarray:
            # _xcorr(fa, fb)[d] = sum_i a(i + d) b(i)
            return _xcorr(fa, fb)[np.ix_(rows, cols)].astype(np.float64)

        tu = unit(T)
        ft = _spectrum(tu, shape)
        if E is None:
            return cls(lag(ft, ft), None, None, 0.0)
        eu = unit(E)
        fe = _spectrum(eu, shape)
        return cls(lag(ft, ft), lag(fe, fe), lag(fe, ft), float((tu * eu).sum()))

    def dist2(
        self, peak: tuple[int, int], coef: tuple[float, float], a: np.ndarray, b: np.ndarray
    ) -> np.ndarray:
        """|m_p - m_q|^2 for every offset q of the (ny, nx) map: m_p = (coef) at `peak`,
        m_q = (a[q], b[q]) at q; each unit norm. Clipped to [1e-6, 4]."""
        ny, nx = a.shape
        y, x = peak
        ry, rx = (self.tt.shape[0] - 1) // 2, (self.tt.shape[1] - 1) // 2
        win = (slice(ry - y, ry - y + ny), slice(rx - x, rx - x + nx))  # d = q - p
        a1, b1 = coef
        inner = a1 * a * self.tt[win]
        if self.ee is not None and self.te is not None:
            # <T~ at p, E~ at q> = sum_i T~(i) E~(i - d) = te[-d] = (E~, T~ correlation)[d]
            te, et = self.te[win], self.te[::-1, ::-1][win]
            inner = inner + b1 * b * self.ee[win] + a1 * b * et + b1 * a * te
        rho = self.rho
        n1 = np.sqrt(max(a1 * a1 + b1 * b1 + 2 * a1 * b1 * rho, 1e-12))
        n2 = np.sqrt(np.maximum(a * a + b * b + 2 * a * b * rho, 1e-12))
        return np.clip(2.0 * (1.0 - inner / (n1 * n2)), 1e-6, 4.0)


def _dft_size(n: int) -> int:
    import cv2

    return int(cv2.getOptimalDFTSize(n))


def _spectrum(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """DFT of `img` zero-padded to `shape`: (H, W) float32 in cv2's packed real (CCS) layout."""
    import cv2

    buf = np.zeros(shape, np.float32)
    buf[: img.shape[0], : img.shape[1]] = img
    return cv2.dft(buf)


def _xcorr(fa: np.ndarray, fb: np.ndarray) -> np.ndarray:
    """Circular cross-correlation c[u] = sum_i a[i + u] * b[i] from two spectra, (H, W) float32."""
    import cv2

    return cv2.idft(
        cv2.mulSpectrums(fa, fb, 0, conjB=True), flags=cv2.DFT_REAL_OUTPUT | cv2.DFT_SCALE
    )


def feature_rho(T: np.ndarray, E: np.ndarray | None) -> float | bool:
    """The correlation of the template features T and E (fixed by the template), or False
    when E adds nothing to the fit (absent, constant, or nearly collinear with T)."""
    if E is None:
        return False
    tc = T - T.mean()
    ec = E - E.mean()
    denom = float(np.sqrt((tc * tc).sum() * (ec * ec).sum()))
    rho = float((tc * ec).sum() / denom) if denom > 0 else 0.0
    if 1 - rho * rho < 1e-3 or denom == 0:
        return False
    return rho


def score_map(
    sem_f: np.ndarray,
    T: np.ndarray,
    E: np.ndarray | None,
    edges_bright: bool = True,
    rho: float | bool | None = None,
) -> ScoreMaps:
    """Score every offset by the multiple correlation R of the SEM window with {T, E}.

    r_T and r_E are `cv2.matchTemplate` TM_CCOEFF_NORMED maps. With unit-normalised
    zero-mean regressors T~, E~ (correlation rho), the squared multiple correlation is
    (r_T^2 + r_E^2 - 2 rho r_T r_E) / (1 - rho^2); its material coefficient is
    proportional to r_T - rho r_E (sign = polarity). `rho`: `feature_rho(T, E)` when the
    caller has it already.
    """
    import cv2

    rT = cv2.matchTemplate(sem_f, T, cv2.TM_CCOEFF_NORMED)
    rho = feature_rho(T, E) if rho is None else rho
    if E is None or rho is False:
        return ScoreMaps(np.abs(rT), rT, None, 0.0, edges_bright)
    rE = cv2.matchTemplate(sem_f, E, cv2.TM_CCOEFF_NORMED)
    r2 = (rT * rT + rE * rE - 2 * rho * rT * rE) / (1 - rho * rho)
    if edges_bright:
        # secondary-electron yield rises at edges whatever the material: a fit that needs
        # dark edges is unphysical, so fall back to the material term alone there (b = 0)
        r2 = np.where(rE - rho * rT < 0, rT * rT, r2)
    return ScoreMaps(np.sqrt(np.clip(r2, 0, 1)), rT, rE, rho, edges_bright)


def model_dist2(T: np.ndarray, E: np.ndarray | None, a: float, b: float, r: int) -> np.ndarray:
    """|m_p - m_q|^2 for the unit-norm fitted model m = a T~ + b E~ at shifts |q - p| <= r.

    Returns (2r+1, 2r+1) indexed [dy+r, dx+r]; this is what scales the noise of
    R_p - R_q for nearby offsets, where the blur makes the binary template a poor guide.
    """

    def unit(v: np.ndarray) -> np.ndarray:
        v = v - v.mean()
        n = float(np.sqrt((v * v).sum()))
        return v / n if n > 0 else v

    m = a * unit(T) + (b * unit(E) if E is not None else 0.0)
    m = unit(np.asarray(m, np.float32))
    h, w = m.shape
    out = np.zeros((2 * r + 1, 2 * r + 1), np.float32)
    for dy in range(0, r + 1):
        for dx in range(-r, r + 1):
            if dy == 0 and dx < 0:
                continue
            # <m, m shifted by (dy, dx)> on the overlap; zero padding outside
            ov = float(
                (
                    m[dy:, max(0, dx) : w + min(0, dx)] * m[: h - dy, max(0, -dx) : w - max(0, dx)]
                ).sum()
            )
            out[r + dy, r + dx] = out[r - dy, r - dx] = ov
    return np.clip(2 * (1 - out), 1e-6, 4)


def shift_stats(tpl01: np.ndarray, ry: int, rx: int) -> tuple[np.ndarray, np.ndarray]:
    """Template self-comparison for every shift (dy, dx) in [-ry, ry] x [-rx, rx].

    Returns two (2*ry+1, 2*rx+1) float arrays indexed [dy+ry, dx+rx]:
    * mismatch: share of differing pixels between the template and itself shifted by
      (dy, dx), on the overlap (sum(a) + sum(b) - 2 sum(a*b) for binary a, b);
    * dist2: |t_p - t_q|^2 for the unit-norm zero-mean template placed at two offsets
      q - p = (dy, dx) of the SEM canvas, = 2 (1 - autocorrelation). It scales the
      noise of a score difference between the two offsets.
    """
    import cv2

    h, w = tpl01.shape
    a = tpl01.astype(np.float32)
    # cross[dy+ry, dx+rx] = sum_{overlap} a[i, j] * a[i+dy, j+dx]: the autocorrelation,
    # circular on a grid >= h + ry so that lags up to +-ry do not wrap
    fa = _spectrum(a, (_dft_size(h + ry), _dft_size(w + rx)))
    auto_c = _xcorr(fa, fa)
    rows = np.arange(-ry, ry + 1) % auto_c.shape[0]
    cols = np.arange(-rx, rx + 1) % auto_c.shape[1]
    cross = np.rint(auto_c[np.ix_(rows, cols)].astype(np.float64))  # integer counts
    ii = cv2.integral(a, sdepth=cv2.CV_64F)

    def rect_sum(r0: np.ndarray, r1: np.ndarray, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
        return ii[np.ix_(r1, c1)] - ii[np.ix_(r0, c1)] - ii[np.ix_(r1, c0)] + ii[np.ix_(r0, c0)]

    dys = np.arange(-ry, ry + 1)
    dxs = np.arange(-rx, rx + 1)
    # overlap in the un-shifted copy: rows [max(0,-dy), h - max(0,dy)), same for columns
    r0a, r1a = np.maximum(0, -dys), h - np.maximum(0, dys)
    c0a, c1a = np.maximum(0, -dxs), w - np.maximum(0, dxs)
    sa = rect_sum(r0a, r1a, c0a, c1a)
    sb = sa[::-1, ::-1]  # the shifted copy's overlap for d is the un-shifted one's for -d
    area = np.outer(r1a - r0a, c1a - c0a).astype(np.float64)
    mism = np.clip((sa + sb - 2 * cross) / area, 0, 1)
    n = float(h * w)
    f = float(a.sum()) / n
    var = max(n * f * (1 - f), 1e-9)
    auto = (cross - f * (sa + sb) + f * f * area) / var  # <t~_p, t~_q>, zero outside the overlap
    return mism.astype(np.float32), np.clip(2 * (1 - auto), 1e-6, 4).astype(np.float32)


def noise_ratio(sem: np.ndarray) -> float:
    """Estimated noise std / image std (<= 1), Immerkaer's Laplacian-difference estimator."""
    import cv2

    k = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    img = sem.astype(np.float32)
    resp = cv2.filter2D(img, -1, k)[1:-1, 1:-1]
    sigma = float(np.sqrt(np.pi / 2) * np.abs(resp).mean() / 6)
    sd = float(img.std())
    return min(1.0, sigma / sd) if sd > 0 else 1.0
