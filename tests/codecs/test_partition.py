"""partition codec (spec/codecs/partition.md): the page's example, bit-exact round trips for
every dtype (NaN payloads kept), empty tensors and empty rows, K = 1 and K = 256, empty classes,
hostile configs and parts, bounded decode memory, and lossy per-class sub-trees (quantize) in a
file that reads back and validates with minor 2."""

from __future__ import annotations

import struct
import tracemalloc

import ml_dtypes
import numpy as np
import pytest

import cmf
from cmf.codecs import codec_class, codec_from_config
from cmf.codecs.partition import Partition, Partitioned
from cmf.codecs.quantize import Quantize
from cmf.dtypes import BY_NAME
from cmf.errors import CmfError, FormatError
from cmf.pipeline import PendingNode, apply, describe, encode_lossless

from .helpers import bits, random_bits, spec, spec_of

F32 = np.float32
ALL_DTYPES = sorted(BY_NAME)


def round_trip(x: np.ndarray, classes) -> tuple[Partition, dict]:
    s = spec_of(x)
    codec, value = Partition.fit(x, s, {"classes": list(classes)})
    parts = codec.encode(value, s)
    resolved = codec.resolve(s)
    assert list(parts) == list(resolved)
    for name, ps in resolved.items():
        assert parts[name].dtype == ps.dtype.numpy and parts[name].shape == ps.shape, name
    y = codec.decode(parts, s)
    assert y.dtype == x.dtype and y.shape == x.shape and bits(y) == bits(x)
    again = codec_from_config("partition", codec.to_config())
    assert again == codec and hash(again) == hash(codec)
    return codec, parts


# ----------------------------------------------------------------------------- the page


def test_example_of_the_page():
    x = np.array([[1, 2], [3, 4], [5, 6], [7, 8]], F32)
    s = spec_of(x)
    codec, value = Partition.fit(x, s, {"classes": [1, 0, 1, 1]})
    assert codec == Partition(counts=(1, 3)) and codec.to_config() == {"counts": [1, 3]}
    assert codec.resolve(s) == {
        "class": spec("u8", (4,)),
        "p0": spec("f32", (1, 2)),
        "p1": spec("f32", (3, 2)),
    }
    parts = codec.encode(value, s)
    assert parts["class"].dtype == np.uint8 and parts["class"].tolist() == [1, 0, 1, 1]
    assert bits(parts["p0"]) == bits(np.array([[3, 4]], F32))
    assert bits(parts["p1"]) == bits(np.array([[1, 2], [5, 6], [7, 8]], F32))
    assert bits(codec.decode(parts, s)) == bits(x)
    assert Partition.since_minor == 2 and codec_class("partition") is Partition


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape", [(9,), (6, 5), (5, 3, 2), (0,), (0, 3), (4, 0), (3, 0, 2)])
def test_round_trip_is_bit_exact(dtype, shape):
    x = random_bits(dtype, shape, seed=100 * ALL_DTYPES.index(dtype) + 10 * len(shape) + sum(shape))
    rng = np.random.default_rng(len(shape))
    for k in (1, 2, 5):
        round_trip(x, rng.integers(0, k, shape[0]).tolist())


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16", "f64", "f8_e4m3", "f8_e5m2"])
def test_nan_payloads_signed_zeros_and_infinities_survive(dtype):
    dt = BY_NAME[dtype].numpy
    words = {  # quiet and signalling NaNs with payloads, -0.0, -inf, the smallest subnormal
        "f32": ([0x7FC00001, 0x7F800001, 0xFFA5A5A5, 0x80000000, 0xFF800000, 1], np.uint32),
        "f64": (
            [
                0x7FF8000000000001,
                0x7FF0000000000001,
                0xFFFDEADBEEF00000,
                1 << 63,
                0xFFF0000000000000,
                1,
            ],
            np.uint64,
        ),
        "f16": ([0x7E01, 0x7C01, 0xFD55, 0x8000, 0xFC00, 1], np.uint16),
        "bf16": ([0x7FC1, 0x7F81, 0xFFAA, 0x8000, 0xFF80, 1], np.uint16),
        "f8_e4m3": ([0x7F, 0xFF, 0x80, 0x01, 0x78, 0xF8], np.uint8),
        "f8_e5m2": ([0x7F, 0x7D, 0xFE, 0x80, 0xFC, 0x01], np.uint8),
    }[dtype]
    x = np.array(words[0], words[1]).view(dt)
    x = np.stack([x, x[::-1], np.roll(x, 2)])  # (3, 6)
    codec, parts = round_trip(x, [2, 0, 2])
    assert codec.counts == (1, 0, 2)
    assert parts["p1"].shape == (0, 6)
    read_only = {n: np.frombuffer(bits(p), p.dtype).reshape(p.shape) for n, p in parts.items()}
    assert bits(codec.decode(read_only, spec_of(x))) == bits(x)  # parts as from a segment


def test_k_is_1_and_k_is_256_with_empty_classes():
    x = random_bits("f32", (300, 3), 1)
    codec, _ = round_trip(x, [0] * 300)
    assert codec.counts == (300,)
    classes = [(7 * i) % 256 for i in range(300)]
    codec, parts = round_trip(x, classes)
    assert len(codec.counts) == 256 and len(parts) == 257
    sparse = [255 if i % 3 else 3 for i in range(300)]  # classes 0..2 and 4..254 are empty
    codec, parts = round_trip(x, sparse)
    assert len(codec.counts) == 256 and codec.counts[0] == 0 and codec.counts[3] == 100
    assert parts["p0"].shape == (0, 3) and parts["p255"].shape == (200, 3)
    # an explicit config may declare trailing empty classes fit would not make
    s = spec_of(x)
    wide = Partition(counts=(300,) + (0,) * 255)
    out = wide.encode(Partitioned(x, np.zeros(300, np.uint8)), s)
    assert bits(wide.decode(out, s)) == bits(x)


def test_empty_tensors_and_empty_rows():
    x = np.zeros((0, 4), F32)
    codec, parts = round_trip(x, [])
    assert codec.counts == (0,) and parts["class"].shape == (0,) and parts["p0"].shape == (0, 4)
    y = np.zeros((5, 0, 3), np.int16)  # empty rows still have a class each
    codec, parts = round_trip(y, [1, 0, 1, 1, 0])
    assert codec.counts == (2, 3) and parts["class"].tolist() == [1, 0, 1, 1, 0]
    with pytest.raises(FormatError, match="class 0 occurs 3 times"):
        codec.decode(dict(parts, **{"class": np.array([0, 0, 0, 1, 1], np.uint8)}), spec_of(y))


def test_rank_3_rows_go_back_in_order():
    x = np.arange(4 * 3 * 2, dtype=np.int32).reshape(4, 3, 2)
    codec, parts = round_trip(x, [2, 2, 0, 2])
    assert codec.counts == (1, 0, 3)
    assert parts["p0"].tolist() == x[[2]].tolist() and parts["p2"].tolist() == x[[0, 1, 3]].tolist()


# ----------------------------------------------------------------------------- configs


def test_config_round_trip_and_bad_configs():
    good = {"counts": [1, 3]}
    codec = codec_from_config("partition", good)
    assert codec.to_config() == good and isinstance(codec.to_config()["counts"], list)
    assert codec_from_config("partition", {"counts": [2**53 - 1]}).counts == (2**53 - 1,)
    assert len(codec_from_config("partition", {"counts": [0] * 256}).counts) == 256
    for bad, match in [
        ([], "map"),
        ("counts", "map"),
        ({}, "missing"),
        ({"counts": [1], "extra": 1}, "unknown"),
        ({"count": [1]}, "unknown"),
        ({"counts": 3}, "array"),
        ({"counts": (1, 2)}, "array"),
        ({"counts": {"0": 1}}, "array"),
        ({"counts": "12"}, "array"),
        ({"counts": None}, "array"),
        ({"counts": []}, "1 to 256"),
        ({"counts": [0] * 257}, "1 to 256"),
        ({"counts": [1, True]}, "integer"),
        ({"counts": [False]}, "integer"),
        ({"counts": [1.0]}, "integer"),
        ({"counts": ["1"]}, "integer"),
        ({"counts": [None]}, "integer"),
        ({"counts": [-1]}, r"\[0, 2\^53\)"),
        ({"counts": [2**53]}, r"\[0, 2\^53\)"),
        ({"counts": [2**64]}, r"\[0, 2\^53\)"),
    ]:
        with pytest.raises(FormatError, match=match):
            codec_from_config("partition", bad)
    with pytest.raises(CmfError):
        Partition(counts=[True])  # the constructor checks too


def test_resolve_bounds_everything_before_allocating():
    huge = spec("bf16", (1 << 50, 1 << 40))
    parts = Partition(counts=(1 << 49, 0, 1 << 49)).resolve(huge)
    assert parts["class"] == spec("u8", (1 << 50,))
    assert parts["p2"] == spec("bf16", (1 << 49, 1 << 40))
    for counts, shape in [((1, 3), (5, 2)), ((1, 3), (3,)), ((0,), (1, 1)), ((2**52, 2**52), (3,))]:
        with pytest.raises(FormatError, match="counts add up to"):
            Partition(counts=counts).resolve(spec("f32", shape))
    with pytest.raises(FormatError, match="rank >= 1"):
        Partition(counts=(0,)).resolve(spec("f32", ()))
    with pytest.raises(FormatError, match="decodes to an array"):
        Partition(counts=(1,)).resolve(cmf.codecs.BytesSpec(4))


@pytest.mark.parametrize(
    "options,match",
    [
        ([], "map"),
        ({}, "exactly"),
        ({"classes": [0], "k": 2}, "exactly"),
        ({"count": [0]}, "exactly"),
        ({"classes": 3}, "list"),
        ({"classes": "01"}, "list"),
        ({"classes": [0, True]}, "ints"),
        ({"classes": [0.0]}, "ints"),
        ({"classes": [None]}, "ints"),
        ({"classes": [-1]}, r"\[0, 255\]"),
        ({"classes": [256]}, r"\[0, 255\]"),
        ({"classes": np.array([0.5])}, "ints"),
        ({"classes": np.zeros((2, 2), int)}, "1-D"),
        ({"classes": np.array([300])}, r"\[0, 255\]"),
    ],
)
def test_bad_fit_options(options, match):
    with pytest.raises(CmfError, match=match):
        Partition.check_fit(options)


def test_fit_checks_the_classes_against_the_tensor():
    x = np.ones((4, 2), F32)
    with pytest.raises(CmfError, match=r"one per row \(4\)"):
        Partition.fit(x, spec_of(x), {"classes": [0, 1, 0]})
    with pytest.raises(CmfError, match="rank-0"):
        Partition.fit(np.float32(1), spec("f32", ()), {"classes": []})
    codec, value = Partition.fit(x, spec_of(x), {"classes": np.array([3, 3, 1, 3], np.uint16)})
    assert codec.counts == (0, 1, 0, 3) and isinstance(value, Partitioned)


# ----------------------------------------------------------------------------- encode inputs


def test_encode_needs_a_partitioned_value():
    x = np.ones((4, 2), F32)
    s = spec_of(x)
    codec = Partition(counts=(1, 3))
    with pytest.raises(CmfError, match="Partitioned"):
        codec.encode(x, s)
    for classes, match in [
        ([1, 0, 1], "one per row"),
        ([[1, 0, 1, 1]], "one per row"),
        ([1.0, 0.0, 1.0, 1.0], "integers"),
        ([True, False, True, True], "integers"),
        ([1, -1, 1, 1], r"\[0, 255\]"),
        ([1, 0, 2, 1], "out of range for 2 classes"),
        ([1, 0, 0, 1], r"occur \[2, 2\] times, counts says \[1, 3\]"),
    ]:
        with pytest.raises(CmfError, match=match):
            codec.encode(Partitioned(x, classes), s)
    with pytest.raises(CmfError, match="shape"):
        codec.encode(Partitioned(np.ones((4, 3), F32), [1, 0, 1, 1]), s)


# ----------------------------------------------------------------------------- hostile parts


def test_hostile_parts():
    x = random_bits("f16", (6, 4), 5)
    s = spec_of(x)
    codec, value = Partition.fit(x, s, {"classes": [0, 2, 1, 2, 0, 2]})
    parts = codec.encode(value, s)
    for name, bad, message in [
        ("class", np.array([0, 2, 3, 2, 0, 2], np.uint8), "class value 3 is out of range for 3"),
        ("class", np.array([0, 2, 255, 2, 0, 2], np.uint8), "class value 255"),
        ("class", np.array([0, 2, 1, 2, 0, 0], np.uint8), "class 0 occurs 3 times, counts says 2"),
        ("class", np.array([1, 2, 1, 2, 0, 2], np.uint8), "class 0 occurs 1 times"),
        ("class", parts["class"].astype(np.uint16), "part 'class'"),
        ("class", parts["class"].astype(np.int8), "part 'class'"),
        ("class", parts["class"][:-1], "part 'class'"),
        ("class", bits(parts["class"]), "part 'class'"),
        ("p0", parts["p0"][:1], "part 'p0'"),
        ("p1", parts["p1"].astype(np.float32), "part 'p1'"),
        ("p2", parts["p2"].reshape(4, 3), "part 'p2'"),
        ("p2", parts["p2"].reshape(-1), "part 'p2'"),
        ("p0", None, "part 'p0'"),
    ]:
        with pytest.raises(FormatError, match=message):
            codec.decode(dict(parts, **{name: bad}), s)
    missing = {n: p for n, p in parts.items() if n != "p1"}
    with pytest.raises(FormatError, match="part 'p1'"):
        codec.decode(missing, s)
    with pytest.raises(FormatError, match="counts add up to"):
        Partition(counts=(2, 1, 2)).decode(parts, s)
    assert bits(codec.decode(parts, s)) == bits(x)  # the hostile inputs changed nothing


@pytest.mark.parametrize(
    "classes",
    [
        [0] * 12,  # every chunk one class
        [1] * 12 + [0] * 4,  # the runs aligned with the chunks
        [0] * 6 + [2] * 7 + [1] * 3,  # runs across chunk edges
        [0, 1, 2] * 5,  # every chunk mixed
        [2] * 4 + [0, 1, 0, 1] + [1] * 4 + [2, 2, 0],  # single and mixed chunks
    ],
)
def test_chunked_decode_single_and_mixed_chunks(monkeypatch, classes):
    monkeypatch.setattr("cmf.codecs.partition.CHUNK_ROWS", 4)
    x = random_bits("bf16", (len(classes), 3), 11)
    codec, parts = round_trip(x, classes)
    s = spec_of(x)
    k = len(codec.counts)
    wrong = np.full(len(classes), k - 1, np.uint8)  # one class only: the others' counts are off
    if k > 1:
        with pytest.raises(FormatError, match="occurs"):
            codec.decode(dict(parts, **{"class": wrong}), s)


def test_decode_scratch_is_output_plus_order_n():
    d0, width = 1 << 15, 128  # f32: 16 MiB out, 256 classes
    x = np.zeros((d0, width), F32)
    s = spec_of(x)
    classes = (np.arange(d0) * 37) % 256
    codec, value = Partition.fit(x, s, {"classes": classes})
    parts = codec.encode(value, s)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        y = codec.decode(parts, s)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak <= y.nbytes + 32 * d0 + (1 << 20), (peak, y.nbytes)


# ----------------------------------------------------------------------------- files


def _q(bits_: int) -> dict:
    return {
        "codec": "quantize",
        "config": {
            "bits": bits_,
            "block": 0,
            "axis": None,
            "scheme": "symmetric",
            "scale_dtype": "f32",
            "search": False,
        },
        "parts": {"q": {"codec": "huffman", "config": {"chunk": 64, "max_length": 12}}},
    }


def test_recipe_with_quantized_classes_in_a_file(tmp_path):
    rng = np.random.default_rng(6)
    w = rng.standard_normal((24, 32)).astype(F32)
    w[::3] *= 50  # class 0: wide rows; class 1: narrow rows; class 2: kept exactly
    classes = [0 if i % 3 == 0 else (1 if i % 3 == 1 else 2) for i in range(24)]
    w[2, 5] = -0.0
    recipe = {
        "rules": [
            {
                "match": "w",
                "encoding": {
                    "codec": "partition",
                    "fit": {"classes": classes},
                    "parts": {"p0": _q(8), "p1": _q(4), "class": "stored"},
                },
            }
        ]
    }
    path = tmp_path / "p.cmf"
    cmf.save_file({"w": w, "plain": np.arange(6, dtype=np.int16)}, path, recipe=recipe)
    with cmf.open(path) as f:
        assert f.minor == 2
        entry = f.entry("w")
        node = entry.encoding
        assert node.codec == Partition(counts=(8, 8, 8))
        assert describe(node).startswith("partition(class=raw,p0=quantize(q=huffman")
        assert [node.parts[p].codec.name for p in ("p0", "p1")] == ["quantize", "quantize"]
        y = f.get_tensor("w")
        assert entry.error is not None and entry.error["rel_rmse"] > 0
    rows = np.asarray(classes)
    for k, bits_ in ((0, 8), (1, 4)):
        q = Quantize(
            bits=bits_, block=0, axis=None, scheme="symmetric", scale_dtype="f32", search=False
        )
        rs = spec("f32", (8, 32))
        expect = q.decode(q.encode(w[rows == k], rs), rs)  # each class with its own scale
        assert bits(y[rows == k]) == bits(expect)
    assert bits(y[rows == 2]) == bits(w[rows == 2])  # the lossless class is exact (-0.0 too)
    report = cmf.validate(path)
    assert report.valid and report.errors == [] and report.warnings == [], report.to_json()
    assert report.tensors_checked == 2


def test_minor_below_2_is_a_warning_not_an_error(tmp_path):
    x = random_bits("bf16", (5, 3, 2), 8)
    s = spec_of(x)
    codec, value = Partition.fit(x, s, {"classes": [1, 1, 0, 1, 0]})
    pending = apply(codec, value, s, lambda v, ps: encode_lossless(np.asarray(v), ps))
    path = tmp_path / "old.cmf"
    with cmf.Writer(path) as w:
        w.add_encoded("x", s, pending)
    data = bytearray(path.read_bytes())
    assert struct.unpack_from("<H", data, 10) == (2,)
    struct.pack_into("<H", data, 10, 1)  # the preamble is outside the CRCs
    path.write_bytes(bytes(data))
    with cmf.open(path) as f:
        assert f.minor == 1 and bits(f.get_tensor("x")) == bits(x)  # still read
    report = cmf.validate(path)
    assert report.valid, report.errors
    assert report.warnings == ["file uses codec 'partition' (cmf 1.2) but its minor version is 1"]


def test_big_parts_decode_on_threads(tmp_path):
    x = random_bits("f32", (2048, 256), 9)  # two 1 MiB classes: the pipeline's threaded path
    classes = [i % 2 for i in range(2048)]
    path = tmp_path / "big.cmf"
    recipe = {
        "default": {
            "codec": "partition",
            "fit": {"classes": classes},
            "parts": {"p0": "stored", "p1": "stored"},
        }
    }
    cmf.save_file({"x": x}, path, recipe=recipe)
    assert bits(cmf.load_file(path)["x"]) == bits(x)
    with cmf.open(path) as f:
        assert bits(f.get_tensor("x")) == bits(x)
    assert cmf.validate(path).valid


def test_hand_built_tree_with_a_pending_node(tmp_path):
    """The other way to build one: Partitioned through Codec.encode, sub-trees by hand."""
    x = np.array([[1, -2], [3, 4], [-5, 6]], ml_dtypes.bfloat16)
    s = spec_of(x)
    codec = Partition(counts=(2, 1))
    parts = codec.encode(Partitioned(x, [0, 1, 0]), s)
    specs = codec.resolve(s)
    children = {n: encode_lossless(np.asarray(parts[n]), specs[n]) for n in specs}
    pending = PendingNode(codec, children, s)
    path = tmp_path / "h.cmf"
    with cmf.Writer(path) as w:
        w.add_encoded("x", s, pending)
    with cmf.open(path) as f:
        assert f.minor == 2 and bits(f.get_tensor("x")) == bits(x)
