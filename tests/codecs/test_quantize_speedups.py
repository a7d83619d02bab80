"""quantize's decoding by the C kernel (blocks along contiguous rows) and by numpy give the same
bits: every scheme, code width, block layout and output dtype, extreme scales, rows split over
threads; the kernel's largest code drives the same range error."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cmf.codecs import ArraySpec
from cmf.codecs import quantize as qz
from cmf.dtypes import BY_NAME
from cmf.errors import FormatError

pytestmark = pytest.mark.skipif(qz._speedups is None, reason="C kernels not built")
F32 = np.float32


def parts_for(codec: qz.Quantize, spec: ArraySpec, rng) -> dict[str, np.ndarray]:
    specs = codec.resolve(spec)
    out = {}
    for name, ps in specs.items():
        if name in ("q", "zero"):
            out[name] = rng.integers(0, 1 << codec.bits, ps.shape).astype(ps.dtype.numpy)
        else:  # magnitudes from subnormal to overflowing, both signs
            mags = 10.0 ** rng.uniform(-44, 38, ps.shape) * rng.choice([-1, 1], ps.shape)
            with np.errstate(over="ignore"):
                out[name] = np.asarray(mags, F32).astype(ps.dtype.numpy)
            out[name][~np.isfinite(out[name])] = 1
    return out


def both(codec, parts, spec, monkeypatch):
    fast = codec.decode(parts, spec)
    with monkeypatch.context() as m:
        m.setattr(qz, "_speedups", None)
        slow = codec.decode(parts, spec)
    return fast, slow


CASES = list(
    itertools.product(
        [1, 4, 8, 12, 16],
        ["symmetric", "asymmetric", "zero_point"],
        [(0, -1), (32, -1), (5, -1), (7, None), (0, None), (4, 0)],
        ["f32", "f16", "bf16", "f64"],
    )
)


@pytest.mark.parametrize("bits,scheme,layout,dtype", CASES)
def test_c_and_numpy_agree_bit_for_bit(monkeypatch, bits, scheme, layout, dtype):
    block, axis = layout
    codec = qz.Quantize(bits=bits, scheme=scheme, block=block, axis=axis, search=False)
    spec = ArraySpec(BY_NAME[dtype], (9, 70))
    parts = parts_for(codec, spec, np.random.default_rng(bits * 7 + len(scheme)))
    fast, slow = both(codec, parts, spec, monkeypatch)
    assert fast.dtype == slow.dtype == spec.dtype.numpy and fast.shape == slow.shape
    assert fast.tobytes() == slow.tobytes()


def test_rows_in_pieces_on_threads(monkeypatch):
    monkeypatch.setattr(qz, "PIECE_MIN", 64)  # many pieces of a few rows
    codec = qz.Quantize(bits=4, block=32, scheme="asymmetric", search=False)
    spec = ArraySpec(BY_NAME["f32"], (301, 96))
    parts = parts_for(codec, spec, np.random.default_rng(1))
    fast, slow = both(codec, parts, spec, monkeypatch)
    assert fast.tobytes() == slow.tobytes()
    assert fast.flags.writeable


def test_the_kernel_is_used_for_rows_only(monkeypatch):
    calls = []
    real = qz._speedups

    class Spy:
        @staticmethod
        def dequantize(*args):
            calls.append(args[4:6])  # n, block
            return real.dequantize(*args)

    monkeypatch.setattr(qz, "_speedups", Spy)
    codec = qz.Quantize(bits=8, block=16, search=False)
    spec = ArraySpec(BY_NAME["f32"], (4, 40))
    codec.decode(parts_for(codec, spec, np.random.default_rng(2)), spec)
    assert calls == [(40, 16)]
    calls.clear()
    axis0 = qz.Quantize(bits=8, block=16, axis=0, search=False)  # blocks down columns: numpy
    axis0.decode(parts_for(axis0, spec, np.random.default_rng(3)), spec)
    assert calls == []


@pytest.mark.parametrize("bits,code", [(4, 16), (4, 255), (1, 2), (12, 4096), (12, 65535)])
def test_out_of_range_code_found_by_the_kernel(bits, code):
    codec = qz.Quantize(bits=bits, block=8, search=False)
    spec = ArraySpec(BY_NAME["f32"], (5, 64))
    parts = parts_for(codec, spec, np.random.default_rng(4))
    parts["q"][4, 63] = code
    with pytest.raises(FormatError, match=f"code {code} is out of range for {bits} bits"):
        codec.decode(parts, spec)


def test_overflow_to_infinity_without_a_warning():
    codec = qz.Quantize(bits=8, block=0, scale_dtype="f16", search=False)
    spec = ArraySpec(BY_NAME["f16"], (1, 3))
    parts = {"q": np.array([[255, 0, 129]], np.uint8), "scale": np.array([[1000.0]], np.float16)}
    with np.errstate(over="raise"):
        got = codec.decode(parts, spec)
    assert np.isinf(got[0, 0]) and np.isinf(got[0, 1]) and got[0, 2] == 1000


def test_kernel_rejects_inconsistent_buffers():
    out = np.empty((2, 8), F32)
    q = np.zeros((2, 8), np.uint8)
    scale = np.ones((2, 1), F32)
    assert qz._speedups.dequantize(out, q, scale, None, 8, 8, 0, 128) == 0
    for args in [
        (out, q[:1], scale, None, 8, 8, 0, 128),  # too few codes
        (out, q, scale[:1], None, 8, 8, 0, 128),  # too few scales
        (out, q, scale, scale, 8, 8, 0, 128),  # symmetric takes no extra
        (out, q, scale, None, 8, 8, 1, 0),  # zero_point needs one
        (out, q, scale, None, 0, 8, 0, 128),  # empty rows
        (out, q, scale, None, 8, 0, 0, 128),  # empty blocks
        (out, q, scale, None, 8, 8, 3, 128),  # no such scheme
        (out, q.astype(np.uint32), scale, None, 8, 8, 0, 128),  # 4-byte codes
    ]:
        with pytest.raises(ValueError, match="inconsistent"):
            qz._speedups.dequantize(*args)
