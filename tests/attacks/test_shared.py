"""Shared values (spec/format.md §3.5, §5) and the codebook codec in hostile files: every bad
reference, spec, count, size, CRC and decoded value is a CmfError naming the problem, and
``cmf validate`` lists each one."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import cmf
import cmf.codecs.codebook  # noqa: F401  (registers the codec)

from . import craft as c
from .common import expect_error, expect_ok, write

TABLE = np.array([-1.0, -0.25, 0.5, 2.0], dtype="<f4")
IDX_A = np.array([0, 1, 2, 3, 3, 2], dtype=np.uint8)  # tensor a: f32 [2, 3]
IDX_B = np.array([3, 0, 1, 1], dtype=np.uint8)  # tensor b: f16 [4]


def codebook(indices, table, k=4, **scale):
    config = {"k": k, "block": 0, "axis": None, "scale_dtype": None, **scale}
    parts = {"indices": indices, "codebook": table}
    return {"codec": "codebook", "config": config, "parts": parts}


def shared(i):
    return {"shared": i}


def base_parts():
    """Two tensors sharing one codebook (shared value 0, stored raw in segment 0)."""
    segments = [TABLE.tobytes(), IDX_A.tobytes(), IDX_B.tobytes()]
    index = {
        "shared": [{"dtype": "f32", "shape": [4], "encoding": c.raw(c.leaf(0))}],
        "tensors": [
            c.tensor("a", "f32", [2, 3], codebook(c.raw(c.leaf(1)), shared(0))),
            c.tensor("b", "f16", [4], codebook(c.raw(c.leaf(2)), shared(0))),
        ],
    }
    return copy.deepcopy(segments), copy.deepcopy(index)


def build(edit=None, segments_edit=None, **overrides):
    segments, index = base_parts()
    if segments_edit is not None:
        segments_edit(segments)
    if edit is not None:
        edit(index)
    return c.assemble(segments, index, **overrides)


def test_the_base_file_is_valid(tmp_path):
    snap = expect_ok(tmp_path, build(minor=1))
    a = np.frombuffer(snap["tensors"]["a"][2], "<f4").reshape(2, 3)
    b = np.frombuffer(snap["tensors"]["b"][2], "<f2")
    assert np.array_equal(a, TABLE[IDX_A].reshape(2, 3)) and np.array_equal(
        b, TABLE[IDX_B].astype("<f2")
    )
    report = cmf.validate(write(tmp_path, build(minor=1)))
    assert report.valid and report.warnings == [] and report.shared_checked == 1


def test_minor_0_with_shared_values_is_read_but_warned(tmp_path):
    path = write(tmp_path, build(minor=0))
    assert cmf.validate(path).valid
    assert any(
        "shared values (cmf 1.1)" in w and "minor version is 0" for w in cmf.validate(path).warnings
    )


def test_codebook_without_shared_values_needs_minor_1_too(tmp_path):
    def inline(index):
        del index["shared"]
        index["tensors"][0]["encoding"]["parts"]["codebook"] = c.raw(c.leaf(0))
        index["tensors"][1]["encoding"]["parts"]["codebook"] = c.raw(c.leaf(3))

    data = build(inline, lambda s: s.append(TABLE.tobytes()))
    report = cmf.validate(write(tmp_path, data))
    assert report.valid and any("codec 'codebook' (cmf 1.1)" in w for w in report.warnings)


def ref_at(tensor: int, value):
    def edit(index):
        index["tensors"][tensor]["encoding"]["parts"]["codebook"] = value

    return edit


def set_shared(key, value, i=0):
    def edit(index):
        index["shared"][i][key] = value

    return edit


@pytest.mark.parametrize(
    "edit, match",
    [
        # references
        (ref_at(0, shared(1)), "shared value 1 does not exist (1 in the index)"),
        (
            ref_at(0, shared(-1)),
            "shared value number must be an integer in [0, 18446744073709551616)",
        ),
        (ref_at(0, shared(0.0)), "shared value number must be an integer"),
        (ref_at(0, shared(True)), "shared value number must be an integer"),
        (ref_at(0, shared("0")), "shared value number must be an integer"),
        (ref_at(0, shared(None)), "shared value number must be an integer"),
        (ref_at(0, shared((1 << 64) - 1)), "shared value 18446744073709551615 does not exist"),
        (ref_at(0, {"shared": 0, "extra": 1}), "shared reference has unknown key 'extra'"),
        (ref_at(0, {"shared": 0, "segment": 0}), "leaf has unknown key 'shared'"),
        (
            ref_at(0, {"shared": 0, "codec": "raw", "config": {}, "parts": {}}),
            "unknown key 'codec'",
        ),
        # the spec a reference stands for
        (set_shared("shape", [2, 2]), "shared value 0 is f32[2, 2], f32[4] expected"),
        (
            lambda i: i["tensors"][0]["encoding"]["parts"].update(indices=shared(0)),
            "shared value 0 is f32[4], u8[2, 3] expected",
        ),
        (
            lambda i: i["tensors"][0]["encoding"]["parts"]["indices"]["parts"].update(
                data=shared(0)
            ),
            "shared value 0 is f32[4], bytes[6] expected",
        ),
        (
            lambda i: i["tensors"][0].update(encoding=shared(0)),
            "shared value 0 is f32[4], f32[2, 3] expected",
        ),
        (
            lambda i: i.update(attachments=[c.attachment("x", 16, shared(0))]),
            "f32[4], bytes[16] expected",
        ),
        # shared values do not chain
        (
            set_shared("encoding", shared(0)),
            "a shared value's encoding must not reference a shared value",
        ),
        (set_shared("encoding", c.raw(shared(0))), "must not reference a shared value"),
        (
            lambda i: i["shared"].append({"dtype": "f32", "shape": [4], "encoding": shared(0)}),
            "must not reference a shared value",
        ),
        # unreferenced, malformed
        (
            lambda i: i["shared"].append(
                {"dtype": "u8", "shape": [0], "encoding": c.raw(c.leaf(3))}
            ),
            "shared value 1 is not referenced",
        ),
        (
            lambda i: i.update(shared={"0": i["shared"][0]}),
            "index 'shared' must be an array, found dict",
        ),
        (lambda i: i.update(shared=None), "index 'shared' must be an array"),
        (lambda i: i["shared"].__setitem__(0, [1, 2, 3]), "shared value 0 must be a map"),
        (lambda i: i["shared"][0].pop("shape"), "shared value 0 lacks required key 'shape'"),
        (lambda i: i["shared"][0].pop("encoding"), "shared value 0 lacks required key 'encoding'"),
        (set_shared("name", "codebook"), "shared value 0 has unknown key 'name'"),
        (set_shared("dtype", "f128"), "shared value 0: unknown dtype 'f128'"),
        (set_shared("shape", [-4]), "shape dimension must be an integer"),
        (set_shared("shape", "4"), "shape must be an array"),
        (set_shared("encoding", c.leaf(0)), "a segment holds bytes, f32[4] expected"),
        (set_shared("encoding", c.raw(c.leaf(1))), "segment 1 holds 6 bytes, 16 expected"),
        (
            set_shared("shape", [1 << 40]),
            "shared values decode to more than 1073741824 bytes together",
        ),
        # segments: the shared tree counts in the exactly-once rule
        (
            lambda i: i["tensors"][0]["encoding"]["parts"]["indices"]["parts"].update(
                data=c.leaf(0)
            ),
            "segment 0 holds 16 bytes, 6 expected",
        ),
    ],
)
def test_bad_shared_references_and_entries(tmp_path, edit, match):
    data = build(edit, lambda s: s.append(b""))
    expect_error(tmp_path, data, match)


@pytest.mark.parametrize(
    "dtype, shape, data, match",
    [
        ("f16", [4], TABLE.astype("<f2").tobytes(), "shared value 0 is f16[4], f32[4] expected"),
        ("f32", [5], TABLE.tobytes() + bytes(4), "shared value 0 is f32[5], f32[4] expected"),
        ("f64", [], bytes(8), "shared value 0 is f64[], f32[4] expected"),
        ("u8", [16], TABLE.tobytes(), "shared value 0 is u8[16], f32[4] expected"),
    ],
)
def test_a_well_formed_shared_value_of_another_spec(tmp_path, dtype, shape, data, match):
    edit = lambda i: i["shared"][0].update(dtype=dtype, shape=shape)  # noqa: E731
    expect_error(tmp_path, build(edit, lambda s: s.__setitem__(0, data)), match)


def test_a_huge_shared_value_with_a_tiny_segment(tmp_path):
    expect_error(
        tmp_path,
        build(set_shared("shape", [1 << 40])),
        "holds 16 bytes, 4398046511104 expected",
        limits=cmf.Limits(max_shared_bytes=1 << 60),
    )


def test_a_segment_used_by_a_shared_value_and_a_tensor(tmp_path):
    def edit(index):
        index["tensors"].append(c.tensor("t", "f32", [4], c.raw(c.leaf(0))))

    expect_error(tmp_path, build(edit), "segment 0 is referenced 2 times")


def test_a_tensor_may_be_a_shared_value(tmp_path):
    def edit(index):
        index["tensors"].append(c.tensor("whole", "f32", [4], shared(0)))

    snap = expect_ok(tmp_path, build(edit))
    assert snap["tensors"]["whole"][2] == TABLE.tobytes()


def test_shared_limits(tmp_path):
    def second(index):
        index["shared"].append({"dtype": "f32", "shape": [4], "encoding": c.raw(c.leaf(3))})
        index["tensors"][1]["encoding"]["parts"]["codebook"] = shared(1)

    data = build(second, lambda s: s.append(TABLE.tobytes()))
    expect_ok(tmp_path, data)
    expect_error(
        tmp_path,
        data,
        "2 shared values exceed the limit 1",
        limits=cmf.Limits(max_shared=1),
        error=cmf.LimitError,
    )
    expect_error(
        tmp_path,
        data,
        "shared values decode to more than 31 bytes together",
        limits=cmf.Limits(max_shared_bytes=31),
        error=cmf.LimitError,
    )
    expect_error(
        tmp_path,
        build(),
        "over the memory budget of 15",
        limits=cmf.Limits(max_tensor_bytes=15),
        error=cmf.LimitError,
    )


@pytest.mark.parametrize("levels, ok", [(15, True), (16, False)])
def test_shared_encoding_depth_is_its_own_tree(tmp_path, levels, ok):
    # codebook nodes nested through their codebook part: each level is f32[4] again
    node = c.raw(c.leaf(0))
    for _ in range(levels):
        node = codebook(c.raw(c.leaf(3)), node)
    data = build(set_shared("encoding", node), lambda s: s.append(bytes([0, 1, 2, 3])))
    if ok:  # 16 codec levels in the shared tree, the tensors' trees are 2 deep
        expect_error(tmp_path, data, "segment 3 is referenced 15 times")
    else:
        expect_error(tmp_path, data, "codec tree deeper than 16", error=cmf.LimitError)


def test_a_bad_crc_in_a_shared_segment_is_found_when_first_used(tmp_path):
    segments, index = base_parts()
    table = c.segment_table(segments)
    table[0][2] ^= 1
    data = c.assemble(segments, {"segments": table, **index})
    path = write(tmp_path, data)
    with cmf.open(path) as f:  # nothing read at open
        with pytest.raises(cmf.ChecksumError, match="segment 0 CRC-32C"):
            f.get_tensor("a")
        with pytest.raises(cmf.ChecksumError, match="shared value 0: segment 0 CRC-32C"):
            f.get_tensor("b")  # the failure is kept, not retried
    report = cmf.validate(path)
    assert not report.valid and len(report.errors) == 1 and "segment 0 CRC" in report.errors[0]


@pytest.mark.parametrize(
    "table, match",
    [
        (
            np.array([-1.0, np.nan, 0.5, 2.0], "<f4"),
            "part 'codebook' holds a non-finite value (nan)",
        ),
        (
            np.array([-1.0, 0.0, np.inf, 2.0], "<f4"),
            "part 'codebook' holds a non-finite value (inf)",
        ),
    ],
)
def test_a_non_finite_shared_codebook_fails_every_user(tmp_path, table, match):
    data = build(segments_edit=lambda s: s.__setitem__(0, table.tobytes()))
    expect_error(tmp_path, data, match)
    report = cmf.validate(write(tmp_path, data))
    assert sum(match in e for e in report.errors) == 2  # tensors a and b


@pytest.mark.parametrize("bad", [4, 5, 255])
def test_codebook_index_out_of_range(tmp_path, bad):
    idx = IDX_A.copy()
    idx[4] = bad
    data = build(segments_edit=lambda s: s.__setitem__(1, idx.tobytes()))
    expect_error(tmp_path, data, f"index {bad} is out of range for a codebook of 4 entries")


@pytest.mark.parametrize(
    "config, match",
    [
        ({"k": 0}, "k must be in [1, 65536]"),
        ({"k": 4.0}, "'k' must be int"),
        ({"block": 2}, "block must be 0 and axis null"),
        ({"scale_dtype": "f8"}, "scale_dtype must be null or one of"),
        ({"k": 5}, "shared value 0 is f32[4], f32[5] expected"),
        ({"k": 257}, ("f32[257] expected", "holds 6 bytes, 12 expected")),  # u16 indices too
        ({"extra": 0}, "unknown config keys ['extra']"),
    ],
)
def test_bad_codebook_configs(tmp_path, config, match):
    def edit(index):
        index["tensors"][0]["encoding"]["config"].update(config)

    expect_error(tmp_path, build(edit), match)


def test_codebook_scale_part(tmp_path):
    scale = np.array([2.0, np.nan], "<f2")

    def edit(index):
        node = index["tensors"][0]["encoding"]
        node["config"].update(block=0, axis=-1, scale_dtype="f16")
        node["parts"]["scale"] = c.raw(c.leaf(3))

    expect_error(
        tmp_path,
        build(edit, lambda s: s.append(scale.tobytes())),
        "part 'scale' holds a non-finite value",
    )
    good = np.array([2.0, -0.5], "<f2")
    snap = expect_ok(tmp_path, build(edit, lambda s: s.append(good.tobytes())))
    a = np.frombuffer(snap["tensors"]["a"][2], "<f4").reshape(2, 3)
    assert np.array_equal(a, TABLE[IDX_A].reshape(2, 3) * good.astype("<f4")[:, None])

    def missing(index):
        edit(index)
        del index["tensors"][0]["encoding"]["parts"]["scale"]

    expect_error(
        tmp_path,
        build(missing, lambda s: s.append(b"")),
        "expected ['codebook', 'indices', 'scale']",
    )


def test_validate_lists_every_shared_problem(tmp_path):
    def edit(index):
        index["shared"].append({"dtype": "f32", "shape": [4], "encoding": shared(0)})  # nested
        index["shared"].append({"dtype": "f32", "shape": [4], "encoding": c.raw(c.leaf(3))})
        index["tensors"][1]["encoding"]["parts"]["codebook"] = shared(1)  # refers to the bad one
        index["tensors"].append(
            c.tensor("c", "f32", [2], codebook(c.raw(c.leaf(4)), shared(7), k=4))
        )
        index["tensors"].append(
            c.tensor("d", "f32", [4], codebook(c.raw(c.leaf(5)), shared(2), k=4))
        )

    segments_extra = [
        np.array([0, 1, np.nan, 3], "<f4").tobytes(),
        bytes([0, 1]),
        bytes([0, 1, 2, 3]),
    ]
    data = build(edit, lambda s: s.extend(segments_extra))
    report = cmf.validate(write(tmp_path, data))
    text = "\n".join(report.errors)
    assert "shared value 1" in text and "must not reference a shared value" in text
    assert "tensor 'b'" in text or "shared value 1 is invalid" in text
    assert "shared value 7 does not exist" in text
    assert "part 'codebook' holds a non-finite value" in text  # shared value 2, decoded
    assert len(report.errors) >= 4
