"""quantize codec (spec/codecs/quantize.md): the decode formula pinned against an element-by-
element reference, block layout, encoder error bounds (round to nearest and search), edge
values, hostile parts, double quantization through the pipeline, and bit-exact GGUF blocks."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cmf
import cmf.codecs.bitpack  # noqa: F401  (registers the codec)
import cmf.codecs.quantize  # noqa: F401  (registers the codec)
from cmf.codecs import ArraySpec, BytesSpec, codec_from_config
from cmf.codecs.bitpack import BitPack
from cmf.codecs.quantize import SCALE_DTYPES, SCHEMES, TENSOR_DTYPES, Quantize, code_dtype
from cmf.codecs.raw import Raw
from cmf.dtypes import BY_NAME
from cmf.errors import CmfError, FormatError
from cmf.index import CodecNode, Leaf
from cmf.limits import DEFAULT_LIMITS
from cmf.metrics import error_stats
from cmf.pipeline import PendingLeaf, PendingNode, apply, decode
from cmf.writer import Writer

F32 = np.float32


def spec(dtype: str, shape) -> ArraySpec:
    return ArraySpec(BY_NAME[dtype], tuple(shape))


def q(**kw) -> Quantize:
    base = dict(bits=4, block=0, axis=-1, scheme="symmetric", scale_dtype="f32", search=False)
    return Quantize(**{**base, **kw})


def param_index(codec: Quantize, shape, idx, size: int):
    """The blocks-shape index of element ``idx`` (spec 'Blocks'), computed independently."""
    if codec.axis is None:
        flat = int(np.ravel_multi_index(idx, shape)) if shape else 0
        return (flat // size,)
    a = codec.axis % len(shape)
    return idx[:a] + (idx[a] // size,) + idx[a + 1 :]


def reference_decode(codec: Quantize, parts, s: ArraySpec) -> np.ndarray:
    """The page's formula one element at a time with numpy float32 scalars."""
    shape = s.shape
    if codec.axis is None:
        n = math.prod(shape)
    else:
        n = shape[codec.axis % len(shape)]
    size = codec.block or max(n, 1)
    out = np.empty(shape, dtype=s.dtype.numpy)
    qv = parts["q"]
    for idx in np.ndindex(*shape):
        j = param_index(codec, shape, idx, size)
        u = F32(qv[idx])
        sc = F32(parts["scale"][j])
        if codec.scheme == "symmetric":
            v = sc * (u - F32(2 ** (codec.bits - 1)))
        elif codec.scheme == "zero_point":
            v = sc * (u - F32(parts["zero"][j]))
        else:
            v = F32(sc * u) + F32(parts["min"][j])
        assert isinstance(v, np.float32)
        with np.errstate(over="ignore"):
            out[idx] = v.astype(s.dtype.numpy)
    return out


@st.composite
def layouts(draw, max_dim=9):
    """(codec, spec): any config and a small tensor it applies to."""
    rank = draw(st.integers(0, 3))
    shape = tuple(draw(st.lists(st.integers(0, max_dim), min_size=rank, max_size=rank)))
    axis = draw(st.one_of(st.none(), st.integers(-rank, rank - 1))) if rank else None
    codec = Quantize(
        bits=draw(st.integers(1, 16)),
        block=draw(st.one_of(st.just(0), st.integers(1, 12))),
        axis=axis,
        scheme=draw(st.sampled_from(SCHEMES)),
        scale_dtype=draw(st.sampled_from(SCALE_DTYPES)),
        search=draw(st.booleans()),
    )
    return codec, spec(draw(st.sampled_from(TENSOR_DTYPES)), shape)


def random_parts(codec: Quantize, s: ArraySpec, rng) -> dict[str, np.ndarray]:
    """Valid parts with arbitrary codes and finite scales of both signs (subnormals too)."""
    parts = {}
    for name, ps in codec.resolve(s).items():
        if ps.dtype.name in ("u8", "u16"):
            parts[name] = rng.integers(0, 1 << codec.bits, ps.shape).astype(ps.dtype.numpy)
        else:
            mags = 10.0 ** rng.uniform(-9, 3, ps.shape) * rng.choice([-1, 1], ps.shape)
            parts[name] = np.asarray(mags, dtype=F32).astype(ps.dtype.numpy)
    return parts


def finite_data(s: ArraySpec, rng, scale: float = 1.0) -> np.ndarray:
    x = rng.standard_normal(s.shape) * scale
    return np.asarray(x).astype(s.dtype.numpy)


# ----------------------------------------------------------------------------- decode formula


@settings(max_examples=300, deadline=None)
@given(layout=layouts(max_dim=6), seed=st.integers(0, 2**32 - 1))
def test_decode_is_the_pinned_formula_bit_for_bit(layout, seed):
    codec, s = layout
    parts = random_parts(codec, s, np.random.default_rng(seed))
    got = codec.decode(parts, s)
    assert got.dtype == s.dtype.numpy and got.shape == s.shape
    want = reference_decode(codec, parts, s)
    assert got.tobytes() == want.tobytes()


def test_decode_keeps_ieee_details():
    """No FMA (s*u + m rounds twice), subnormals kept, -0.0 from a negative scale."""
    codec = q(bits=8, scheme="asymmetric", axis=None)
    s = spec("f32", (3,))
    sc = np.array([1 + 2**-23], F32)  # s*u needs a rounding for u = 3
    mn = np.array([-3.0000002], F32)
    parts = {"q": np.array([3, 0, 1], np.uint8), "scale": sc, "min": mn}
    got = codec.decode(parts, s)
    fused = np.float64(sc[0]) * 3 + np.float64(mn[0])  # what an FMA would round once
    assert got[0] == F32(F32(sc[0] * F32(3)) + mn[0]) and got[0] != F32(fused)
    sym = q(bits=4, axis=None).decode(
        {"q": np.array([8, 9], np.uint8), "scale": np.array([-1e-45], F32)}, spec("f32", (2,))
    )
    assert np.signbit(sym[0]) and sym[0] == 0  # (8 - 8) * -s = -0.0
    assert sym[1] == F32(-1e-45) and sym[1] != 0  # subnormal, not flushed


def test_f16_output_rounds_and_overflows_to_infinity():
    codec = q(bits=8, axis=None)
    parts = {"q": np.array([255, 0, 129], np.uint8), "scale": np.array([1000.0], F32)}
    got = codec.decode(parts, spec("f16", (3,)))
    assert got.dtype == np.float16
    assert np.isinf(got[0]) and got[0] > 0  # 127 * 1000 > 65504: overflow
    assert np.isinf(got[1]) and got[1] < 0 and got[2] == 1000


# ----------------------------------------------------------------------------- layout / resolve


@pytest.mark.parametrize(
    "axis,block,blocks_shape",
    [
        (None, 0, (1,)),
        (-1, 0, (4096, 1)),
        (0, 0, (1, 1000)),
        (-1, 64, (4096, 16)),
        (1, 64, (4096, 16)),
        (None, 1000, (4096,)),
        (None, 3, (1365334,)),
    ],
)
def test_resolve_blocks_shape_without_data(axis, block, blocks_shape):
    s = spec("bf16", (4096, 1000))
    codec = q(axis=axis, block=block, scheme="asymmetric", scale_dtype="f16")
    parts = codec.resolve(s)
    assert parts == {
        "q": spec("u8", (4096, 1000)),
        "scale": spec("f16", blocks_shape),
        "min": spec("f16", blocks_shape),
    }


def test_resolve_parts_per_scheme_and_code_width():
    s = spec("f32", (1 << 40, 3))  # far too large to allocate: resolve never touches data
    assert set(q(scheme="symmetric").resolve(s)) == {"q", "scale"}
    assert set(q(scheme="asymmetric").resolve(s)) == {"q", "scale", "min"}
    zp = q(scheme="zero_point", bits=12).resolve(s)
    assert zp["q"] == spec("u16", s.shape) and zp["zero"] == spec("u16", (1 << 40, 1))
    assert q(bits=8).resolve(s)["q"].dtype.name == "u8"
    assert q(bits=9).resolve(s)["q"].dtype.name == "u16"
    assert q(axis=None).resolve(spec("f32", ()))["scale"] == spec("f32", (1,))
    assert q(axis=None, block=5).resolve(spec("f32", (0, 7)))["scale"] == spec("f32", (0,))
    assert q(axis=0, block=5).resolve(spec("f32", (0, 7)))["scale"] == spec("f32", (0, 7))


def test_resolve_rejects_what_it_cannot_produce():
    for dtype in ("i8", "u8", "f8_e4m3", "bool"):
        with pytest.raises(FormatError, match="decodes to"):
            q().resolve(spec(dtype, (4,)))
    with pytest.raises(FormatError, match="out of range"):
        q(axis=-1).resolve(spec("f32", ()))
    with pytest.raises(FormatError, match="out of range"):
        q(axis=2).resolve(spec("f32", (3, 4)))
    with pytest.raises(FormatError, match="array"):
        q().resolve(BytesSpec(8))


def test_partial_last_block():
    """(3, 70) in groups of 32 along rows: blocks of 32, 32 and 6, each fitted on its own."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 70)).astype(F32)
    x[:, 64:] *= 100  # the tail is much larger: a shared scale would show
    codec = q(bits=8, block=32, scheme="asymmetric")
    parts = codec.encode(x, spec("f32", x.shape))
    assert parts["scale"].shape == (3, 3)
    lo, hi = x[:, 64:].min(axis=1), x[:, 64:].max(axis=1)
    assert np.array_equal(parts["min"][:, 2], lo)
    assert np.array_equal(parts["scale"][:, 2], (hi - lo) / F32(255))
    y = codec.decode(parts, spec("f32", x.shape))
    err = np.abs(y - x)
    assert (err[:, 64:] <= parts["scale"][:, 2:] * 0.5001).all()
    assert (err[:, :64] <= 0.05).all()


def test_axis_0_is_axis_minus_1_of_the_transpose():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((50, 7)).astype(F32)
    a = q(axis=0, block=16).encode(x, spec("f32", x.shape))
    b = q(axis=-1, block=16).encode(np.ascontiguousarray(x.T), spec("f32", x.T.shape))
    assert np.array_equal(a["q"], b["q"].T) and np.array_equal(a["scale"], b["scale"].T)


# ----------------------------------------------------------------------------- encoder


def _no_clip_bound_ok(codec, parts, x, y, s: ArraySpec) -> None:
    """Where an element's exact level lies inside the grid, |x̂ - x| <= |s|/2 (+ roundings)."""
    shape = s.shape
    n = math.prod(shape) if codec.axis is None else shape[codec.axis % len(shape)]
    size = codec.block or max(n, 1)
    qmax = (1 << codec.bits) - 1
    eps = 2.0**-22
    out_ulp = {"f32": 0, "f64": 0, "f16": 2.0**-11, "bf16": 2.0**-8}[s.dtype.name]
    for idx in np.ndindex(*shape):
        j = param_index(codec, shape, idx, size)
        sc = float(parts["scale"][j])
        xv, yv = float(x[idx]), float(y[idx])
        if sc == 0:
            continue
        if codec.scheme == "symmetric":
            level, lo, hi, m = xv / sc, -(qmax + 1) // 2, qmax // 2, 0.0
        elif codec.scheme == "zero_point":
            z = float(parts["zero"][j])
            level, lo, hi, m = xv / sc, -z, qmax - z, 0.0
        else:
            m = float(parts["min"][j])
            level, lo, hi = (xv - m) / sc, 0, qmax
        if lo - 0.5 <= level <= hi + 0.5:
            slack = eps * (abs(xv) + abs(sc) * (qmax + 1) + abs(m)) + out_ulp * abs(yv)
            assert abs(yv - xv) <= abs(sc) / 2 + slack, (idx, xv, yv, sc)


@settings(max_examples=300, deadline=None)
@given(layout=layouts(), seed=st.integers(0, 2**32 - 1), mag=st.floats(-3, 3))
def test_encode_round_trip_properties(layout, seed, mag):
    codec, s = layout
    rng = np.random.default_rng(seed)
    x = finite_data(s, rng, 10.0**mag)
    try:
        parts = codec.encode(x, s)
    except CmfError as exc:  # only a scale dtype too narrow for the values may refuse
        assert "does not fit" in str(exc) and codec.scale_dtype == "f16"
        return
    specs = codec.resolve(s)
    assert set(parts) == set(specs)
    for name, ps in specs.items():
        assert parts[name].dtype == ps.dtype.numpy and parts[name].shape == ps.shape, name
    if parts["q"].size:
        assert int(parts["q"].max()) < 1 << codec.bits
    y = codec.decode(parts, s)
    assert y.dtype == s.dtype.numpy and y.shape == s.shape
    assert np.isfinite(y.astype(np.float64)).all() or s.dtype.name == "f16"
    if not codec.search:
        _no_clip_bound_ok(codec, parts, x, y, s)
    rtn = Quantize(**{**codec.to_config(), "search": False})
    y_rtn = rtn.decode(rtn.encode(x, s), s)
    e_codec = float(np.sum((y.astype(np.float64) - x.astype(np.float64)) ** 2))
    e_rtn = float(np.sum((y_rtn.astype(np.float64) - x.astype(np.float64)) ** 2))
    tol = 1e-6 if s.dtype.name == "f64" else 1e-9  # f64: blocks are scored on the f32 values
    assert e_codec <= e_rtn * (1 + tol) + 1e-30


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("search", [False, True])
def test_all_zero_and_constant_tensors(scheme, search):
    s = spec("f32", (4, 40))
    codec = q(bits=3, block=16, scheme=scheme, search=search)
    zeros = np.zeros(s.shape, F32)
    assert np.array_equal(codec.decode(codec.encode(zeros, s), s), zeros)
    for c in (2.5, -0.375, 1e-30):
        const = np.full(s.shape, c, F32)
        y = codec.decode(codec.encode(const, s), s)
        if scheme == "zero_point":  # s = c / 7 rounds: within a few ulps
            np.testing.assert_allclose(y, const, rtol=4e-7)
        else:
            assert np.array_equal(y, const)


@pytest.mark.parametrize("dtype", TENSOR_DTYPES)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_tiny_tensors(dtype, scheme):
    codec = q(bits=2, axis=None, scheme=scheme, search=True)
    for shape, value in [((), 1.5), ((1,), -3.0), ((1, 1, 1), 0.25)]:
        s = spec(dtype, shape)
        x = np.full(shape, value).astype(s.dtype.numpy)
        y = codec.decode(codec.encode(x, s), s)
        assert y.shape == shape and y.dtype == s.dtype.numpy
        np.testing.assert_allclose(y.astype(F32), x.astype(F32), rtol=1e-6)
    empty = spec(dtype, (0, 3))
    parts = codec.encode(np.zeros((0, 3), empty.dtype.numpy), empty)
    assert codec.decode(parts, empty).shape == (0, 3)


def test_one_bit_symmetric_keeps_the_sign_of_the_largest():
    x = np.array([[0.1, -2.0, 0.3, -1.9]], F32)
    codec = q(bits=1, axis=-1)
    y = codec.decode(codec.encode(x, spec("f32", x.shape)), spec("f32", x.shape))
    assert y.tolist() == [[0.0, -2.0, 0.0, -2.0]]


def test_sixteen_bits():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 300)).astype(F32)
    for scheme in SCHEMES:
        codec = q(bits=16, block=100, scheme=scheme, search=True)
        parts = codec.encode(x, spec("f32", x.shape))
        assert parts["q"].dtype == np.uint16
        y = codec.decode(parts, spec("f32", x.shape))
        assert error_stats(x, y)["rel_rmse"] < 3e-5


def test_quality_on_a_normal_matrix():
    """q8 per row and q4 in groups of 32: round to nearest, and the search beating it."""
    x = np.random.default_rng(4).standard_normal((256, 512)).astype(F32)
    s = spec("f32", x.shape)
    res = {}
    for name, kw in {"q8": dict(bits=8, block=0), "q4": dict(bits=4, block=32)}.items():
        for search in (False, True):
            codec = q(scale_dtype="f16", search=search, **kw)
            res[name, search] = error_stats(x, codec.decode(codec.encode(x, s), s))["rel_rmse"]
    assert res["q8", False] < 0.0085 and res["q8", True] <= res["q8", False]
    assert res["q4", False] < 0.09 and res["q4", True] < 0.96 * res["q4", False]
    assert 0.0 < res["q4", True]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", TENSOR_DTYPES)
def test_encode_rejects_non_finite_inputs(bad, dtype):
    x = np.ones((3, 4), BY_NAME[dtype].numpy)
    x[1, 2] = bad
    with pytest.raises(CmfError, match=r"non-finite value .* at index \[1, 2\]"):
        q().encode(x, spec(dtype, x.shape))


def test_encode_rejects_what_the_scales_cannot_hold():
    x = np.array([[1e9, -3.0]], F32)
    with pytest.raises(CmfError, match="does not fit f16"):
        q(bits=8, scale_dtype="f16").encode(x, spec("f32", x.shape))
    q(bits=8, scale_dtype="bf16").encode(x, spec("f32", x.shape))  # bf16 has f32's range
    big = np.array([1e300, 1.0])
    with pytest.raises(CmfError, match="float32 range"):
        q(axis=None).encode(big, spec("f64", big.shape))
    with pytest.raises(CmfError, match="shape"):
        q().encode(np.zeros(3, F32), spec("f32", (4,)))


def test_encoding_is_deterministic():
    x = np.random.default_rng(6).standard_normal((33, 65)).astype(ml_dtypes.bfloat16)
    codec = q(bits=5, block=16, scheme="zero_point", search=True, scale_dtype="bf16")
    a, b = codec.encode(x, spec("bf16", x.shape)), codec.encode(x, spec("bf16", x.shape))
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)


@pytest.mark.parametrize("axis,block", [(-1, 8), (0, 5), (None, 7), (-1, 0)])
def test_blocks_are_fitted_in_pieces_with_the_same_result(monkeypatch, axis, block):
    x = np.random.default_rng(10).standard_normal((40, 24)).astype(F32)
    s = spec("f32", x.shape)
    codec = q(bits=3, block=block, axis=axis, scheme="asymmetric", search=True)
    whole = codec.encode(x, s)
    monkeypatch.setattr(cmf.codecs.quantize, "_CHUNK", 16)  # a few blocks per piece
    pieces = codec.encode(x, s)
    assert all(np.array_equal(whole[k], pieces[k]) for k in whole)


# ----------------------------------------------------------------------------- config


configs = st.builds(
    dict,
    bits=st.integers(1, 16),
    block=st.integers(0, 2**53 - 1),
    axis=st.one_of(st.none(), st.integers(-64, 63)),
    scheme=st.sampled_from(SCHEMES),
    scale_dtype=st.sampled_from(SCALE_DTYPES),
    search=st.booleans(),
)


@given(config=configs)
@settings(max_examples=60, deadline=None)
def test_config_round_trip(config):
    codec = codec_from_config("quantize", config)
    assert codec.to_config() == config
    again = codec_from_config("quantize", codec.to_config())
    assert again == codec and hash(again) == hash(codec)


GOOD = q().to_config()


@pytest.mark.parametrize(
    "change",
    [
        {"bits": 0},
        {"bits": 17},
        {"bits": True},
        {"bits": 4.0},
        {"block": -1},
        {"block": 2**53},
        {"block": False},
        {"block": 1.5},
        {"axis": "0"},
        {"axis": True},
        {"axis": 64},
        {"axis": -65},
        {"scheme": "sym"},
        {"scheme": None},
        {"scale_dtype": "f64"},
        {"scale_dtype": "u8"},
        {"search": 1},
        {"search": "yes"},
        {"extra": 1},
    ],
)
def test_bad_configs(change):
    with pytest.raises(CmfError):
        codec_from_config("quantize", {**GOOD, **change})


@pytest.mark.parametrize("missing", list(GOOD))
def test_every_config_key_is_required(missing):
    config = {k: v for k, v in GOOD.items() if k != missing}
    with pytest.raises(CmfError, match="missing"):
        codec_from_config("quantize", config)
    with pytest.raises(CmfError):
        codec_from_config("quantize", [1, 2])


# ----------------------------------------------------------------------------- hostile parts


def _valid(scheme: str, bits: int = 4):
    x = np.random.default_rng(7).standard_normal((4, 32)).astype(F32)
    s = spec("f32", x.shape)
    codec = q(bits=bits, block=8, scheme=scheme)
    return codec, codec.encode(x, s), s


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scale_or_min_is_rejected(scheme, bad):
    codec, parts, s = _valid(scheme)
    for name in ("scale", "min"):
        if name in parts:
            broken = dict(parts)
            broken[name] = parts[name].copy()
            broken[name][2, 1] = bad
            with pytest.raises(FormatError, match=f"part '{name}' holds a non-finite"):
                codec.decode(broken, s)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("bits,code", [(4, 16), (4, 255), (1, 2), (12, 4096), (12, 65535)])
def test_code_out_of_range_is_rejected(scheme, bits, code):
    codec, parts, s = _valid(scheme, bits)
    broken = dict(parts, q=parts["q"].copy())
    broken["q"][3, 31] = code
    with pytest.raises(FormatError, match="out of range"):
        codec.decode(broken, s)
    if scheme == "zero_point":
        broken = dict(parts, zero=parts["zero"].copy())
        broken["zero"][0, 0] = code
        with pytest.raises(FormatError, match="zero point .* out of range"):
            codec.decode(broken, s)


def test_parts_of_the_wrong_kind_are_rejected():
    codec, parts, s = _valid("asymmetric")
    for name, value in [
        ("q", parts["q"].astype(np.uint16)),
        ("q", parts["q"][:, :16]),
        ("q", bytes(parts["q"].tobytes())),
        ("scale", parts["scale"].astype(np.float64)),
        ("scale", parts["scale"][:, :2]),
        ("min", parts["min"].reshape(-1)),
    ]:
        with pytest.raises(FormatError, match=f"part '{name}'"):
            codec.decode(dict(parts, **{name: value}), s)


def _node(pending, segments: list) -> CodecNode | Leaf:
    """A parsed-tree equivalent of a pending tree; leaf bytes go to ``segments``."""
    if isinstance(pending, PendingLeaf):
        segments.append(bytes(memoryview(pending.data).cast("B")))
        return Leaf(len(segments) - 1, pending.spec)
    return CodecNode(
        pending.codec, {k: _node(c, segments) for k, c in pending.parts.items()}, pending.spec
    )


def _decode_pending(pending):
    segments: list[bytes] = []
    node = _node(pending, segments)
    return decode(node, lambda i: segments[i], DEFAULT_LIMITS)


def _stored(v, sp):
    if isinstance(sp, BytesSpec):
        return PendingLeaf(v, sp)
    return apply(Raw(), v, sp, _stored)


def test_hostile_trees_through_the_pipeline():
    """Codes arrive through raw u8 (any byte), a short bitpack, or a NaN scale from a file."""
    codec, parts, s = _valid("symmetric")
    specs = codec.resolve(s)
    good = PendingNode(codec, {k: _stored(parts[k], specs[k]) for k in specs}, s)
    assert np.array_equal(_decode_pending(good), codec.decode(parts, s))
    raw_codes = parts["q"].copy()
    raw_codes[0, 0] = 0xFF
    bad = PendingNode(codec, {"q": _stored(raw_codes, specs["q"]), "scale": good.parts["scale"]}, s)
    with pytest.raises(FormatError, match="code 255 is out of range for 4 bits"):
        _decode_pending(bad)
    packed = BitPack(bits=4).encode(parts["q"], specs["q"])["data"]
    short_leaf = PendingLeaf(packed[:-1], BytesSpec(len(packed)))
    short = PendingNode(BitPack(bits=4), {"data": short_leaf}, specs["q"])
    with pytest.raises(FormatError, match="bitpack: data holds"):
        _decode_pending(PendingNode(codec, {"q": short, "scale": good.parts["scale"]}, s))
    nan_scale = parts["scale"].copy()
    nan_scale[1, 1] = np.nan
    bad = PendingNode(codec, {"q": good.parts["q"], "scale": _stored(nan_scale, specs["scale"])}, s)
    with pytest.raises(FormatError, match="non-finite"):
        _decode_pending(bad)


def test_hostile_file_is_refused_on_read(tmp_path):
    codec, parts, s = _valid("asymmetric")
    specs = codec.resolve(s)
    codes = parts["q"].copy()
    codes[2, 5] = 200
    children = {k: _stored(codes if k == "q" else parts[k], specs[k]) for k in specs}
    tree = PendingNode(codec, children, s)
    path = tmp_path / "bad.cmf"
    with Writer(path) as w:
        w.add_encoded("w", s, tree)
    with cmf.open(path) as f:
        assert f.spec("w") == s  # the index is fine; decoding is not
        with pytest.raises(FormatError, match="out of range"):
            f.get_tensor("w")


# ----------------------------------------------------------------------------- double quantization


def test_double_quantization_through_apply_and_decode():
    """QLoRA-style: 4-bit codes in groups of 64, their f32 scales quantized again to 8 bits in
    groups of 256 (asymmetric), whose own scales and mins stay raw."""
    x = np.random.default_rng(8).standard_normal((64, 1024)).astype(F32)
    s = spec("f32", x.shape)
    outer = q(bits=4, block=64, search=True)
    inner = q(bits=8, block=256, axis=None, scheme="asymmetric", search=True)

    def parts_of_outer(value, sp):
        if isinstance(sp, ArraySpec) and sp.dtype.name == "f32":  # the scales
            return apply(inner, value, sp, parts_of_inner)
        return apply(BitPack(bits=4), value, sp, _stored)

    def parts_of_inner(value, sp):
        if sp.dtype.name == "u8":
            return apply(BitPack(bits=8), value, sp, _stored)
        return _stored(value, sp)

    tree = apply(outer, x, s, parts_of_outer)
    assert isinstance(tree.parts["scale"], PendingNode) and tree.parts["scale"].codec == inner
    y = _decode_pending(tree)
    single = outer.decode(outer.encode(x, s), s)
    # by hand: decode the inner node, then the outer with those scales
    outer_parts = outer.encode(x, s)
    inner_spec = outer.resolve(s)["scale"]
    scales = inner.decode(inner.encode(outer_parts["scale"], inner_spec), inner_spec)
    assert np.array_equal(y, outer.decode(dict(outer_parts, scale=scales), s))
    e_double, e_single = error_stats(x, y)["rel_rmse"], error_stats(x, single)["rel_rmse"]
    assert e_double < e_single * 1.02  # 8-bit scales cost almost nothing
    bits = (x.size * 4 + scales.size * 8 + 2 * 32 * math.ceil(scales.size / 256)) / x.size
    assert bits < 4.14


def test_double_quantization_in_a_file(tmp_path):
    """The same tree from a recipe, written, parsed back (axis nil in msgpack) and decoded."""
    x = np.random.default_rng(9).standard_normal((32, 512)).astype(F32)
    inner = q(bits=8, block=256, axis=None, scheme="asymmetric").to_config()
    recipe = {
        "rules": [
            {
                "match": "w",
                "encoding": {
                    "codec": "quantize",
                    "config": q(bits=4, block=64, search=True).to_config(),
                    "parts": {
                        "q": {"codec": "bitpack", "config": {"bits": 4}},
                        "scale": {
                            "codec": "quantize",
                            "config": inner,
                            "parts": {"q": {"codec": "bitpack", "config": {"bits": 8}}},
                        },
                    },
                },
            }
        ],
    }
    path = tmp_path / "dq.cmf"
    cmf.save_file({"w": x}, path, recipe=recipe)
    with cmf.open(path) as f:
        node = f.entry("w").encoding
        assert node.codec.name == "quantize" and node.parts["scale"].codec.axis is None
        y = f.get_tensor("w")
        stats = f.entry("w").error
    assert y.dtype == F32 and y.shape == x.shape
    assert stats is not None and stats["rel_rmse"] == pytest.approx(error_stats(x, y)["rel_rmse"])
    assert stats["rel_rmse"] < 0.1


# ----------------------------------------------------------------------------- GGUF blocks

gguf = pytest.importorskip("gguf")
from cmf.convert.gguf_legacy import (  # noqa: E402
    BLOCK_TYPES,
    ggml_codec,
    gguf_blocks_to_parts,
    gguf_tensor_to_pending,
    parts_to_gguf_blocks,
)
from cmf.pipeline import decode_pending  # noqa: E402

GGML = list(BLOCK_TYPES)


def _gguf_data(shape, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 10.0 ** rng.uniform(-4, 3, shape[:-1] + (1,))
    x[..., :3] = 0.0  # some zeros, and an all-zero block below
    x.reshape(-1, 32)[0] = 0.0
    return x.astype(F32)


@pytest.mark.parametrize("name", GGML)
@pytest.mark.parametrize("shape", [(64,), (16, 96), (3, 4, 64)])
def test_gguf_quantize_then_cmf_decode_is_bit_exact(name, shape):
    kind = gguf.GGMLQuantizationType[name]
    x = _gguf_data(shape, seed=len(shape))
    blocks = gguf.quants.quantize(x, kind)
    want = gguf.quants.dequantize(blocks, kind)
    parts = gguf_blocks_to_parts(blocks, kind, shape)
    s = spec("f32", shape)
    got = ggml_codec(name).decode(parts, s)
    assert got.shape == want.shape
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    back = parts_to_gguf_blocks(parts, name)
    assert back.tobytes() == np.ascontiguousarray(blocks).tobytes()


@pytest.mark.parametrize("name", GGML)
def test_any_gguf_block_bytes_convert_losslessly_and_decode_exactly(name):
    """Random bytes: every bit pattern of every field, negative and subnormal scales too."""
    bt = BLOCK_TYPES[name]
    kind = gguf.GGMLQuantizationType[name]
    rng = np.random.default_rng(len(name))
    shape = (40, 64)
    raw = rng.integers(0, 256, (40, 2 * bt.nbytes), dtype=np.uint8)
    parts = gguf_blocks_to_parts(raw, name, shape)
    assert parts_to_gguf_blocks(parts, name).tobytes() == raw.tobytes()  # NaN scales included
    for key in ("scale", "min"):  # decode needs finite scales: fix the non-finite ones
        if key in parts:
            bits = parts[key].view(np.uint16)
            bits[~np.isfinite(parts[key])] &= 0x83FF
    raw = parts_to_gguf_blocks(parts, name).reshape(raw.shape)
    want = gguf.quants.dequantize(raw, kind)
    got = ggml_codec(name).decode(gguf_blocks_to_parts(raw, name, shape), spec("f32", shape))
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("name", GGML)
def test_gguf_tensor_to_pending_decodes_like_gguf(name, tmp_path):
    kind = gguf.GGMLQuantizationType[name]
    x = _gguf_data((8, 256), seed=3)
    blocks = gguf.quants.quantize(x, kind)
    want = gguf.quants.dequantize(blocks, kind)
    pending = gguf_tensor_to_pending(blocks.reshape(-1), name, x.shape)
    assert pending.codec == ggml_codec(name)
    assert np.array_equal(decode_pending(pending).view(np.uint32), want.view(np.uint32))
    path = tmp_path / "g.cmf"
    with Writer(path) as w:
        w.add_encoded("t", spec("f32", x.shape), pending)
    assert np.array_equal(cmf.load_file(path)["t"].view(np.uint32), want.view(np.uint32))
    stored = pending.stored
    bpe = BLOCK_TYPES[name].nbytes * 8 / 32
    assert stored * 8 / x.size <= bpe + 0.01  # never bigger than the GGUF blocks


def test_ggml_mapping_and_errors():
    assert ggml_codec("Q4_1").to_config() == {
        "bits": 4,
        "block": 32,
        "axis": -1,
        "scheme": "asymmetric",
        "scale_dtype": "f16",
        "search": False,
    }
    assert {n: BLOCK_TYPES[n].nbytes for n in GGML} == {
        n: gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[n]][1] for n in GGML
    }
    with pytest.raises(CmfError, match="Q4_K"):
        ggml_codec("Q4_K")
    with pytest.raises(CmfError, match="multiple of 32"):
        gguf_blocks_to_parts(bytes(18), "Q4_0", (3, 16))
    with pytest.raises(CmfError, match="bytes given"):
        gguf_blocks_to_parts(bytes(17), "Q4_0", (32,))
    parts = gguf_blocks_to_parts(bytes(18), "Q4_0", (32,))
    parts["q"][0] = 16
    with pytest.raises(CmfError, match="does not fit 4 bits"):
        parts_to_gguf_blocks(parts, "Q4_0")
    assert code_dtype(5) == "u8"
