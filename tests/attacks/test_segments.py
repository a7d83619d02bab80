"""Segment table (spec/format.md §3.1): tiling, bounds, CRCs, references."""

from __future__ import annotations

import numpy as np
import pytest

import cmf

from . import craft as c
from .common import base_parts, expect_error, expect_ok, write


def with_table(edit=None):
    """Base file with its segment table edited by ``edit(table)`` (a list of [off, len, crc])."""
    segments, index = base_parts()
    table = c.segment_table(segments)
    if edit is not None:
        edit(table)
    return c.assemble(segments, {"segments": table, **index})


def set_field(i, field, value):
    def edit(table):
        table[i][field] = value

    return edit


OFF, LEN, CRC = 0, 1, 2


@pytest.mark.parametrize(
    "edit, match",
    [
        (set_field(1, OFF, 64), "segment 1 starts at 64, expected 128"),  # overlaps segment 0
        (set_field(1, OFF, 100), "segment 1 starts at 100"),  # overlaps, misaligned
        (set_field(0, OFF, 0), "segment 0 starts at 0, expected 64"),  # over the preamble
        (set_field(0, OFF, 65), "segment 0 starts at 65, expected 64"),  # misaligned
        (set_field(0, OFF, 128), "segment 0 starts at 128, expected 64"),  # gap: not tiling
        (set_field(2, OFF, 256 + 64), "starts at 320"),  # gap in the middle
        (set_field(0, OFF, (1 << 64) - 1), "starts at 18446744073709551615"),  # wrapping
        (set_field(0, OFF, (1 << 64) - 64), "starts at 18446744073709551552"),
        (set_field(5, LEN, 1 << 40), "past the index"),  # out of the file
        (set_field(5, LEN, (1 << 64) - 1), "past the index"),  # wrapping length
        (set_field(0, LEN, (1 << 64) - 64), "past the index"),
        (set_field(0, LEN, 0), "segment 1 starts at 128, expected 64"),  # shorter: not tiling
        (set_field(0, LEN, 47), "segment 0 holds 47 bytes, 48 expected"),  # same tiling, short
        (set_field(0, LEN, 65), "segment 1 starts at 128, expected 192"),  # longer: overlaps
        (set_field(0, OFF, -64), "offset must be an integer in [0, 18446744073709551616)"),
        (set_field(0, LEN, -1), "length must be an integer"),
        (set_field(0, CRC, 1 << 32), "crc32c must be an integer in [0, 4294967296)"),
        (set_field(0, CRC, -1), "crc32c must be an integer"),
        (set_field(0, OFF, 64.0), "offset must be an integer"),
        (set_field(0, OFF, True), "offset must be an integer"),
        (set_field(0, LEN, "48"), "length must be an integer"),
        (set_field(0, CRC, None), "crc32c must be an integer"),
        (lambda t: t[0].pop(), "segment 0 must be [offset, length, crc32c]"),
        (lambda t: t[0].append(0), "segment 0 must be [offset, length, crc32c]"),
        (lambda t: t.__setitem__(3, {"offset": 0}), "segment 3 must be [offset, length, crc32c]"),
        (lambda t: t.__setitem__(3, 5), "segment 3 must be [offset, length, crc32c]"),
        (lambda t: t.pop(), "index starts at"),  # last segment dropped: data area not covered
        (lambda t: t.append([c.align(t[-1][0] + t[-1][1]), 10, 0]), "past the index"),
        (lambda t: t.append([c.align(t[-1][0] + t[-1][1]), 0, 0]), "segment 6 is not referenced"),
        (lambda t: t.reverse(), "segment 0 starts at"),
        (lambda t: t.insert(1, list(t[0])), "segment 1 starts at 64"),  # same segment twice
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_segment_table(tmp_path, edit, match):
    expect_error(tmp_path, with_table(edit), match, error=cmf.FormatError)


@pytest.mark.parametrize("i", range(6))
def test_segment_crc_mismatch_in_index(tmp_path, i):
    data = with_table(set_field(i, CRC, 0x12345678))
    expect_error(tmp_path, data, f"segment {i} CRC-32C", error=cmf.ChecksumError)


@pytest.mark.parametrize("i", range(6))
def test_segment_byte_changed(tmp_path, i):
    data = bytearray(with_table())
    off, length, _ = c.parse(bytes(data)).index["segments"][i]
    data[off + length // 2] ^= 0x40
    expect_error(tmp_path, bytes(data), f"segment {i} CRC-32C", error=cmf.ChecksumError)


def test_unreferenced_segment(tmp_path):
    segments, index = base_parts()
    segments.append(b"orphan")
    expect_error(tmp_path, c.assemble(segments, index), "segment 6 is not referenced")


def test_unreferenced_empty_segment(tmp_path):
    segments, index = base_parts()
    segments.append(b"")
    expect_error(tmp_path, c.assemble(segments, index), "segment 6 is not referenced")


def test_segment_referenced_twice(tmp_path):
    segments, index = base_parts()
    index["tensors"].append(c.tensor("w2", "f32", [4, 3], c.raw(c.leaf(0))))
    expect_error(tmp_path, c.assemble(segments, index), "segment 0 is referenced 2 times")


def test_segment_referenced_twice_in_one_tree(tmp_path):
    segments, index = base_parts()
    index["tensors"][2]["encoding"] = c.byteplanes([c.leaf(2), c.leaf(2)], rotate=True)
    segments[3] = b""  # keep tiling simple: segment 3 now unreferenced and empty
    expect_error(tmp_path, c.assemble(segments, index), ("referenced 2 times", "not referenced"))


def test_attachment_and_tensor_share_a_segment(tmp_path):
    segments, index = base_parts()
    index["attachments"].append(c.attachment("w.bin", 48, c.leaf(0)))
    expect_error(tmp_path, c.assemble(segments, index), "segment 0 is referenced 2 times")


@pytest.mark.parametrize(
    "number, match",
    [
        (6, "segment number must be an integer in [0, 6), found 6"),
        (1 << 40, "segment number must be an integer in [0, 6)"),
        ((1 << 64) - 1, "segment number must be an integer in [0, 6)"),
        (-1, "segment number must be an integer"),
        (True, "segment number must be an integer"),
        (0.0, "segment number must be an integer"),
        ("0", "segment number must be an integer"),
        (None, "segment number must be an integer"),
        ([0], "segment number must be an integer"),
    ],
)
def test_segment_number_out_of_range(tmp_path, number, match):
    segments, index = base_parts()
    index["tensors"][0]["encoding"] = c.raw(c.leaf(number))
    expect_error(tmp_path, c.assemble(segments, index), match, error=cmf.FormatError)


def test_segment_number_with_no_segments(tmp_path):
    index = {"tensors": [c.tensor("t", "u8", [0], c.raw(c.leaf(0)))]}
    expect_error(tmp_path, c.assemble([], index), ("does not exist", "segment number"))


def test_leaf_with_extra_key(tmp_path):
    segments, index = base_parts()
    index["tensors"][0]["encoding"] = c.raw({"segment": 0, "offset": 64})
    expect_error(tmp_path, c.assemble(segments, index), "leaf has unknown key 'offset'")


@pytest.mark.parametrize(
    "where, seg, match",
    [
        (0, b"\x00" * 47, "segment 0 holds 47 bytes, 48 expected"),
        (0, b"\x00" * 49, "segment 0 holds 49 bytes, 48 expected"),
        (0, b"", "segment 0 holds 0 bytes, 48 expected"),
        (2, b"\x00" * 4, "segment 2 holds 4 bytes, 5 expected"),  # a byte plane
        (4, b"\x00\x01", "segment 4 holds 2 bytes, 3 expected"),  # bool raw
    ],
)
def test_leaf_length_mismatch_vs_resolved_spec(tmp_path, where, seg, match):
    segments, index = base_parts()
    segments[where] = seg
    expect_error(tmp_path, c.assemble(segments, index), match, error=cmf.FormatError)


def test_attachment_leaf_length_mismatch(tmp_path):
    segments, index = base_parts()
    index["attachments"][0]["encoding"] = c.leaf(5)
    segments[5] = b"x" * 10
    index["attachments"][0]["size"] = 11
    expect_error(tmp_path, c.assemble(segments, index), "segment 5 holds 10 bytes, 11 expected")


def test_nonzero_padding_between_segments(tmp_path):
    segments, index = base_parts()
    data = c.assemble(segments, index, pad_byte=0xAA)
    snap = expect_ok(tmp_path, data)  # a lazy reader MAY skip padding checks ...
    assert set(snap["tensors"]) == {"w", "b", "h", "w_tied", "flags"}
    report = cmf.validate(write(tmp_path, data, "v.cmf"))  # ... a full validation may not
    assert not report.valid
    assert any("padding bytes" in e and "not all zero" in e for e in report.errors)
    assert len(report.errors) >= 5  # every gap is listed


def test_zero_length_segments_are_fine(tmp_path):
    index = {
        "tensors": [
            c.tensor("e", "f32", [0, 7], c.raw(c.leaf(0))),
            c.tensor("f", "u8", [0], c.raw(c.leaf(1))),
        ]
    }
    snap = expect_ok(tmp_path, c.assemble([b"", b""], index))
    assert snap["tensors"]["e"] == ("float32", (0, 7), b"")


def test_saved_file_with_segment_offsets_shifted(tmp_path):
    path = write(tmp_path, b"", "s.cmf")
    cmf.save_file({"a": np.arange(64, dtype=np.float32), "b": np.ones(3, np.int8)}, path)
    data = open(path, "rb").read()

    def shift(idx):
        for s in idx["segments"]:
            s[0] += 64

    expect_error(tmp_path, c.rewrite_index(data, shift), "segment 0 starts at 128, expected 64")
