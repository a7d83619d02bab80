"""Hostile zstd frames (spec/codecs/zstd.md): the declared size is checked before decompressing."""

from __future__ import annotations

import struct

import pytest

import cmf

from . import craft as c
from .common import B, base_parts, expect_error, expect_ok

TIB = 1 << 40
N = len(B.tobytes())  # 16: tensor 'b' is raw > zstd > segment 1


def with_frame(frame: bytes, *, size: int | None = None) -> bytes:
    """Base file with segment 1 (tensor 'b', u8[16] via raw > zstd) replaced by ``frame``."""
    segments, index = base_parts()
    segments[1] = frame
    if size is not None:
        index["tensors"][1]["shape"] = [size]
    return c.assemble(segments, index)


def test_control_hand_made_frame_is_accepted(tmp_path):
    snap = expect_ok(tmp_path, with_frame(c.zstd_frame(B.tobytes())))
    assert snap["tensors"]["b"][2] == B.tobytes()


def test_20_byte_frame_declaring_1tib_for_a_small_tensor(tmp_path):
    frame = c.zstd_frame(rle=(0, 1000), declared=TIB)
    assert len(frame) <= 20
    expect_error(
        tmp_path,
        with_frame(frame),
        f"frame declares {TIB} bytes, {N} expected",
        error=cmf.FormatError,
    )


def test_20_byte_frame_declaring_1tib_for_a_1tib_tensor(tmp_path):
    frame = c.zstd_frame(rle=(0, 1000), declared=TIB)
    expect_error(
        tmp_path, with_frame(frame, size=TIB), "over the memory budget", error=cmf.LimitError
    )


@pytest.mark.parametrize("size", [1 << 30, 1 << 34])  # within the 16 GiB default budget
def test_tiny_frame_declaring_a_size_within_budget(tmp_path, size):
    # Declared size == expected size <= budget: python-zstandard would allocate it all up front.
    frame = c.zstd_frame(rle=(0, 1000), declared=size)
    expect_error(tmp_path, with_frame(frame, size=size), "cannot hold", error=cmf.FormatError)


@pytest.mark.parametrize("declared", [0, 1, N - 1, N + 1, 255, 256, 1 << 20, (1 << 64) - 2])
def test_frame_declaring_a_different_size(tmp_path, declared):
    frame = c.zstd_frame(B.tobytes(), declared=declared)
    expect_error(tmp_path, with_frame(frame), f"frame declares {declared} bytes, {N} expected")


def test_frame_without_content_size(tmp_path):
    frame = c.zstd_frame(B.tobytes(), declared=None)
    expect_error(tmp_path, with_frame(frame), "does not declare its content size")


@pytest.mark.parametrize("junk", [b"\x00", b"junk", bytes(64), c.zstd_frame(b"")])
def test_trailing_bytes_after_the_frame(tmp_path, junk):
    frame = c.zstd_frame(B.tobytes()) + junk
    expect_error(tmp_path, with_frame(frame), ("zstd: corrupt frame", "unused data"))


def test_two_frames(tmp_path):
    half = B.tobytes()[:8]
    frame = c.zstd_frame(half, declared=N) + c.zstd_frame(B.tobytes()[8:])
    expect_error(tmp_path, with_frame(frame), "zstd: corrupt frame")
    frame = c.zstd_frame(B.tobytes()) + c.zstd_frame(B.tobytes())
    expect_error(tmp_path, with_frame(frame), ("zstd: corrupt frame", "unused data"))


def test_skippable_frame_only(tmp_path):
    expect_error(tmp_path, with_frame(c.skippable_frame(bytes(N))), "zstd")


def test_skippable_frame_then_real_frame(tmp_path):
    frame = c.skippable_frame(b"xx", declared=N)[:8] + b"xx" + c.zstd_frame(B.tobytes())
    expect_error(tmp_path, with_frame(frame), "zstd")


def test_frame_with_dictionary_id(tmp_path):
    frame = c.zstd_frame(B.tobytes(), dict_id=7)
    expect_error(tmp_path, with_frame(frame), "needs dictionary 7")


def test_frame_with_wrong_checksum(tmp_path):
    frame = c.zstd_frame(B.tobytes(), checksum=0xDEADBEEF)
    expect_error(tmp_path, with_frame(frame), "zstd: corrupt frame")


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\x28",
        b"\x28\xb5\x2f",
        b"\x28\xb5\x2f\xfd",
        b"\x00" * 16,
        b"PK\x03\x04" + bytes(12),
        b"\x28\xb5\x2f\xfd\x28",
    ],  # reserved bit 3 of the frame header descriptor set
    ids=["empty", "1", "3", "magic-only", "zeros", "zip", "reserved-bit"],
)
def test_not_a_frame_header(tmp_path, frame):
    expect_error(tmp_path, with_frame(frame), "zstd: not a zstd frame header")


def test_block_shorter_than_declared(tmp_path):
    frame = c.zstd_frame(B.tobytes()[:10], declared=N)
    expect_error(tmp_path, with_frame(frame), ("zstd: corrupt frame", "decoded to 10 bytes"))


def test_rle_block_longer_than_declared(tmp_path):
    frame = c.zstd_frame(rle=(1, 1000), declared=N)
    expect_error(tmp_path, with_frame(frame), "zstd: corrupt frame")


def test_frame_truncated_in_a_block(tmp_path):
    frame = c.zstd_frame(B.tobytes())[:-3]
    expect_error(tmp_path, with_frame(frame), "zstd: corrupt frame")


def test_block_type_reserved(tmp_path):
    frame = bytearray(c.zstd_frame(B.tobytes()))
    # Block header right after magic(4) + descriptor(1) + 1-byte content size.
    header = int.from_bytes(frame[6:9], "little")
    header |= 3 << 1  # block type 3 is reserved
    frame[6:9] = header.to_bytes(3, "little")
    expect_error(tmp_path, with_frame(bytes(frame)), "zstd: corrupt frame")


def test_compressed_block_of_garbage(tmp_path):
    frame = bytearray(c.zstd_frame(B.tobytes()))
    header = int.from_bytes(frame[6:9], "little")
    frame[6:9] = (header | (2 << 1)).to_bytes(3, "little")  # claim 'compressed', keep raw bytes
    expect_error(tmp_path, with_frame(bytes(frame)), "zstd: corrupt frame")


def test_attachment_frame_declaring_other_size(tmp_path):
    segments, index = base_parts()
    segments[5] = c.zstd_frame(b"{}", declared=2)
    expect_error(tmp_path, c.assemble(segments, index), "frame declares 2 bytes, 34 expected")


def test_attachment_size_over_limit_with_tiny_frame(tmp_path):
    segments, index = base_parts()
    segments[5] = c.zstd_frame(rle=(0x20, 1000), declared=TIB)
    index["attachments"][0]["size"] = TIB
    expect_error(
        tmp_path,
        c.assemble(segments, index),
        f"is {TIB} bytes, limit {1 << 30}",
        error=cmf.LimitError,
    )


def test_frame_header_fields_written_by_hand_parse_as_intended():
    frame = c.zstd_frame(rle=(0, 1000), declared=TIB)
    magic, fhd = struct.unpack("<IB", frame[:5])
    assert magic == 0xFD2FB528 and fhd >> 6 == 3 and fhd & 0x20
    assert struct.unpack("<Q", frame[5:13])[0] == TIB
