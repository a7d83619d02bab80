"""Dequantization of GGML blocks from their fields (spec/codecs/ggml.md, "Dequantization").

Each kernel takes the fields of ``n`` blocks (``{name: (n, count)}``, values known to fit
their bits) and returns ``(n, block)`` float32. Every operation is one IEEE binary32 operation
rounded to nearest even, in the order written (no fused multiply-add), so the result is the
one ``gguf.quants.dequantize`` gives, bit for bit (NaN payloads aside).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .ggml_grids import KSIGNS, grid

F32 = np.float32
KV_IQ4 = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], F32)
KV_FP4 = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], F32)  # e2m1, doubled
_BITS8 = np.arange(8, dtype=np.uint8)


def _e8m0_half() -> np.ndarray:
    """(256,) f32: the E8M0 scale byte x as 2^(x - 128) (half the MX scale), as bits."""
    x = np.arange(256, dtype=np.uint32)
    bits = np.where(x < 2, np.uint32(0x00200000) << x, (x - 1) << np.uint32(23))
    return bits.astype(np.uint32).view(F32)


def _ue4m3_half() -> np.ndarray:
    """(256,) f32: byte x as unsigned E4M3 (bias 7, bit 7 ignored) times 1/2; 0 and 0x7F are 0."""
    out = np.zeros(256, F32)
    for x in range(256):
        e, m = (x >> 3) & 0xF, x & 7
        v = m * 2.0**-9 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7)
        out[x] = 0.0 if x in (0, 0x7F) else v * 0.5
    return out


E8M0_HALF = _e8m0_half()
UE4M3_HALF = _ue4m3_half()


def _f(x: np.ndarray) -> np.ndarray:
    return x.astype(F32)


def _signs(bytes_: np.ndarray) -> np.ndarray:
    """(..., 8) f32 of +1 / -1 from sign bytes (...,): bit j set = value j negative."""
    bit = (bytes_[..., None] >> _BITS8) & np.uint8(1)
    return np.where(bit == 0, F32(1), F32(-1))


def _q4_0(p):
    return p["d"].astype(F32) * _f(p["q"].astype(np.int8) - np.int8(8))


def _q4_1(p):
    return (p["d"].astype(F32) * _f(p["q"])) + p["m"].astype(F32)


def _q5_0(p):
    return p["d"].astype(F32) * _f(p["q"].astype(np.int8) - np.int8(16))


def _q8_0(p):
    return p["q"].view(np.int8).astype(F32) * p["d"].astype(F32)


def _iq4_nl(p):
    return p["d"].astype(F32) * KV_IQ4[p["q"]]


def _mxfp4(p):
    return E8M0_HALF[p["e"]] * KV_FP4[p["q"]]  # (n, 1) * (n, 32)


def _nvfp4(p):
    n = p["q"].shape[0]
    d = UE4M3_HALF[p["d"]].reshape(n, 4, 1)
    return (d * KV_FP4[p["q"]].reshape(n, 4, 16)).reshape(n, 64)


def _q2_k(p):
    n = p["q"].shape[0]
    dl = (p["d"].astype(F32) * _f(p["sc"])).reshape(n, 16, 1)
    ml = (p["dmin"].astype(F32) * _f(p["m"])).reshape(n, 16, 1)
    return (dl * _f(p["q"]).reshape(n, 16, 16) - ml).reshape(n, 256)


def _q3_k(p):
    n = p["q"].shape[0]
    dl = (p["d"].astype(F32) * _f(p["sc"].astype(np.int8) - np.int8(32))).reshape(n, 16, 1)
    q = _f(p["q"].astype(np.int8) - np.int8(4)).reshape(n, 16, 16)
    return (dl * q).reshape(n, 256)


def _q45_k(p):
    n = p["q"].shape[0]
    d = (p["d"].astype(F32) * _f(p["sc"])).reshape(n, 8, 1)
    dm = (p["dmin"].astype(F32) * _f(p["m"])).reshape(n, 8, 1)
    return (d * _f(p["q"]).reshape(n, 8, 32) - dm).reshape(n, 256)


def _q6_k(p):
    n = p["q"].shape[0]
    d = (p["d"].astype(F32) * _f(p["sc"].view(np.int8))).reshape(n, 16, 1)
    q = _f(p["q"].astype(np.int8) - np.int8(32)).reshape(n, 16, 16)
    return (d * q).reshape(n, 256)


_POW3 = np.array([1, 3, 9, 27, 81], np.uint8)


def _tq1_0(p):
    q = p["q"]
    n = q.shape[0]
    trits = np.concatenate(
        [  # each byte times 3^k modulo 256: trit k sits in its top bits
            (q[:, None, :32] * _POW3[:, None]).reshape(n, 160),
            (q[:, None, 32:48] * _POW3[:, None]).reshape(n, 80),
            (q[:, None, 48:52] * _POW3[:4, None]).reshape(n, 16),
        ],
        axis=1,
    )  # (n, 256) u8
    t = ((trits.astype(np.uint16) * np.uint16(3)) >> np.uint16(8)).astype(np.int8) - np.int8(1)
    return p["d"].astype(F32) * _f(t)


def _tq2_0(p):
    return p["d"].astype(F32) * _f(p["q"].astype(np.int8) - np.int8(1))


def _iq4_xs(p):
    n = p["q"].shape[0]
    dl = (p["d"].astype(F32) * _f(p["sc"].astype(np.int8) - np.int8(32))).reshape(n, 8, 1)
    return (dl * KV_IQ4[p["q"]].reshape(n, 8, 32)).reshape(n, 256)


def _iq2(name: str, sub: int, signs: str, mult: float) -> Callable:
    """IQ2_XXS / IQ2_XS / IQ2_S / IQ3_XXS: ``sub`` sub-blocks, each of one scale;
    ``signs`` "ksigns" (7-bit indices) or "bits" (sign bytes)."""

    def kernel(p):
        n = p["grid"].shape[0]
        db = p["d"].astype(F32) * (F32(0.5) + _f(p["sc"])) * F32(mult)  # (n, sub)
        g = grid(name)[p["grid"]].reshape(n, sub, -1)  # (n, sub, 256 / sub)
        s = _signs(KSIGNS[p["sign"]] if signs == "ksigns" else p["sign"]).reshape(n, sub, -1)
        return (db.reshape(n, sub, 1) * g * s).reshape(n, 256)

    return kernel


def _iq3_s(p):
    n = p["grid"].shape[0]
    db = p["d"].astype(F32) * _f(np.uint8(1) + np.uint8(2) * p["sc"])  # (n, 8)
    g = grid("IQ3_S")[p["grid"]].reshape(n, 8, 32)
    s = _signs(p["sign"]).reshape(n, 8, 32)
    return (db.reshape(n, 8, 1) * g * s).reshape(n, 256)


def _iq1(name: str, groups: int) -> Callable:
    """IQ1_S (8 scales, 8 deltas) / IQ1_M (16 scales, 32 deltas)."""

    def kernel(p):
        n = p["grid"].shape[0]
        dl = p["d"].astype(F32) * _f(np.uint8(2) * p["sc"] + np.uint8(1))  # (n, scales)
        delta = np.where(p["delta"] == 0, F32(0.125), F32(-0.125))  # (n, deltas)
        g = grid("IQ1_S")[p["grid"]]  # (n, 32, 8)
        ns, nd = dl.shape[1], delta.shape[1]
        x = g.reshape(n, nd, -1) + delta.reshape(n, nd, 1)
        return (dl.reshape(n, ns, 1) * x.reshape(n, ns, -1)).reshape(n, 256)

    return kernel


KERNELS: dict[str, Callable[[dict[str, np.ndarray]], np.ndarray]] = {
    "Q4_0": _q4_0,
    "Q4_1": _q4_1,
    "Q5_0": _q5_0,
    "Q5_1": _q4_1,
    "Q8_0": _q8_0,
    "IQ4_NL": _iq4_nl,
    "MXFP4": _mxfp4,
    "NVFP4": _nvfp4,
    "Q2_K": _q2_k,
    "Q3_K": _q3_k,
    "Q4_K": _q45_k,
    "Q5_K": _q45_k,
    "Q6_K": _q6_k,
    "TQ1_0": _tq1_0,
    "TQ2_0": _tq2_0,
    "IQ4_XS": _iq4_xs,
    "IQ2_XXS": _iq2("IQ2_XXS", 8, "ksigns", 0.25),
    "IQ2_XS": _iq2("IQ2_XS", 16, "ksigns", 0.25),
    "IQ2_S": _iq2("IQ2_S", 16, "bits", 0.25),
    "IQ3_XXS": _iq2("IQ3_XXS", 8, "ksigns", 0.5),
    "IQ3_S": _iq3_s,
    "IQ1_S": _iq1("IQ1_S", 8),
    "IQ1_M": _iq1("IQ1_M", 16),
}


def dequantize(name: str, fields: dict[str, np.ndarray]) -> np.ndarray:
    """(n, block) f32 of the fields of ``n`` blocks of type ``name`` (IEEE special values as
    the arithmetic gives them: no warnings)."""
    with np.errstate(all="ignore"):
        return KERNELS[name](fields).astype(F32, copy=False)
