"""Hostile msgpack in the index (spec/format.md §3): bombs, duplicate keys, odd types."""

from __future__ import annotations

import tracemalloc

import pytest

import cmf

from . import craft as c
from .common import base_parts, expect_error, write

MiB = 1 << 20


def with_index(blob: bytes) -> bytes:
    """A file whose index is ``blob`` verbatim (segments of the base file in the data area)."""
    segments, _ = base_parts()
    return c.assemble(segments, blob)


def index_blob(edit=None) -> bytes:
    segments, index = base_parts()
    index = {"segments": c.segment_table(segments), **index}
    if edit is not None:
        result = edit(index)
        index = index if result is None else result
    return c.mp(index)


def expect_bounded(tmp_path, data, match, **kw):
    """expect_error, and the attempt allocates less than 64 MiB (tracemalloc)."""
    tracemalloc.start()
    try:
        expect_error(tmp_path, data, match, **kw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * MiB, f"peak {peak / MiB:.1f} MiB"


# ----------------------------------------------------------------------------- bombs


@pytest.mark.parametrize("depth", [65, 1000, 100_000])
@pytest.mark.parametrize("kind", ["array", "map"])
def test_nesting_bomb(tmp_path, kind, depth):
    unit = b"\x91" if kind == "array" else b"\x81\xa1k"
    blob = unit * depth + b"\xc0"
    expect_bounded(tmp_path, with_index(blob), "nests deeper than 64")


def test_nesting_bomb_inside_metadata(tmp_path):
    deep = c.RawMP(b"\x91" * 100_000 + b"\xc0")
    blob = index_blob(lambda idx: idx.__setitem__("metadata", {"k": deep}))
    expect_bounded(tmp_path, with_index(blob), "nests deeper than 64")


@pytest.mark.parametrize(
    "head, match",
    [
        (b"\xdd\xff\xff\xff\xff", "max_array_len"),  # array32 of 2^32-1 items
        (b"\xdf\xff\xff\xff\xff", "max_map_len"),  # map32 of 2^32-1 pairs
        (b"\xdb\xff\xff\xff\xff", "msgpack"),  # str32 of 4 GiB
        (b"\xc6\xff\xff\xff\xff", "msgpack"),  # bin32 of 4 GiB
        (b"\xc9\xff\xff\xff\xff\x01", "msgpack"),  # ext32 of 4 GiB
        (b"\xdc\xff\xff", "max_array_len"),  # array16 of 65535 items
    ],
    ids=["array32", "map32", "str32", "bin32", "ext32", "array16"],
)
def test_length_bomb_at_top_level(tmp_path, head, match):
    expect_bounded(tmp_path, with_index(head + b"\xc0" * 8), match)


@pytest.mark.parametrize(
    "head",
    [
        b"\xdd\xff\xff\xff\xff",
        b"\xdf\xff\xff\xff\xff",
        b"\xdb\xff\xff\xff\xff",
        b"\xc6\xff\xff\xff\xff",
    ],
    ids=["array32", "map32", "str32", "bin32"],
)
def test_length_bomb_nested(tmp_path, head):
    blob = index_blob(lambda idx: idx.__setitem__("metadata", {"k": c.RawMP(head)}))
    expect_bounded(tmp_path, with_index(blob), "msgpack")


def test_length_bomb_in_tensor_name(tmp_path):
    def edit(idx):
        idx["tensors"][0]["name"] = c.RawMP(b"\xdb\xff\xff\xff\xf0" + b"w")

    expect_bounded(tmp_path, with_index(index_blob(edit)), "msgpack")


# ----------------------------------------------------------------------------- map keys


@pytest.mark.parametrize(
    "where",
    ["top", "tensor", "node", "config", "parts", "metadata", "attachment", "leaf"],
)
def test_duplicate_map_keys(tmp_path, where):
    def edit(idx):
        t = idx["tensors"]
        if where == "top":
            return c.Pairs(tuple(idx.items()) + (("tensors", []),))
        if where == "tensor":
            t[0] = c.Pairs(tuple(t[0].items()) + (("name", "evil"),))
        elif where == "node":
            t[0]["encoding"] = c.Pairs(tuple(t[0]["encoding"].items()) + (("codec", "zstd"),))
        elif where == "config":
            t[1]["encoding"]["parts"]["data"]["config"] = c.Pairs((("level", 3), ("level", 99)))
        elif where == "parts":
            t[0]["encoding"]["parts"] = c.Pairs((("data", c.leaf(0)), ("data", c.leaf(1))))
        elif where == "metadata":
            idx["metadata"] = c.Pairs((("format", "toy"), ("format", "evil")))
        elif where == "attachment":
            a = idx["attachments"][0]
            idx["attachments"][0] = c.Pairs(tuple(a.items()) + (("name", "../x"),))
        elif where == "leaf":
            t[0]["encoding"]["parts"]["data"] = c.Pairs((("segment", 0), ("segment", 0)))
        return None

    expect_error(tmp_path, with_index(index_blob(edit)), "duplicate map key", error=cmf.FormatError)


@pytest.mark.parametrize(
    "key, typename",
    [
        (1, "int"),
        (None, "NoneType"),
        (b"name", "bytes"),
        (1.5, "float"),
        (True, "bool"),
        (c.RawMP(b"\x91\x01"), "list"),
        (c.RawMP(b"\x81\xa1a\x01"), "dict"),
    ],
    ids=["int", "nil", "bin", "float", "bool", "array", "map"],
)
@pytest.mark.parametrize("where", ["top", "tensor", "metadata"])
def test_non_string_keys(tmp_path, key, typename, where):
    def edit(idx):
        if where == "top":
            return c.Pairs(tuple(idx.items()) + ((key, 1),))
        if where == "tensor":
            idx["tensors"][0] = c.Pairs(tuple(idx["tensors"][0].items()) + ((key, 1),))
        else:
            idx["metadata"] = c.Pairs(((key, "v"),))
        return None

    expect_error(
        tmp_path,
        with_index(index_blob(edit)),
        f"map key must be a string, found {typename}",
        error=cmf.FormatError,
    )


# ----------------------------------------------------------------------------- odd values


@pytest.mark.parametrize(
    "ext",
    [
        c.Ext(1, b"\x00"),
        c.Ext(-1, b"\x00\x00\x00\x00"),
        c.Ext(127, b"x" * 16),
        c.Ext(5, b"abc"),
        c.Ext(-1, b"\x00" * 8),
    ],
    ids=["fixext1", "timestamp32", "fixext16", "ext8", "timestamp64"],
)
@pytest.mark.parametrize("where", ["metadata", "shape", "top"])
def test_extension_types(tmp_path, ext, where):
    def edit(idx):
        if where == "metadata":
            idx["metadata"]["x"] = ext
        elif where == "shape":
            idx["tensors"][0]["shape"] = [ext, 3]
        else:
            return [ext]
        return None

    expect_error(
        tmp_path,
        with_index(index_blob(edit)),
        ("extension type", "type Timestamp"),
        error=cmf.FormatError,
    )


@pytest.mark.parametrize(
    "bad",
    [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"w\x80"],
    ids=["ff", "bad-continuation", "surrogate", "over-max", "lone-continuation"],
)
@pytest.mark.parametrize("where", ["name", "key", "dtype"])
def test_invalid_utf8(tmp_path, bad, where):
    s = c.RawMP(c.str_header(len(bad)) + bad)

    def edit(idx):
        if where == "name":
            idx["tensors"][0]["name"] = s
        elif where == "key":
            idx["metadata"] = c.Pairs(((s, 1),))
        else:
            idx["tensors"][0]["dtype"] = s

    expect_error(tmp_path, with_index(index_blob(edit)), "msgpack", error=cmf.FormatError)


@pytest.mark.parametrize("extra", [b"\xc0", b"\x00", b"\x80", index_blob()[:5]])
def test_trailing_bytes_after_the_index_object(tmp_path, extra):
    expect_error(tmp_path, with_index(index_blob() + extra), "msgpack", error=cmf.FormatError)


@pytest.mark.parametrize("cut", [1, 2, 10])
def test_truncated_index_object(tmp_path, cut):
    expect_error(tmp_path, with_index(index_blob()[:-cut]), "msgpack", error=cmf.FormatError)


@pytest.mark.parametrize(
    "blob", [b"\xc1", b"\xc1" * 5, b"\x81\xc1\xc0"], ids=["c1", "c1x5", "key-c1"]
)
def test_never_used_byte(tmp_path, blob):
    expect_error(tmp_path, with_index(blob), "reserved type byte", error=cmf.FormatError)


def test_two_index_objects(tmp_path):
    expect_error(tmp_path, with_index(index_blob() + index_blob()), "msgpack")


def test_validate_on_bombs_never_raises(tmp_path):
    for i, blob in enumerate(
        [b"\x91" * 100_000, b"\xdd\xff\xff\xff\xff", b"\xc1", b"\x81\x01\x02"]
    ):
        report = cmf.validate(write(tmp_path, with_index(blob), f"b{i}.cmf"))
        assert not report.valid and len(report.errors) == 1


def test_container_count_bomb_is_bounded():
    """3 MB of empty maps would build 3 M dicts; the object budget stops it first."""
    import tracemalloc

    from cmf.index import unpack
    from cmf.limits import Limits

    n = 3_000_000
    bomb = b"\xdd" + n.to_bytes(4, "big") + b"\x80" * n  # array32 of n empty maps
    with pytest.raises(cmf.LimitError, match="more maps and arrays"):
        unpack(bomb, cmf.limits.DEFAULT_LIMITS)
    tracemalloc.start()
    try:
        with pytest.raises(cmf.LimitError, match="more maps and arrays"):
            unpack(bomb, Limits(max_index_objects=100_000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"peak {peak >> 20} MiB"
