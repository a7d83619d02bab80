"""The ``zstd`` codec (spec/codecs/zstd.md): exactly one frame declaring its content size."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from cmf.codecs import ArraySpec, BytesSpec
from cmf.codecs.registry import codec_from_config
from cmf.codecs.zstd import Zstd
from cmf.dtypes import by_name
from cmf.errors import FormatError

DATA = b"".join(struct.pack("<I", i * i % 1000) for i in range(5000))  # compressible
SPEC = BytesSpec(len(DATA))


def frame(**kw) -> bytes:
    return zstandard.ZstdCompressor(**kw).compress(DATA)


def decode(blob: bytes, n: int = len(DATA)) -> bytes:
    return Zstd().decode({"data": blob}, BytesSpec(n))


@pytest.mark.parametrize(
    "config",
    [
        {"level": 3, "literals_only": False},
        {"level": 1, "literals_only": True},
        {"level": -131072, "literals_only": False},
        {"level": 22, "literals_only": True},
    ],
)
def test_config_round_trip(config):
    codec = Zstd.from_config(config)
    assert codec.to_config() == config
    assert Zstd.from_config(codec.to_config()) == codec == codec_from_config("zstd", config)


@pytest.mark.parametrize(
    "config",
    [
        {"level": 3, "extra": 1},
        {"window": 10},
        {"level": 23},
        {"level": -131073},
        {"level": 3.0},
        {"level": True},
        {"literals_only": 1},
        {"literals_only": "yes"},
        [],
        None,
    ],
)
def test_config_rejected(config):
    with pytest.raises(FormatError):
        Zstd.from_config(config)


def test_resolve():
    assert Zstd().resolve(BytesSpec(10)) == {"data": BytesSpec(None)}
    with pytest.raises(FormatError, match="must be known"):
        Zstd().resolve(BytesSpec(None))
    with pytest.raises(FormatError, match="decodes to bytes"):
        Zstd().resolve(ArraySpec(by_name("u8"), (10,)))


@pytest.mark.parametrize(
    "codec", [Zstd(), Zstd(level=1, literals_only=True), Zstd(level=19), Zstd(level=-5)]
)
def test_round_trip_and_frame_header(codec):
    blob = codec.encode(DATA, SPEC)["data"]
    assert len(blob) < len(DATA)
    params = zstandard.get_frame_parameters(blob)
    assert params.content_size == len(DATA) and params.dict_id == 0
    assert codec.decode({"data": blob}, SPEC) == DATA
    assert Zstd().decode({"data": blob}, SPEC) == DATA  # decoding ignores the config


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=3000), st.booleans())
def test_round_trip_any_bytes(data, literals):
    codec = Zstd(level=1, literals_only=literals)
    blob = codec.encode(data, BytesSpec(len(data)))["data"]
    assert codec.decode({"data": memoryview(blob)}, BytesSpec(len(data))) == data


def test_accepts_frame_checksum():
    assert decode(frame(write_checksum=True)) == DATA


def test_rejects_missing_content_size():
    with pytest.raises(FormatError, match="does not declare its content size"):
        decode(frame(write_content_size=False))


@pytest.mark.parametrize("n", [len(DATA) - 1, len(DATA) + 1, 0])
def test_rejects_wrong_declared_size(n):
    with pytest.raises(FormatError, match=f"frame declares {len(DATA)} bytes, {n} expected"):
        decode(frame(), n)


@pytest.mark.parametrize("extra", [b"\x00", b"junk", b"\x28\xb5\x2f\xfd"])
def test_rejects_trailing_data(extra):
    with pytest.raises(FormatError, match="unused data|corrupt"):
        decode(frame() + extra)


def test_rejects_two_frames():
    half = len(DATA) // 2
    c = zstandard.ZstdCompressor()
    two = c.compress(DATA[:half]) + c.compress(DATA[half:])
    with pytest.raises(FormatError):
        decode(two)  # declares half, expected all
    with pytest.raises(FormatError, match="unused data|corrupt"):
        decode(frame() + frame())
    with pytest.raises(FormatError, match="unused data|corrupt"):
        decode(c.compress(DATA[:half]) + c.compress(DATA[half:]), half)


def test_rejects_truncated_and_corrupt_frames():
    good = frame(write_checksum=True)
    with pytest.raises(FormatError):
        decode(good[:-5])
    with pytest.raises(FormatError):
        decode(good[:3])
    with pytest.raises(FormatError, match="not a zstd frame"):
        decode(b"")
    bad = bytearray(good)
    bad[-1] ^= 0xFF
    with pytest.raises(FormatError):
        decode(bytes(bad))


def test_rejects_dictionary_frames():
    samples = [bytes(DATA[i : i + 256]) for i in range(0, len(DATA) - 256, 97)]
    d = zstandard.train_dictionary(2048, samples)
    blob = zstandard.ZstdCompressor(dict_data=d).compress(DATA)
    assert zstandard.get_frame_parameters(blob).dict_id == d.dict_id() != 0
    with pytest.raises(FormatError, match="dictionary"):
        decode(blob)


def test_rejects_impossible_expansion_before_allocating():
    """A tiny frame cannot declare 1 GiB: refused on the header alone."""
    big = 1 << 30
    header = zstandard.ZstdCompressor().compress(bytes(4096))
    params = zstandard.get_frame_parameters(header)
    assert params.content_size == 4096
    # forge a frame header declaring `big` bytes: magic, FHD (8-byte FCS, single segment), FCS
    forged = b"\x28\xb5\x2f\xfd" + bytes([0xE0]) + struct.pack("<Q", big) + b"\x01\x00\x00"
    assert zstandard.get_frame_parameters(forged).content_size == big
    with pytest.raises(FormatError, match="cannot hold"):
        decode(forged, big)


def test_empty_input():
    blob = Zstd().encode(b"", BytesSpec(0))["data"]
    assert zstandard.get_frame_parameters(blob).content_size == 0
    assert decode(blob, 0) == b""


def test_encode_accepts_memoryviews_of_arrays():
    a = np.arange(1000, dtype=np.int32)
    blob = Zstd().encode(memoryview(a).cast("B"), BytesSpec(a.nbytes))["data"]
    assert decode(blob, a.nbytes) == a.tobytes()
