"""Per-tensor candidates (cmf.plan.candidates): the step encoding decodes to what the planner
measured, curves are measured on the real tensor, and the hull is convex and monotone."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import cmf
from cmf import dtypes
from cmf.codecs import ArraySpec
from cmf.errors import CmfError
from cmf.pipeline import decode_pending, describe
from cmf.plan.candidates import (
    LOSSLESS,
    Choice,
    Point,
    channel_hessian,
    channel_weights,
    encode_decoded,
    encode_step,
    gptq_levels,
    inverse_cholesky,
    lower_hull,
    measure,
    plannable,
    step_choices,
    template_choices,
    weighted_error,
)


def spec_of(x):
    return ArraySpec(dtypes.of_array(x), x.shape)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16, np.float64])
@pytest.mark.parametrize("rel", [2.0, 0.3, 0.01, 0.0004])
def test_step_decodes_bit_for_bit_to_what_was_measured(dtype, rel):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((48, 80)) * 0.1).astype(dtype)
    x[3, 4] = 60  # far beyond the code range at fine steps: kept exact by an outlier node
    for axis, w in ((None, None), (1, rng.random(80) + 0.1), (0, rng.random(48) + 0.1)):
        pending, y = encode_step(x, spec_of(x), rel, axis, w)
        got = decode_pending(pending)
        assert got.dtype == y.dtype and got.shape == x.shape
        assert got.tobytes() == y.tobytes(), (rel, axis)
    # fine steps need wide codes and keep the outlier exact
    if rel == 0.0004:
        assert "outlier" in describe(pending) and got[3, 4] == x[3, 4]


def test_step_rate_and_error_move_with_the_step():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 256)).astype(np.float32)
    sizes, errors = [], []
    for c in step_choices([1.0, 0.5, 0.25, 0.125]):
        pending, y = encode_decoded(c, x, spec_of(x), None, None)
        sizes.append(pending.stored)
        errors.append(weighted_error(x, y, None, None)[0])
    assert sizes == sorted(sizes) and errors == sorted(errors, reverse=True)
    # ECSQ: halving the step costs about one bit and quarters the error
    assert 0.8 < (sizes[3] - sizes[2]) * 8 / x.size < 1.2
    assert 3.3 < errors[2] / errors[3] < 4.7


def test_importance_puts_the_accuracy_where_the_activations_are():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((128, 64)).astype(np.float32)
    moments = (1, np.r_[np.full(8, 100.0), np.ones(56)])  # 8 loud input channels
    axis, w = channel_weights(x.shape, moments)
    assert axis == 1 and abs(w.mean() - 1) < 1e-12
    shaped, ys = encode_step(x, spec_of(x), 0.25, axis, w)
    flat, yf = encode_step(x, spec_of(x), 0.25, None, None)
    # the same weighted (output) error for far fewer bytes: quiet channels get coarse steps
    es, ef = weighted_error(x, ys, axis, w)[1], weighted_error(x, yf, axis, w)[1]
    assert es == pytest.approx(ef, rel=0.1)
    assert shaped.stored < 0.9 * flat.stored


def test_channel_weights_refuse_what_does_not_fit():
    assert channel_weights((4, 5), None) == (None, None)
    assert channel_weights((4, 5), (1, np.ones(4))) == (None, None)  # wrong length
    assert channel_weights((4, 5, 6), (1, np.ones(5))) == (None, None)  # not a matrix
    assert channel_weights((4, 5), (1, np.zeros(5))) == (None, None)


def test_plannable():
    f32 = dtypes.BY_NAME["f32"]
    assert plannable(ArraySpec(f32, (64, 64)))
    assert not plannable(ArraySpec(f32, (32, 64)))  # under 4096 elements
    assert not plannable(ArraySpec(f32, (8192,)))  # a vector
    assert not plannable(ArraySpec(dtypes.BY_NAME["i32"], (64, 64)))


def _random_points(rng, n):
    return [
        Point(LOSSLESS, int(b), float(e), float(e))
        for b, e in zip(rng.integers(1, 1000, n), rng.random(n) * 10, strict=True)
    ]


@pytest.mark.parametrize("seed", range(30))
def test_hull_is_convex_monotone_and_below_every_point(seed):
    rng = np.random.default_rng(seed)
    pts = _random_points(rng, int(rng.integers(1, 40)))
    hull = lower_hull(pts)
    assert hull and all(any(h is p for p in pts) for h in hull)
    b = [p.bytes for p in hull]
    e = [p.error for p in hull]
    assert b == sorted(set(b)) and all(x > y for x, y in zip(e, e[1:], strict=False))  # monotone
    slopes = [(e[i] - e[i + 1]) / (b[i + 1] - b[i]) for i in range(len(hull) - 1)]
    assert all(
        s1 > s2 for s1, s2 in zip(slopes, slopes[1:], strict=False)
    )  # convex: savings per byte fall
    assert hull[0].bytes == min(p.bytes for p in pts)
    assert hull[-1].error == min(p.error for p in pts)
    for p in pts:  # no point lies below the hull
        if p.bytes >= hull[-1].bytes:
            assert p.error >= hull[-1].error
            continue
        i = max(k for k in range(len(hull)) if hull[k].bytes <= p.bytes)
        a, c = hull[i], hull[min(i + 1, len(hull) - 1)]
        if a is c or c.bytes == a.bytes:
            assert p.error >= a.error - 1e-12
        else:
            t = (p.bytes - a.bytes) / (c.bytes - a.bytes)
            assert p.error >= a.error + t * (c.error - a.error) - 1e-9


def test_measure_gives_a_curve_from_cheap_to_lossless():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((96, 128)).astype(np.float32)
    choices = step_choices(per_bit=1) + template_choices() + [LOSSLESS]
    calls = []
    curve = measure("w", x, choices, progress=lambda: calls.append(1))
    assert len(calls) == len(choices)
    assert curve.hull[-1].choice.family == "lossless" and curve.hull[-1].error == 0
    assert curve.hull[0].bytes * 8 / x.size < 2  # the coarsest step: under 2 bits a weight
    assert curve.energy == pytest.approx(float(np.sum(x.astype(np.float64) ** 2)))
    # every measured point (entropy coders counted, not run) is what encoding it gives
    for p in curve.points:
        pending, y = encode_decoded(p.choice, x, spec_of(x), None, None)
        assert pending.stored == p.bytes
        assert weighted_error(x, y, None, None)[0] == pytest.approx(p.error)


def test_counted_encodings_decode_alike_and_cannot_be_written(tmp_path):
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((64, 300)) * rng.uniform(0.2, 3, 300)).astype(np.float32)
    w = rng.uniform(0.5, 2.0, 300)
    choices = step_choices(per_bit=1)[2:7] + template_choices()
    counted_some = False
    for c in choices:
        made, y = encode_decoded(c, x, spec_of(x), 1, w)
        counted, yc = encode_decoded(c, x, spec_of(x), 1, w, count_only=True)
        assert counted.stored == made.stored, c.label
        np.testing.assert_array_equal(decode_pending(counted), decode_pending(made))
        np.testing.assert_array_equal(yc, y)
        if "counted" in describe(counted):
            counted_some = True
            with pytest.raises(CmfError, match="only counted"):
                with cmf.Writer(tmp_path / "x.cmf") as wr:
                    wr.add_encoded("w", spec_of(x), counted)
            assert not (tmp_path / "x.cmf").exists()
    assert counted_some  # some choice's codes went to huffman and were counted


def test_big_tensors_measure_templates_on_a_sample():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((512, 64)).astype(np.float32)
    q4 = [c for c in template_choices() if c.label == "q4 g32"]
    full = measure("w", x, q4, sample=1 << 30).points[0]
    sampled = measure("w", x, q4, sample=8192).points[0]
    assert sampled.sampled and not full.sampled
    assert sampled.bytes == pytest.approx(full.bytes, rel=0.05)
    assert sampled.error == pytest.approx(full.error, rel=0.15)


def test_choices_that_do_not_apply_are_left_out():
    x = np.zeros((64, 64), np.float32)
    x[0, 0] = np.nan
    curve = measure(
        "w",
        x,
        step_choices([0.5])
        + [Choice("template", {"template": {"codec": "lowrank", "fit": {"rank": 1}}}, "lr")],
    )
    assert [p.choice.family for p in curve.points] == ["lossless"]


# ----------------------------------------------------------------------------- error feedback


def correlated_inputs(rng, tokens, basis):
    """Activations (tokens, n) with a few strong shared directions (``basis``: (rank, n)), as a
    layer's inputs have."""
    return (
        rng.standard_normal((tokens, len(basis))) @ basis
        + rng.standard_normal((tokens, basis.shape[1])) * 0.3
    )


def fold_moments(x):
    """cmf.plan.harness's moments of inputs ``x``: alternate tokens in two folds."""
    return (
        1,
        np.mean(x * x, axis=0),
        (x[0::2].T @ x[0::2] / len(x[0::2]), x[1::2].T @ x[1::2] / len(x[1::2])),
    )


def test_error_feedback_lowers_the_output_error_on_inputs_it_never_saw():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((96, 64)).astype(np.float32)
    basis = rng.standard_normal((6, 64)) * 3
    moments = fold_moments(correlated_inputs(rng, 4000, basis))
    test = correlated_inputs(rng, 4000, basis)
    h_test = test.T @ test / len(test)
    axis, iw = channel_weights(w.shape, moments)
    u, hn = channel_hessian(w.shape, moments)
    assert u.shape == hn.shape == (64, 64) and np.allclose(np.triu(u), u)
    for rel in (0.5, 0.1):
        fed, yf = encode_step(w, spec_of(w), rel, axis, iw, feedback=u)
        plain, yp = encode_step(w, spec_of(w), rel, axis, iw)
        assert decode_pending(fed).tobytes() == yf.tobytes()
        out_f = np.einsum("ij,jk,ik->", yf - w, h_test, yf - w)
        out_p = np.einsum("ij,jk,ik->", yp - w, h_test, yp - w)
        assert out_f < 0.8 * out_p, rel  # at least 1 dB less output error
        assert fed.stored < 1.05 * plain.stored  # for the same bytes
        # the error the planner measures (other fold) sees the gain too
        assert weighted_error(w, yf, axis, iw, hn)[1] < weighted_error(w, yp, axis, iw, hn)[1]


def test_error_feedback_works_along_either_axis_and_keeps_outliers_exact():
    rng = np.random.default_rng(6)
    x = correlated_inputs(rng, 2000, rng.standard_normal((4, 48)) * 3)
    moments = fold_moments(x)
    w = (rng.standard_normal((48, 40)) * 0.1).astype(np.float32)  # [in, out]: channels on axis 0
    w[5, 7] = 300.0  # beyond 12-bit codes at this step: kept exact, its error not fed forward
    mom0 = (0, moments[1], moments[2])
    axis, iw = channel_weights(w.shape, mom0)
    u, hn = channel_hessian(w.shape, mom0)
    pending, y = encode_step(w, spec_of(w), 0.01, axis, iw, feedback=u)
    got = decode_pending(pending)
    assert "outlier" in describe(pending) and got.tobytes() == y.tobytes()
    assert abs(float(got[5, 7]) - 300.0) < 0.01  # kept: the original plus the error fed into it
    rtn = encode_step(w, spec_of(w), 0.01, axis, iw)[1]
    assert weighted_error(w, y, axis, iw, hn)[1] < weighted_error(w, rtn, axis, iw, hn)[1]
    # levels beyond the limit carry no error forward: the same codes elsewhere as without it
    steps = np.full(48, 0.05)
    base = w.T.astype(np.float64).copy()
    a, _ = gptq_levels(base, steps, u, 2047)
    base[7, 5] = 1e6
    b, kept = gptq_levels(base, steps, u, 2047)
    assert abs(b[7, 5]) > 2047 and kept[7, 5] == pytest.approx(1e6)
    mask = np.ones_like(a, bool)
    mask[7, 5] = False
    assert np.array_equal(a[mask], b[mask])


def test_gptq_levels_in_row_chunks_with_sparse_outliers_equal_one_pass(monkeypatch):
    import cmf.plan.candidates as candidates

    rng = np.random.default_rng(8)
    x = correlated_inputs(rng, 600, rng.standard_normal((4, 24)) * 2)
    u, _ = channel_hessian((30, 24), fold_moments(x))
    w = rng.standard_normal((30, 24)).astype(np.float32)
    w[3, 4], w[17, 20], w[29, 0] = 400.0, -900.0, 250.0  # beyond the codes of this step
    steps = np.full(24, 0.2)
    whole, values = gptq_levels(w, steps, u, 1000)
    monkeypatch.setattr(candidates, "GPTQ_CHUNK_ELEMENTS", 24 * 4)  # 4 rows at a time
    chunked, (where, kept) = gptq_levels(w, steps, u, 1000, sparse_values=True)
    assert chunked.dtype == np.int16  # the codes beyond the range are 0 there, kept apart
    assert np.array_equal(where, np.flatnonzero(np.abs(whole) > 1000)) and where.size == 3
    assert np.array_equal(chunked, np.where(np.abs(whole) > 1000, 0, whole))
    assert np.array_equal(kept, values.reshape(-1)[where])


def test_channel_hessian_refuses_what_does_not_fit():
    ok = (1, np.ones(5), (np.eye(5), np.eye(5)))
    assert channel_hessian((4, 5), ok)[0] is not None
    assert channel_hessian((4, 5), (1, np.ones(5))) == (None, None)  # no matrices
    assert channel_hessian((4, 5), (1, np.ones(5), None)) == (None, None)
    assert channel_hessian((4, 6), ok) == (None, None)  # wrong size
    bad = (1, np.ones(5), (np.full((5, 5), np.nan), np.eye(5)))
    assert channel_hessian((4, 5), bad) == (None, None)
    zero = (1, np.ones(5), (np.zeros((5, 5)), np.eye(5)))
    assert channel_hessian((4, 5), zero) == (None, None)


def test_channel_hessian_reuses_results_for_equal_contents_as_workers_receive_them():
    """A worker gets each task's moments as new arrays (unpickled): tensors sharing an input
    must still share one factorisation, and other contents must not."""
    import pickle

    import cmf.plan.candidates as candidates

    rng = np.random.default_rng(3)
    x = correlated_inputs(rng, 400, rng.standard_normal((3, 16)))
    moments = fold_moments(x)
    candidates.forget_hessians()
    first = channel_hessian((8, 16), moments)
    again = channel_hessian((8, 16), pickle.loads(pickle.dumps(moments)))  # equal, not same
    assert again[0] is first[0] and again[1] is first[1]
    other = (1, moments[1], (moments[2][0] * 2, moments[2][1]))
    assert channel_hessian((8, 16), other)[0] is not first[0]
    assert not np.array_equal(channel_hessian((8, 16), other)[0], first[0])
    candidates.forget_hessians()
    fresh = channel_hessian((8, 16), moments)
    assert fresh[0] is not first[0] and np.array_equal(fresh[0], first[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
def test_row_steps_spanning_2x_are_stored_as_partition_classes(dtype):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((512, 160)) * 0.05).astype(dtype)  # 81,920 elements
    x[5, 7] = 40  # one huge value in the finest class: its step rises, no outlier needed
    w = np.r_[np.full(16, 400.0), rng.random(496) * 2 + 0.05]  # 16 frequent rows, the rest rare-ish
    w = w / w.mean()
    pending, y = encode_step(x, spec_of(x), 0.3, 0, w)
    tree = describe(pending)
    assert tree.startswith("partition") and "quantize" in tree
    got = decode_pending(pending)
    assert got.dtype == y.dtype and got.tobytes() == y.tobytes()
    assert abs(float(got[5, 7]) - 40) < 0.05 * 40
    # frequent rows are finer than rare ones
    d = np.abs(got.astype(np.float64) - x.astype(np.float64))
    assert d[:16].mean() < 0.3 * d[16:].mean()


def test_row_classes_beat_one_table_for_the_same_steps(monkeypatch):
    import cmf.plan.candidates as cand

    rng = np.random.default_rng(8)
    x = rng.standard_normal((1024, 128)).astype(np.float32)
    w = np.where(np.arange(1024) % 4 == 0, 64.0, 0.25)
    w = w / w.mean()
    classes, yc = encode_step(x, spec_of(x), 0.2, 0, w)
    monkeypatch.setattr(cand, "ROW_CLASS_SPREAD", 1e9)  # the same per-row steps, one quantize node
    single, ys = encode_step(x, spec_of(x), 0.2, 0, w)
    assert describe(classes).startswith("partition") and describe(single).startswith("quantize")
    assert weighted_error(x, yc, 0, w)[1] == pytest.approx(weighted_error(x, ys, 0, w)[1], rel=0.05)
    assert classes.stored < 0.9 * single.stored


def test_small_or_flat_row_steps_stay_one_quantize_node():
    rng = np.random.default_rng(9)
    small = rng.standard_normal((64, 64)).astype(np.float32)  # under ROW_CLASS_ELEMENTS
    w = np.r_[np.full(8, 50.0), np.ones(56)]
    assert describe(encode_step(small, spec_of(small), 0.3, 0, w / w.mean())[0]).startswith(
        "quantize"
    )
    flat = rng.standard_normal((1024, 128)).astype(np.float32)
    w = 1 + 0.5 * rng.random(1024)  # spread under 2x
    assert describe(encode_step(flat, spec_of(flat), 0.3, 0, w / w.mean())[0]).startswith(
        "quantize"
    )


@pytest.mark.parametrize("bad", [0.0, np.inf, np.nan, -1.0])
def test_step_refuses_importances_that_are_not_finite_and_positive(bad):
    x = np.random.default_rng(10).standard_normal((512, 160)).astype(np.float32)
    w = np.ones(512)
    w[3] = bad
    with pytest.raises(CmfError, match="finite and positive"):
        encode_step(x, spec_of(x), 0.3, 0, w)


@pytest.mark.parametrize("steps", ["scalar", "rows", "cols"])
def test_plain_levels_in_row_chunks_equal_the_whole_tensor_formula(monkeypatch, steps):
    import cmf.plan.candidates as candidates

    rng = np.random.default_rng(11)
    x = rng.standard_normal((37, 24)).astype(np.float32)
    x[5, 3], x[30, 23] = 900.0, -700.0  # beyond +-100 codes of the smallest steps
    s = {
        "scalar": np.float32(0.05),
        "rows": (rng.random((37, 1)) * 0.1 + 0.02).astype(np.float32),
        "cols": (rng.random((1, 24)) * 0.1 + 0.02).astype(np.float32),
    }[steps]
    want = np.rint(np.divide(x, s, dtype=np.float32))
    beyond = np.abs(want) > 100
    monkeypatch.setattr(candidates, "GPTQ_CHUNK_ELEMENTS", 24 * 5)  # 5 rows at a time
    levels, (flat, values) = candidates._plain_levels(x, x, s, 100)
    assert levels.dtype == np.int16 and levels.shape == x.shape
    assert np.array_equal(levels, np.where(beyond, 0, want))
    assert np.array_equal(flat, np.flatnonzero(beyond)) and flat.size >= 2
    assert np.array_equal(values, x.reshape(-1)[flat])
    empty = np.zeros((0, 24), np.float32)
    got, (f, v) = candidates._plain_levels(empty, empty, s if steps != "rows" else 0.1, 100)
    assert got.shape == (0, 24) and f.size == 0 and v.size == 0


@pytest.mark.parametrize("n", [1, 2, 63, 64, 65, 200])
def test_inverse_cholesky_is_the_upper_cholesky_factor_of_the_inverse(n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((3 * n + 2, n)) * rng.uniform(0.1, 10, n)
    h = x.T @ x / len(x) + 0.01 * np.eye(n)
    u = inverse_cholesky(h)
    want = np.linalg.cholesky(np.linalg.inv(h)).T
    assert u.shape == (n, n) and np.array_equal(np.triu(u), u) and (np.diag(u) > 0).all()
    assert np.allclose(u, want, rtol=1e-9, atol=1e-12 * np.abs(want).max())
    assert np.allclose(u.T @ u @ h, np.eye(n), atol=1e-8)


def test_inverse_cholesky_refuses_a_matrix_that_is_not_positive_definite():
    with pytest.raises(np.linalg.LinAlgError):
        inverse_cholesky(np.diag([1.0, -1.0, 2.0]))


def test_templates_are_measured_where_the_steps_have_no_error_feedback_unless_asked():
    rng = np.random.default_rng(8)
    w = rng.standard_normal((64, 48)).astype(np.float32) * 0.1
    moments = fold_moments(correlated_inputs(rng, 2000, rng.standard_normal((4, 48)) * 3))
    choices = step_choices(per_bit=1) + template_choices() + [LOSSLESS]
    ticks = []

    def families(m, **kw):
        curve = measure("w", w, choices, m, progress=lambda: ticks.append(1), **kw)
        return {p.choice.family for p in curve.points}

    assert "template" not in families(moments, templates_with_feedback=False)
    assert len(ticks) == len(choices)  # skipped choices still count as done
    assert "template" in families(moments)  # the default: every choice
    assert "template" in families(None, templates_with_feedback=False)  # no feedback: measured
    assert "template" in families((1, moments[1]), templates_with_feedback=False)  # no matrices
