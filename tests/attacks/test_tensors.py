"""Tensor entries and encoding trees (spec/format.md §3.2, §4, §5)."""

from __future__ import annotations

import pytest

import cmf

from . import craft as c
from .common import base_parts, expect_error, expect_ok

TIB = 1 << 40


def with_tensor(edit):
    """Base file with ``edit(tensors)`` applied to its tensor list."""
    segments, index = base_parts()
    edit(index["tensors"])
    return c.assemble(segments, index)


def set_key(i, key, value):
    def edit(tensors):
        tensors[i][key] = value

    return edit


def del_key(i, key):
    def edit(tensors):
        del tensors[i][key]

    return edit


def set_encoding(i, encoding):
    return set_key(i, "encoding", encoding)


# ----------------------------------------------------------------------------- huge shapes


@pytest.mark.parametrize(
    "dtype, shape",
    [
        ("u8", [TIB]),
        ("f32", [1 << 20, 1 << 18]),
        ("f64", [1 << 13] * 3 + [1 << 1]),
        ("u8", [1 << 32, 1 << 32]),  # numel 2^64: wraps to 0 in uint64 arithmetic
        ("f32", [1 << 31, 1 << 31]),  # nbytes 2^64: wraps to 0 in uint64 arithmetic
        ("u8", [(1 << 53) - 1] * 32),
    ],
    ids=["1TiB-u8", "1TiB-f32", "8TiB-f64", "2^64-elements", "2^64-bytes", "rank32-max"],
)
def test_huge_shape_with_tiny_raw_segment(tmp_path, dtype, shape):
    # Rejected at open: the leaf's length must equal the resolved size (an unbounded integer).
    for seg in (b"", b"\x00" * 16):
        index = {"tensors": [c.tensor("t", dtype, shape, c.raw(c.leaf(0)))]}
        exc = expect_error(tmp_path, c.assemble([seg], index), f"holds {len(seg)} bytes")
        assert "expected" in str(exc)


@pytest.mark.parametrize("shape", [[TIB], [1 << 32, 1 << 32], [1 << 35]])
def test_huge_shape_with_tiny_zstd_segment(tmp_path, shape):
    # zstd leaves have no fixed length, so the memory budget must catch it before decoding.
    frame = c.zstd_frame(rle=(0, 1000), declared=TIB)
    index = {"tensors": [c.tensor("t", "u8", shape, c.raw(c.zstd(c.leaf(0))))]}
    expect_error(
        tmp_path, c.assemble([frame], index), "over the memory budget", error=cmf.LimitError
    )


def test_huge_byteplanes_with_tiny_zstd_planes(tmp_path):
    frames = [c.zstd_frame(rle=(0, 1000), declared=TIB) for _ in range(4)]
    enc = c.byteplanes([c.zstd(c.leaf(i)) for i in range(4)], rotate=True)
    index = {"tensors": [c.tensor("t", "f32", [TIB], enc)]}
    expect_error(
        tmp_path, c.assemble(frames, index), "over the memory budget", error=cmf.LimitError
    )


def test_budget_is_configurable(tmp_path):
    segments, index = base_parts()
    data = c.assemble(segments, index)
    expect_error(
        tmp_path,
        data,
        "over the memory budget of 47",
        limits=cmf.Limits(max_tensor_bytes=47),
        error=cmf.LimitError,
    )
    expect_ok(tmp_path, data, limits=cmf.Limits(max_tensor_bytes=48))


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    "shape, match",
    [
        ([-1, 3], "shape dimension must be an integer in [0, 9007199254740992), found -1"),
        ([4, -3], "found -3"),
        ([-(1 << 63), 3], "shape dimension must be an integer"),
        ([4.0, 3], "found 4.0"),
        ([4, "3"], "found '3'"),
        ([True, 3], "found True"),
        ([None, 3], "found None"),
        ([[4], 3], "shape dimension must be an integer"),
        ([1 << 53, 3], "found 9007199254740992"),
        ([(1 << 64) - 1, 3], "shape dimension must be an integer"),
        (12, "shape must be an array, found int"),
        ({"0": 4}, "shape must be an array, found dict"),
        ("4x3", "shape must be an array, found str"),
        (None, "shape must be an array"),
    ],
)
def test_bad_dims(tmp_path, shape, match):
    expect_error(tmp_path, with_tensor(set_key(0, "shape", shape)), match, error=cmf.FormatError)


@pytest.mark.parametrize("rank", [33, 64, 1000])
def test_rank_over_limit(tmp_path, rank):
    data = with_tensor(set_key(4, "shape", [1] * (rank - 1) + [3]))
    expect_error(tmp_path, data, f"rank {rank} exceeds the limit 32", error=cmf.LimitError)


def test_rank_32_is_fine(tmp_path):
    snap = expect_ok(tmp_path, with_tensor(set_key(4, "shape", [1] * 31 + [3])))
    assert snap["tensors"]["flags"][1] == (1,) * 31 + (3,)


def test_rank_limit_is_configurable(tmp_path):
    expect_error(
        tmp_path,
        with_tensor(lambda t: None),
        "rank 2 exceeds the limit 1",
        limits=cmf.Limits(max_rank=1),
        error=cmf.LimitError,
    )


# ----------------------------------------------------------------------------- names


def test_duplicate_tensor_names(tmp_path):
    expect_error(tmp_path, with_tensor(set_key(1, "name", "w")), "duplicate tensor name 'w'")


def test_duplicate_names_with_alias(tmp_path):
    expect_error(tmp_path, with_tensor(set_key(3, "name", "w")), "duplicate tensor name 'w'")


@pytest.mark.parametrize(
    "name, match",
    [
        ("", "must be 1 to 1024 bytes, found 0"),
        ("x" * 1025, "must be 1 to 1024 bytes, found 1025"),
        ("é" * 513, "found 1026"),  # counted in UTF-8 bytes, not characters
        ("a\x00b", "contains a NUL"),
        ("\x00", "contains a NUL"),
        (7, "name must be a string, found int"),
        (b"w", "name must be a string, found bytes"),
        (None, "name must be a string"),
        (["w"], "name must be a string"),
    ],
    ids=["empty", "1025", "utf8-1026", "nul-inside", "nul", "int", "bytes", "nil", "list"],
)
def test_bad_names(tmp_path, name, match):
    expect_error(tmp_path, with_tensor(set_key(1, "name", name)), match, error=cmf.FormatError)


def test_name_of_1024_bytes_is_fine(tmp_path):
    snap = expect_ok(tmp_path, with_tensor(set_key(1, "name", "é" * 512)))
    assert "é" * 512 in snap["tensors"]


# ----------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize(
    "dtype", ["f128", "F32", "float32", "", "f8", "c64", "bool ", 4, None, b"f32"]
)
def test_unknown_dtype(tmp_path, dtype):
    exc = expect_error(
        tmp_path,
        with_tensor(set_key(0, "dtype", dtype)),
        "unknown dtype",
        error=cmf.UnsupportedError,
    )
    assert repr(dtype) in str(exc)


# ----------------------------------------------------------------------------- entry keys


@pytest.mark.parametrize("key", ["name", "dtype", "shape"])
def test_missing_required_key(tmp_path, key):
    expect_error(tmp_path, with_tensor(del_key(0, key)), f"lacks required key '{key}'")


@pytest.mark.parametrize("key", ["offsets", "data_offsets", "Encoding", ""])
def test_unknown_tensor_key(tmp_path, key):
    expect_error(tmp_path, with_tensor(set_key(0, key, 1)), f"has unknown key {key!r}")


@pytest.mark.parametrize("entry", [[], "w", 0, None])
def test_tensor_not_a_map(tmp_path, entry):
    expect_error(tmp_path, with_tensor(lambda t: t.__setitem__(0, entry)), "tensor 0 must be a map")


def test_too_many_tensors(tmp_path):
    expect_error(
        tmp_path,
        with_tensor(lambda t: None),
        "5 tensors exceed the limit 4",
        limits=cmf.Limits(max_tensors=4),
        error=cmf.LimitError,
    )


# ----------------------------------------------------------------------------- codecs


@pytest.mark.parametrize("name", ["lz4", "ZSTD", "", "raw2", "pickle", "x" * 100])
def test_unknown_codec_is_named(tmp_path, name):
    enc = {"codec": name, "config": {}, "parts": {"data": c.leaf(0)}}
    exc = expect_error(
        tmp_path, with_tensor(set_encoding(0, enc)), "unknown codec", error=cmf.UnsupportedError
    )
    assert name[:60] in str(exc)


@pytest.mark.parametrize("name", [5, None, ["raw"], b"raw"])
def test_codec_name_not_a_string(tmp_path, name):
    enc = {"codec": name, "config": {}, "parts": {"data": c.leaf(0)}}
    expect_error(tmp_path, with_tensor(set_encoding(0, enc)), "unknown codec")


def _raw_cfg(cfg):
    return {"codec": "raw", "config": cfg, "parts": {"data": c.leaf(0)}}


def _zstd_cfg(cfg):
    return c.raw({"codec": "zstd", "config": cfg, "parts": {"data": c.leaf(1)}})


def _bp_cfg(cfg):
    return {
        "codec": "byteplanes",
        "config": cfg,
        "parts": {"p0": c.leaf(2), "p1": c.zstd(c.leaf(3))},
    }


@pytest.mark.parametrize(
    "i, encoding, match",
    [
        (0, _raw_cfg({"x": 1}), "unknown config key 'x'"),
        (0, _raw_cfg({"order": "F"}), "unknown config key 'order'"),
        (0, _raw_cfg([]), "config must be a map"),
        (0, _raw_cfg(None), "config must be a map"),
        (
            1,
            _zstd_cfg({"level": 3, "literals_only": False, "dict": 1}),
            "unknown config key 'dict'",
        ),
        (
            1,
            _zstd_cfg({"level": 23, "literals_only": False}),
            "level must be in [-131072, 22], found 23",
        ),
        (1, _zstd_cfg({"level": -131073, "literals_only": False}), "level must be in"),
        (1, _zstd_cfg({"level": "3", "literals_only": False}), "'level' must be int, found str"),
        (1, _zstd_cfg({"level": True, "literals_only": False}), "'level' must be int, found bool"),
        (1, _zstd_cfg({"level": 3.0, "literals_only": False}), "'level' must be int, found float"),
        (1, _zstd_cfg({"level": 3, "literals_only": 1}), "'literals_only' must be bool, found int"),
        (1, _zstd_cfg({"level": 3}), "lacks required keys ['literals_only']"),
        (2, _bp_cfg({"rotate": 1}), "'rotate' must be bool, found int"),
        (2, _bp_cfg({"rotate": True, "k": 2}), "unknown config key 'k'"),
    ],
)
def test_bad_codec_config(tmp_path, i, encoding, match):
    expect_error(tmp_path, with_tensor(set_encoding(i, encoding)), match, error=cmf.FormatError)


@pytest.mark.parametrize(
    "i, parts, match",
    [
        (0, {}, "has parts [], expected ['data']"),
        (0, {"data": c.leaf(0), "extra": c.leaf(1)}, "has parts ['data', 'extra']"),
        (0, {"Data": c.leaf(0)}, "has parts ['Data']"),
        (0, [c.leaf(0)], "has parts list"),
        (0, None, "has parts NoneType"),
        (2, {"p0": c.leaf(2)}, "has parts ['p0'], expected ['p0', 'p1']"),
        (2, {"p0": c.leaf(2), "p1": c.zstd(c.leaf(3)), "p2": c.leaf(4)}, "expected ['p0', 'p1']"),
        (2, {"p1": c.leaf(2), "p2": c.zstd(c.leaf(3))}, "expected ['p0', 'p1']"),
    ],
)
def test_wrong_parts(tmp_path, i, parts, match):
    enc = dict(base_parts()[1]["tensors"][i]["encoding"])
    enc["parts"] = parts
    expect_error(tmp_path, with_tensor(set_encoding(i, enc)), match, error=cmf.FormatError)


@pytest.mark.parametrize(
    "node, match",
    [
        ({"codec": "raw", "parts": {"data": c.leaf(0)}}, "lacks required key 'config'"),
        ({"codec": "raw", "config": {}}, "lacks required key 'parts'"),
        ({"config": {}, "parts": {"data": c.leaf(0)}}, "lacks required key 'codec'"),
        ({**c.raw(c.leaf(0)), "note": "x"}, "has unknown key 'note'"),
        ([], "node must be a map, found list"),
        (0, "node must be a map, found int"),
        (None, "node must be a map"),
        ("raw", "node must be a map, found str"),
        (c.leaf(0), "a segment holds bytes, f32[4, 3] expected"),  # leaf at an array spec
        (c.zstd(c.leaf(0)), "codec 'zstd' decodes to bytes, but f32[4, 3] is expected"),
    ],
)
def test_bad_nodes(tmp_path, node, match):
    expect_error(tmp_path, with_tensor(set_encoding(0, node)), match, error=cmf.FormatError)


def test_codec_that_cannot_produce_the_spec(tmp_path):
    # byteplanes needs k in (2, 4, 8); rotate only for floats; raw cannot give bytes.
    expect_error(
        tmp_path,
        with_tensor(set_encoding(4, c.byteplanes([c.leaf(4)]))),
        "byteplanes: needs an item size of 2, 4 or 8, not bool",
    )
    segments, index = base_parts()
    index["tensors"].append(
        c.tensor("i", "i16", [1], c.byteplanes([c.leaf(6), c.leaf(7)], rotate=True))
    )
    expect_error(
        tmp_path,
        c.assemble(segments + [b"\x01", b"\x02"], index),
        "rotate is only for floats, not i16",
    )
    segments, index = base_parts()
    index["attachments"][0]["encoding"] = c.raw(c.zstd(c.leaf(5)))
    expect_error(tmp_path, c.assemble(segments, index), "codec 'raw' decodes to an array")


def test_zstd_inside_zstd(tmp_path):
    enc = c.raw(c.zstd(c.zstd(c.leaf(1))))
    expect_error(tmp_path, with_tensor(set_encoding(1, enc)), "decoded length must be known")


@pytest.mark.parametrize("depth", [17, 20])
def test_tree_deeper_than_16(tmp_path, depth):
    # No 1.0 codec chain resolves 16 levels deep, so the resolver stops it first ...
    node = c.leaf(1)
    for _ in range(depth - 1):
        node = c.zstd(node)
    expect_error(
        tmp_path,
        with_tensor(set_encoding(1, c.raw(node))),
        ("deeper than 16", "decoded length must be known"),
    )


def test_tree_deeper_than_nesting_limit(tmp_path):
    # ... and a very deep tree exceeds the msgpack nesting limit before any codec is looked at.
    node = c.leaf(1)
    for _ in range(40):
        node = c.zstd(node)
    expect_error(
        tmp_path,
        with_tensor(set_encoding(1, c.raw(node))),
        "nests deeper than 64",
        error=cmf.LimitError,
    )


@pytest.mark.parametrize("limit, ok", [(1, False), (2, True)])
def test_tree_depth_limit(tmp_path, limit, ok):
    data = with_tensor(lambda t: None)  # deepest tree: raw > zstd (2 codec levels)
    limits = cmf.Limits(max_tree_depth=limit)
    if ok:
        expect_ok(tmp_path, data, limits=limits)
    else:
        expect_error(
            tmp_path, data, f"codec tree deeper than {limit}", limits=limits, error=cmf.LimitError
        )


# ----------------------------------------------------------------------------- aliases


@pytest.mark.parametrize(
    "alias, match",
    [
        ("missing", "alias must name an earlier tensor"),
        ("flags", "alias must name an earlier tensor"),  # later tensor
        ("w_tied", "alias must name an earlier tensor"),  # itself
        ("", "alias must name an earlier tensor"),
        (0, "alias must name an earlier tensor"),
        (None, "alias must name an earlier tensor"),
        (["w"], "alias must name an earlier tensor"),
        ("b", "alias of 'b' has spec f32[4, 3], target has u8[16]"),  # different dtype+shape
        ("h", "target has bf16[5]"),
    ],
)
def test_bad_alias(tmp_path, alias, match):
    expect_error(tmp_path, with_tensor(set_key(3, "alias", alias)), match, error=cmf.FormatError)


def test_alias_to_alias(tmp_path):
    segments, index = base_parts()
    index["tensors"].append(c.tensor("w_tied2", "f32", [4, 3], alias="w_tied"))
    expect_error(
        tmp_path,
        c.assemble(segments, index),
        "alias must name an earlier tensor that has an encoding",
    )


@pytest.mark.parametrize(
    "dtype, shape", [("f32", [3, 4]), ("f32", [12]), ("i32", [4, 3]), ("f32", [4, 3, 1])]
)
def test_alias_with_different_spec(tmp_path, dtype, shape):
    def edit(t):
        t[3]["dtype"], t[3]["shape"] = dtype, shape

    expect_error(tmp_path, with_tensor(edit), "target has f32[4, 3]")


def test_alias_to_a_later_tensor(tmp_path):
    def edit(t):
        t.insert(0, c.tensor("early", "bool", [3], alias="flags"))

    expect_error(tmp_path, with_tensor(edit), "alias must name an earlier tensor")


def test_both_encoding_and_alias(tmp_path):
    data = with_tensor(set_key(3, "encoding", c.raw(c.leaf(0))))
    expect_error(tmp_path, data, "must have exactly one of 'encoding' and 'alias'")


def test_neither_encoding_nor_alias(tmp_path):
    expect_error(
        tmp_path,
        with_tensor(del_key(0, "encoding")),
        ("must have exactly one of 'encoding' and 'alias'", "not referenced"),
    )


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("bad", [2, 0xFF, 0x80])
def test_bool_raw_bytes_other_than_0_or_1(tmp_path, bad):
    segments, index = base_parts()
    segments[4] = bytes([1, bad, 0])
    expect_error(tmp_path, c.assemble(segments, index), "bool byte is neither 0 nor 1")


def test_bool_bytes_behind_zstd(tmp_path):
    segments, index = base_parts()
    segments[4] = c.zstd_frame(bytes([0, 1, 3]))
    index["tensors"][4]["encoding"] = c.raw(c.zstd(c.leaf(4)))
    expect_error(tmp_path, c.assemble(segments, index), "bool byte is neither 0 nor 1")
