"""cmf.index: the msgpack index (spec/format.md §3) parsed into checked objects and back."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmf import dtypes
from cmf.codecs import ArraySpec, BytesSpec
from cmf.codecs.byteplanes import BytePlanes
from cmf.codecs.raw import Raw
from cmf.codecs.zstd import Zstd
from cmf.errors import CmfError, FormatError, LimitError, UnsupportedError
from cmf.index import (
    Attachment,
    CodecNode,
    Index,
    Leaf,
    Problems,
    Segment,
    TensorEntry,
    check_attachment_name,
    check_metadata,
    node_obj,
    pack,
    parse_index,
    tensor_nbytes,
    unpack,
)
from cmf.limits import Limits

LIMITS = Limits()
F32 = dtypes.by_name("f32")


def tiling(*lengths: int) -> list[Segment]:
    out, off = [], 64
    for n in lengths:
        out.append(Segment(off, n, 0))
        off = -(-(off + n) // 64) * 64
    return out


def end_of(segments: list[Segment]) -> int:
    if not segments:
        return 64
    last = segments[-1]
    return -(-(last.offset + last.length) // 64) * 64


def sample_index() -> Index:
    segs = tiling(40, 10, 10, 10, 10, 7)
    spec = ArraySpec(F32, (2, 5))
    raw = CodecNode(Raw(), {"data": Leaf(0, BytesSpec(40))}, spec)
    planes = CodecNode(
        BytePlanes(rotate=True), {f"p{j}": Leaf(1 + j, BytesSpec(10)) for j in range(4)}, spec
    )
    att = CodecNode(Zstd(level=3), {"data": Leaf(5, BytesSpec(None))}, BytesSpec(100))
    return Index(
        segments=segs,
        tensors=[
            TensorEntry("a", spec, encoding=raw),
            TensorEntry("b", spec, encoding=planes, error={"rel_rmse": 0.5}),
            TensorEntry("c", spec, alias="a"),
        ],
        attachments=[Attachment("dir/file.txt", 100, att)],
        metadata={"k": [1, 2.5, None, True, {"x": "y"}]},
    )


def parse(blob_or_obj, index_offset=None, limits=LIMITS, problems=None):
    obj = unpack(blob_or_obj, limits) if isinstance(blob_or_obj, bytes) else blob_or_obj
    return parse_index(obj, limits, index_offset, problems or Problems())


def test_pack_parse_round_trip():
    index = sample_index()
    back = parse(pack(index), end_of(index.segments))
    assert back.segments == index.segments
    assert back.tensors == index.tensors
    assert back.attachments == index.attachments
    assert back.metadata == index.metadata
    assert back.unknown_keys == []
    assert pack(back) == pack(index)


def test_node_obj_is_the_spec_shape():
    index = sample_index()
    assert node_obj(index.tensors[0].encoding) == {
        "codec": "raw",
        "config": {},
        "parts": {"data": {"segment": 0}},
    }
    assert node_obj(index.tensors[1].encoding)["config"] == {"rotate": True}
    assert tensor_nbytes(index.tensors[0]) == 40


def test_optional_keys_default():
    obj = msgpack.unpackb(pack(Index()), raw=False)
    assert obj == {"segments": [], "tensors": []}
    back = parse(obj, 64)
    assert back.attachments == [] and back.metadata == {}


def test_unknown_top_level_key_is_a_warning():
    obj = msgpack.unpackb(pack(sample_index()), raw=False)
    obj["zz_future"] = 1
    problems = Problems(collect=True)
    back = parse(obj, problems=problems)
    assert back.unknown_keys == ["zz_future"]
    assert problems.errors == [] and "zz_future" in problems.warnings[0]


@pytest.mark.parametrize("where", ["tensor", "leaf", "node", "attachment"])
def test_unknown_keys_below_top_level_are_errors(where):
    obj = msgpack.unpackb(pack(sample_index()), raw=False)
    target = {
        "tensor": obj["tensors"][0],
        "leaf": obj["tensors"][0]["encoding"]["parts"]["data"],
        "node": obj["tensors"][0]["encoding"],
        "attachment": obj["attachments"][0],
    }[where]
    target["extra"] = 0
    with pytest.raises(FormatError, match="unknown key 'extra'|lacks|unknown"):
        parse(obj)


def test_missing_required_keys():
    for key in ("segments", "tensors"):
        obj = msgpack.unpackb(pack(sample_index()), raw=False)
        del obj[key]
        with pytest.raises(FormatError, match=f"lacks required key '{key}'"):
            parse(obj)


@pytest.mark.parametrize(
    "segments,message",
    [
        ([[65, 1, 0]], "starts at 65, expected 64"),
        ([[64, 10, 0], [74, 1, 0]], "starts at 74, expected 128"),
        ([[64, 10, 0], [64, 1, 0]], "expected 128"),
        ([[64, 10]], r"\[offset, length, crc32c\]"),
        ([[64, -1, 0]], "integer in"),
        ([[64, 1, 1 << 32]], "crc32c"),
        ([[64, True, 0]], "integer in"),
    ],
)
def test_segments_must_tile(segments, message):
    with pytest.raises(FormatError, match=message):
        parse({"segments": segments, "tensors": []})


def test_index_offset_must_follow_the_last_segment():
    segs = [[64, 10, 0]]
    with pytest.raises(FormatError, match="not referenced"):  # tiling is fine; unused segment
        parse({"segments": segs, "tensors": []}, None)
    with pytest.raises(FormatError, match="expected 128"):
        parse({"segments": segs, "tensors": []}, 192)
    with pytest.raises(FormatError, match="past the index"):
        parse({"segments": [[64, 200, 0]], "tensors": []}, 128)


def test_every_segment_used_exactly_once():
    obj = msgpack.unpackb(pack(sample_index()), raw=False)
    obj["tensors"][1]["encoding"]["parts"]["p0"] = {"segment": 0}  # 0 twice, 1 never
    with pytest.raises(FormatError, match="segment 0 holds 40 bytes, 10 expected"):
        parse(obj)
    obj = msgpack.unpackb(pack(sample_index()), raw=False)
    obj["segments"].append([end_of(sample_index().segments), 0, 0])
    with pytest.raises(FormatError, match="segment 6 is not referenced"):
        parse(obj)


@pytest.mark.parametrize(
    "change,error,message",
    [
        (lambda t: t.update(dtype="f128"), UnsupportedError, "unknown dtype 'f128'"),
        (lambda t: t.update(shape=[2, -5]), FormatError, "shape dimension"),
        (lambda t: t.update(shape=[1 << 53]), FormatError, "shape dimension"),
        (lambda t: t.update(shape=[1] * 33), LimitError, "rank 33"),
        (lambda t: t.update(shape="2x5"), FormatError, "shape must be an array"),
        (lambda t: t.update(name=""), FormatError, "1 to 1024 bytes"),
        (lambda t: t.update(name="a\x00b"), FormatError, "NUL"),
        (lambda t: t.update(name=7), FormatError, "must be a string"),
        (lambda t: t.update(alias="a"), FormatError, "exactly one of 'encoding' and 'alias'"),
        (lambda t: t.pop("encoding"), FormatError, "exactly one of"),
        (lambda t: t.update(error={"x": "big"}), FormatError, "'error' must be a map"),
        (lambda t: t["encoding"].update(config={"rotate": 1}), FormatError, "must be bool"),
        (lambda t: t["encoding"].update(codec="nope"), UnsupportedError, "unknown codec 'nope'"),
        (lambda t: t["encoding"]["parts"].pop("p3"), FormatError, "has parts"),
    ],
)
def test_bad_tensor_entries(change, error, message):
    obj = msgpack.unpackb(pack(sample_index()), raw=False)
    change(obj["tensors"][1])
    with pytest.raises(error, match=message):
        parse(obj)


@pytest.mark.parametrize(
    "alias,message",
    [("zzz", "earlier tensor"), ("b", "earlier tensor"), (5, "earlier tensor")],
)
def test_alias_rules(alias, message):
    obj = msgpack.unpackb(pack(sample_index()), raw=False)
    obj["tensors"][2]["alias"] = alias
    obj["tensors"].append({"name": "d", "dtype": "f32", "shape": [2, 5], "alias": "c"})
    if alias == "b":  # b exists and has an encoding: fine; the alias of an alias is not
        with pytest.raises(FormatError, match="earlier tensor that has an encoding"):
            parse(obj)
        return
    with pytest.raises(FormatError, match=message):
        parse(obj)


def test_alias_must_match_spec_and_be_earlier():
    obj = msgpack.unpackb(pack(sample_index()), raw=False)
    obj["tensors"][2]["shape"] = [10]
    with pytest.raises(FormatError, match="alias of 'a' has spec f32\\[10\\]"):
        parse(obj)
    obj = msgpack.unpackb(pack(sample_index()), raw=False)
    obj["tensors"].insert(0, obj["tensors"].pop(2))  # alias before its target
    with pytest.raises(FormatError, match="earlier tensor"):
        parse(obj)


def test_duplicate_tensor_names():
    obj = msgpack.unpackb(pack(sample_index()), raw=False)
    obj["tensors"][1]["name"] = "a"
    with pytest.raises(FormatError, match="duplicate tensor name 'a'"):
        parse(obj)


def test_problems_collect_every_bad_entry():
    obj = msgpack.unpackb(pack(sample_index()), raw=False)
    obj["tensors"][0]["dtype"] = "nope"
    obj["tensors"][1]["shape"] = "bad"
    problems = Problems(collect=True)
    index = parse(obj, problems=problems)
    assert len(problems.errors) >= 2
    assert "tensor 'a'" in problems.errors[0] and "nope" in problems.errors[0]
    assert [t.name for t in index.tensors] == []  # c aliases a, which is gone


@pytest.mark.parametrize(
    "name",
    ["config.json", "a/b/c.txt", "tokenizer/merges.txt", "x" * 4096, "é", ".hidden", "a..b", "1:x"],
)
def test_attachment_names_accepted(name):
    assert check_attachment_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "/etc/passwd",
        "../x",
        "a/../../x",
        "a/./b",
        "a//b",
        "a/",
        ".",
        "..",
        "C:x",
        "c:\\x",
        "a\\b",
        "nul\x00",
        "x" * 4097,
        5,
        None,
        "\ud800",
    ],
)
def test_attachment_names_rejected(name):
    with pytest.raises(FormatError):
        check_attachment_name(name)


@pytest.mark.parametrize(
    "value",
    [
        {},
        {
            "a": None,
            "b": True,
            "c": -(2**63),
            "d": 2**64 - 1,
            "e": 1e308,
            "f": "s",
            "g": [[]],
            "h": {"i": {}},
        },
    ],
)
def test_metadata_accepted(value):
    assert check_metadata(value) is value


@pytest.mark.parametrize(
    "value,error",
    [
        ([], FormatError),
        ({1: 2}, FormatError),
        ({"a": {None: 1}}, FormatError),
        ({"a": b"bin"}, FormatError),
        ({"a": 2**64}, FormatError),
        ({"a": -(2**63) - 1}, FormatError),
        ({"a": [[[[[[[[1]]]]]]]]}, LimitError),
        ({"a": 1j}, FormatError),
        ({"a": "\ud800"}, FormatError),
    ],
)
def test_metadata_rejected(value, error):
    with pytest.raises(error):
        check_metadata(value)


@pytest.mark.parametrize(
    "items",
    [
        ["a", "\ud800", "b"],  # a lone surrogate in an array of strings
        ["\ud83d", "\ude00"],  # halves of a pair, each alone
        [1, 2**64],
        [-(2**63) - 1, 0],
        [1, "x", 2**64],  # mixed scalars
        ["x", 2.5, None, True, "\udfff"],
        [1, b"bin"],  # not all scalars: each item on its own
        [1, 1j],
    ],
)
def test_metadata_arrays_of_scalars_give_each_items_verdict(items):
    with pytest.raises(FormatError):
        check_metadata({"a": items})
    with pytest.raises(FormatError):
        check_metadata({"a": [["ok"], items]})


def test_metadata_arrays_of_scalars_accepted():
    value = {
        "a": ["x"] * 300 + ["ünï 🙂", ""],
        "b": list(range(1000)) + [2**64 - 1, -(2**63)],
        "c": [1, "x", 2.5, None, True, False],
        "d": [],
        "e": ("t", 1),
    }
    assert check_metadata(value) is value


def test_metadata_depth_limit_is_8():
    """The top map is level 1, and a scalar counts as a level, as an array or map does."""
    value: object = 1
    for _ in range(6):
        value = [value]
    check_metadata({"a": value})  # map, 6 arrays, int: 8 levels
    check_metadata({"a": [[[[[[[]]]]]]]})  # map, 7 arrays: 8 levels
    with pytest.raises(LimitError):
        check_metadata({"a": [value]})
    with pytest.raises(LimitError):
        check_metadata({"a": [[[[[[[{}]]]]]]]})


PARSED_METADATA = [
    {},
    {"a": 1, "b": [1, "x", 2.5, None, True], "c": {"d": {"e": []}}},
    {"a": ["x"] * 300 + ["ünï 🙂", ""], "b": list(range(1000)) + [2**64 - 1, -(2**63)]},
    {"deep": [[[[[["leaf"]]]]]], "deep_empty": [[[[[[[]]]]]]]},  # depth 8: allowed
    {"a": [[[[[[[1]]]]]]]},  # depth 9
    {"a": [[[[[[[{}]]]]]]]},
    {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": 1}}}}}}}},
    {"a": b"bin"},
    {"a": [1, "x", b"bin"]},
    {"a": {"b": [b"", 2]}},
    [1],
    "text",
]


@pytest.mark.parametrize("value", PARSED_METADATA)
def test_parsed_metadata_gets_check_metadatas_verdict(value):
    """The reader checks metadata that msgpack parsed by its binary values and depth alone
    (msgpack's strings are UTF-8, its ints in range, its keys strings by the pairs hook):
    the same verdict as check_metadata, and the same error class."""
    blob = pack(Index(segments=[], metadata={}))
    obj = unpack(blob, LIMITS)
    obj["metadata"] = value
    obj = unpack(msgpack.packb(obj, use_bin_type=True), LIMITS)
    try:
        check_metadata(value)
        want = None
    except CmfError as exc:
        want = type(exc)
    if want is None:
        assert parse_index(obj, LIMITS, None, Problems()).metadata == value
    else:
        with pytest.raises(want, match="metadata"):
            parse_index(obj, LIMITS, None, Problems())


def test_codecs_are_built_once_per_configuration_but_checked_by_type():
    """The tree parser keeps the codecs it built by name and configuration with the values'
    types, so a zstd level given as true after one given as 1 is still refused."""
    index = sample_index()
    obj = msgpack.unpackb(pack(index), raw=False)
    assert parse(obj, end_of(index.segments)).attachments[0].encoding.codec == Zstd(level=3)
    obj["attachments"][0]["encoding"]["config"]["level"] = True
    with pytest.raises(FormatError, match="level"):
        parse(obj, end_of(index.segments))


# -- the bounded msgpack parser -------------------------------------------------------------


def test_unpack_rejects_duplicate_and_non_string_keys():
    dup = b"\x82\xa1a\x01\xa1a\x02"  # {"a": 1, "a": 2}
    with pytest.raises(FormatError, match="duplicate map key 'a'"):
        unpack(dup, LIMITS)
    with pytest.raises(FormatError, match="map key must be a string"):
        unpack(msgpack.packb({1: 2}), LIMITS)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x81\x91\x01\x02", "map key must be a string, found list"),  # unhashable key
        (b"\x81\x80\x02", "map key must be a string, found dict"),
        (b"\x82\x01\x02\xc3\x03", "map key must be a string, found int"),  # 1 and True collide
        (b"\x82\xa1a\x01\xa1a\x02", "duplicate map key 'a'"),
        (b"\x83\xa1a\x01\xa1a\x02\x05\x06", "duplicate map key 'a'"),  # the first problem
        (b"\x83\x05\x06\xa1a\x01\xa1a\x02", "map key must be a string, found int"),
        (b"\x81\xc4\x01a\x01", "map key must be a string, found bytes"),
    ],
)
def test_unpack_names_the_first_bad_key(data, message):
    with pytest.raises(FormatError, match=message):
        unpack(data, LIMITS)


def test_unpack_rejects_timestamps_at_any_depth():
    stamp = msgpack.packb(msgpack.Timestamp(1, 2))
    for data in (stamp, b"\x92\x01" + stamp, b"\x81\xa1k\x91\x92\x80" + stamp):
        with pytest.raises(FormatError, match="type Timestamp is not allowed"):
            unpack(data, LIMITS)


def test_unpack_rejects_ext_types_and_bad_bytes():
    with pytest.raises(FormatError, match="extension type 5"):
        unpack(msgpack.packb(msgpack.ExtType(5, b"x")), LIMITS)
    with pytest.raises(FormatError, match="not valid msgpack"):
        unpack(b"\xc1", LIMITS)
    with pytest.raises(FormatError, match="not valid msgpack"):
        unpack(msgpack.packb({"a": 1}) + b"\x00", LIMITS)  # trailing data
    with pytest.raises(FormatError):
        unpack(b"\x92\x01", LIMITS)  # truncated array


def test_unpack_bounds_nesting_and_objects():
    deep = b"\x91" * 65 + b"\x00"
    with pytest.raises(LimitError, match="nests deeper than 64"):
        unpack(deep, LIMITS)
    unpack(b"\x91" * 63 + b"\x00", LIMITS)
    unpack(b"\x91" * 63 + b"\x90", LIMITS)  # 64 arrays, the innermost empty
    with pytest.raises(LimitError, match="nests deeper than 64"):
        unpack(b"\x92\x01" + b"\x81\xa1k" * 64 + b"\x80", LIMITS)  # maps, beside a scalar
    assert unpack(b"\x93\x01\x91\x90\xa1s", LIMITS) == [1, [[]], "s"]
    many = msgpack.packb([[] for _ in range(100)])
    with pytest.raises(LimitError, match="more maps and arrays"):
        unpack(many, Limits(max_index_objects=50))
    with pytest.raises(LimitError):
        unpack(msgpack.packb({"x": "y" * 100}), Limits(max_index_bytes=10))


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=64))
def test_unpack_raises_only_cmf_errors(blob):
    try:
        obj = unpack(blob, LIMITS)
    except CmfError:
        return
    try:
        parse_index(obj, LIMITS, None, Problems())
    except CmfError:
        pass
