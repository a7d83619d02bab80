"""cmf.plan.harness's activation statistics: per-channel mean squares and the two folds'
second-moment matrices the planner's error feedback fits on one and measures on the other."""

from __future__ import annotations

import numpy as np

from cmf.plan import harness_base as harness
from cmf.plan.harness import MomentSums


def test_moment_sums_keep_each_folds_matrix():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((30, 4)), rng.standard_normal((20, 4))
    sums = MomentSums()
    sums.add("w", a[:10], 0)
    sums.add("w", np.concatenate([a[10:], b]), np.r_[np.zeros(20, int), np.ones(20, int)])
    m, (h0, h1), factor = sums.result("w")
    both = np.concatenate([a, b])
    assert np.allclose(m, np.mean(both * both, axis=0))
    assert np.allclose(h0, a.T @ a / 30) and np.allclose(h1, b.T @ b / 20)
    assert factor is None  # 20 rows of fold 1 > half of 4 channels: only the matrix
    assert sums.result("other") is None


def test_moment_sums_keep_fold_one_rows_while_fewer_than_half_the_channels():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((6, 16)), rng.standard_normal((5, 16))
    sums = MomentSums()
    sums.add("w", a, 0)
    sums.add("w", b[:2], 1)
    sums.add("w", b[2:], 1)
    _, (_, h1), factor = sums.result("w")
    assert factor.shape == (5, 16) and factor.dtype == np.float32
    assert np.allclose(factor.T.astype(np.float64) @ factor, h1, atol=1e-6)
    sums.add("w", rng.standard_normal((4, 16)), 1)  # 9 rows > 16 // 2: dropped for good
    assert sums.result("w")[2] is None


def test_moment_sums_without_both_folds_or_over_budget_give_no_matrix(monkeypatch):
    sums = MomentSums()
    sums.add("w", np.ones((3, 4)), 0)  # one fold only: nothing to measure on
    assert sums.result("w")[1] is None
    monkeypatch.setattr(harness, "MAX_HESSIAN_DIM", 3)
    wide = MomentSums()
    wide.add("w", np.ones((4, 4)), np.r_[0, 1, 0, 1])
    m, full, _ = wide.result("w")
    assert full is None and np.allclose(m, 1)
    monkeypatch.setattr(harness, "MAX_HESSIAN_DIM", 4096)
    monkeypatch.setattr(harness, "MAX_HESSIAN_BYTES", 2 * 4 * 4 * 8)  # room for one key's pair
    tight = MomentSums()
    tight.add("a", np.ones((2, 4)), np.r_[0, 1])
    tight.add("b", np.ones((2, 4)), np.r_[0, 1])
    assert tight.result("a")[1] is not None and tight.result("b")[1] is None
