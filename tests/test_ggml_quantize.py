"""GGML block encoders (cmf.ggml_encode): layouts decoded by gguf-py, error below naive rounding,
importance weighting, edge values, hostile arguments."""

from __future__ import annotations

import numpy as np
import pytest

from cmf.errors import CmfError
from cmf.ggml_encode import TYPES, layouts, naive_blocks, quantize_blocks
from cmf.ggml_encode.kquants import IQ4_VALUES

gguf = pytest.importorskip("gguf")
from gguf.quants import dequantize  # noqa: E402

NAMES = sorted(TYPES)
# relative RMS error bounds on heavy-tailed weights (measured: 0.31 0.19 0.096 0.048 0.026 0.10)
BOUND = {"Q2_K": 0.35, "Q3_K": 0.21, "Q4_K": 0.11, "Q5_K": 0.055, "Q6_K": 0.03}
BOUND |= {"IQ4_NL": 0.11, "IQ4_XS": 0.11, "Q4_0": 0.14, "Q4_1": 0.11, "Q5_0": 0.07, "Q5_1": 0.055}
BOUND |= {"Q8_0": 0.009}


def decode(b: np.ndarray, name: str, shape) -> np.ndarray:
    return dequantize(b, gguf.GGMLQuantizationType[name]).reshape(shape)


def rel(y, x, w=None):
    w = np.ones(x.shape[-1]) if w is None else w
    return float(np.sqrt(np.sum(w * (y - x) ** 2) / np.sum(w * x**2)))


def real_looking(rng, rows=48, cols=1024):
    """Heavy-tailed values with row and column scales spread over a decade, like LLM weights."""
    row = np.exp(rng.normal(0, 0.5, (rows, 1)))
    col = np.exp(rng.normal(0, 0.5, (1, cols)))
    return (0.02 * rng.standard_t(4, (rows, cols)) * row * col).astype(np.float32)


@pytest.mark.parametrize("name", NAMES)
def test_sizes_match_gguf(name):
    t = TYPES[name]
    assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]] == (t.block, t.nbytes)
    b = quantize_blocks(np.ones((3, 512), np.float32), name)
    assert b.dtype == np.uint8 and b.shape == (3, 512 // t.block * t.nbytes)


def _fields(rng, name, n):
    """Random fields, the packed bytes and the values they stand for (element order)."""
    d = rng.uniform(0.01, 1, n).astype(np.float16)
    dm = rng.uniform(0.01, 1, n).astype(np.float16)
    df, dmf = d.astype(np.float32)[:, None], dm.astype(np.float32)[:, None]
    rep = lambda a, k: np.repeat(a.astype(np.float32), k, axis=1)  # noqa: E731
    if name in ("Q2_K", "Q4_K", "Q5_K"):
        k, nmax, smax = {"Q2_K": (16, 3, 15), "Q4_K": (8, 15, 63), "Q5_K": (8, 31, 63)}[name]
        L = rng.integers(0, nmax + 1, (n, 256))
        sc, m = rng.integers(0, smax + 1, (n, k)), rng.integers(0, smax + 1, (n, k))
        pack = getattr(layouts, f"pack_{name.lower()}")
        return pack(L, sc, m, d, dm), (df * rep(sc, 256 // k)) * L - dmf * rep(m, 256 // k)
    if name == "Q3_K":
        L, sc = rng.integers(0, 8, (n, 256)), rng.integers(0, 64, (n, 16))
        return layouts.pack_q3_k(L, sc, d), (df * rep(sc - 32, 16)) * (L - 4)
    if name == "Q6_K":
        L, sc = rng.integers(0, 64, (n, 256)), rng.integers(-128, 128, (n, 16))
        return layouts.pack_q6_k(L, sc, d), (df * rep(sc, 16)) * (L - 32)
    if name in LEGACY:
        return _legacy_fields(rng, name, n, d, dm, df, dmf)
    if name == "IQ4_NL":
        L = rng.integers(0, 16, (n, 32))
        return layouts.pack_iq4_nl(L, d), df * IQ4_VALUES[L].astype(np.float32)
    L, sc = rng.integers(0, 16, (n, 256)), rng.integers(0, 64, (n, 8))
    return layouts.pack_iq4_xs(L, sc, d), (df * rep(sc - 32, 32)) * IQ4_VALUES[L]


LEGACY = {
    "Q4_0": (16, 8, False),
    "Q5_0": (32, 16, False),
    "Q8_0": (256, 128, False),
    "Q4_1": (16, 0, True),
    "Q5_1": (32, 0, True),
}  # levels, offset, has a min


def _legacy_fields(rng, name, n, d, dm, df, dmf):
    """Legacy blocks built byte by byte from the layout table of cmf.ggml_encode.legacy."""
    levels, offset, has_min = LEGACY[name]
    L = rng.integers(0, levels, (n, 32))
    parts = [d.astype("<f2").view(np.uint8).reshape(n, 2)]
    if has_min:
        parts.append(dm.astype("<f2").view(np.uint8).reshape(n, 2))
    if levels == 32:
        qh = ((L >> 4) & 1).astype(np.uint64) << np.arange(32, dtype=np.uint64)
        parts.append(qh.sum(axis=1).astype("<u4").view(np.uint8).reshape(n, 4))
    if levels == 256:
        parts.append((L - 128).astype(np.int8).view(np.uint8))
    else:
        parts.append(((L[:, :16] & 15) | ((L[:, 16:] & 15) << 4)).astype(np.uint8))
    want = df * (L - offset) + (dmf if has_min else 0)
    return np.concatenate(parts, axis=1), want


@pytest.mark.parametrize("name", NAMES)
def test_layout_decodes_field_for_field(name):
    rng = np.random.default_rng(1)
    raw, want = _fields(rng, name, 20)
    assert raw.shape == (20, TYPES[name].nbytes)
    got = decode(raw.reshape(1, -1), name, want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", ["gaussian", "real-looking"])
def test_error_below_naive(name, kind):
    rng = np.random.default_rng(2)
    x = (
        rng.standard_normal((48, 1024)).astype(np.float32) * 0.05
        if kind == "gaussian"
        else real_looking(rng)
    )
    err = rel(decode(quantize_blocks(x, name), name, x.shape), x)
    naive = rel(decode(naive_blocks(x, name), name, x.shape), x)
    assert err < 0.99 * naive, (err, naive)
    assert err < BOUND[name] * (1.0 if kind == "real-looking" else 0.8)


@pytest.mark.parametrize("name", NAMES)
def test_importance_lowers_weighted_error(name):
    rng = np.random.default_rng(3)
    x = real_looking(rng)
    imp = np.exp(rng.normal(0, 1.5, x.shape[1])).astype(np.float32)  # activation power per column
    plain = rel(decode(quantize_blocks(x, name), name, x.shape), x, imp)
    weighted = rel(decode(quantize_blocks(x, name, imp), name, x.shape), x, imp)
    assert weighted < 0.97 * plain, (weighted, plain)
    per_element = np.broadcast_to(imp, x.shape)
    assert np.array_equal(quantize_blocks(x, name, per_element), quantize_blocks(x, name, imp))


@pytest.mark.parametrize("name", NAMES)
def test_dominant_importance_column(name):
    """A few columns with 1e7 times the others' importance (real: the massive activations that
    feed SmolLM2's down projections): those columns come out nearly exact, and the weighted
    error collapses rather than the fit running away (a run-away fit once made it 15x worse)."""
    rng = np.random.default_rng(7)
    x = real_looking(rng, 32, 1024)
    imp = np.full(1024, 0.02, np.float32)
    imp[[5, 300, 777]] = 2e5
    plain = rel(decode(quantize_blocks(x, name), name, x.shape), x, imp)
    weighted = rel(decode(quantize_blocks(x, name, imp), name, x.shape), x, imp)
    assert weighted < 0.3 * plain, (weighted, plain)


def _edge_rows():
    rng = np.random.default_rng(4)
    rows = [
        np.zeros(512),
        np.full(512, 0.37),
        np.full(512, -2.5),
        np.where(np.arange(512) == 100, 1e4, rng.normal(0, 0.01, 512)),  # one huge outlier
        np.where(np.arange(512) == 7, 3e38, 1.0),  # beyond float16 scales: saturates
        rng.normal(0, 1, 512) * 1e-41,  # float32 subnormals
        rng.normal(0, 1, 512) * 1e-30,
        np.where(np.arange(512) % 2 == 0, -1e-3, 0.0),
    ]
    return np.array(rows, dtype=np.float32)


@pytest.mark.parametrize("name", NAMES)
def test_edge_values_stay_finite(name):
    x = _edge_rows()
    y = decode(quantize_blocks(x, name), name, x.shape)
    assert np.isfinite(y).all()
    assert not y[0].any()  # all zero stays zero
    assert np.abs(y[1] - 0.37).max() < 0.37 * 0.05  # constant rows nearly exact
    assert np.abs(y[2] + 2.5).max() < 2.5 * 0.05
    assert np.abs(y[3, 100] - 1e4) < 1e4 * 0.05  # the outlier survives
    assert np.abs(y[5]).max() < 1e-30 and np.abs(y[6]).max() < 1e-25  # tiny stays tiny
    zero_imp = np.zeros(512, np.float32)
    assert np.isfinite(decode(quantize_blocks(x, name, zero_imp), name, x.shape)).all()


def test_deterministic_and_chunk_independent(monkeypatch):
    import cmf.ggml_encode as ge

    rng = np.random.default_rng(5)
    x = real_looking(rng, 8, 512)
    imp = rng.uniform(0, 2, 512).astype(np.float32)
    a = quantize_blocks(x, "Q4_K")
    assert np.array_equal(a, quantize_blocks(x.copy(), "q4_k"))
    assert np.array_equal(a[3:5], quantize_blocks(x[3:5], "Q4_K"))
    whole = {t: quantize_blocks(x, t, imp) for t in ("Q4_K", "IQ4_NL")}
    monkeypatch.setattr(ge, "CHUNK_ELEMENTS", 700)  # chunks end inside rows
    for t, b in whole.items():
        assert np.array_equal(b, quantize_blocks(x, t, imp))
        assert np.array_equal(b, quantize_blocks(x, t, np.broadcast_to(imp, x.shape)))


@pytest.mark.parametrize(
    "x, kwargs, match",
    [
        (np.zeros((2, 100), np.float32), {}, "multiple of 256"),
        (np.zeros((2, 0), np.float32), {}, "multiple"),
        (np.zeros(512, np.float32), {}, "matrix"),
        (np.zeros((2, 2, 256), np.float32), {}, "matrix"),
        (np.full((2, 256), np.nan, np.float32), {}, "NaN"),
        (np.full((2, 256), np.inf, np.float32), {}, "NaN"),
        (np.full((2, 256), 1e300), {}, "NaN"),  # overflows float32
        (np.zeros((2, 256), np.complex64), {}, "dtype"),
        (np.zeros((2, 256), np.float32), {"importance": np.ones(255)}, "importance"),
        (np.zeros((2, 256), np.float32), {"importance": np.ones((3, 256))}, "importance"),
        (np.zeros((2, 256), np.float32), {"importance": -np.ones(256)}, "importance"),
        (np.zeros((2, 256), np.float32), {"importance": np.full(256, np.nan)}, "importance"),
        (np.zeros((2, 256), np.float32), {"ggml_type": "Q7_K"}, "GGML type"),
    ],
)
def test_hostile_arguments(x, kwargs, match):
    kwargs = {"ggml_type": "Q4_K", **kwargs}
    with pytest.raises(CmfError, match=match):
        quantize_blocks(x, **kwargs)


def test_no_rows():
    x = np.zeros((0, 512), np.float32)
    assert quantize_blocks(x, "Q4_K").shape == (0, 288)
    assert quantize_blocks(x, "Q4_K", np.ones((0, 512))).shape == (0, 288)


def test_iq4_nl_row_of_32():
    x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32)
    y = decode(quantize_blocks(x, "IQ4_NL"), "IQ4_NL", x.shape)
    assert rel(y, x) < 0.1
    with pytest.raises(CmfError, match="multiple of 32"):
        quantize_blocks(np.zeros((1, 48), np.float32), "IQ4_NL")


def test_fallback_types_follow_llama_cpp():
    from cmf.ggml_encode import fallback_type

    assert fallback_type("Q6_K", 1536) == "Q6_K"
    assert [fallback_type(t, 576) for t in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS")] == [
        "Q4_0",
        "Q4_0",
        "Q5_0",
        "Q5_1",
        "Q8_0",
        "IQ4_NL",
    ]
    assert fallback_type("q4_k", 100) == "F16" and fallback_type("Q8_0", 48) == "F16"
    with pytest.raises(CmfError):
        fallback_type("Q7_K", 256)
