"""Vectorised scale searches for GGML block encoders (spec/planner.md, "GGML encoders").

Every function works on many groups at once: ``x`` is ``(N, n)`` (N groups of n values, float32,
already normalised so that magnitudes are about 1) and ``w`` the same shape of non-negative
weights (the error of element ``i`` counts ``w[i] * err[i]**2``). Loops run over candidate scales
or over the n positions of a group, never over groups. Nothing here reads or writes bytes.

- :func:`fit_affine`: ``x ~ scale * L + low`` with ``L`` in ``0..nmax`` and ``low <= 0``
  (K-quants with a min: Q2_K, Q4_K, Q5_K).
- :func:`fit_symmetric`: ``x ~ scale * L`` with ``L`` in ``-nmax..nmax-1`` (Q3_K, Q6_K and the
  super-block level of the signed types).
- :func:`fit_positive`: non-negative ``x ~ scale * L`` with ``L`` in ``0..nmax`` (6- or 4-bit
  sub-block scales and mins of Q2_K/Q4_K/Q5_K).
- :func:`fit_grid`: ``x ~ scale * values[L]`` for a sorted non-linear table (IQ4_NL, IQ4_XS).
"""

from __future__ import annotations

import numpy as np

EPS = 1e-15  # a group whose largest magnitude is below this is all zero

# Relative offsets tried around the max-abs (or max - min) scale: ``(nmax + r) / range``.
AFFINE_STEPS = np.arange(-0.9, 0.9001, 0.05)  # 37 candidates
SYMMETRIC_STEPS = np.arange(-0.9, 0.9001, 0.1)  # 19 candidates
POSITIVE_STEPS = np.arange(-0.4, 0.4001, 0.1)  # 9 candidates
GRID_STEPS = np.arange(-7.0, 7.001, 1.0)  # 15 candidates (absolute, on the table's scale)


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot product of two ``(N, n)`` arrays -> ``(N,)`` float64 (summed in the inputs'
    precision: n is 16 or 32, float32 sums are exact to ~1e-7)."""
    return np.einsum("ij,ij->i", a, b).astype(np.float64)


def fit_affine(
    x: np.ndarray, w: np.ndarray, nmax: int, steps: np.ndarray = AFFINE_STEPS
) -> tuple[np.ndarray, np.ndarray]:
    """Scale and offset of ``x ~ scale * L + low`` (``L = 0..nmax``) for each of N groups.

    Starts from ``(max - min) / nmax`` with ``min`` clamped to at most 0; for each step ``r`` the
    codes are rounded at inverse scale ``(nmax + r) / (max - low)`` (``low`` = best offset so far)
    and ``scale, low`` refitted by weighted least squares (``low`` clamped to <= 0); the fit with
    the smallest weighted squared error wins. Returns ``(scale (N,) >= 0, low (N,) <= 0)``.
    """
    # x, w: (N, n)
    hi = x.max(axis=1).astype(np.float64)  # (N,)
    low = np.minimum(x.min(axis=1), 0).astype(np.float64)  # (N,)
    span = hi - low
    low0 = low
    ok = span > 0
    scale = np.where(ok, span / nmax, 0.0)  # (N,)
    sw = w.sum(axis=1, dtype=np.float64)  # (N,)
    sx = _dot(w, x)
    sxx = _dot(w * x, x)

    def error(s, m, sl, sll, sxl):  # weighted squared error of s * L + m, from the sums
        return s * s * sll + 2 * s * m * sl - 2 * s * sxl + m * m * sw - 2 * m * sx + sxx

    shifted = x - low[:, None].astype(np.float32)  # (N, n) >= 0
    codes = np.clip(np.rint(shifted / np.where(ok, scale, 1)[:, None]), 0, nmax)
    wl = w * codes
    best = error(scale, low, wl.sum(axis=1, dtype=np.float64), _dot(wl, codes), _dot(wl, x))
    best = np.where(ok, best, 0.0)
    for r in steps:
        cur = hi - low  # the best offset so far can sit at or near the max
        inv = np.where(ok & (cur > 0), (nmax + r) / np.where(cur > 0, cur, 1.0), 0.0)
        inv = np.minimum(inv, 1e30).astype(np.float32)
        codes = np.clip(np.rint((x - low[:, None].astype(np.float32)) * inv[:, None]), 0, nmax)
        wl = w * codes  # (N, n)
        sl = wl.sum(axis=1, dtype=np.float64)
        sll = _dot(wl, codes)
        sxl = _dot(wl, x)
        det = sw * sll - sl * sl
        good = det > 0
        safe = np.where(good, det, 1.0)
        s = (sw * sxl - sx * sl) / safe
        m = (sll * sx - sl * sxl) / safe
        clamp = m > 0
        s = np.where(clamp, sxl / np.where(sll > 0, sll, 1.0), s)
        m = np.where(clamp, 0.0, m)
        err = error(s, m, sl, sll, sxl)
        # a fit must stay near the data's range: one element of overwhelming weight can
        # otherwise pull the scale and offset far out (exact there, useless for the rest, and
        # impossible to share one super-block scale with the other sub-blocks)
        sane = (s * nmax <= 1.5 * span) & (m >= low0 - 0.5 * span)
        take = good & ok & sane & (s > 0) & (err < best)
        best = np.where(take, err, best)
        scale = np.where(take, s, scale)
        low = np.where(take, m, low)
    return scale, low


def _scan(x, w, invs, levels, state):
    """Least-squares scales of ``x ~ scale * levels(x * inv)`` for each candidate ``inv`` (N,);
    keeps, per group, the candidate of the largest ``sum(w q x)^2 / sum(w q^2)`` (the smallest
    weighted error). ``state`` = ``(best (N,), scale (N,), q (N, n) or None)``, updated and
    returned (``q``, the chosen level values, only when given)."""
    best, scale, kept = state
    for inv in invs:
        q = levels(x * inv.astype(np.float32)[:, None])  # (N, n) level values
        wq = w * q
        sqx = _dot(wq, x)
        sqq = _dot(wq, q)
        pos = sqq > 0
        score = np.where(pos, sqx * sqx / np.where(pos, sqq, 1.0), -1.0)
        take = pos & np.isfinite(inv) & (score > best)
        best = np.where(take, score, best)
        scale = np.where(take, sqx / np.where(pos, sqq, 1.0), scale)
        if kept is not None:
            kept = np.where(take[:, None], q, kept)
    return best, scale, kept


DOMINANT = 0.3  # share of a group's weighted energy that makes one element dominant


def _anchored(x, w, anchors, levels, state):
    """Extra candidates for groups where one element carries more than ``DOMINANT`` of the
    weighted energy ``sum(w x^2)`` (an imatrix column of overwhelming importance): that element
    is put exactly on each level ``a`` of ``anchors`` (``inv = a / x_dom``), so it is not left at
    code 0 by scales fitted to the group's max. Updates and returns ``state`` (as
    :func:`_scan`)."""
    e = w * x * x  # (N, n)
    j = e.argmax(axis=1)
    top = np.take_along_axis(e, j[:, None], axis=1)[:, 0]
    xd = np.take_along_axis(x, j[:, None], axis=1)[:, 0].astype(np.float64)
    sub = np.flatnonzero((top > DOMINANT * e.sum(axis=1)) & (np.abs(xd) > EPS))
    if sub.size == 0:
        return state
    best, scale, kept = state
    invs = [np.full(sub.size, float(a)) / xd[sub] for a in anchors]
    part = (best[sub], scale[sub], None if kept is None else kept[sub])
    b, s, k = _scan(x[sub], w[sub], invs, levels, part)
    best, scale = best.copy(), scale.copy()
    best[sub], scale[sub] = b, s
    if kept is not None:
        kept = kept.copy()
        kept[sub] = k
    return best, scale, kept


def fit_symmetric(
    x: np.ndarray, w: np.ndarray, nmax: int, steps: np.ndarray = SYMMETRIC_STEPS
) -> np.ndarray:
    """Signed scale of ``x ~ scale * L`` (``L = -nmax..nmax-1``) for each of N groups.

    The value of largest magnitude is mapped near ``-nmax`` (the longer side of the range):
    inverse scale ``-(nmax + r) / xmax`` for each step ``r``; each rounding is refitted by
    weighted least squares and the one with the smallest weighted error (the largest
    ``sum(w x L)^2 / sum(w L^2)``) wins; a dominant element also gets candidates that put it
    exactly on each level (:func:`_anchored`). All-zero groups get scale 0. Returns ``(N,)``.
    """
    # x, w: (N, n)
    arg = np.abs(x).argmax(axis=1)
    xmax = np.take_along_axis(x, arg[:, None], axis=1)[:, 0].astype(np.float64)  # (N,) signed
    ok = np.abs(xmax) > EPS
    safe = np.where(ok, xmax, 1.0)

    def levels(y):
        return np.clip(np.rint(y), -nmax, nmax - 1)

    rs = np.concatenate([[0.0], steps[steps != 0]])
    invs = [np.where(ok, -(nmax + r) / safe, 0.0) for r in rs]
    state = (np.full(x.shape[0], -1.0), np.where(ok, -xmax / nmax, 0.0), None)
    state = _scan(x, w, invs, levels, state)
    _, scale, _ = _anchored(x, w, range(-1, -nmax - 1, -1), levels, state)
    return np.where(ok, scale, 0.0)


def fit_positive(
    x: np.ndarray, w: np.ndarray, nmax: int, steps: np.ndarray = POSITIVE_STEPS, passes: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Scale and codes of non-negative ``x ~ scale * L`` (``L = 0..nmax``), N groups of n.

    Tries inverse scales ``(nmax + r) / max(x)`` (and, for a dominant element, each level for
    it), refits each by weighted least squares, keeps the best; then ``passes`` rounds of
    coordinate descent move single codes to their least-squares optimum while that lowers the
    weighted error. Returns ``(scale (N,) float64, L (N, n) int)``; all-zero groups give scale 0
    and codes 0.
    """
    # x, w: (N, n), x >= 0
    xd = x.astype(np.float64)
    wd = w.astype(np.float64)
    xmax = xd.max(axis=1)
    ok = xmax > EPS
    safe = np.where(ok, xmax, 1.0)

    def levels(y):
        return np.clip(np.rint(y), 0, nmax)

    rs = np.concatenate([[0.0], steps[steps != 0]])
    invs = [np.where(ok, (nmax + r) / safe, 0.0) for r in rs]
    state = (np.full(x.shape[0], -1.0), np.zeros(x.shape[0]), np.zeros(x.shape))
    state = _scan(xd, wd, invs, levels, state)
    _, _, codes = _anchored(xd, wd, range(1, nmax + 1), levels, state)
    slx = np.einsum("ij,ij->i", wd * codes, xd)
    sll = np.einsum("ij,ij->i", wd * codes, codes)
    for _ in range(passes):
        changed = False
        for i in range(x.shape[1]):
            li, xi, wi = codes[:, i], xd[:, i], wd[:, i]
            rx = slx - wi * xi * li  # sums without element i
            r2 = sll - wi * li * li
            can = (rx > 0) & (r2 > 0)
            new = np.clip(np.rint(xi * r2 / np.where(can, rx, 1.0)), 0, nmax)
            nx = rx + wi * xi * new
            n2 = r2 + wi * new * new
            take = can & (new != li) & (n2 > 0) & (nx * nx * sll > slx * slx * n2)
            if take.any():
                changed = True
                codes[:, i] = np.where(take, new, li)
                slx = np.where(take, nx, slx)
                sll = np.where(take, n2, sll)
        if not changed:
            break
    scale = np.where(ok & (sll > 0), slx / np.where(sll > 0, sll, 1.0), 0.0)
    return scale, np.where(ok[:, None], codes, 0).astype(np.int64)


def nearest_index(values: np.ndarray) -> callable:
    """A function mapping an array ``y`` to the index of the nearest entry of the sorted integer
    table ``values`` (ties go to the larger entry), by a lookup on ``floor(2 y)``."""
    v = np.asarray(values, dtype=np.int64)
    mids2 = v[:-1] + v[1:]  # twice the midpoints, integers
    lo, hi = 2 * int(v[0]) - 2, 2 * int(v[-1]) + 2
    table = np.searchsorted(mids2, np.arange(lo, hi + 1), side="right").astype(np.int8)

    def index(y: np.ndarray) -> np.ndarray:
        k = np.clip(np.floor(2 * y), lo, hi).astype(np.int64) - lo
        return table[k]

    return index


def fit_grid(
    x: np.ndarray, w: np.ndarray, values: np.ndarray, steps: np.ndarray = GRID_STEPS
) -> np.ndarray:
    """Signed scale of ``x ~ scale * values[L]`` for each of N groups (``values`` sorted ints).

    Candidates map the largest magnitude ``xmax`` to the far positive end (``max(values)``) and
    to ``values[0] + r`` for each step ``r`` (and a dominant element onto each table value);
    codes are the nearest table entries, the scale of each candidate is refitted by weighted
    least squares, the smallest weighted error wins. Returns ``(N,)`` float64 (0 for all-zero
    groups).
    """
    # x, w: (N, n)
    index = nearest_index(values)
    table = np.asarray(values, dtype=np.float32)
    arg = np.abs(x).argmax(axis=1)
    xmax = np.take_along_axis(x, arg[:, None], axis=1)[:, 0].astype(np.float64)
    ok = np.abs(xmax) > EPS
    safe = np.where(ok, xmax, 1.0)

    def levels(y):
        return table[index(y)]

    targets = np.concatenate([[float(table[-1])], float(table[0]) + steps])
    invs = [np.where(ok, t / safe, 0.0) for t in targets]
    state = (np.full(x.shape[0], -1.0), np.where(ok, xmax / table[0], 0.0), None)
    state = _scan(x, w, invs, levels, state)
    _, scale, _ = _anchored(x, w, table, levels, state)
    return np.where(ok, scale, 0.0)
