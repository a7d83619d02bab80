"""cmf.plan.sensitivity: the noise of a measured sensitivity (size, determinism, memory)."""

from __future__ import annotations

import tracemalloc

import ml_dtypes
import numpy as np
import pytest

from cmf.plan import sensitivity


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16, np.float64])
@pytest.mark.parametrize("axis", [None, 0, 1])
def test_noise_has_the_asked_weighted_energy_and_is_reproducible(dtype, axis, monkeypatch):
    monkeypatch.setattr(sensitivity, "NOISE_CHUNK", 1000)  # several slices of rows
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 40)).astype(dtype)
    w = None if axis is None else rng.uniform(0.2, 3.0, x.shape[axis])
    x64 = x.astype(np.float64)
    wide = 1.0 if w is None else (w[None, :] if axis == 1 else w[:, None])
    energy = float((x64**2 * wide).sum())
    noisy, e = sensitivity.noisy_copy(x, axis, w, 0.01, energy, seed=7)
    assert noisy.dtype == x.dtype and noisy.shape == x.shape
    real = float(((noisy.astype(np.float64) - x64) ** 2 * wide).sum())
    assert e == pytest.approx(real, rel=1e-9)  # the energy it really got, after rounding
    tol = 0.05 if dtype in (np.float32, np.float64) else 0.3  # 16-bit rounding adds its own
    assert e == pytest.approx(1e-4 * energy, rel=tol)
    again, e2 = sensitivity.noisy_copy(x, axis, w, 0.01, energy, seed=7)
    assert e2 == e and np.array_equal(again.view(np.uint8), noisy.view(np.uint8))
    other, _ = sensitivity.noisy_copy(x, axis, w, 0.01, energy, seed=8)
    assert not np.array_equal(other, noisy)


def test_noise_on_a_big_tensor_takes_one_copy_not_float64_ones():
    x = np.ones((4096, 1024), np.float32)  # 16 MiB
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        sensitivity.noisy_copy(x, 1, np.ones(1024), 0.01, float(x.size), seed=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < x.nbytes + 5 * sensitivity.NOISE_CHUNK * 8  # the copy and a slice's temps


def test_empty_and_zero_d_tensors():
    for x in (np.zeros((0, 5), np.float32), np.array(2.0, np.float32)):
        noisy, e = sensitivity.noisy_copy(x, None, None, 0.01, 0.0, seed=0)
        assert noisy.shape == x.shape and e == 0.0
