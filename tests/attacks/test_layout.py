"""Preamble, trailer and index placement (spec/format.md §1, §2): every lie gives a CmfError."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import cmf

from . import craft as c
from .common import EXPECTED, base_file, expect_error, expect_ok, write

GOOD = base_file()
P = c.parse(GOOD)
SIZE = len(GOOD)


# ----------------------------------------------------------------------------- preamble


@pytest.mark.parametrize(
    "magic",
    [
        bytes(8),
        b"\x89CMF\r\n\x1a\x0b",
        b"\x89cmf\r\n\x1a\n",
        b"PK\x03\x04\x14\x00\x00\x00",
        b"CMFINDX\x00",
        b"\x89CMF\n\n\x1a\n",
    ],
)
def test_bad_magic(tmp_path, magic):
    expect_error(tmp_path, base_file(magic=magic), "magic", error=cmf.FormatError)


@pytest.mark.parametrize("size", [0, 1, 8, 16, 63, 64, 95])
def test_file_too_short(tmp_path, size):
    expect_error(tmp_path, GOOD[:size], "at least 96")


@pytest.mark.parametrize("major", [0, 2, 3, 255, 65535])
def test_unknown_major_version_is_named(tmp_path, major):
    exc = expect_error(
        tmp_path, base_file(major=major), "major version", error=cmf.UnsupportedError
    )
    assert f"version {major} " in str(exc)


@pytest.mark.parametrize("flags", [1, 2, 0x80000000, 0xFFFFFFFF])
def test_nonzero_flags(tmp_path, flags):
    expect_error(tmp_path, base_file(flags=flags), "flags", error=cmf.UnsupportedError)


@pytest.mark.parametrize("minor", [1, 7, 65535])
def test_higher_minor_version_is_accepted(tmp_path, minor):
    snap = expect_ok(tmp_path, base_file(minor=minor))
    assert snap["tensors"]["w"][2] == EXPECTED["w"].tobytes()
    with cmf.open(write(tmp_path, base_file(minor=minor), "m.cmf")) as f:
        assert f.minor == minor
    assert cmf.validate(write(tmp_path, base_file(minor=minor), "v.cmf")).valid


def test_nonzero_preamble_padding_is_reported_by_validate(tmp_path):
    data = base_file(preamble_pad=b"\x00" * 47 + b"\x01")
    path = write(tmp_path, data)
    report = cmf.validate(path)
    assert not report.valid
    assert any("padding bytes 16..64" in e for e in report.errors), report.errors


# ----------------------------------------------------------------------------- trailer


@pytest.mark.parametrize("magic", [bytes(8), b"CMFINDX\x01", b"cmfindx\x00", b"\x89CMF\r\n\x1a\n"])
def test_bad_trailer_magic(tmp_path, magic):
    expect_error(tmp_path, base_file(trailer_magic=magic), "trailer magic", error=cmf.FormatError)


@pytest.mark.parametrize("reserved", [1, 0x80000000, 0xFFFFFFFF])
def test_nonzero_trailer_reserved(tmp_path, reserved):
    expect_error(tmp_path, base_file(reserved=reserved), "reserved")


@pytest.mark.parametrize(
    "length, match",
    [
        (P.index_length + 1, "but the file has"),
        (P.index_length - 1, "but the file has"),
        (P.index_length + 64, "but the file has"),
        (1, "but the file has"),
        (0, "outside [1,"),
        (SIZE, "but the file has"),
        ((1 << 28) + 1, "outside [1,"),  # one over max_index_bytes
        ((1 << 64) - 1, "outside [1,"),
    ],
    ids=["+1", "-1", "+64", "one", "zero", "file_size", "over_limit", "2^64-1"],
)
def test_index_length_lies(tmp_path, length, match):
    expect_error(tmp_path, base_file(index_length=length), match)


def test_index_length_over_a_configured_limit(tmp_path):
    limits = cmf.Limits(max_index_bytes=P.index_length - 1)
    expect_error(
        tmp_path, GOOD, f"outside [1, {P.index_length - 1}]", limits=limits, error=cmf.LimitError
    )


@pytest.mark.parametrize(
    "offset, match",
    [
        (P.index_offset + 1, "not a multiple of 64"),
        (P.index_offset - 1, "not a multiple of 64"),
        (100, "not a multiple of 64"),
        (0, "not a multiple of 64"),  # before the data area
        (P.index_offset + 64, "but the file has"),
        (SIZE - SIZE % 64 + 64, "but the file has"),  # past EOF
        (1 << 40, "but the file has"),
        ((1 << 64) - 64, "but the file has"),
    ],
    ids=["+1", "-1", "100", "zero", "+64", "past_eof", "1TiB", "2^64-64"],
)
def test_index_offset_lies(tmp_path, offset, match):
    expect_error(tmp_path, base_file(index_offset=offset), match)


def test_offset_plus_length_wrapping_2_64(tmp_path):
    # (offset + length + 32) mod 2^64 == file size: only unbounded arithmetic catches it.
    k = 1 << 14  # keeps length under the index limit, so the sum is what fails
    off = (1 << 64) - 64 * k
    length = SIZE - 32 + 64 * k
    assert (off + length + 32) % (
        1 << 64
    ) == SIZE and length <= cmf.limits.DEFAULT_LIMITS.max_index_bytes
    exc = expect_error(
        tmp_path, base_file(index_offset=off, index_length=length), "but the file has"
    )
    assert str(SIZE) in str(exc)


def test_index_offset_earlier_but_sum_consistent(tmp_path):
    # Claims the index starts 64 bytes early (inside the data area): the CRC no longer matches.
    data = base_file(index_offset=P.index_offset - 64, index_length=P.index_length + 64)
    expect_error(tmp_path, data, "index CRC-32C", error=cmf.ChecksumError)


def test_index_offset_earlier_with_matching_crc(tmp_path):
    # Same, with the CRC recomputed over the claimed bytes: the msgpack parse must then fail.
    start = P.index_offset - 64
    claimed = GOOD[start : SIZE - 32]
    data = base_file(index_offset=start, index_length=len(claimed), index_crc=c.crc32c(claimed))
    expect_error(tmp_path, data, ("index", "segment"))


@pytest.mark.parametrize("crc", [0, 0xFFFFFFFF, c.crc32c(b"x")])
def test_index_crc_mismatch(tmp_path, crc):
    expect_error(tmp_path, base_file(index_crc=crc), "index CRC-32C", error=cmf.ChecksumError)


def test_gap_between_data_and_index(tmp_path):
    expect_error(tmp_path, base_file(gap_after_data=bytes(64)), "right after the last segment")


def test_index_inside_the_data_area(tmp_path):
    segments, index = base_parts_with_table()
    # The table says the data ends at the true place; the trailer says the index is at 64.
    blob = c.mp(index)
    data = c.preamble() + blob
    data += bytes(c.align(len(data)) - len(data))
    data += c.trailer(64, len(blob), c.crc32c(blob))
    expect_error(tmp_path, data, ("past the index", "but the file has"))


def base_parts_with_table():
    from .common import base_parts

    segments, index = base_parts()
    return segments, {"segments": c.segment_table(segments), **index}


# ----------------------------------------------------------------------------- index shape


@pytest.mark.parametrize("obj", [[], [1, 2], 0, None, "segments", b"\x00", 1.5, True])
def test_index_not_a_map(tmp_path, obj):
    expect_error(tmp_path, c.assemble([], obj), "index must be a map")


@pytest.mark.parametrize("missing", ["segments", "tensors"])
def test_index_lacks_required_key(tmp_path, missing):
    segments, index = base_parts_with_table()
    del index[missing]
    expect_error(tmp_path, c.assemble(segments, c.mp(index)), f"lacks required key '{missing}'")


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("segments", {}, "'segments' must be an array"),
        ("segments", None, "'segments' must be an array"),
        ("tensors", {}, "'tensors' must be an array"),
        ("tensors", "w", "'tensors' must be an array"),
        ("attachments", {}, "'attachments' must be an array"),
        ("metadata", [], "metadata must be a map"),
        ("metadata", {"k": b"\x00"}, "binary"),
        (
            "metadata",
            {"k": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": 1}}}}}}}}},
            "deeper than 8",
        ),
        ("metadata", {"k": [[[[[[[[[1]]]]]]]]]}, "deeper than 8"),
    ],
)
def test_index_top_level_types(tmp_path, key, value, match):
    segments, index = base_parts_with_table()
    index[key] = value
    expect_error(tmp_path, c.assemble(segments, index), match)


def test_unknown_top_level_key_is_ignored_with_a_warning(tmp_path):
    segments, index = base_parts_with_table()
    index["x-later-minor"] = {"anything": [1, 2, 3]}  # ("shared" is defined since 1.1)
    data = c.assemble(segments, index)
    snap = expect_ok(tmp_path, data)
    assert snap["tensors"]["w"][2] == EXPECTED["w"].tobytes()
    report = cmf.validate(write(tmp_path, data, "v.cmf"))
    assert report.valid and any("'x-later-minor'" in w for w in report.warnings), report.warnings


def test_empty_file_of_no_tensors_is_valid(tmp_path):
    snap = expect_ok(tmp_path, c.assemble([], {"tensors": []}))
    assert snap == {"tensors": {}, "attachments": {}, "metadata": {}}


def test_not_a_regular_file(tmp_path):
    with pytest.raises(cmf.CmfError, match="not a regular file"):
        cmf.open(tmp_path)  # a directory
    if os.path.exists("/dev/zero"):
        with pytest.raises(cmf.CmfError, match="not a regular file"):
            cmf.open("/dev/zero")
    with pytest.raises(cmf.CmfError, match="cannot open"):
        cmf.open(tmp_path / "missing.cmf")
    report = cmf.validate(tmp_path / "missing.cmf")
    assert not report.valid


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_does_not_hang(tmp_path):
    fifo = tmp_path / "pipe.cmf"
    os.mkfifo(fifo)
    code = (
        "import sys, cmf\n"
        "try:\n    cmf.open(sys.argv[1])\n"
        "except cmf.CmfError as e:\n    print('CmfError:', e)\n"
        "r = cmf.validate(sys.argv[1]); print('valid' if r.valid else 'invalid')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(fifo)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "CmfError:" in out.stdout and "not a regular file" in out.stdout
    assert out.stdout.strip().endswith("invalid")
