"""cmf.pipeline: choose-the-smallest lossless encoding, bottom-up decoding, describe()."""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np
import pytest

import cmf
from cmf import dtypes
from cmf.codecs import ArraySpec, BytesSpec, Codec
from cmf.codecs.raw import Raw
from cmf.codecs.zstd import Zstd
from cmf.errors import FormatError, LimitError
from cmf.index import CodecNode, Leaf
from cmf.limits import Limits
from cmf.pipeline import (
    PendingLeaf,
    PendingNode,
    apply,
    best_bytes,
    decode,
    decode_pending,
    describe,
    encode_lossless,
)


def spec_of(array: np.ndarray) -> ArraySpec:
    return ArraySpec(dtypes.of_array(array), array.shape)


def lossless(array: np.ndarray):
    return encode_lossless(np.ascontiguousarray(array), spec_of(array))


def stored_size(pending) -> int:
    return pending.stored


RNG = np.random.default_rng(0)
CASES = {
    "random_f32": RNG.standard_normal(50_000).astype(np.float32),
    "random_bf16": RNG.standard_normal(50_000).astype(ml_dtypes.bfloat16),
    "random_f64": RNG.standard_normal(20_000),
    "zeros_f32": np.zeros(50_000, np.float32),
    "ints": RNG.integers(-3, 3, 30_000).astype(np.int64),
    "bytes_u8": RNG.integers(0, 256, 10_000, dtype=np.uint8),
    "bool": RNG.integers(0, 2, 10_000).astype(bool),
    "tiny": np.array([1.5], np.float32),
    "empty": np.zeros((0, 4), np.float32),
    "scalar": np.array(7, np.int16),
}


@pytest.mark.parametrize("name", list(CASES))
def test_lossless_encoding_decodes_to_the_input(name):
    array = CASES[name]
    pending = lossless(array)
    back = decode_pending(pending)
    assert back.dtype == array.dtype and back.shape == array.shape
    assert back.tobytes() == array.tobytes()


@pytest.mark.parametrize("name", list(CASES))
def test_lossless_is_never_larger_than_raw(name):
    array = CASES[name]
    assert lossless(array).stored <= array.nbytes


def test_random_floats_choose_byteplanes():
    for name in ("random_f32", "random_bf16", "random_f64"):
        pending = lossless(CASES[name])
        text = describe(pending)
        assert text.startswith("byteplanes("), (name, text)
        assert pending.codec.rotate is True
        k = CASES[name].dtype.itemsize
        top = pending.parts[f"p{k - 1}"]  # exponent plane: compressed
        assert describe(top) != "seg" and top.stored < top.spec.length / 2
        assert pending.stored < CASES[name].nbytes * 0.95


def test_zeros_choose_raw_then_zstd():
    pending = lossless(CASES["zeros_f32"])
    assert describe(pending) in ("raw>zstd", "raw>zstd-lit")
    assert pending.stored < 100


def test_integers_never_rotate():
    pending = lossless(RNG.integers(-(2**40), 2**40, 20_000))
    if describe(pending).startswith("byteplanes"):
        assert pending.codec.rotate is False


def test_one_byte_dtypes_are_raw():
    for name in ("bytes_u8", "bool"):
        assert describe(lossless(CASES[name])).startswith("raw")
    f8 = RNG.standard_normal(10_000).astype(ml_dtypes.float8_e4m3fn)
    assert describe(lossless(f8)).startswith("raw")


def test_chosen_is_the_smallest_candidate():
    """Never worse than any candidate of spec/format.md §7, built by hand."""
    from cmf.codecs.byteplanes import BytePlanes

    leaf_choices = [
        lambda v, s: PendingLeaf(v, s),
        lambda v, s: apply(Zstd(level=3), v, s, lambda v2, s2: PendingLeaf(v2, s2)),
        lambda v, s: apply(
            Zstd(level=1, literals_only=True), v, s, lambda v2, s2: PendingLeaf(v2, s2)
        ),
    ]

    def best_leaf(v, s):
        return min((c(v, s) for c in leaf_choices), key=stored_size)

    for name in ("random_f32", "zeros_f32", "ints"):
        array = CASES[name]
        spec = spec_of(array)
        candidates = [apply(Raw(), array, spec, best_leaf)]
        candidates.append(apply(BytePlanes(rotate=spec.dtype.is_float), array, spec, best_leaf))
        assert lossless(array).stored <= min(c.stored for c in candidates), name


def test_best_bytes():
    spec = BytesSpec(100_000)
    assert describe(best_bytes(bytes(100_000), spec)).startswith("zstd")
    noise = np.random.default_rng(1).bytes(5000)
    assert isinstance(best_bytes(noise, BytesSpec(5000)), PendingLeaf)
    assert isinstance(best_bytes(b"", BytesSpec(0)), PendingLeaf)


def test_describe_strings():
    spec = ArraySpec(dtypes.by_name("f32"), (3,))
    node = apply(Raw(), np.zeros(3, np.float32), spec, lambda v, s: PendingLeaf(v, s))
    assert describe(node) == "raw"
    z = apply(
        Raw(),
        np.zeros(3, np.float32),
        spec,
        lambda v, s: apply(Zstd(literals_only=True, level=1), v, s, lambda a, b: PendingLeaf(a, b)),
    )
    assert describe(z) == "raw>zstd-lit"
    assert describe(PendingLeaf(b"", BytesSpec(0))) == "seg"


# -- decode ---------------------------------------------------------------------------------


def segments_of(pending):
    """Flatten a pending tree into (index tree, segment list) as the writer would."""
    segs: list[bytes] = []

    def walk(p):
        if isinstance(p, PendingLeaf):
            segs.append(bytes(memoryview(p.data).cast("B")))
            return Leaf(len(segs) - 1, p.spec)
        return CodecNode(p.codec, {n: walk(c) for n, c in p.parts.items()}, p.spec)

    return walk(pending), segs


@pytest.mark.parametrize("name", ["random_f32", "zeros_f32", "ints", "scalar"])
def test_decode_walks_the_tree(name):
    array = CASES[name]
    node, segs = segments_of(lossless(array))
    fetched = []
    back = decode(node, lambda i: fetched.append(i) or segs[i], Limits())
    assert back.tobytes() == array.tobytes() and back.shape == array.shape
    assert sorted(fetched) == list(range(len(segs)))


def test_decode_refuses_over_budget_before_fetching():
    node, segs = segments_of(lossless(CASES["random_f32"]))
    fetched = []
    with pytest.raises(LimitError, match="memory budget"):
        decode(node, lambda i: fetched.append(i) or segs[i], Limits(max_tensor_bytes=1000))
    assert fetched == []


@dataclass(frozen=True, kw_only=True)
class Liar(Codec):
    """A codec (not registered) that decodes to the wrong shape."""

    name = "liar"

    def to_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls()

    def resolve(self, spec):
        return {"data": BytesSpec(None)}

    def encode(self, value, spec):
        return {"data": b""}

    def decode(self, parts, spec):
        return np.zeros(1, np.float32)


def test_decode_checks_codec_output_against_spec():
    spec = ArraySpec(dtypes.by_name("f32"), (2, 2))
    node = CodecNode(Liar(), {"data": Leaf(0, BytesSpec(None))}, spec)
    with pytest.raises(FormatError, match="did not produce f32\\[2, 2\\]"):
        decode(node, lambda i: b"", Limits())


def test_pending_sizes_add_up():
    array = CASES["random_f32"]
    pending = lossless(array)
    assert isinstance(pending, PendingNode)
    assert pending.stored == sum(p.stored for p in pending.parts.values())


def test_written_file_matches_pending_choice(tmp_path):
    """The writer stores exactly what encode_lossless chose (same tree, same sizes)."""
    path = tmp_path / "p.cmf"
    cmf.save_file({k: CASES[k] for k in ("random_f32", "zeros_f32", "ints")}, path)
    with cmf.open(path) as f:
        for name in ("random_f32", "zeros_f32", "ints"):
            pending = lossless(CASES[name])
            entry = f.entry(name)
            assert describe(entry.encoding) == describe(pending)
            from cmf.index import iter_leaves

            stored = sum(
                f.index.segments[leaf.segment].length for leaf in iter_leaves(entry.encoding)
            )
            assert stored == pending.stored


def test_leaf_bytes_views_contiguous_data_and_copies_only_strided():
    from cmf.pipeline import leaf_bytes

    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    view = leaf_bytes(a)
    assert view.format == "B" and bytes(view) == a.tobytes()
    a[0, 0] = 7.0  # a view, not a copy
    assert bytes(view[:4]) == np.float32(7.0).tobytes()
    assert bytes(leaf_bytes(a[:, ::2])) == np.ascontiguousarray(a[:, ::2]).tobytes()
    strided = memoryview(bytearray(range(10)))[::3]
    assert bytes(leaf_bytes(strided)) == bytes([0, 3, 6, 9])
    assert bytes(leaf_bytes(b"abc")) == b"abc" and len(leaf_bytes(np.zeros(0, bool))) == 0
    assert bytes(leaf_bytes(np.float64(1.5))) == np.float64(1.5).tobytes()  # 0-d
