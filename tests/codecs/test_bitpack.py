"""bitpack codec (spec/codecs/bitpack.md): the page's examples, round trips against an
independent bit-by-bit packer, the padding and length rules, config and spec checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cmf.codecs.bitpack  # noqa: F401  (registers the codec)
from cmf.codecs import ArraySpec, BytesSpec, codec_from_config
from cmf.codecs.bitpack import BitPack, pack, packed_length, unpack
from cmf.dtypes import BY_NAME
from cmf.errors import CmfError, FormatError
from cmf.index import CodecNode, Leaf
from cmf.limits import DEFAULT_LIMITS
from cmf.pipeline import apply, decode


def reference_pack(codes: np.ndarray, bits: int) -> bytes:
    """Spec definition, bit by bit: bit b of code i is stream bit i*bits+b, LSB-first bytes."""
    out = bytearray(packed_length(codes.size, bits))
    for i, code in enumerate(codes.reshape(-1).tolist()):
        for b in range(bits):
            if code >> b & 1:
                j = i * bits + b
                out[j // 8] |= 1 << (j % 8)
    return bytes(out)


def spec(dtype: str, shape) -> ArraySpec:
    return ArraySpec(BY_NAME[dtype], tuple(shape))


# ----------------------------------------------------------------------------- the page


PAGE_EXAMPLES = [  # (bits, codes, hex) from spec/codecs/bitpack.md
    (3, [5, 1, 7, 2, 0], "cd05"),
    (1, [1, 0, 1, 1, 0, 0, 1, 1, 1], "cd01"),
    (4, [3, 15, 0], "f300"),
    (10, [1023, 1, 512], "ff070020"),
    (7, [], ""),
]


@pytest.mark.parametrize("bits,codes,hexdata", PAGE_EXAMPLES)
def test_page_examples(bits, codes, hexdata):
    dtype = "u8" if bits <= 8 else "u16"
    codes = np.array(codes, dtype=BY_NAME[dtype].numpy)
    codec = BitPack(bits=bits)
    s = spec(dtype, codes.shape)
    data = codec.encode(codes, s)["data"]
    assert bytes(data).hex() == hexdata
    assert codec.resolve(s) == {"data": BytesSpec(len(hexdata) // 2)}
    back = codec.decode({"data": bytes.fromhex(hexdata)}, s)
    assert back.dtype == codes.dtype and back.tolist() == codes.tolist()


def test_the_integer_definition():
    """data is the little-endian bytes of sum u_i * 2**(i*bits)."""
    rng = np.random.default_rng(5)
    for bits in range(1, 17):
        codes = rng.integers(0, 1 << bits, 37)
        value = sum(int(u) << (i * bits) for i, u in enumerate(codes))
        want = value.to_bytes(packed_length(codes.size, bits), "little")
        assert pack(codes, bits) == want


# ----------------------------------------------------------------------------- round trips

shapes = st.lists(st.integers(0, 7), min_size=0, max_size=3).map(tuple)


@settings(max_examples=300, deadline=None)
@given(bits=st.integers(1, 16), shape=shapes, wide=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_round_trip_matches_reference(bits, shape, wide, seed):
    dtype = "u16" if bits > 8 or wide else "u8"
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 1 << bits, shape).astype(BY_NAME[dtype].numpy)
    s = spec(dtype, shape)
    codec = BitPack(bits=bits)
    (want_spec,) = codec.resolve(s).values()
    data = codec.encode(codes, s)["data"]
    assert len(data) == want_spec.length == math.ceil(math.prod(shape) * bits / 8)
    assert bytes(data) == reference_pack(codes, bits)
    back = codec.decode({"data": data}, s)
    assert back.dtype == BY_NAME[dtype].numpy and back.shape == tuple(shape)
    assert np.array_equal(back, codes)


@pytest.mark.parametrize("bits", [1, 3, 4, 5, 8, 12, 16])
def test_large_arrays_and_fast_paths(bits):
    rng = np.random.default_rng(bits)
    n = 100_003  # not a multiple of 8: a partial last group
    codes = rng.integers(0, 1 << bits, n).astype(np.uint16 if bits > 8 else np.uint8)
    data = pack(codes, bits)
    if bits in (3, 12):  # the general path against the bit-by-bit definition, on a prefix
        assert data[: 3 * bits] == reference_pack(codes[:24], bits)
    assert np.array_equal(unpack(data, n, bits), codes)


def test_nibbles_over_several_chunks():
    import cmf.codecs.bitpack as bp

    rng = np.random.default_rng(4)
    for n in (4 * bp._CHUNK + 3, 2 * bp._CHUNK):  # several chunks, a short last one, odd and even
        codes = rng.integers(0, 16, n).astype(np.uint8)
        data = pack(codes, 4)
        assert data[:12] == reference_pack(codes[:24], 4)
        back = unpack(data, n, 4)
        assert back.dtype == np.uint8 and np.array_equal(back, codes)


@given(bits=st.integers(1, 16), n=st.integers(0, 40), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=80, deadline=None)
def test_any_packed_bytes_with_zero_padding_decode_to_codes_in_range(bits, n, seed):
    rng = np.random.default_rng(seed)
    data = bytearray(rng.integers(0, 256, packed_length(n, bits), dtype=np.uint8).tobytes())
    used = n * bits % 8
    if used:
        data[-1] &= (1 << used) - 1
    codes = unpack(bytes(data), n, bits)
    assert codes.size == n and (codes.size == 0 or int(codes.max()) < 1 << bits)
    assert pack(codes, bits) == bytes(data)  # and back: the layout is a bijection


def test_decodes_through_the_pipeline():
    codes = np.arange(60, dtype=np.uint8).reshape(3, 4, 5) % 32
    s = spec("u8", codes.shape)
    pending = apply(BitPack(bits=5), codes, s, lambda v, sp: v)
    node = CodecNode(BitPack(bits=5), {"data": Leaf(0, BytesSpec(len(pending.parts["data"])))}, s)
    back = decode(node, lambda i: bytes(pending.parts["data"]), DEFAULT_LIMITS)
    assert np.array_equal(back, codes)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("bits,n", [(3, 5), (1, 1), (7, 9), (12, 3)])
def test_nonzero_padding_is_rejected(bits, n):
    data = bytearray(packed_length(n, bits))
    data[-1] |= 0x80  # the top bit of the last byte is padding in every case here
    with pytest.raises(FormatError, match="padding"):
        BitPack(bits=bits).decode({"data": bytes(data)}, spec("u16", (n,)))


@pytest.mark.parametrize("delta", [-1, 1, 8])
def test_wrong_length_is_rejected(delta):
    n, bits = 10, 3
    data = bytes(max(packed_length(n, bits) + delta, 0))
    with pytest.raises(FormatError, match="bytes"):
        BitPack(bits=bits).decode({"data": data}, spec("u8", (n,)))


@pytest.mark.parametrize("bits,bad", [(1, 2), (4, 16), (8, 256), (12, 4096), (3, -1)])
def test_encoding_a_code_out_of_range_is_refused(bits, bad):
    codes = np.array([0, 1, bad], dtype=np.int32)
    with pytest.raises(CmfError, match="does not fit"):
        BitPack(bits=bits).encode(codes, spec("u16", (3,)))


def test_encode_checks_the_input():
    with pytest.raises(CmfError, match="integers"):
        BitPack(bits=4).encode(np.array([0.5]), spec("u8", (1,)))
    with pytest.raises(CmfError, match="codes given"):
        BitPack(bits=4).encode(np.zeros(3, np.uint8), spec("u8", (4,)))


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"bits": 0},
        {"bits": 17},
        {"bits": True},
        {"bits": "4"},
        {"bits": 4.0},
        {"bits": 4, "extra": 1},
        [4],
        None,
    ],
)
def test_bad_configs(config):
    with pytest.raises(CmfError):
        codec_from_config("bitpack", config)


@pytest.mark.parametrize("bits", [1, 8, 9, 16])
def test_config_round_trip(bits):
    codec = codec_from_config("bitpack", {"bits": bits})
    assert codec == BitPack(bits=bits) and codec.to_config() == {"bits": bits}
    assert hash(codec) == hash(BitPack(bits=bits))


def test_specs_it_cannot_produce():
    with pytest.raises(FormatError, match="do not fit u8"):
        BitPack(bits=9).resolve(spec("u8", (4,)))
    for dtype in ("i8", "f32", "u32", "bool"):
        with pytest.raises(FormatError, match="u8 or u16"):
            BitPack(bits=4).resolve(spec(dtype, (4,)))
    with pytest.raises(FormatError, match="array"):
        BitPack(bits=4).resolve(BytesSpec(4))


def test_resolve_needs_no_data():
    """Sizes come from the spec alone, even for shapes far too large to allocate."""
    big = spec("u16", (1 << 20, 1 << 20, 3))
    assert BitPack(bits=13).resolve(big) == {"data": BytesSpec((3 << 40) * 13 // 8)}
    assert BitPack(bits=5).resolve(spec("u8", ())) == {"data": BytesSpec(1)}
    assert BitPack(bits=5).resolve(spec("u8", (0, 9))) == {"data": BytesSpec(0)}


@pytest.mark.parametrize("bits", [1, 3, 5, 7, 9, 12, 15])
def test_packing_in_group_slices_gives_the_bytes_of_one_pass(bits, monkeypatch):
    from cmf.codecs import bitpack

    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 1 << bits, 8 * 37 + 5).astype(np.uint16)  # a short last group
    whole = bitpack.pack(codes, bits)
    monkeypatch.setattr(bitpack, "_PACK_GROUPS", 4)  # 32 codes a slice
    assert bitpack.pack(codes, bits) == whole
    assert np.array_equal(bitpack.unpack(whole, codes.size, bits), codes)
