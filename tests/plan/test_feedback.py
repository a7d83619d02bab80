"""The plan's error-feedback factors kept in files (cmf.plan.feedback) and read back by the
rounds' encodings."""

import os

import numpy as np
import pytest

from cmf.errors import CmfError
from cmf.plan import feedback
from cmf.plan.candidates import (
    LOSSLESS,
    Choice,
    channel_weights,
    encode_point,
    forget_hessians,
    measure,
    step_choices,
    step_feedback,
)

from .test_candidates import correlated_inputs, fold_moments


def _case(seed=3, rows=40, n=48):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, n)).astype(np.float32)
    moments = fold_moments(correlated_inputs(rng, 2000, rng.standard_normal((4, n)) * 3))
    return w, moments


def test_a_kept_factor_reads_back_as_its_float32_values_once_per_content(tmp_path):
    _, moments = _case()
    u = step_feedback((40, 48), moments)
    store = feedback.FeedbackFiles(str(tmp_path))
    path = feedback.keep(store.root, u)
    assert path is not None and store.holds(path)
    got = feedback.load(path, 48)
    assert got.dtype == np.float32 and np.array_equal(got, u.astype(np.float32))
    assert feedback.keep(store.root, u.astype(np.float32)) == path  # same content, same file
    assert len(os.listdir(store.root)) == 1  # no temporary left behind
    assert feedback.keep(None, u) is None and feedback.keep(store.root, None) is None


def test_the_directory_goes_away_on_close_and_its_files_are_no_longer_held(tmp_path):
    _, moments = _case()
    store = feedback.FeedbackFiles(str(tmp_path))
    path = feedback.keep(store.root, step_feedback((40, 48), moments))
    other = feedback.FeedbackFiles(str(tmp_path))
    assert not other.holds(path) and not store.holds(None)
    store.close()
    assert not os.path.exists(store.root) and not store.holds(path)
    assert feedback.keep(store.root, np.eye(4)) is None  # a removed directory: not kept
    other.close()


def test_a_bad_factor_file_is_a_cmf_error(tmp_path):
    store = feedback.FeedbackFiles(str(tmp_path))
    path = feedback.keep(store.root, np.eye(8))
    with pytest.raises(CmfError, match=r"expected float32 \(9, 9\)"):
        feedback.load(path, 9)
    bad = os.path.join(store.root, "bad.npy")
    with open(bad, "wb") as f:
        f.write(b"not a numpy file")
    with pytest.raises(CmfError, match="cannot be read"):
        feedback.load(bad, 8)
    with pytest.raises(CmfError, match="cannot be read"):
        feedback.load(os.path.join(store.root, "missing.npy"), 8)
    store.close()


def test_a_point_encoded_from_the_kept_factor_is_the_point_encoded_from_the_moments(tmp_path):
    w, moments = _case()
    store = feedback.FeedbackFiles(str(tmp_path))
    curve = measure("w", w, step_choices(per_bit=1) + [LOSSLESS], moments, feedback_dir=store.root)
    assert store.holds(curve.feedback)
    axis, iw = channel_weights(w.shape, moments)
    for rel in (0.5, 0.05):
        choice = Choice("step", {"rel_step": rel}, f"step {rel}")
        forget_hessians()
        want = encode_point(choice, w, axis, iw, moments)
        got = encode_point(choice, w, axis, iw, None, kept_feedback=curve.feedback)
        assert got.stored == want.stored
        from cmf.pipeline import decode_pending

        assert decode_pending(got).tobytes() == decode_pending(want).tobytes()
    store.close()


def test_no_factor_is_kept_without_moments_or_a_directory(tmp_path):
    w, moments = _case()
    choices = step_choices(per_bit=1) + [LOSSLESS]
    assert measure("w", w, choices, None, feedback_dir=str(tmp_path)).feedback is None
    assert measure("w", w, choices, moments).feedback is None
    assert measure("w", w, [LOSSLESS], moments, feedback_dir=str(tmp_path)).feedback is None
