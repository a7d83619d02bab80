"""The optional C kernels and the numpy fallback give the same bytes, both ways."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from cmf.codecs import ArraySpec
from cmf.codecs import byteplanes as bp
from cmf.dtypes import of_array

pytestmark = pytest.mark.skipif(bp._speedups is None, reason="C kernels not built")


@pytest.mark.parametrize(
    "dtype", [np.float32, np.float16, ml_dtypes.bfloat16, np.float64, np.int32, np.uint16, np.int64]
)
@pytest.mark.parametrize("n", [1, 7, (1 << 16) + 3])
def test_c_and_numpy_agree(monkeypatch, dtype, n):
    rng = np.random.default_rng(n)
    raw = rng.integers(0, 256, size=n * np.dtype(dtype).itemsize, dtype=np.uint8)
    array = raw.view(dtype)  # every bit pattern, NaN payloads included
    spec = ArraySpec(of_array(array), array.shape)
    codec = bp.BytePlanes(rotate=spec.dtype.is_float)
    fast_parts = codec.encode(array, spec)
    fast_back = codec.decode(fast_parts, spec)
    monkeypatch.setattr(bp, "_speedups", None)
    slow_parts = codec.encode(array, spec)
    slow_back = codec.decode(slow_parts, spec)
    for name in fast_parts:
        assert bytes(fast_parts[name]) == bytes(slow_parts[name])
    assert fast_back.tobytes() == slow_back.tobytes() == array.tobytes()
