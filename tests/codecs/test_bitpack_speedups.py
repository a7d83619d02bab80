"""bitpack's 4-bit codes unpacked by the C kernel (ranges on threads) and by numpy agree."""

from __future__ import annotations

import numpy as np
import pytest

from cmf.codecs import bitpack as bp

pytestmark = pytest.mark.skipif(bp._speedups is None, reason="C kernels not built")


@pytest.mark.parametrize("n", [1, 2, 3, 1001, (1 << 20) + 3])
def test_c_and_numpy_agree(monkeypatch, n):
    codes = np.random.default_rng(n).integers(0, 16, n).astype(np.uint8)
    packed = bp.pack(codes, 4)
    fast = bp.unpack(packed, n, 4)
    with monkeypatch.context() as m:
        m.setattr(bp, "_speedups", None)
        slow = bp.unpack(packed, n, 4)
    assert fast.dtype == slow.dtype == np.uint8
    assert fast.tobytes() == slow.tobytes() == codes.tobytes()


def test_padding_nibble_still_checked():
    with pytest.raises(bp.FormatError, match="padding bits"):
        bp.unpack(b"\x12\x34\xf5", 5, 4)


def test_kernel_rejects_a_wrong_output_size():
    with pytest.raises(ValueError, match="twice"):
        bp._speedups.nibbles(np.empty(5, np.uint8), np.zeros(3, np.uint8))
