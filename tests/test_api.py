"""cmf.save_file / cmf.load_file / cmf.open: bit-exact round trips of every dtype and layout.

Every comparison is of dtype, shape and bytes (so NaN payloads, -0.0 and subnormals count).
"""

from __future__ import annotations

import math
import os

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import cmf
from cmf.dtypes import BY_NAME
from cmf.pipeline import describe

ALL = list(BY_NAME)  # every dtype of spec/format.md §4
FLOATS = [n for n, d in BY_NAME.items() if d.is_float]
STANDARD = [n for n in ALL if not n.startswith(("bf16", "f8"))]  # numpy has big-endian kinds
SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
LAYOUTS = ["c", "transposed", "strided", "reversed", "fortran", "big_endian"]


def save_and_load(path, tensors, **kw):
    """Save, then read back eagerly and lazily; both results must agree."""
    cmf.save_file(tensors, path, **kw)
    eager = cmf.load_file(path)
    with cmf.open(path) as f:
        lazy = {name: f.get_tensor(name) for name in f.keys()}
    assert list(eager) == list(lazy) == list(tensors)
    return eager, lazy


@st.composite
def arrays(draw, dtypes=tuple(ALL), max_dims=4, max_side=7):
    """An array of a cmf dtype, in any memory layout numpy allows. Its values are either any
    bytes (incompressible: raw), a few drawn bit patterns repeated (zstd), or smooth random
    values with drawn bit patterns (NaN payloads...) planted among them (byte planes), so every
    encoding the writer can choose is exercised."""
    name = draw(st.sampled_from(dtypes))
    dt = BY_NAME[name].numpy
    k = dt.itemsize
    content = draw(st.sampled_from(["bytes", "palette", "smooth"]))
    side = max_side if content == "bytes" else 6 * max_side
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=max_dims, min_side=0, max_side=side))
    if math.prod(shape) > 40_000:
        shape = shape[-2:]
    layout = draw(st.sampled_from(LAYOUTS))
    big = tuple(2 * d for d in shape) if layout == "strided" else shape
    n = math.prod(big)
    if content != "bytes":
        words = draw(st.lists(st.binary(min_size=k, max_size=k), min_size=1, max_size=4))
        if name == "bool":
            words = [bytes([w[0] & 1]) for w in words]
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        table = np.frombuffer(b"".join(words), dtype=np.uint8).reshape(-1, k)
        base = table[rng.integers(0, len(words), n)].reshape(-1).view(dt)
        if content == "smooth" and n:
            if BY_NAME[name].is_float:
                smooth = rng.standard_normal(n).astype(dt)
            else:
                smooth = rng.integers(0, 100, n).astype(dt)
            keep = rng.random(n) < 0.02  # planted patterns
            base = np.where(keep, base, smooth)
    elif name == "bool":  # one drawn byte per value (a list of n booleans is refused for big n)
        raw = draw(st.binary(min_size=n, max_size=n))
        base = (np.frombuffer(raw, dtype=np.uint8) & 1).astype(bool)
    else:
        raw = draw(st.binary(min_size=n * k, max_size=n * k))
        base = np.frombuffer(raw, dtype=np.uint8).view(dt).copy()
    base = base.reshape(big)
    if layout == "transposed":
        base = base.T
    elif layout == "strided" and shape:
        base = base[tuple(slice(1, None, 2) if d else slice(None) for d in shape)]
    elif layout == "reversed" and base.ndim:
        base = base[::-1]
    elif layout == "fortran":
        base = np.asfortranarray(base)
    elif layout == "big_endian" and name in STANDARD and dt.itemsize > 1:
        base = base.astype(dt.newbyteorder(">"))  # same values, swapped storage
    return base


@SETTINGS
@given(array=arrays())
def test_any_array_round_trips_bit_exact(tmp_path, assert_same, array):
    eager, lazy = save_and_load(tmp_path / "a.cmf", {"x": array})
    with cmf.open(tmp_path / "a.cmf") as f:  # --hypothesis-show-statistics shows the mix
        event(describe(f.entry("x").encoding).split("(")[0].replace("zstd-lit", "zstd"))
    assert_same(array, eager["x"])
    assert_same(array, lazy["x"])
    assert eager["x"].flags.c_contiguous and eager["x"].flags.writeable


@SETTINGS
@given(items=st.lists(arrays(max_dims=3, max_side=5), min_size=1, max_size=6))
def test_many_tensors_keep_order_and_bytes(tmp_path, assert_same, items):
    tensors = {f"layer.{i}.weight": a for i, a in enumerate(items)}
    eager, lazy = save_and_load(tmp_path / "m.cmf", tensors)
    for name, array in tensors.items():
        assert_same(array, eager[name])
        assert_same(array, lazy[name])


@SETTINGS
@given(
    base=arrays(max_dims=2, max_side=12),
    cuts=st.lists(
        st.tuples(st.integers(-12, 12), st.integers(-12, 12), st.sampled_from([1, 2, 3, -1, -2])),
        min_size=1,
        max_size=6,
    ),
    data=st.data(),
)
def test_views_of_one_base_and_aliases(tmp_path, assert_same, base, cuts, data):
    """Tensors that share storage (slices of one base, the same view twice, the base itself):
    each round-trips, and a tensor equal in dtype, shape and bytes to an earlier one is an alias."""
    flat = base.reshape(-1) if base.ndim != 1 else base
    views = [flat[a:b:c] for a, b, c in cuts]
    views += [data.draw(st.sampled_from(views)), base]  # a repeated view and the base
    tensors = {f"v{i}": v for i, v in enumerate(views)}
    path = tmp_path / "v.cmf"
    eager, lazy = save_and_load(path, tensors)
    first: dict[tuple, str] = {}
    with cmf.open(path) as f:
        for name, v in tensors.items():
            assert_same(v, eager[name])
            assert_same(v, lazy[name])
            key = (eager[name].dtype, v.shape, eager[name].tobytes())
            assert f.entry(name).alias == first.get(key), name
            first.setdefault(key, name)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (1,), (5, 3), (2, 3, 4, 5)])
def test_every_dtype_rank0_empty_and_nd(tmp_path, assert_same, random_bits, name, shape):
    array = random_bits(name, shape, seed=len(shape))
    eager, lazy = save_and_load(tmp_path / "t.cmf", {"t": array})
    assert_same(array, eager["t"])
    assert_same(array, lazy["t"])
    assert eager["t"].dtype == BY_NAME[name].numpy


@pytest.mark.parametrize("name", [n for n in ALL if BY_NAME[n].itemsize <= 2 and n != "bool"])
def test_every_bit_pattern_of_small_dtypes(tmp_path, name):
    """All 2^8 or 2^16 patterns: every NaN payload, both infinities, -0, subnormals."""
    k = BY_NAME[name].itemsize
    pattern = np.arange(1 << (8 * k), dtype=np.uint8 if k == 1 else np.uint16)
    array = pattern.view(BY_NAME[name].numpy)
    eager, lazy = save_and_load(tmp_path / "b.cmf", {"all": array, "rev": array[::-1]})
    for back in (eager, lazy):
        assert np.array_equal(back["all"].view(pattern.dtype), pattern)
        assert np.array_equal(back["rev"].view(pattern.dtype), pattern[::-1])


def _nan_patterns(bits: int, mant: int) -> list[int]:
    exp_all = ((1 << (bits - 1 - mant)) - 1) << mant
    sign = 1 << (bits - 1)
    quiet = 1 << (mant - 1)
    payloads = [
        1,
        2,
        quiet,
        quiet | 1,
        (1 << mant) - 1,
        quiet - 1,
        0x5A5A5A5A5A5A5 & ((1 << mant) - 1) or 3,
    ]
    return [s | exp_all | p for s in (0, sign) for p in payloads]


@pytest.mark.parametrize(
    "name,bits,mant,uint", [("f32", 32, 23, np.uint32), ("f64", 64, 52, np.uint64)]
)
@pytest.mark.parametrize("n", [32, 20_000])  # short: raw; long: byteplanes with rotation
def test_distinct_nan_payloads_survive(tmp_path, name, bits, mant, uint, n):
    pats = np.array(_nan_patterns(bits, mant), dtype=uint)
    assert len(set(pats.tolist())) == len(pats)  # all distinct
    specials = np.array([0, 1 << (bits - 1), ((1 << (bits - 1 - mant)) - 1) << mant], dtype=uint)
    rng = np.random.default_rng(5)
    normal = rng.standard_normal(n).astype(BY_NAME[name].numpy).view(uint)
    normal[: len(pats)] = pats
    normal[len(pats) : len(pats) + 3] = specials
    array = normal.view(BY_NAME[name].numpy)
    eager, lazy = save_and_load(
        tmp_path / "n.cmf", {"x": array, "be": array.astype(array.dtype.newbyteorder(">"))}
    )
    for back in (eager, lazy):
        assert back["x"].view(uint).tobytes() == normal.tobytes()
        assert back["be"].view(uint).tobytes() == normal.tobytes()
        assert back["be"].dtype == BY_NAME[name].numpy


def test_non_contiguous_inputs(tmp_path, assert_same):
    base = np.random.default_rng(0).standard_normal((30, 40)).astype(np.float32)
    cube = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    tensors = {
        "T": base.T,
        "every_3rd_row": base[::3],
        "column": base[:, 7],
        "block": base[5:17:2, 3:31:4],
        "negative": base[::-1, ::-2],
        "cube_perm": cube.transpose(2, 0, 1),
        "broadcast": np.broadcast_to(np.arange(6, dtype=np.uint32), (4, 6)),
        "fortran": np.asfortranarray(cube),
    }
    for name, a in tensors.items():
        if name != "fortran":
            assert not a.flags.c_contiguous, name
    eager, lazy = save_and_load(tmp_path / "nc.cmf", tensors)
    for name, a in tensors.items():
        assert_same(a, eager[name])
        assert_same(a, lazy[name])


@pytest.mark.parametrize("name", [n for n in STANDARD if BY_NAME[n].itemsize > 1])
def test_big_endian_inputs_are_stored_little_endian(tmp_path, assert_same, random_bits, name):
    le = random_bits(name, (6, 5), seed=9)
    be = le.astype(le.dtype.newbyteorder(">"))
    assert be.dtype.byteorder == ">"
    path = tmp_path / "be.cmf"
    eager, _ = save_and_load(path, {"le": le, "be": be})
    assert_same(le, eager["be"])
    with cmf.open(path) as f:  # same values, same spec: the second one is an alias
        assert f.entry("be").alias == "le"


def test_tensors_sharing_storage(tmp_path, assert_same):
    base = np.random.default_rng(3).standard_normal(4096).astype(np.float32)
    tensors = {
        "base": base,
        "first_half": base[:2048],
        "second_half": base[2048:],
        "as_matrix": base.reshape(64, 64),
        "as_matrix_T": base.reshape(64, 64).T,
        "overlap": base[1000:3000],
    }
    eager, lazy = save_and_load(tmp_path / "s.cmf", tensors)
    for name, a in tensors.items():
        assert_same(a, eager[name])
        assert_same(a, lazy[name])
    # results are independent arrays, not views of each other or of the file
    eager["first_half"][:] = 0
    assert eager["base"][:2048].any()
    lazy["base"][:] = 0
    assert np.array_equal(cmf.load_file(tmp_path / "s.cmf")["base"], base)


def test_tied_weights_are_stored_once(tmp_path, assert_same):
    rng = np.random.default_rng(4)
    w = rng.standard_normal((256, 128)).astype(np.float32)  # 128 KiB, incompressible mantissas
    path, single = tmp_path / "tied.cmf", tmp_path / "single.cmf"
    eager, lazy = save_and_load(path, {"embed": w, "lm_head": w, "copy": w.copy(), "other": -w})
    cmf.save_file({"embed": w, "other": -w}, single)
    with cmf.open(path) as f:
        assert f.entry("lm_head").alias == "embed"
        assert f.entry("copy").alias == "embed"
        assert f.entry("other").alias is None and f.entry("embed").alias is None
    # the two aliases cost index entries only
    assert os.path.getsize(path) - os.path.getsize(single) < 1024
    for name in ("embed", "lm_head", "copy"):
        assert_same(w, eager[name])
        assert_same(w, lazy[name])
    eager["lm_head"][0, 0] = 7.0  # tied on disk, independent in memory
    assert eager["embed"][0, 0] == w[0, 0]


def test_same_bytes_other_dtype_or_shape_is_not_an_alias(tmp_path, assert_same):
    a = np.arange(12, dtype=np.int32)
    tensors = {"a": a, "u": a.view(np.uint32), "f": a.view(np.float32), "r": a.reshape(3, 4)}
    eager, _ = save_and_load(tmp_path / "na.cmf", tensors)
    with cmf.open(tmp_path / "na.cmf") as f:
        assert all(f.entry(n).alias is None for n in tensors)
    for name, t in tensors.items():
        assert_same(t, eager[name])


def test_python_scalars_and_lists_are_arrays(tmp_path):
    eager, _ = save_and_load(tmp_path / "p.cmf", {"s": np.float32(1.5), "l": [[1, 2], [3, 4]]})
    assert eager["s"].shape == () and eager["s"].dtype == np.float32 and eager["s"] == 1.5
    assert eager["l"].tolist() == [[1, 2], [3, 4]]


def test_ml_dtypes_values_round_trip(tmp_path, assert_same):
    x = np.linspace(-3, 3, 97, dtype=np.float32)
    tensors = {
        "bf16": x.astype(ml_dtypes.bfloat16),
        "e4m3": x.astype(ml_dtypes.float8_e4m3fn),
        "e5m2": x.astype(ml_dtypes.float8_e5m2),
    }
    eager, lazy = save_and_load(tmp_path / "ml.cmf", tensors)
    for name, t in tensors.items():
        assert_same(t, eager[name])
        assert_same(t, lazy[name])
        assert eager[name].dtype == t.dtype


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def _nesting(value) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_nesting, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_nesting, value), default=0)
    return 1


@SETTINGS
@given(metadata=st.dictionaries(st.text(max_size=10), json_values, max_size=6))
def test_metadata_json_like_values_round_trip(tmp_path, metadata):
    path = tmp_path / "md.cmf"
    if _nesting(metadata) > 8:  # spec §3.4: nested at most 8 deep
        with pytest.raises(cmf.LimitError):
            cmf.save_file({"x": np.zeros(1, np.uint8)}, path, metadata)
        return
    cmf.save_file({"x": np.zeros(1, np.uint8)}, path, metadata)
    with cmf.open(path) as f:
        assert f.metadata() == metadata
    report = cmf.validate(path)
    assert report.valid, report.errors


@pytest.mark.parametrize(
    "metadata",
    [
        {1: "int key"},
        {"nested": {2: "x"}},
        {"b": b"bytes"},
        {"big": 2**64},
        {"small": -(2**63) - 1},
        {"np": np.float32(1.0)},
        {"obj": object()},
        {"set": {1, 2}},
        {"surrogate": "\ud800"},
        {"\udfff": 1},
        {"deep": [[[[[[[[[[1]]]]]]]]]]},
    ],
    ids=lambda m: repr(m)[:30],
)
def test_bad_metadata_is_rejected_before_writing(tmp_path, metadata):
    path = tmp_path / "bad.cmf"
    with pytest.raises(cmf.CmfError):
        cmf.save_file({"x": np.zeros(1)}, path, metadata)
    assert os.listdir(tmp_path) == []


def test_attachments_round_trip(tmp_path):
    blobs = {
        "config.json": b'{"a": 1}',
        "tokenizer/vocab.txt": "héllo\nwörld\n".encode(),
        "empty.bin": b"",
        "zeros.bin": bytes(100_000),
        "random.bin": np.random.default_rng(0).bytes(5000),
    }
    path = tmp_path / "att.cmf"
    cmf.save_file({"x": np.ones(2, np.float32)}, path, attachments=blobs)
    with cmf.open(path) as f:
        assert f.attachments() == list(blobs)
        for name, data in blobs.items():
            got = f.get_attachment(name)
            assert isinstance(got, bytes) and got == data
    assert os.path.getsize(path) < 20_000  # zeros.bin was compressed
    assert cmf.validate(path).valid


@pytest.mark.parametrize(
    "name", ["/abs", "../up", "a/../b", "a//b", "./a", "C:x", "a\\b", "", "nul\x00"]
)
def test_unsafe_attachment_names_are_rejected(tmp_path, name):
    with pytest.raises(cmf.CmfError):
        cmf.save_file({"x": np.ones(1)}, tmp_path / "a.cmf", attachments={name: b"x"})
    assert os.listdir(tmp_path) == []


def test_open_is_a_context_manager_that_closes(cmf_file, mixed_tensors):
    with cmf.open(cmf_file) as f:
        assert isinstance(f, cmf.CmfFile)
        kept = f.get_tensor("w")
        assert "w" in f and len(f) == len(mixed_tensors)
    with pytest.raises(cmf.CmfError, match="closed"):
        f.get_tensor("w")
    with pytest.raises(cmf.CmfError, match="closed"):
        f.get_attachment("config.json")
    assert np.array_equal(kept, mixed_tensors["w"])  # arrays handed out outlive the file


def test_keys_and_metadata_are_lazy(cmf_file, mixed_tensors, monkeypatch):
    """keys(), metadata(), attachments() read no segment at all."""
    calls = []
    real = cmf.CmfFile.segment
    monkeypatch.setattr(cmf.CmfFile, "segment", lambda self, i: calls.append(i) or real(self, i))
    with cmf.open(cmf_file) as f:
        assert f.keys() == list(mixed_tensors)
        assert list(f) == list(mixed_tensors)
        assert f.metadata() == {"source": "test", "n": 3}
        assert f.attachments() == ["config.json", "tok/vocab.txt"]
        assert f.spec("w").shape == (64, 48) and f.spec("b").dtype.name == "bf16"
        assert calls == []
        f.get_tensor("ids")
        assert calls and len(set(calls)) == len(calls)


def test_load_file_threads_and_serial_agree(cmf_file, mixed_tensors, assert_same):
    serial = cmf.load_file(cmf_file, workers=1)
    threaded = cmf.load_file(cmf_file, workers=4)
    assert list(serial) == list(threaded) == list(mixed_tensors)
    for name, a in mixed_tensors.items():
        assert_same(a, serial[name])
        assert_same(a, threaded[name])


def test_save_file_accepts_pathlike_and_str(tmp_path):
    cmf.save_file({"x": np.ones(1)}, str(tmp_path / "s.cmf"))
    cmf.save_file({"x": np.ones(1)}, tmp_path / "p.cmf")
    assert (tmp_path / "s.cmf").read_bytes() == (tmp_path / "p.cmf").read_bytes()


def test_save_file_is_deterministic(tmp_path, mixed_tensors):
    cmf.save_file(mixed_tensors, tmp_path / "1.cmf", {"k": "v"})
    cmf.save_file(mixed_tensors, tmp_path / "2.cmf", {"k": "v"})
    assert (tmp_path / "1.cmf").read_bytes() == (tmp_path / "2.cmf").read_bytes()


@pytest.mark.parametrize(
    "bad", [np.ones(3, np.complex64), np.array([object()]), np.array(["s"]), np.zeros(2, "M8[s]")]
)
def test_unsupported_dtypes_raise_cmf_error(tmp_path, bad):
    with pytest.raises(cmf.CmfError, match="unsupported array dtype"):
        cmf.save_file({"bad": bad}, tmp_path / "u.cmf")
    assert os.listdir(tmp_path) == []


def test_errors_are_cmf_errors_and_value_errors():
    for cls in (cmf.FormatError, cmf.ChecksumError, cmf.LimitError, cmf.UnsupportedError):
        assert issubclass(cls, cmf.CmfError) and issubclass(cls, ValueError)
    assert issubclass(cmf.ChecksumError, cmf.FormatError)
