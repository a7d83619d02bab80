"""Bit-exact round trips through save_file/load_file and the lazy reader (issue: container v1)."""

from __future__ import annotations

import os

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import cmf
from cmf.dtypes import BY_NAME

DTYPES = [d.numpy for d in BY_NAME.values()]
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal dtype, shape and bytes (NaN payloads included)."""
    a, b = np.asarray(a), np.asarray(b)
    return (
        (a.dtype.newbyteorder("<") == b.dtype.newbyteorder("<") or a.dtype == b.dtype)
        and a.shape == b.shape
        and np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes() == b.tobytes()
    )


def random_bits(dtype: np.dtype, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Every bit pattern of ``dtype`` (NaN payloads, infinities, subnormals); bools 0/1."""
    rng = np.random.default_rng(seed)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(bool)
    n = int(np.prod(shape)) * dtype.itemsize
    return rng.integers(0, 256, size=n, dtype=np.uint8).view(dtype).reshape(shape)


shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=9)


@SETTINGS
@given(dtype=st.sampled_from(DTYPES), shape=shapes, seed=st.integers(0, 2**32 - 1))
def test_every_dtype_and_shape_round_trips(tmp_path, dtype, shape, seed):
    array = random_bits(np.dtype(dtype), shape, seed)
    path = tmp_path / "t.cmf"
    cmf.save_file({"x": array}, path)
    back = cmf.load_file(path)["x"]
    assert same(array, back)
    assert back.flags.writeable and back.flags.c_contiguous


@SETTINGS
@given(
    arrays=st.lists(
        st.tuples(st.sampled_from(DTYPES), shapes, st.integers(0, 2**32 - 1)),
        min_size=1,
        max_size=6,
    )
)
def test_many_tensors_lazy_and_eager_agree(tmp_path, arrays):
    tensors = {f"t{i}": random_bits(np.dtype(d), s, seed) for i, (d, s, seed) in enumerate(arrays)}
    path = tmp_path / "m.cmf"
    cmf.save_file(tensors, path, metadata={"k": "v"})
    eager = cmf.load_file(path)
    with cmf.open(path) as f:
        assert f.keys() == list(tensors)
        assert f.metadata() == {"k": "v"}
        for name, array in tensors.items():
            assert same(array, eager[name])
            assert same(array, f.get_tensor(name))
    assert cmf.validate(path).valid


def test_nan_payloads_and_specials_survive(tmp_path):
    bits = np.array(
        [
            0x7FC00000,
            0x7FC00001,
            0xFFBFFFFF,
            0x7F800001,
            0x7F800000,
            0xFF800000,
            0x00000001,
            0x80000000,
        ],
        dtype=np.uint32,
    )
    f32 = np.tile(bits, 1000).view(np.float32)  # long enough that byteplanes wins
    f16 = np.array([0x7E01, 0xFC00, 0x7C00, 0x0001, 0x8000], dtype=np.uint16).view(np.float16)
    bf = np.array([0x7FC1, 0xFF81, 0x7F80], dtype=np.uint16).view(ml_dtypes.bfloat16)
    tensors = {"f32": f32, "f16": f16, "bf16": bf}
    cmf.save_file(tensors, tmp_path / "n.cmf")
    back = cmf.load_file(tmp_path / "n.cmf")
    for k, v in tensors.items():
        assert back[k].tobytes() == v.tobytes(), k


def test_non_contiguous_big_endian_and_shared_storage(tmp_path):
    base = np.arange(240, dtype=np.float32).reshape(12, 20)
    tensors = {
        "transposed": base.T,
        "strided": base[::3, 1::2],
        "view_a": base[:6],
        "view_b": base[6:],
        "big_endian": np.arange(10, dtype=">i4"),
        "fortran": np.asfortranarray(base),
    }
    cmf.save_file(tensors, tmp_path / "v.cmf")
    back = cmf.load_file(tmp_path / "v.cmf")
    for k, v in tensors.items():
        assert np.array_equal(back[k], v) and back[k].shape == v.shape, k
    assert back["big_endian"].dtype == np.dtype("<i4")


def test_tied_weights_are_stored_once(tmp_path):
    w = np.random.default_rng(0).standard_normal((256, 64)).astype(np.float32)
    cmf.save_file(
        {"embed": w, "lm_head": w.copy(), "other": w[:, :32].copy()}, tmp_path / "tied.cmf"
    )
    cmf.save_file({"embed": w}, tmp_path / "single.cmf")
    with cmf.open(tmp_path / "tied.cmf") as f:
        assert f.entry("lm_head").alias == "embed"
        assert f.entry("other").alias is None
        assert np.array_equal(f.get_tensor("lm_head"), w)
    extra = os.path.getsize(tmp_path / "tied.cmf") - os.path.getsize(tmp_path / "single.cmf")
    assert extra < w[:, :32].nbytes  # the copy cost nothing beyond 'other' and index entries


def test_lossless_chooses_byteplanes_for_floats_and_zstd_for_zeros(tmp_path):
    from cmf.pipeline import describe

    rng = np.random.default_rng(0)
    cmf.save_file(
        {"w": rng.standard_normal(50_000).astype(np.float32), "z": np.zeros(50_000, np.float32)},
        tmp_path / "c.cmf",
    )
    with cmf.open(tmp_path / "c.cmf") as f:
        assert describe(f.entry("w").encoding).startswith("byteplanes(")
        assert describe(f.entry("z").encoding).startswith(("raw>zstd", "byteplanes("))
        assert (
            f.index.segments[f.entry("w").encoding.parts["p3"].parts["data"].segment].length
            < 50_000
        )


def test_get_tensor_reads_only_its_segments(tmp_path):
    path = tmp_path / "g.cmf"
    cmf.save_file(
        {"good": np.arange(1000, dtype=np.int32), "bad": np.ones(1000, np.float64) * 3.25}, path
    )
    with cmf.open(path) as f:
        seg = f.index.segments[next(iter(_leaves(f.entry("bad").encoding)))]
    data = bytearray(path.read_bytes())
    data[seg.offset] ^= 0xFF
    path.write_bytes(bytes(data))
    with cmf.open(path) as f:
        assert np.array_equal(f.get_tensor("good"), np.arange(1000, dtype=np.int32))
        with pytest.raises(cmf.ChecksumError):
            f.get_tensor("bad")
    report = cmf.validate(path)
    assert not report.valid and any("CRC" in e for e in report.errors)


def _leaves(node):
    from cmf.index import iter_leaves

    return (leaf.segment for leaf in iter_leaves(node))


def test_writer_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "a.cmf"
    cmf.save_file({"x": np.ones(3, np.float32)}, path)
    before = path.read_bytes()
    with pytest.raises(cmf.CmfError, match="unsupported array dtype"):
        cmf.save_file({"y": np.ones(3, np.float32), "bad": np.ones(3, np.complex64)}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["a.cmf"]
    assert (os.stat(path).st_mode & 0o777) != 0o600


def test_writer_state_machine(tmp_path):
    w = cmf.Writer(tmp_path / "s.cmf")
    w.add_tensor("a", np.zeros(2, np.int8))
    with pytest.raises(cmf.CmfError, match="duplicate tensor name"):
        w.add_tensor("a", np.zeros(2, np.int8))
    w.close()
    with pytest.raises(cmf.CmfError, match="writer is closed"):
        w.add_tensor("b", np.zeros(2, np.int8))


def test_attachments_and_metadata_round_trip(tmp_path):
    meta = {
        "s": "x",
        "i": -5,
        "big": 2**63,
        "f": 1.5,
        "b": True,
        "n": None,
        "l": [1, "a"],
        "m": {"k": [1.0]},
    }
    cmf.save_file(
        {"x": np.zeros(1, np.uint8)},
        tmp_path / "a.cmf",
        meta,
        attachments={"config.json": b"{}", "sub/tok.txt": b"a\nb"},
    )
    with cmf.open(tmp_path / "a.cmf") as f:
        assert f.metadata() == meta
        assert f.attachments() == ["config.json", "sub/tok.txt"]
        assert f.get_attachment("sub/tok.txt") == b"a\nb"
        with pytest.raises(cmf.CmfError, match="no attachment named"):
            f.get_attachment("nope")
        with pytest.raises(cmf.CmfError, match="no tensor named"):
            f.get_tensor("nope")
