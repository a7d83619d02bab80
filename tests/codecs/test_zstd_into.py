"""The ``zstd`` codec's decoding into a numpy buffer (frames of 64 KiB and more): the same bytes
as python-zstandard's one-shot ``decompress()``, and the same refusals of hostile frames
(spec/codecs/zstd.md § Errors), checked here for both paths."""

from __future__ import annotations

import numpy as np
import pytest
import zstandard

from cmf.codecs import BytesSpec
from cmf.codecs import zstd as zstd_module
from cmf.codecs.zstd import Zstd, frame_length
from cmf.errors import FormatError
from tests.attacks import craft as c

RNG = np.random.default_rng(7)
BIG = (RNG.standard_normal(1 << 17).astype(np.float32).view(np.uint8) & 0x3F).tobytes()  # 512 KiB
SMALL = BIG[:1000]
N = len(BIG)


def decode(blob: bytes, n: int, into: bool) -> bytes | memoryview:
    """Decode with the buffer path (``into``) or the one-shot path, whatever the size."""
    old = zstd_module._INTO_MIN
    zstd_module._INTO_MIN = 0 if into else 1 << 62
    try:
        return Zstd().decode({"data": blob}, BytesSpec(n))
    finally:
        zstd_module._INTO_MIN = old


GOOD = {
    "level 3": zstandard.ZstdCompressor(level=3).compress(BIG),
    "literals only": Zstd(level=1, literals_only=True).encode(BIG, BytesSpec(len(BIG)))["data"],
    "checksum": zstandard.ZstdCompressor(write_checksum=True).compress(BIG),
    "level 19": zstandard.ZstdCompressor(level=19).compress(BIG),
    "raw blocks": c.zstd_frame(BIG),
    "raw blocks, not single segment": c.zstd_frame(BIG, single_segment=False),
    "rle blocks": c.zstd_frame(rle=(9, 300_000)),
    "small": zstandard.ZstdCompressor().compress(SMALL),
}


@pytest.mark.parametrize("name", list(GOOD))
def test_both_paths_give_the_same_bytes(name):
    frame = GOOD[name]
    n = zstandard.get_frame_parameters(frame).content_size
    fast, slow = decode(frame, n, True), decode(frame, n, False)
    assert bytes(fast) == bytes(slow) == zstandard.ZstdDecompressor().decompress(frame)
    assert frame_length(frame) == len(frame)


def test_damage_inside_a_block_decodes_alike_on_both_paths():
    # (what a frame without a checksum cannot show; the segment's CRC-32C catches it)
    frame = GOOD["level 3"][:40] + bytes(200) + GOOD["level 3"][240:]
    assert bytes(decode(frame, N, True)) == bytes(decode(frame, N, False))


def test_large_frames_decode_into_a_writable_buffer_by_default():
    frame = GOOD["level 3"]
    out = Zstd().decode({"data": memoryview(frame)}, BytesSpec(len(BIG)))
    assert isinstance(out, memoryview) and not out.readonly and out.nbytes == len(BIG)
    assert bytes(out) == BIG
    small = Zstd().decode({"data": GOOD["small"]}, BytesSpec(len(SMALL)))
    assert isinstance(small, bytes) and small == SMALL


def _flip_block_type(frame: bytes, kind: int) -> bytes:
    out = bytearray(frame)
    at = zstandard.frame_header_size(frame)
    header = int.from_bytes(out[at : at + 3], "little")
    out[at : at + 3] = (header & ~6 | kind << 1).to_bytes(3, "little")
    return bytes(out)


BAD = {
    "trailing zero byte": (GOOD["level 3"] + b"\x00", N),
    "trailing 3 bytes": (GOOD["level 3"] + b"abc", N),
    "trailing 64 bytes": (GOOD["level 3"] + bytes(64), N),
    "trailing empty frame": (GOOD["level 3"] + c.zstd_frame(b""), N),
    "two frames": (GOOD["raw blocks"] + GOOD["raw blocks"], N),
    "two halves": (c.zstd_frame(BIG[: N // 2], declared=N) + c.zstd_frame(BIG[N // 2 :]), N),
    "skippable frame after": (GOOD["level 3"] + c.skippable_frame(b"xyz"), N),
    "skippable frame only": (c.skippable_frame(bytes(N)), N),
    "skippable then real": (c.skippable_frame(b"xx") + GOOD["level 3"], N),
    "truncated in a block": (GOOD["level 3"][:-100], N),
    "truncated in a raw block": (GOOD["raw blocks"][:-3], N),
    "truncated checksum": (GOOD["checksum"][:-2], N),
    "truncated to the header": (GOOD["level 3"][:8], N),
    "wrong checksum": (c.zstd_frame(BIG, checksum=0xDEADBEEF), N),
    "declares more": (c.zstd_frame(BIG, declared=N + 1), N + 1),
    "declares less": (c.zstd_frame(BIG, declared=N - 1), N - 1),
    "rle longer than declared": (c.zstd_frame(rle=(1, 300_000), declared=200_000), 200_000),
    "reserved block type": (_flip_block_type(GOOD["raw blocks"], 3), N),
    "raw block called compressed": (_flip_block_type(GOOD["raw blocks"], 2), N),
    "dictionary id": (c.zstd_frame(BIG, dict_id=7), N),
    "no content size": (c.zstd_frame(BIG, declared=None), N),
    "not a frame": (bytes(N), N),
}


@pytest.mark.parametrize("into", [True, False], ids=["into", "one-shot"])
@pytest.mark.parametrize("name", list(BAD))
def test_hostile_frames_are_refused_on_both_paths(name, into):
    frame, n = BAD[name]
    with pytest.raises(FormatError, match="^zstd: "):
        decode(frame, n, into)


@pytest.mark.parametrize("cut", [0, 1, 4, 5, 6, 7, 8, 9, 10, 100])
def test_frame_length_refuses_a_frame_cut_short(cut):
    frame = c.zstd_frame(BIG)
    with pytest.raises(FormatError, match="^zstd: "):
        frame_length(frame[:cut])


def test_frame_length_counts_header_blocks_and_checksum():
    for frame in GOOD.values():
        assert frame_length(frame + b"tail") == len(frame)
