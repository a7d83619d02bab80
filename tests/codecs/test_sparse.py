"""sparse codec (spec/codecs/sparse.md): the page's example bytes, bit-exact round trips for
every dtype and layout, delta position coding, pruning (sparsity, N:M, structured) and its
recorded error, the automatic layout, configs, hostile parts and files."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cmf
import cmf.codecs.quantize  # noqa: F401  (registers the codec)
import cmf.codecs.sparse as sparse_mod
from cmf.cli import run as cli_run
from cmf.codecs import BytesSpec, codec_from_config
from cmf.codecs.raw import Raw
from cmf.codecs.sparse import (
    Sparse,
    delta_decode,
    delta_encode,
    delta_entries,
    max_entries,
)
from cmf.dtypes import BY_NAME
from cmf.errors import CmfError, FormatError
from cmf.metrics import error_stats
from cmf.pipeline import PendingLeaf, PendingNode, apply
from cmf.writer import Writer

from .helpers import bits, spec, spec_of

F32 = np.float32
DTYPES = sorted(BY_NAME)
FLOATS = [n for n, d in BY_NAME.items() if d.is_float]


def random_sparse(dtype: str, shape, density: float, seed: int = 0) -> np.ndarray:
    """Random bit patterns (NaN payloads, -0.0, ...) with about ``1 - density`` exact zeros."""
    dt = BY_NAME[dtype].numpy
    rng = np.random.default_rng(seed)
    n = math.prod(shape)
    if dt == np.bool_:
        x = rng.random(n) < density
    else:
        x = rng.integers(0, 256, n * dt.itemsize, dtype=np.uint8).view(dt).copy()
        x[rng.random(n) >= density] = np.zeros((), dt)
    return x.reshape(shape)


def fitted_round_trip(x: np.ndarray, options: dict):
    s = spec_of(x)
    codec, y = Sparse.fit(x, s, options)
    parts = codec.encode(y, s)
    specs = codec.resolve(s)
    assert set(parts) == set(specs)
    for name, ps in specs.items():
        if isinstance(ps, BytesSpec):
            assert len(parts[name]) == ps.length
        else:
            assert parts[name].dtype == ps.dtype.numpy and parts[name].shape == ps.shape
    return codec, y, codec.decode(parts, s)


# ----------------------------------------------------------------------------- the page's example

EXAMPLE = np.array([0, 1.5, 0, 0, -0.0, 0, 0, 0, 0, 2], F32)


def test_example_of_the_page():
    s = spec("f32", (10,))
    bm = Sparse(layout="bitmask", nnz=3)
    parts = bm.encode(EXAMPLE, s)
    assert parts["mask"] == bytes([0x12, 0x02])
    assert parts["values"].tobytes() == bytes.fromhex("0000c03f 00000080 00000040".replace(" ", ""))
    dl = Sparse(layout="delta", nnz=3, bits=2, entries=4)
    dparts = dl.encode(EXAMPLE, s)
    assert dparts["index"].dtype == np.uint8 and dparts["index"].tolist() == [1, 2, 3, 1]
    for codec, p in ((bm, parts), (dl, dparts)):
        assert bits(codec.decode(p, s)) == bits(EXAMPLE)
    assert dl.resolve(s) == {"values": spec("f32", (3,)), "index": spec("u8", (4,))}
    assert bm.resolve(s) == {"values": spec("f32", (3,)), "mask": BytesSpec(2)}


# ----------------------------------------------------------------------------- round trips


@st.composite
def cases(draw):
    dtype = draw(st.sampled_from(DTYPES))
    rank = draw(st.integers(0, 3))
    shape = tuple(draw(st.lists(st.integers(0, 7), min_size=rank, max_size=rank)))
    density = draw(st.sampled_from([0.0, 0.02, 0.3, 0.9, 1.0]))
    return random_sparse(dtype, shape, density, draw(st.integers(0, 2**32 - 1)))


@settings(max_examples=300, deadline=None)
@given(x=cases(), layout=st.sampled_from(["bitmask", "delta"]), width=st.integers(1, 16))
def test_round_trip_is_bit_exact(x, layout, width):
    s = spec_of(x)
    positions = np.flatnonzero(sparse_mod.bits_view(x))
    if layout == "bitmask":
        codec = Sparse(layout="bitmask", nnz=positions.size)
    else:
        entries = delta_entries(positions, width)
        codec = Sparse(layout="delta", nnz=positions.size, bits=width, entries=entries)
        assert entries <= max_entries(positions.size, x.size, width)
    parts = codec.encode(x, s)
    y = codec.decode(parts, s)
    assert y.dtype == x.dtype and y.shape == x.shape and bits(y) == bits(x)
    assert codec_from_config("sparse", codec.to_config()) == codec


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (1,), (5, 7), (2, 3, 64)])
@pytest.mark.parametrize("density", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("layout", ["auto", "bitmask", "delta"])
def test_fit_without_pruning_is_lossless(dtype, shape, density, layout):
    x = random_sparse(dtype, shape, density, seed=len(shape))
    codec, y, z = fitted_round_trip(x, {"layout": layout})
    assert bits(y) == bits(x) and codec.lossless
    assert bits(z) == bits(x) and z.dtype == x.dtype and z.shape == x.shape


def test_negative_zero_and_nan_payloads_are_values():
    x = np.zeros(40, F32)
    x[3] = -0.0
    x[7] = np.frombuffer(bytes.fromhex("0100c07f"), F32)[0]  # a NaN with a payload
    x[39] = np.inf
    codec, _, z = fitted_round_trip(x, {})
    assert codec.nnz == 3 and bits(z) == bits(x)
    zeros = np.zeros((4, 4), F32)
    codec, _, z = fitted_round_trip(zeros, {})
    assert codec.nnz == 0 and bits(z) == bits(zeros)


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(0, 3000),
    density=st.floats(0, 1),
    width=st.integers(1, 16),
    seed=st.integers(0, 2**32 - 1),
)
def test_delta_coding_round_trips_and_is_canonical(n, density, width, seed):
    rng = np.random.default_rng(seed)
    positions = np.flatnonzero(rng.random(n) < density * density)  # many long gaps
    codes = delta_encode(positions, width)
    m = (1 << width) - 1
    assert codes.size == delta_entries(positions, width) <= max_entries(positions.size, n, width)
    assert codes.dtype == (np.uint8 if width <= 8 else np.uint16)
    assert codes.size == 0 or (codes.max() <= m and codes[-1] != m)
    back = delta_decode("t", codes, positions.size, n, width)
    assert np.array_equal(back, positions)


def test_gaps_longer_than_a_code_use_fillers():
    positions = np.array([0, 600, 601, 70000])
    codes = delta_encode(positions, 8)
    assert codes.tolist() == [0, 255, 255, 89, 0] + [255] * 272 + [38]  # 69398 = 272 * 255 + 38
    assert np.array_equal(delta_decode("t", codes, 4, 70001, 8), positions)
    wide = delta_encode(positions, 16)
    assert wide.tolist() == [0, 599, 0, 65535, 3863]  # 69398 = 65535 + 3863


# ----------------------------------------------------------------------------- pruning


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.9, 0.999, 1.0])
def test_unstructured_pruning_hits_the_target(dtype, sparsity):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 48)).astype(BY_NAME[dtype].numpy)
    x.reshape(-1)[np.flatnonzero(x.reshape(-1) == 0)] = 1  # f8: no accidental zeros
    codec, y, z = fitted_round_trip(x, {"sparsity": sparsity})
    k = math.floor(sparsity * x.size + 0.5)
    assert int(np.count_nonzero(sparse_mod.bits_view(y) == 0)) == k
    assert codec.nnz == x.size - k and bits(z) == bits(y)
    kept = sparse_mod.bits_view(y) != 0
    xf = np.abs(x.astype(np.float64)).reshape(-1)
    if 0 < k < x.size:
        assert xf[kept].min() >= xf[~kept].max()  # magnitude pruning
    assert bits(y.reshape(-1)[kept]) == bits(x.reshape(-1)[kept])
    assert codec.lossless == (k == 0)


def test_ties_are_pruned_lowest_index_first():
    x = np.array([1, 2, 1, 1, 3, 1, 1, 1], F32)
    _, y, _ = fitted_round_trip(x, {"sparsity": 0.5})
    assert y.tolist() == [0, 2, 0, 0, 3, 0, 1, 1]
    _, y, _ = fitted_round_trip(x, {"pattern": "2:4"})
    assert y.tolist() == [0, 2, 0, 1, 3, 0, 0, 1]
    _, y, _ = fitted_round_trip(x.reshape(4, 2), {"structured": "rows", "sparsity": 0.25})
    assert y.reshape(-1).tolist() == [1, 2, 0, 0, 3, 1, 1, 1]  # norms 2.24 1.41 3.16 1.41


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:4", "3:4"])
def test_n_m_pattern_holds(pattern):
    n, m = map(int, pattern.split(":"))
    x = np.random.default_rng(2).standard_normal((16, 64)).astype(F32)
    _, y, z = fitted_round_trip(x, {"pattern": pattern})
    groups = y.reshape(-1, m)
    assert (np.count_nonzero(groups, axis=1) == n).all()
    xg = np.abs(x).reshape(-1, m)
    kept = groups != 0
    assert (np.where(kept, xg, np.inf).min(axis=1) >= np.where(kept, -np.inf, xg).max(axis=1)).all()
    assert bits(z) == bits(y)


def test_two_four_error_on_a_normal_matrix():
    x = np.random.default_rng(3).standard_normal((256, 256)).astype(F32)
    _, y, _ = fitted_round_trip(x, {"pattern": "2:4"})
    rel = error_stats(x, y)["rel_rmse"]
    assert 0.34 < rel < 0.38  # E[dropped energy] of the 2 smallest of 4 normals: ~0.13


@pytest.mark.parametrize("kind,axis", [("rows", 0), ("columns", 1)])
def test_structured_pruning_zeroes_whole_slices(kind, axis):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((20, 30, 3)).astype(F32) * rng.uniform(0.1, 2, (20, 30, 1)).astype(F32)
    _, y, z = fitted_round_trip(x, {"structured": kind, "sparsity": 0.3})
    slices = np.moveaxis(y, axis, 0).reshape(y.shape[axis], -1)
    dead = ~slices.any(axis=1)
    assert dead.sum() == math.floor(0.3 * x.shape[axis] + 0.5)
    rows = np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1).astype(np.float64)
    norms = np.linalg.norm(rows, axis=1)
    assert norms[dead].max() <= norms[~dead].min()
    live = np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)[~dead]
    assert np.array_equal(slices[~dead], live) and bits(z) == bits(y)


def test_pruning_error_is_the_norm_of_the_dropped_values():
    x = np.random.default_rng(5).standard_normal((128, 64)).astype(F32)
    _, y, z = fitted_round_trip(x, {"sparsity": 0.7})
    dropped = np.where(y == 0, x, 0).astype(np.float64)
    stats = error_stats(x, z)
    want = np.linalg.norm(dropped) / np.linalg.norm(x.astype(np.float64))
    assert stats["rel_rmse"] == pytest.approx(want, rel=1e-12)
    assert stats["max_abs"] == pytest.approx(np.abs(dropped).max())


@pytest.mark.parametrize(
    "options", [{"sparsity": 0.5}, {"pattern": "2:4"}, {"structured": "rows", "sparsity": 0.5}]
)
def test_pruning_refuses_what_it_cannot_prune(options):
    with pytest.raises(CmfError, match="float"):
        Sparse.fit(np.ones((4, 4), np.int32), spec("i32", (4, 4)), options)
    bad = np.ones((4, 4), F32)
    bad[1, 1] = np.nan
    with pytest.raises(CmfError, match="NaN"):
        Sparse.fit(bad, spec("f32", (4, 4)), options)


def test_shapes_pruning_cannot_use():
    with pytest.raises(CmfError, match="multiple of 4"):
        Sparse.fit(np.ones((4, 6), F32), spec("f32", (4, 6)), {"pattern": "2:4"})
    with pytest.raises(CmfError, match="multiple of 4"):
        Sparse.fit(np.ones((), F32), spec("f32", ()), {"pattern": "2:4"})
    with pytest.raises(CmfError, match="rank >= 2"):
        Sparse.fit(np.ones(6, F32), spec("f32", (6,)), {"structured": "rows", "sparsity": 0.5})


# ----------------------------------------------------------------------------- layout choice


def index_size(codec: Sparse, x: np.ndarray) -> int:
    from cmf.pipeline import best_bytes, encode_lossless

    s = spec_of(x)
    part = "mask" if codec.layout == "bitmask" else "index"
    value, ps = codec.encode(x, s)[part], codec.resolve(s)[part]
    return best_bytes(value, ps).stored if part == "mask" else encode_lossless(value, ps).stored


@pytest.mark.parametrize("sparsity,layout", [(0.5, "bitmask"), (0.99, "delta")])
def test_auto_keeps_the_smaller_layout(sparsity, layout):
    x = np.random.default_rng(6).standard_normal((256, 256)).astype(F32)
    auto, y = Sparse.fit(x, spec_of(x), {"sparsity": sparsity})
    assert auto.layout == layout
    sizes = {
        lay: index_size(Sparse.fit(x, spec_of(x), {"sparsity": sparsity, "layout": lay})[0], y)
        for lay in ("bitmask", "delta")
    }
    assert index_size(auto, y) == min(sizes.values())


def test_index_bits_choice():
    x = np.zeros(1 << 16, F32)
    x[[5, 40000, 65535]] = 1
    codec, _ = Sparse.fit(x, spec_of(x), {"layout": "delta"})
    assert codec.bits == 16 and codec.entries == 3  # 8 bits would need ~250 fillers
    codec, _ = Sparse.fit(x, spec_of(x), {"layout": "delta", "index_bits": 4})
    assert codec.bits == 4 and codec.entries == 3 + 39994 // 15 + 25534 // 15
    dense = np.ones(100, F32)
    assert Sparse.fit(dense, spec_of(dense), {"layout": "delta"})[0].bits == 8


# ----------------------------------------------------------------------------- configs


GOOD = [
    {"layout": "bitmask", "nnz": 3},
    {"layout": "delta", "nnz": 3, "bits": 2, "entries": 4},
]


@pytest.mark.parametrize("config", GOOD)
def test_config_round_trip(config):
    codec = codec_from_config("sparse", config)
    assert codec.to_config() == config and codec_from_config("sparse", codec.to_config()) == codec


@pytest.mark.parametrize(
    "config",
    [
        "bitmask",
        [],
        None,
        {"nnz": 3},
        {"layout": "csr", "nnz": 3},
        {"layout": 1, "nnz": 3},
        {"layout": "bitmask"},
        {"layout": "bitmask", "nnz": True},
        {"layout": "bitmask", "nnz": 3.0},
        {"layout": "bitmask", "nnz": -1},
        {"layout": "bitmask", "nnz": 2**63},
        {"layout": "bitmask", "nnz": "3"},
        {"layout": "bitmask", "nnz": 3, "bits": 8},
        {"layout": "bitmask", "nnz": 3, "extra": 0},
        {"layout": "delta", "nnz": 3, "bits": 2},
        {"layout": "delta", "nnz": 3, "entries": 4},
        {"layout": "delta", "nnz": 3, "bits": 0, "entries": 4},
        {"layout": "delta", "nnz": 3, "bits": 17, "entries": 4},
        {"layout": "delta", "nnz": 3, "bits": True, "entries": 4},
        {"layout": "delta", "nnz": 3, "bits": 2, "entries": False},
        {"layout": "delta", "nnz": 3, "bits": 2, "entries": -4},
        {"layout": "delta", "nnz": 3, "bits": 2, "entries": 4, "width": 2},
    ],
)
def test_bad_configs(config):
    with pytest.raises(FormatError, match="sparse"):
        codec_from_config("sparse", config)


def test_resolve_bounds_everything_before_allocating():
    huge = spec("f64", (1 << 40, 1 << 10))  # 8 PiB: resolve never touches data
    assert Sparse(layout="bitmask", nnz=7).resolve(huge)["mask"] == BytesSpec(1 << 47)
    with pytest.raises(FormatError, match="nnz 11 is more than the 10 elements"):
        Sparse(layout="bitmask", nnz=11).resolve(spec("f32", (10,)))
    with pytest.raises(FormatError, match="more than"):
        Sparse(layout="delta", nnz=2**62, bits=8, entries=2**62).resolve(spec("f32", (10,)))
    s = spec("f32", (10,))
    for nnz, width, entries in [(3, 2, 6), (3, 2, 2), (0, 2, 1), (10, 8, 11), (1, 1, 11)]:
        with pytest.raises(FormatError, match="'entries'"):
            Sparse(layout="delta", nnz=nnz, bits=width, entries=entries).resolve(s)
    Sparse(layout="delta", nnz=3, bits=2, entries=5).resolve(s)  # the largest possible
    Sparse(layout="delta", nnz=1, bits=1, entries=10).resolve(s)
    Sparse(layout="bitmask", nnz=0).resolve(spec("bool", ()))
    with pytest.raises(FormatError, match="array"):
        Sparse(layout="bitmask", nnz=0).resolve(BytesSpec(4))


@pytest.mark.parametrize(
    "options,match",
    [
        ([], "map"),
        ({"sparsity": 1.5}, "sparsity"),
        ({"sparsity": True}, "sparsity"),
        ({"sparsity": "0.5"}, "sparsity"),
        ({"sparsity": float("nan")}, "sparsity"),
        ({"pattern": "4:2"}, "N:M"),
        ({"pattern": "2-4"}, "N:M"),
        ({"pattern": 24}, "N:M"),
        ({"pattern": "0:4"}, "N:M"),
        ({"pattern": " 2:4"}, "N:M"),
        ({"pattern": "2:4", "sparsity": 0.5}, "excludes"),
        ({"structured": "rows"}, "needs a 'sparsity'"),
        ({"structured": "cols", "sparsity": 0.1}, "rows"),
        ({"layout": "csr"}, "layout"),
        ({"index_bits": 0}, "index_bits"),
        ({"index_bits": True}, "index_bits"),
        ({"ratio": 0.5}, "unknown"),
    ],
)
def test_bad_fit_options(options, match):
    with pytest.raises(CmfError, match=match):
        Sparse.check_fit(options)


# ----------------------------------------------------------------------------- hostile parts


def valid_parts(layout: str):
    x = random_sparse("f32", (6, 50), 0.2, seed=9)
    s = spec_of(x)
    codec, _ = Sparse.fit(x, s, {"layout": layout, "index_bits": 4})
    return codec, codec.encode(x, s), s


def test_hostile_mask():
    codec, parts, s = valid_parts("bitmask")
    mask = bytearray(parts["mask"])
    cases = {
        "bits set, nnz is": bytes(mask[:-1]) + bytes([mask[-1] ^ 1]),
        "padding bits": bytes(mask[:-1]) + bytes([mask[-1] | 0x80]) if s.numel % 8 else None,
        "holds 37 bytes": bytes(mask[:-1]),
        "must be bytes": np.frombuffer(bytes(mask), np.uint8),
    }
    for message, bad in cases.items():
        if bad is not None:
            with pytest.raises(FormatError, match=message):
                codec.decode(dict(parts, mask=bad), s)
    with pytest.raises(FormatError, match="mask"):
        codec.decode({"values": parts["values"]}, s)


def test_hostile_index():
    codec, parts, s = valid_parts("delta")
    idx = parts["index"]
    assert codec.bits == 4 and idx.dtype == np.uint8 and idx[-1] < 14
    cases = {
        "code 16 is out of range": np.concatenate([idx[:-1], [16]]),
        "ends with a filler": np.concatenate([idx, [15]]),
        f"holds {codec.nnz - 1} positions, {codec.nnz} expected": np.concatenate([idx[:-1], [15]]),
    }
    for message, bad in cases.items():
        bad = bad.astype(np.uint8)
        hostile = Sparse(layout="delta", nnz=codec.nnz, bits=4, entries=bad.size)
        with pytest.raises(FormatError, match=message):
            hostile.decode(dict(parts, index=bad), s)
    with pytest.raises(FormatError, match="part 'index'"):
        codec.decode(dict(parts, index=idx.astype(np.uint16)), s)
    with pytest.raises(FormatError, match="part 'index'"):
        codec.decode(dict(parts, index=idx[:-1]), s)
    with pytest.raises(FormatError, match="part 'index'"):
        codec.decode(dict(parts, index=idx.tobytes()), s)


def test_position_past_the_end():
    codec = Sparse(layout="delta", nnz=2, bits=8, entries=2)
    s = spec("f32", (10,))
    parts = {"values": np.ones(2, F32), "index": np.array([4, 5], np.uint8)}
    with pytest.raises(FormatError, match="position 10 is out of range for 10 elements"):
        codec.decode(parts, s)
    parts["index"] = np.array([4, 4], np.uint8)
    assert codec.decode(parts, s).tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 0, 1]


@pytest.mark.parametrize("layout", ["bitmask", "delta"])
def test_hostile_values(layout):
    codec, parts, s = valid_parts(layout)
    v = parts["values"]
    for bad in (v.astype(np.float64), v[:-1], v.reshape(1, -1), v.tobytes(), None):
        with pytest.raises(FormatError, match="part 'values'"):
            codec.decode(dict(parts, values=bad), s)


def test_encode_checks_the_config_against_the_data():
    x = EXAMPLE
    with pytest.raises(CmfError, match="3 non-zeros, the config says 2"):
        Sparse(layout="bitmask", nnz=2).encode(x, spec_of(x))
    with pytest.raises(CmfError, match="4 2-bit codes, the config says 5"):
        Sparse(layout="delta", nnz=3, bits=2, entries=5).encode(x, spec_of(x))
    with pytest.raises(CmfError, match="shape"):
        Sparse(layout="bitmask", nnz=3).encode(x[:5], spec_of(x))


# ----------------------------------------------------------------------------- files and recipes


QCONFIG = {
    "bits": 8,
    "block": 64,
    "axis": -1,
    "scheme": "symmetric",
    "scale_dtype": "f16",
    "search": True,
}


def test_recipe_prune_quantize_and_read_back(tmp_path, capsys):
    rng = np.random.default_rng(10)
    tensors = {
        "w": rng.standard_normal((64, 256)).astype(F32),
        "nm": rng.standard_normal((32, 64)).astype(F32),
        "mostly_zero": random_sparse("bf16", (40, 40), 0.05, seed=1),
        "ids": random_sparse("i64", (100,), 0.3, seed=2),
    }
    recipe = {
        "rules": [
            {
                "match": "w",
                "encoding": {
                    "codec": "sparse",
                    "fit": {"sparsity": 0.5},
                    "parts": {"values": {"codec": "quantize", "config": QCONFIG}},
                },
            },
            {
                "match": "nm",
                "encoding": {"codec": "sparse", "fit": {"pattern": "2:4", "layout": "delta"}},
            },
            {"match": "*", "encoding": {"codec": "sparse", "fit": {}}},
        ]
    }
    path = tmp_path / "s.cmf"
    cmf.save_file(tensors, path, recipe=recipe)
    loaded = cmf.load_file(path)
    with cmf.open(path) as f:
        entries = {t.name: t for t in f.index.tensors}
    assert all(e.encoding.codec.name == "sparse" for e in entries.values())
    for name in ("mostly_zero", "ids"):  # no pruning, lossless values: bit-exact, no error
        assert bits(loaded[name]) == bits(tensors[name]) and entries[name].error is None
    assert entries["nm"].encoding.codec.layout == "delta"
    nm = tensors["nm"]
    dropped = np.where(loaded["nm"] == 0, nm, 0)
    want = np.linalg.norm(dropped.astype(np.float64)) / np.linalg.norm(nm.astype(np.float64))
    assert entries["nm"].error["rel_rmse"] == pytest.approx(want, rel=1e-9)
    w = entries["w"]
    assert w.encoding.parts["values"].codec.name == "quantize"
    assert w.error["rel_rmse"] == pytest.approx(error_stats(tensors["w"], loaded["w"])["rel_rmse"])
    assert 0.25 < w.error["rel_rmse"] < 0.29  # pruning half a normal matrix (0.265) dominates
    assert np.count_nonzero(loaded["w"]) <= tensors["w"].size // 2
    assert cmf.validate(path).valid
    try:
        cli_run(["validate", str(path)])
    except SystemExit as exc:
        assert not exc.code, capsys.readouterr()
    assert ": valid; " in capsys.readouterr().out


def _stored(v, sp):
    if isinstance(sp, BytesSpec):
        return PendingLeaf(v, sp)
    return apply(Raw(), v, sp, _stored)


def test_hostile_file_is_refused_on_read(tmp_path):
    codec = Sparse(layout="delta", nnz=2, bits=8, entries=2)
    s = spec("f32", (10,))
    parts = {"values": np.ones(2, F32), "index": np.array([3, 200], np.uint8)}  # 204 >= 10
    specs = codec.resolve(s)
    tree = PendingNode(codec, {k: _stored(parts[k], specs[k]) for k in specs}, s)
    path = tmp_path / "bad.cmf"
    with Writer(path) as w:
        w.add_encoded("w", s, tree)
    with cmf.open(path) as f:
        with pytest.raises(FormatError, match="out of range"):
            f.get_tensor("w")
    report = cmf.validate(path)
    assert not report.valid and any("out of range" in e for e in report.errors)


def test_hostile_nnz_is_refused_while_parsing_the_index():
    """The reader resolves every node when it parses the index: a huge ``nnz`` or ``entries``
    is refused there, before any part is read or allocated."""
    from cmf.index import _TreeParser
    from cmf.limits import DEFAULT_LIMITS

    s = spec("f32", (10,))
    leaf = {"segment": 0}
    for config, message in [
        ({"layout": "bitmask", "nnz": 2**40}, "nnz 1099511627776 is more than the 10"),
        ({"layout": "delta", "nnz": 10, "bits": 8, "entries": 2**40}, "'entries'"),
    ]:
        node = {"codec": "sparse", "config": config, "parts": {"values": leaf, "mask": leaf}}
        with pytest.raises(FormatError, match=message):
            _TreeParser([], DEFAULT_LIMITS).parse(node, s, "tensor 'w'")
