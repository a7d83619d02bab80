"""Pack integer fields into llama.cpp's block bytes (the layouts of ggml-common.h).

Each ``pack_*`` takes the fields of N super-blocks as integer arrays (codes ``L`` of shape
``(N, 256)`` or ``(N, 32)``, already in their stored range) and float scales, and returns
``(N, nbytes)`` uint8. The layouts are llama.cpp's; spec/codecs/ggml.md describes them field by
field. Scales are stored as IEEE half floats; :func:`f16` saturates at the half range.
"""

from __future__ import annotations

import numpy as np

QK_K = 256
F16_MAX = 65504.0


def f16(v: np.ndarray) -> np.ndarray:
    """Values rounded to float16, saturated to +-65504 (never inf), as float16."""
    return np.clip(np.asarray(v, dtype=np.float64), -F16_MAX, F16_MAX).astype(np.float16)


def _half_bytes(d: np.ndarray) -> np.ndarray:
    """``(N,)`` float16 -> ``(N, 2)`` little-endian bytes."""
    return np.ascontiguousarray(d.astype("<f2")).view(np.uint8).reshape(-1, 2)


def _nibbles_64(L: np.ndarray) -> np.ndarray:
    """``(N, 256)`` 4-bit values -> ``(N, 128)``: per 64 elements, byte ``l`` =
    ``L[l] | L[l+32] << 4``."""
    q = (L & 0xF).astype(np.uint8).reshape(-1, 4, 2, 32)
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)


def _crumbs_128(L: np.ndarray) -> np.ndarray:
    """``(N, 256)`` 2-bit values -> ``(N, 64)``: per 128 elements, byte ``l`` holds elements
    ``l, l+32, l+64, l+96`` at bits 0, 2, 4, 6."""
    q = (L & 3).astype(np.uint8).reshape(-1, 2, 4, 32)
    return (q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)).reshape(-1, 64)


def _scales_k4(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Eight 6-bit scales and eight 6-bit mins ``(N, 8)`` -> Q4_K/Q5_K's 12 bytes ``(N, 12)``.

    Bytes 0-3: scale j (j<4) in bits 0-5, bits 4-5 of scale j+4 in bits 6-7; bytes 4-7 the same
    for the mins; bytes 8-11: low nibble of scale j+4 | low nibble of min j+4 << 4.
    """
    sc = sc.astype(np.uint8)
    m = m.astype(np.uint8)
    out = np.empty((sc.shape[0], 12), dtype=np.uint8)
    out[:, 0:4] = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    out[:, 4:8] = m[:, :4] | ((m[:, 4:] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:] & 0xF) | ((m[:, 4:] & 0xF) << 4)
    return out


def pack_q2_k(L, sc, m, d, dmin) -> np.ndarray:
    """Q2_K (84 bytes): scales[16] (scale | min << 4) | qs[64] | d f16 | dmin f16.
    ``L`` (N,256) in 0..3; ``sc``, ``m`` (N,16) in 0..15; ``d``, ``dmin`` (N,) float16."""
    scales = (sc.astype(np.uint8) & 0xF) | ((m.astype(np.uint8) & 0xF) << 4)
    return np.concatenate([scales, _crumbs_128(L), _half_bytes(d), _half_bytes(dmin)], axis=1)


def pack_q3_k(L, sc, d) -> np.ndarray:
    """Q3_K (110 bytes): hmask[32] | qs[64] | scales[12] | d f16.
    ``L`` (N,256) in 0..7 (value + 4); ``sc`` (N,16) in 0..63 (scale + 32); ``d`` (N,) float16.
    hmask byte ``i`` bit ``k`` is bit 2 of element ``32 k + i``; scales: bytes 0-7 hold the low
    nibbles of scales j and j+8 (low, high half), bytes 8-11 bits 4-5 of scale j at bits
    ``2 (j // 4)`` of byte ``8 + j % 4``."""
    L = L.astype(np.uint8)
    high = ((L >> 2) & 1).reshape(-1, 8, 32)  # (N, k, i)
    hmask = np.zeros((L.shape[0], 32), dtype=np.uint8)
    for k in range(8):
        hmask |= high[:, k] << k
    sc = sc.astype(np.uint8)
    scales = np.empty((L.shape[0], 12), dtype=np.uint8)
    scales[:, :8] = (sc[:, :8] & 0xF) | ((sc[:, 8:] & 0xF) << 4)
    top = (sc >> 4).reshape(-1, 4, 4)  # (N, j // 4, j % 4)
    scales[:, 8:] = top[:, 0] | (top[:, 1] << 2) | (top[:, 2] << 4) | (top[:, 3] << 6)
    return np.concatenate([hmask, _crumbs_128(L), scales, _half_bytes(d)], axis=1)


def pack_q4_k(L, sc, m, d, dmin) -> np.ndarray:
    """Q4_K (144 bytes): d f16 | dmin f16 | scales[12] | qs[128].
    ``L`` (N,256) in 0..15; ``sc``, ``m`` (N,8) in 0..63; ``d``, ``dmin`` (N,) float16."""
    return np.concatenate(
        [_half_bytes(d), _half_bytes(dmin), _scales_k4(sc, m), _nibbles_64(L)], axis=1
    )


def pack_q5_k(L, sc, m, d, dmin) -> np.ndarray:
    """Q5_K (176 bytes): d f16 | dmin f16 | scales[12] | qh[32] | qs[128].
    ``L`` (N,256) in 0..31; qh byte ``l`` bit ``j`` is bit 4 of element ``32 j + l``."""
    L = L.astype(np.uint8)
    high = ((L >> 4) & 1).reshape(-1, 8, 32)
    qh = np.zeros((L.shape[0], 32), dtype=np.uint8)
    for j in range(8):
        qh |= high[:, j] << j
    return np.concatenate(
        [_half_bytes(d), _half_bytes(dmin), _scales_k4(sc, m), qh, _nibbles_64(L)], axis=1
    )


def pack_q6_k(L, sc, d) -> np.ndarray:
    """Q6_K (210 bytes): ql[128] | qh[64] | scales[16] i8 | d f16.
    ``L`` (N,256) in 0..63 (value + 32); ``sc`` (N,16) in -128..127. Per 128 elements h:
    ql[64h + l] = low nibbles of elements l | l+64 << 4, ql[64h + 32 + l] of l+32 | l+96 << 4,
    qh[32h + l] = bits 4-5 of elements l, l+32, l+64, l+96 at bits 0, 2, 4, 6."""
    q = L.astype(np.uint8).reshape(-1, 2, 4, 32)  # (N, h, quarter, l)
    lo = q & 0xF
    ql = np.concatenate(
        [lo[:, :, 0] | (lo[:, :, 2] << 4), lo[:, :, 1] | (lo[:, :, 3] << 4)], axis=2
    )
    hi = q >> 4
    qh = hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)
    scales = sc.astype(np.int8).view(np.uint8)
    return np.concatenate([ql.reshape(-1, 128), qh.reshape(-1, 64), scales, _half_bytes(d)], axis=1)


def pack_iq4_nl(L, d) -> np.ndarray:
    """IQ4_NL (18 bytes, 32 elements): d f16 | qs[16], byte j = L[j] | L[j+16] << 4."""
    q = L.astype(np.uint8).reshape(-1, 2, 16)
    return np.concatenate([_half_bytes(d), q[:, 0] | (q[:, 1] << 4)], axis=1)


def pack_iq4_xs(L, sc, d) -> np.ndarray:
    """IQ4_XS (136 bytes): d f16 | scales_h u16 | scales_l[4] | qs[128].
    ``sc`` (N,8) in 0..63 (scale + 32): low nibbles two per byte in scales_l, bits 4-5 of scale
    j at bits 2j of scales_h; qs per 32 elements as IQ4_NL's 16 bytes."""
    sc = sc.astype(np.uint16)
    h = np.zeros(sc.shape[0], dtype=np.uint16)
    for j in range(8):
        h |= (sc[:, j] >> 4) << (2 * j)
    lo = (sc & 0xF).astype(np.uint8).reshape(-1, 4, 2)
    scales_l = lo[:, :, 0] | (lo[:, :, 1] << 4)
    q = L.astype(np.uint8).reshape(-1, 8, 2, 16)
    qs = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)
    hb = np.ascontiguousarray(h.astype("<u2")).view(np.uint8).reshape(-1, 2)
    return np.concatenate([_half_bytes(d), hb, scales_l, qs], axis=1)
