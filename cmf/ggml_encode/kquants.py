"""Block encoders of the K-quants (Q2_K..Q6_K) and 4-bit non-linear types (IQ4_NL, IQ4_XS).

Each encoder takes ``x`` ``(N, B)`` float32 (N blocks of the type's B elements, finite) and
``imp`` ``(N, B)`` non-negative importances or None, and returns ``(N, nbytes)`` uint8 in
llama.cpp's layout. ``search=False`` gives the naive rounding used as a baseline: max-abs (or
max - min) scales at every level, then round-to-nearest.

The method (spec/planner.md, "GGML encoders"): per block, values are divided by the block's
max-abs (so the searches see magnitudes about 1 whatever the tensor's scale, subnormals
included); the error weight of each element is ``imp * sqrt(sigma2 + x^2)`` with ``sigma2``
twice the block's mean square (llama.cpp's imatrix weighting; ``imp = 1`` without calibration);
each sub-block's scale (and min) is searched (:mod:`.search`); the sub-block scales are
quantized to the type's 4/6/8-bit codes by a weighted search of their own (each weighted by its
sub-block's total weight); the super-block scales are rounded to float16 (saturating at 65504,
sub-block codes re-rounded when the half float moved the scale by more than 2^-10); finally every
element is rounded to the nearest level of the scales actually stored.
"""

from __future__ import annotations

import numpy as np

from . import layouts as lay
from .search import EPS, fit_affine, fit_grid, fit_positive, fit_symmetric, nearest_index

QK_K = 256
IQ4_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113])
_iq4_index = nearest_index(IQ4_VALUES)


def prepare(x: np.ndarray, imp: np.ndarray | None):
    """Normalise blocks by their max-abs and build error weights.
    ``x`` (N, B) -> ``(xn (N, B) float32, w (N, B) float32, amax (N,) float64)``."""
    amax = np.abs(x).max(axis=1).astype(np.float64)  # (N,)
    safe = np.where(amax > 0, amax, 1.0)
    xn = (x / safe[:, None]).astype(np.float32)  # (N, B), |xn| <= 1
    sigma2 = 2 * np.mean(xn * xn, axis=1, keepdims=True)  # (N, 1)
    w = np.sqrt(sigma2 + xn * xn)
    if imp is not None:
        w = w * imp
    return xn, w.astype(np.float32), amax


def _reround(codes, s_real, d_real, d16, lo, hi):
    """Sub-block codes re-rounded against the stored half-float scale where rounding to f16
    moved it by more than 2^-10 (f16 subnormals, saturation). All arrays (N, k) / (N,)."""
    d16 = d16.astype(np.float64)
    moved = np.abs(d16 - d_real) > np.abs(d_real) * 2.0**-10  # (N,)
    if not moved.any():
        return codes
    safe = np.where(d16 != 0, d16, 1.0)
    again = np.where(d16[:, None] != 0, np.clip(np.rint(s_real / safe[:, None]), lo, hi), 0)
    return np.where(moved[:, None], again, codes).astype(np.int64)


def round_codes(x, step, off, lo, hi):
    """Nearest codes ``clip(rint((x + off) / step), lo, hi)``; 0 where the step is 0.
    ``x`` (N, k, n); ``step``, ``off`` (N, k) float64."""
    ok = step != 0
    q = (x.astype(np.float64) + off[..., None]) / np.where(ok, step, 1.0)[..., None]
    return np.where(ok[..., None], np.clip(np.rint(q), lo, hi), 0).astype(np.int64)


def _affine(x, imp, sub: int, nmax: int, snmax: int, search: bool):
    """Q2_K / Q4_K / Q5_K fields: codes (N,256), scale and min codes (N,k), d, dmin (N,) f16."""
    n = x.shape[0]
    k = QK_K // sub
    xn, w, amax = prepare(x, imp)
    xs, ws = xn.reshape(n * k, sub), w.reshape(n * k, sub)
    if search:
        scale, low = fit_affine(xs, ws, nmax)
    else:
        low = np.minimum(xs.min(axis=1), 0).astype(np.float64)
        scale = (xs.max(axis=1) - low) / nmax
    scale, mins = scale.reshape(n, k), -low.reshape(n, k)  # (N, k) >= 0, normalised units
    sw = ws.sum(axis=1, dtype=np.float64).reshape(n, k)
    levels = []
    for s in (scale, mins):
        if search:
            d, codes = fit_positive(s, sw, snmax)
        else:
            d = s.max(axis=1) / snmax
            codes = np.clip(np.rint(s / np.where(d > EPS, d, 1.0)[:, None]), 0, snmax)
            codes = np.where((d > EPS)[:, None], codes, 0).astype(np.int64)
        d16 = lay.f16(d * amax)
        codes = _reround(codes, s * amax[:, None], d * amax, d16, 0, snmax)
        levels.append((d16, codes))
    (d16, sc), (m16, mc) = levels
    xk, wk = x.reshape(n, k, sub), w.reshape(n, k, sub)
    if search:
        sc, mc = _polish(xk, wk, d16, sc, m16, mc, 0, nmax, 0, snmax)
    step = d16.astype(np.float64)[:, None] * sc  # (N, k)
    off = m16.astype(np.float64)[:, None] * mc
    L = round_codes(xk, step, off, 0, nmax).reshape(n, QK_K)
    return L, sc, mc, d16, m16


def _polish(xk, wk, d16, sc, m16, mc, lo, hi, slo, shi):
    """Local search on the stored sub-block codes: each scale code (and min code, when ``m16``
    is given) moved by -1, 0, +1, the elements re-rounded, the combination of smallest weighted
    error kept per sub-block. ``xk``, ``wk`` (N, k, n); codes (N, k); ``lo = None``: elements
    take the IQ4 table's values. Returns the codes."""
    d = d16.astype(np.float64)[:, None]
    m = None if m16 is None else m16.astype(np.float64)[:, None]
    best = np.full(sc.shape, np.inf)
    out_s, out_m = sc, mc
    for ds in (0, -1, 1):
        for dm in (0, -1, 1) if m is not None else (0,):
            s2 = np.clip(sc + ds, slo, shi)
            m2 = None if m is None else np.clip(mc + dm, slo, shi)
            step = d * s2
            off = np.zeros_like(step) if m is None else m * m2
            if lo is None:  # IQ4 table
                q = IQ4_VALUES[_grid_codes(xk, step)]
            else:
                q = round_codes(xk, step, off, lo, hi)
            err = np.einsum("ijk,ijk->ij", wk, (step[..., None] * q - off[..., None] - xk) ** 2)
            take = err < best
            best = np.where(take, err, best)
            out_s = np.where(take, s2, out_s)
            if m is not None:
                out_m = np.where(take, m2, out_m)
    return out_s, out_m


def _symmetric(x, imp, sub: int, nmax: int, snmax: int, search: bool):
    """Q3_K / Q6_K fields: codes + nmax (N,256), signed scale codes (N,k), d (N,) f16."""
    n = x.shape[0]
    k = QK_K // sub
    xn, w, amax = prepare(x, imp)
    xs, ws = xn.reshape(n * k, sub), w.reshape(n * k, sub)
    if search:
        scale = fit_symmetric(xs, ws, nmax)
    else:
        arg = np.abs(xs).argmax(axis=1)
        scale = -np.take_along_axis(xs, arg[:, None], axis=1)[:, 0].astype(np.float64) / nmax
    scale = scale.reshape(n, k)
    sw = ws.sum(axis=1, dtype=np.float64).reshape(n, k)
    d = _super_scale(scale, sw, snmax, search)
    safe = np.where(d != 0, d, 1.0)
    codes = np.clip(np.rint(scale / safe[:, None]), -snmax, snmax - 1)
    codes = np.where((d != 0)[:, None], codes, 0).astype(np.int64)
    d16 = lay.f16(d * amax)
    codes = _reround(codes, scale * amax[:, None], d * amax, d16, -snmax, snmax - 1)
    xk = x.reshape(n, k, sub)
    if search:
        codes, _ = _polish(
            xk, w.reshape(n, k, sub), d16, codes, None, None, -nmax, nmax - 1, -snmax, snmax - 1
        )
    step = d16.astype(np.float64)[:, None] * codes
    L = round_codes(xk, step, np.zeros_like(step), -nmax, nmax - 1)
    return L.reshape(n, QK_K) + nmax, codes, d16


def _super_scale(scale, sw, snmax: int, search: bool):
    """Signed super-block scale for signed sub-block scales (N, k): searched or max-abs."""
    if search:
        return fit_symmetric(scale, sw.astype(np.float32), snmax)
    arg = np.abs(scale).argmax(axis=1)
    return -np.take_along_axis(scale, arg[:, None], axis=1)[:, 0] / snmax


def encode_q2_k(x, imp, search=True):
    L, sc, mc, d, dm = _affine(x, imp, 16, 3, 15, search)
    return lay.pack_q2_k(L, sc, mc, d, dm)


def encode_q4_k(x, imp, search=True):
    L, sc, mc, d, dm = _affine(x, imp, 32, 15, 63, search)
    return lay.pack_q4_k(L, sc, mc, d, dm)


def encode_q5_k(x, imp, search=True):
    L, sc, mc, d, dm = _affine(x, imp, 32, 31, 63, search)
    return lay.pack_q5_k(L, sc, mc, d, dm)


def encode_q3_k(x, imp, search=True):
    L, sc, d = _symmetric(x, imp, 16, 4, 32, search)
    return lay.pack_q3_k(L, sc + 32, d)


def encode_q6_k(x, imp, search=True):
    L, sc, d = _symmetric(x, imp, 16, 32, 128, search)
    return lay.pack_q6_k(L, sc, d)


def _grid_scales(xs, ws, search: bool):
    """Per-group scales on the IQ4 table: searched, or the max-abs mapped to its -127 end."""
    if search:
        return fit_grid(xs, ws, IQ4_VALUES)
    arg = np.abs(xs).argmax(axis=1)
    return np.take_along_axis(xs, arg[:, None], axis=1)[:, 0].astype(np.float64) / IQ4_VALUES[0]


def _grid_codes(x, step):
    """Nearest IQ4 table indices of ``x / step``; ``x`` (N, k, n), ``step`` (N, k)."""
    ok = step != 0
    y = x.astype(np.float64) / np.where(ok, step, 1.0)[..., None]
    return _iq4_index(np.where(ok[..., None], y, 0.0))


def encode_iq4_nl(x, imp, search=True):
    """IQ4_NL: ``x`` (N, 32) blocks."""
    xn, w, amax = prepare(x, imp)
    d16 = lay.f16(_grid_scales(xn, w, search) * amax)
    L = _grid_codes(x[:, None, :], d16.astype(np.float64)[:, None])[:, 0]
    return lay.pack_iq4_nl(L, d16)


def encode_iq4_xs(x, imp, search=True):
    """IQ4_XS: ``x`` (N, 256) super-blocks of eight 32-blocks with 6-bit signed scales."""
    n = x.shape[0]
    xn, w, amax = prepare(x, imp)
    xs, ws = xn.reshape(n * 8, 32), w.reshape(n * 8, 32)
    scale = _grid_scales(xs, ws, search).reshape(n, 8)
    sw = ws.sum(axis=1, dtype=np.float64).reshape(n, 8)
    d = _super_scale(scale, sw, 32, search)
    safe = np.where(d != 0, d, 1.0)
    codes = np.where((d != 0)[:, None], np.clip(np.rint(scale / safe[:, None]), -32, 31), 0)
    d16 = lay.f16(d * amax)
    codes = _reround(codes.astype(np.int64), scale * amax[:, None], d * amax, d16, -32, 31)
    xk = x.reshape(n, 8, 32)
    if search:
        codes, _ = _polish(xk, w.reshape(n, 8, 32), d16, codes, None, None, None, None, -32, 31)
    L = _grid_codes(xk, d16.astype(np.float64)[:, None] * codes)
    return lay.pack_iq4_xs(L.reshape(n, QK_K), codes + 32, d16)
