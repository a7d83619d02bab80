"""cmf.runtime.logit_stats: sliced row statistics equal the whole-array float64 formulas."""

import numpy as np
import pytest

from cmf.runtime import logit_stats
from cmf.runtime.evaluate import compare_logits


def _whole_log_softmax(x):
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.fixture
def small_slices(monkeypatch):
    monkeypatch.setattr(logit_stats, "SLICE_BYTES", 8 * 50 * 3)  # 3 rows of 50 per slice


def _pair(n=11, v=50, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 3, (n, v)).astype(np.float32)
    return a, (a + rng.normal(0, 0.3, (n, v))).astype(np.float32)


def test_row_slices_cover_every_row_once(small_slices):
    got = list(logit_stats.row_slices(11, 50))
    assert [s.start for s in got] == [0, 3, 6, 9]
    assert np.concatenate([np.arange(11)[s] for s in got]).tolist() == list(range(11))
    assert list(logit_stats.row_slices(0, 50)) == []


def test_kl_and_log_probs_equal_the_whole_array_formulas(small_slices):
    a, b = _pair()
    la, lb = _whole_log_softmax(a), _whole_log_softmax(b)
    want = np.maximum(np.sum(np.exp(la) * (la - lb), -1), 0)
    np.testing.assert_allclose(logit_stats.kl_rows(a, b), want, rtol=1e-12, atol=1e-15)
    ids = np.arange(11) % 50
    np.testing.assert_allclose(
        logit_stats.next_token_log_probs(a, ids), la[np.arange(11), ids], rtol=1e-12
    )
    assert (logit_stats.kl_rows(a, a) == 0).all()


def test_row_cosines_zero_rows():
    a = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 1.0]], np.float32)
    b = np.array([[0.0, 1.0], [0.0, 0.0], [1.0, 0.0], [2.0, 2.0]], np.float32)
    np.testing.assert_allclose(logit_stats.row_cosines(a, b), [0.0, 1.0, 0.0, 1.0])


def test_compare_logits_sliced_matches_whole(small_slices):
    a, b = _pair(seed=1)
    ids = list(np.random.default_rng(2).integers(0, 50, 11))
    got = compare_logits(ids, a, b)
    la, lb = _whole_log_softmax(a), _whole_log_softmax(b)
    rows, nxt = np.arange(10), np.asarray(ids[1:])
    assert got["kl_mean"] == pytest.approx(np.sum(np.exp(la) * (la - lb), -1).mean(), rel=1e-12)
    assert got["perplexity_original"] == pytest.approx(np.exp(-la[rows, nxt].mean()), rel=1e-12)
    assert got["perplexity_compressed"] == pytest.approx(np.exp(-lb[rows, nxt].mean()), rel=1e-12)
    assert got["max_abs_error"] == pytest.approx(np.abs(a.astype(np.float64) - b).max(), rel=1e-12)
    assert compare_logits(ids, a, a)["identical"] is True
    assert compare_logits(ids, a, b)["identical"] is False
    nan = a.copy()
    nan[4, 7] = np.nan
    assert np.isnan(compare_logits(ids, nan, b)["max_abs_error"])


def test_identical_outputs_of_every_kind():
    from cmf.runtime.evaluate import _identical

    a = np.array([1.0, np.nan], np.float32)
    b = a.copy()
    b.view(np.uint32)[1] ^= 1  # another NaN payload: not identical
    assert _identical(a, a.copy()) and not _identical(a, b)
    assert not _identical(a, a.astype(np.float64)) and not _identical(a, a[None])
    s = np.array(["x", "y"], dtype=object)
    assert _identical(s, s.copy()) and not _identical(s, np.array(["x", "z"], dtype=object))
    assert _identical(np.zeros((2, 0)), np.zeros((2, 0)))
