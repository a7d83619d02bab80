"""cmf.metrics.error_stats: the error map a writer records for a lossy encoding."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cmf.errors import CmfError
from cmf.metrics import error_stats


def test_known_values():
    stats = error_stats(np.array([3.0, 4.0]), np.array([3.0, 4.5]))
    assert set(stats) == {"rel_rmse", "max_abs", "sqnr_db"}
    assert stats["rel_rmse"] == pytest.approx(0.5 / 5.0)
    assert stats["max_abs"] == 0.5
    assert stats["sqnr_db"] == pytest.approx(10 * math.log10(25 / 0.25))  # 20 dB
    assert all(type(v) is float for v in stats.values())  # plain floats: msgpack-able


def test_exact_and_degenerate_cases():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert error_stats(x, x.copy()) == {"rel_rmse": 0.0, "max_abs": 0.0, "sqnr_db": math.inf}
    assert error_stats(np.zeros(3), np.zeros(3))["sqnr_db"] == math.inf
    zero_signal = error_stats(np.zeros(2), np.array([0.0, 1.0]))
    assert zero_signal == {"rel_rmse": math.inf, "max_abs": 1.0, "sqnr_db": -math.inf}
    empty = error_stats(np.zeros((0, 4), np.float16), np.zeros((0, 4), np.float16))
    assert empty == {"rel_rmse": 0.0, "max_abs": 0.0, "sqnr_db": math.inf}
    nan = error_stats(np.ones(2), np.array([1.0, np.nan]))
    assert all(math.isnan(v) for v in nan.values())


def test_mixed_dtypes_are_compared_in_float64():
    x = np.array([1.0, 2.0, 3.0], np.float64)
    y = np.array([1.0, 2.0, 3.0], ml_dtypes.bfloat16)
    assert error_stats(x, y)["max_abs"] == 0.0
    y = np.array([1.0, 2.0, 3.015625], ml_dtypes.bfloat16)  # one bf16 ulp above 3 (2**-6)
    assert error_stats(x, y)["max_abs"] == 0.015625
    assert error_stats(np.arange(4, dtype=np.int8), np.arange(4, dtype=np.float16))["max_abs"] == 0


def test_errors():
    with pytest.raises(CmfError, match="shapes differ"):
        error_stats(np.zeros(3), np.zeros(4))
    with pytest.raises(CmfError, match="real arrays"):
        error_stats(np.array(["a"]), np.array(["b"]))


arrays = hnp.arrays(
    np.float64,
    hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=6),
    elements=st.floats(-1e6, 1e6).filter(lambda v: v == 0 or abs(v) > 1e-100),
)


@settings(max_examples=80, deadline=None)
@given(x=arrays, seed=st.integers(0, 2**32 - 1), noise=st.floats(1e-6, 10))
def test_metrics_agree_with_each_other(x, seed, noise):
    d = np.random.default_rng(seed).standard_normal(x.shape) * noise
    y = x + d
    stats = error_stats(x, y)
    err = float(np.sqrt(np.sum((y - x) ** 2)))
    assert stats["max_abs"] == pytest.approx(float(np.max(np.abs(y - x))))
    assert stats["max_abs"] <= err * (1 + 1e-12) + 1e-300  # max <= l2 norm
    if err and np.any(x):  # (no underflow: |x| > 1e-100)
        assert stats["rel_rmse"] == pytest.approx(err / float(np.linalg.norm(x)), rel=1e-9)
        assert stats["sqnr_db"] == pytest.approx(-20 * math.log10(stats["rel_rmse"]), abs=1e-6)
