"""Block encoders of GGML's 32-element legacy types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.

These are llama.cpp's fallbacks when a row is not a multiple of 256 (Q2_K/Q3_K -> Q4_0,
Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0). Same contract as :mod:`.kquants`: ``x`` ``(N, 32)``
float32, ``imp`` ``(N, 32)`` or None, returns ``(N, nbytes)`` uint8 in llama.cpp's layout;
``search=False`` is the naive rounding (llama.cpp's reference: signed max-abs mapped to the
longer side, or ``(max - min) / nmax``). The searched scale is :func:`.search.fit_symmetric`
(Q4_0, Q5_0, Q8_0) or :func:`.search.fit_affine` (Q4_1, Q5_1, min clamped to <= 0) with the
weights of :func:`.kquants.prepare`; the scale and min are stored as float16 and every element
rounded to the nearest level of the stored values.

Layouts (little-endian; element ``j`` of a block in the low nibble of byte ``j``, element
``j + 16`` in the high nibble; ``qh`` bit ``j`` = bit 4 of element ``j``)::

    Q4_0  d f16 | qs[16]            x = d * (L - 8)
    Q4_1  d f16 | m f16 | qs[16]    x = d * L + m
    Q5_0  d f16 | qh u32 | qs[16]   x = d * (L - 16)
    Q5_1  d f16 | m f16 | qh u32 | qs[16]
    Q8_0  d f16 | qs[32] int8       x = d * q
"""

from __future__ import annotations

import numpy as np

from . import layouts as lay
from .kquants import prepare, round_codes
from .search import fit_affine, fit_symmetric


def _nibbles(L: np.ndarray) -> np.ndarray:
    """``(N, 32)`` codes -> ``(N, 16)``: byte j = low nibble of L[j] | that of L[j+16] << 4."""
    q = (L & 0xF).astype(np.uint8).reshape(-1, 2, 16)
    return q[:, 0] | (q[:, 1] << 4)


def _qh(L: np.ndarray) -> np.ndarray:
    """``(N, 32)`` 5-bit codes -> ``(N, 4)`` bytes of the little-endian u32 of their bit 4."""
    bits = ((L >> 4) & 1).astype(np.uint32)
    word = (bits << np.arange(32, dtype=np.uint32)).sum(axis=1, dtype=np.uint32)
    return np.ascontiguousarray(word.astype("<u4")).view(np.uint8).reshape(-1, 4)


def _symmetric(x, imp, nmax: int, search: bool):
    """Codes ``-nmax..nmax-1`` (N, 32) and float16 ``d`` (N,) of ``x ~ d * L``."""
    xn, w, amax = prepare(x, imp)
    if search:
        scale = fit_symmetric(xn, w, nmax)
    else:
        arg = np.abs(xn).argmax(axis=1)
        scale = -np.take_along_axis(xn, arg[:, None], axis=1)[:, 0].astype(np.float64) / nmax
    d16 = lay.f16(scale * amax)
    step = d16.astype(np.float64)[:, None]  # (N, 1)
    L = round_codes(x[:, None, :], step, np.zeros_like(step), -nmax, nmax - 1)[:, 0]
    return L, d16


def _affine(x, imp, nmax: int, search: bool):
    """Codes ``0..nmax`` (N, 32), float16 ``d`` and ``m`` (N,) of ``x ~ d * L + m``."""
    xn, w, amax = prepare(x, imp)
    if search:
        scale, low = fit_affine(xn, w, nmax)
    else:
        low = np.minimum(xn.min(axis=1), 0).astype(np.float64)
        scale = (xn.max(axis=1) - low) / nmax
    d16, m16 = lay.f16(scale * amax), lay.f16(low * amax)
    step = d16.astype(np.float64)[:, None]
    L = round_codes(x[:, None, :], step, -m16.astype(np.float64)[:, None], 0, nmax)[:, 0]
    return L, d16, m16


def encode_q4_0(x, imp, search=True):
    L, d = _symmetric(x, imp, 8, search)
    return np.concatenate([lay._half_bytes(d), _nibbles(L + 8)], axis=1)


def encode_q5_0(x, imp, search=True):
    L, d = _symmetric(x, imp, 16, search)
    return np.concatenate([lay._half_bytes(d), _qh(L + 16), _nibbles(L + 16)], axis=1)


def encode_q8_0(x, imp, search=True):
    L, d = _symmetric(x, imp, 128, search)
    return np.concatenate([lay._half_bytes(d), L.astype(np.int8).view(np.uint8)], axis=1)


def encode_q4_1(x, imp, search=True):
    L, d, m = _affine(x, imp, 15, search)
    return np.concatenate([lay._half_bytes(d), lay._half_bytes(m), _nibbles(L)], axis=1)


def encode_q5_1(x, imp, search=True):
    L, d, m = _affine(x, imp, 31, search)
    return np.concatenate([lay._half_bytes(d), lay._half_bytes(m), _qh(L), _nibbles(L)], axis=1)
