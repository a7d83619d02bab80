"""cmf.heap: glibc's allocator settings, never changing a result."""

from __future__ import annotations

import sys

import numpy as np

from cmf import heap


def test_heap_calls_are_safe_and_work_on_glibc():
    before = np.arange(1 << 20, dtype=np.float64).sum()
    got = heap.keep_big_blocks_off_heap()
    heap.trim()
    assert isinstance(got, bool)
    if sys.platform.startswith("linux") and heap._libc() is not None:
        assert got  # glibc accepts the threshold
    assert np.arange(1 << 20, dtype=np.float64).sum() == before
