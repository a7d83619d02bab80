"""The ``huffman`` codec (spec/codecs/huffman.md): round trips, code lengths, golden bytes from
the spec page, and every hostile-data case, on both decoders (lock-step lanes, pointer jumping)."""

from __future__ import annotations

import heapq
import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmf.codecs import huffman as hm
from cmf.codecs.base import ArraySpec, BytesSpec
from cmf.codecs.byteplanes import BytePlanes
from cmf.codecs.huffman import Huffman, canonical_codes, limited_lengths
from cmf.codecs.registry import codec_class, codec_from_config
from cmf.dtypes import by_name
from cmf.errors import CmfError, FormatError

U8, U16 = by_name("u8"), by_name("u16")
DECODERS = [None, "lanes", "jumps"] + (
    ["c"] if hm.speedups is not None else []
)  # None: default choice
FIXTURE = [HealthCheck.function_scoped_fixture]  # the decoder fixture is the same per example

# Golden vectors of spec/codecs/huffman.md, "Example".
ABRA = bytes.fromhex(
    "0b00000000000000"  # n = 11
    "6100"
    "7200"  # lo, hi
    "f00040"  # used bitmap
    "022220"  # lengths - 1
    "02"
    "05000000"  # width, base
    "88"  # chunk lengths 2 0 2 (+ base: 7, 5, 7 bits)
    "4eac9c"  # stream
)
ABRA_CODEC = Huffman(chunk=3, max_length=12)
ONE = bytes.fromhex("050000000000000007000700800000000000")
EMPTY = bytes(8)


@pytest.fixture(params=DECODERS)
def decoder(request, monkeypatch):
    monkeypatch.setattr(hm, "_FORCE", request.param)
    return request.param


def roundtrip(codec: Huffman, value, spec):
    data = codec.encode(value, spec)["data"]
    return data, codec.decode({"data": data}, spec)


# ----------------------------------------------------------------------------- config, resolve


def test_registered_and_config_roundtrip():
    assert codec_class("huffman") is Huffman
    codec = Huffman(chunk=77, max_length=9)
    assert codec.to_config() == {"chunk": 77, "max_length": 9}
    assert codec_from_config("huffman", codec.to_config()) == codec
    assert Huffman() == Huffman(chunk=1024, max_length=12)


@pytest.mark.parametrize(
    "config",
    [
        {"chunk": 0, "max_length": 12},
        {"chunk": 65537, "max_length": 12},
        {"chunk": -1, "max_length": 12},
        {"chunk": 8, "max_length": 0},
        {"chunk": 8, "max_length": 17},
        {"chunk": 1.0, "max_length": 12},
        {"chunk": True, "max_length": 12},
        {"chunk": 8, "max_length": "12"},
        {"chunk": 8, "max_length": 12, "level": 3},
        {"chunk": 8},
        {"max_length": 12},
        {},
        [],
    ],
)
def test_bad_config(config):
    with pytest.raises(FormatError):
        Huffman.from_config(config)


def test_resolve_without_data():
    codec = Huffman()
    assert codec.resolve(BytesSpec(10)) == {"data": BytesSpec(None)}
    assert codec.resolve(ArraySpec(U8, (3, 4))) == {"data": BytesSpec(None)}
    assert codec.resolve(ArraySpec(U16, ())) == {"data": BytesSpec(None)}
    for bad in (BytesSpec(None), ArraySpec(by_name("f32"), (2,)), ArraySpec(by_name("i8"), (2,))):
        with pytest.raises(FormatError):
            codec.resolve(bad)


# ----------------------------------------------------------------------------- code lengths


def huffman_cost(counts) -> int:
    """Cost (total bits) of an unconstrained Huffman code, via heapq."""
    heap = [int(c) for c in counts]
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        cost += merged
        heapq.heappush(heap, merged)
    return cost


def brute_cost(counts, limit: int) -> int:
    """Smallest cost of a complete prefix code with lengths <= limit (exhaustive)."""
    m = len(counts)
    combos = np.array(list(itertools.product(range(1, limit + 1), repeat=m)))  # (limit**m, m)
    kraft = (np.left_shift(1, limit - combos)).sum(axis=1)
    ok = combos[kraft == 1 << limit]
    return int((ok @ np.asarray(counts)).min())


def check_lengths(counts, lengths, limit):
    assert lengths.max() <= limit
    assert int(np.left_shift(1, 16 - lengths).sum()) == 1 << 16  # complete


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 10**6), min_size=2, max_size=17))
def test_unlimited_lengths_are_huffman_optimal(counts):
    lengths = limited_lengths(np.array(counts), 16)  # Huffman depth <= m - 1 <= 16: no limit
    check_lengths(counts, lengths, 16)
    assert int(lengths @ np.array(counts)) == huffman_cost(counts)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_limited_lengths_are_optimal(data):
    m = data.draw(st.integers(2, 6))
    limit = data.draw(st.integers(max(1, (m - 1).bit_length()), 5))
    counts = data.draw(st.lists(st.integers(1, 500), min_size=m, max_size=m))
    lengths = limited_lengths(np.array(counts), limit)
    check_lengths(counts, lengths, limit)
    assert int(lengths @ np.array(counts)) == brute_cost(counts, limit)


@pytest.mark.parametrize("limit", [5, 8, 12, 16])
def test_fibonacci_frequencies_respect_the_limit(limit, decoder):
    fib = [1, 1]
    while len(fib) < 25:
        fib.append(fib[-1] + fib[-2])
    counts = np.array(fib)
    unlimited = limited_lengths(counts, 16)  # 16 binds too: plain Huffman would need 24 bits
    assert unlimited.max() == 16
    lengths = limited_lengths(counts, limit)
    check_lengths(counts, lengths, limit)
    # through the codec: a stream with these frequencies, shuffled
    stream = np.repeat(np.arange(25, dtype=np.uint8) * 7, counts)
    np.random.default_rng(0).shuffle(stream)
    codec = Huffman(chunk=1000, max_length=limit)
    spec = ArraySpec(U8, (stream.size,))
    data, back = roundtrip(codec, stream, spec)
    np.testing.assert_array_equal(back, stream)
    buf = np.frombuffer(data, np.uint8)
    _, stored, _ = codec._table(buf, 8, 256)
    np.testing.assert_array_equal(stored, lengths)
    assert stored.max() <= limit


def test_too_many_symbols_for_the_limit():
    stream = np.arange(300, dtype=np.uint16)
    with pytest.raises(CmfError, match="max_length 8"):
        Huffman(max_length=8).encode(stream, ArraySpec(U16, (300,)))
    _, back = roundtrip(Huffman(max_length=9), stream, ArraySpec(U16, (300,)))
    np.testing.assert_array_equal(back, stream)


def test_canonical_codes():
    order, codes = canonical_codes(np.array([3, 1, 3, 3, 3]))
    assert order.tolist() == [1, 0, 2, 3, 4]
    assert codes.tolist() == [0b0, 0b100, 0b101, 0b110, 0b111]


# ----------------------------------------------------------------------------- round trips


@st.composite
def streams(draw):
    kind = draw(st.sampled_from(["bytes", "u8", "u16"]))
    alphabet = 65536 if kind == "u16" else 256
    n = draw(st.integers(0, 3000))
    used = draw(st.integers(1, 300 if kind == "u16" else 256))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    symbols = rng.choice(alphabet, size=used, replace=False)
    dist = draw(st.sampled_from(["uniform", "skewed", "geometric"]))
    if dist == "uniform":
        p = np.full(used, 1 / used)
    elif dist == "skewed":
        p = rng.dirichlet(np.full(used, 0.2))
    else:
        p = 0.5 ** np.arange(used, dtype=float)
        p /= p.sum()
    values = symbols[rng.choice(used, size=n, p=p)]
    chunk = draw(st.one_of(st.integers(1, 40), st.integers(1, 65536)))
    need = max(1, (len(np.unique(values)) - 1).bit_length()) if n else 1
    max_length = draw(st.integers(need, 16))
    if kind == "bytes":
        codec = Huffman(chunk=chunk, max_length=max_length)
        return values.astype(np.uint8).tobytes(), BytesSpec(n), codec
    dtype = U16 if kind == "u16" else U8
    dims = [d for d in (draw(st.integers(1, 4)), draw(st.integers(1, 4))) if n % d == 0]
    shape = (n,) if not dims or draw(st.booleans()) else (dims[0], n // dims[0])
    array = values.astype(dtype.numpy).reshape(shape)
    return array, ArraySpec(dtype, shape), Huffman(chunk=chunk, max_length=max_length)


@settings(max_examples=200, deadline=None, suppress_health_check=FIXTURE)
@given(streams())
def test_roundtrip(decoder, case):
    value, spec, codec = case
    data, back = roundtrip(codec, value, spec)
    assert codec.encoded_size(value, spec) == len(data)  # counted without packing the codes
    if isinstance(spec, BytesSpec):
        assert isinstance(back, bytes) and back == value
    else:
        assert back.dtype == spec.dtype.numpy and back.shape == spec.shape
        np.testing.assert_array_equal(back, value)


@pytest.mark.parametrize("n", [0, 1, 2, 1000])
@pytest.mark.parametrize("chunk", [1, 3, 1024, 65536])
def test_one_symbol_and_empty(n, chunk, decoder):
    codec = Huffman(chunk=chunk)
    for value, spec in [
        (b"\x2a" * n, BytesSpec(n)),
        (np.full(n, 65535, np.uint16), ArraySpec(U16, (n,))),
        (np.full((n, 1), 9, np.uint8), ArraySpec(U8, (n, 1))),
    ]:
        data, back = roundtrip(codec, value, spec)
        assert len(data) == (8 if n == 0 else 8 + 4 + 1 + 5)  # no lengths, chunks or stream
        assert codec.encoded_size(value, spec) == len(data)
        if isinstance(value, bytes):
            assert back == value
        else:
            np.testing.assert_array_equal(back, value)


def test_large_stream_many_blocks(decoder, monkeypatch):
    monkeypatch.setattr(hm, "_BLOCK", 5000)  # several encoder blocks
    rng = np.random.default_rng(7)
    values = np.minimum(rng.geometric(0.2, 60_000), 255).astype(np.uint8)
    for chunk in (1, 100, 4096, 65536):
        codec = Huffman(chunk=chunk)
        data, back = roundtrip(codec, values, ArraySpec(U8, (60_000,)))
        np.testing.assert_array_equal(back, values)
        assert codec.encoded_size(values, ArraySpec(U8, (60_000,))) == len(data)


def test_full_u16_alphabet(decoder):
    rng = np.random.default_rng(11)
    values = np.concatenate([np.arange(65536), rng.integers(0, 300, 50_000)]).astype(np.uint16)
    rng.shuffle(values)
    spec = ArraySpec(U16, (values.size,))
    with pytest.raises(CmfError, match="max_length 15"):
        Huffman(max_length=15).encode(values, spec)
    data, back = roundtrip(Huffman(chunk=4096, max_length=16), values, spec)
    np.testing.assert_array_equal(back, values)
    assert len(data) < values.size * 2 + 8192 + 32768 + 64  # <= 16 bits a symbol, plus table


def test_chunk_size_changes_only_the_chunk_fields():
    values = b"the quick brown fox jumps over the lazy dog" * 20
    spec = BytesSpec(len(values))
    a = Huffman(chunk=5).encode(values, spec)["data"]
    b = Huffman(chunk=50).encode(values, spec)["data"]
    assert a[-300:] == b[-300:]  # same bit stream tail


def test_exponent_plane_through_byteplanes(decoder):
    rng = np.random.default_rng(3)
    weights = (rng.standard_normal((64, 96)) * 0.05).astype(np.float32)
    spec = ArraySpec(by_name("f32"), weights.shape)
    planes = BytePlanes(rotate=True).encode(weights, spec)
    codec = Huffman(chunk=256)
    p3 = bytes(planes["p3"])
    data, back = roundtrip(codec, p3, BytesSpec(weights.size))
    assert back == p3
    assert len(data) < weights.size * 0.5  # exponents take ~3 bits


# ----------------------------------------------------------------------------- golden bytes


def test_golden_abracadabra(decoder):
    assert ABRA_CODEC.decode({"data": ABRA}, BytesSpec(11)) == b"abracadabra"
    assert ABRA_CODEC.encode(b"abracadabra", BytesSpec(11))["data"] == ABRA
    as_array = ABRA_CODEC.decode({"data": ABRA}, ArraySpec(U16, (11,)))
    assert as_array.tobytes() == np.frombuffer(b"abracadabra", np.uint8).astype("<u2").tobytes()


def test_golden_one_symbol_and_empty(decoder):
    for chunk in (1, 2, 1024):
        codec = Huffman(chunk=chunk)
        assert codec.decode({"data": ONE}, BytesSpec(5)) == b"\x07" * 5
        assert codec.encode(b"\x07" * 5, BytesSpec(5))["data"] == ONE
        assert codec.decode({"data": EMPTY}, BytesSpec(0)) == b""
        assert codec.encode(b"", BytesSpec(0))["data"] == EMPTY


# ----------------------------------------------------------------------------- hostile data


def patched(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new) :]


def craft(fields, width: int, base: int, stream: bytes = ABRA[24:], head: bytes = ABRA[:18]):
    """ABRA with another chunk layout: ``fields`` packed MSB-first in ``width`` bits."""
    bits = "".join(format(f, f"0{width}b") for f in fields) if width else ""
    bits += "0" * (-len(bits) % 8)
    packed = int(bits, 2).to_bytes(len(bits) // 8, "big") if bits else b""
    return head + bytes([width]) + base.to_bytes(4, "little") + packed + stream


# Offsets into ABRA: n 0, lo 8, hi 10, used 12..14, lengths 15..17, width 18, base 19..22,
# chunks 23, stream 24..26.
HOSTILE = {
    "short header": (ABRA[:5], "at least 8"),
    "count mismatch": (patched(ABRA, 0, b"\x0c"), "declares 12 symbols"),
    "huge count": (patched(ABRA, 0, (2**40).to_bytes(8, "little")), "declares"),
    "no table": (ABRA[:10], "inside the code table"),
    "lo after hi": (patched(ABRA, 8, b"\x73"), "after the last"),
    "range end unused": (patched(ABRA, 12, b"\x70"), "must both be used"),
    "bitmap padding": (patched(ABRA, 14, b"\x41"), "padding bits after the symbol bitmap"),
    "bitmap truncated": (ABRA[:13], "inside the symbol bitmap"),
    "lengths truncated": (ABRA[:16], "inside the code lengths"),
    "nibble padding": (patched(ABRA, 17, b"\x21"), "padding nibble"),
    "incomplete code": (patched(ABRA, 15, b"\x03"), "incomplete"),
    "over-subscribed code": (patched(ABRA, 15, b"\x01"), "over-subscribed"),
    "layout truncated": (ABRA[:20], "inside the chunk layout"),
    "width too large": (patched(ABRA, 18, b"\x16"), "exceeds 21"),
    "fields truncated": (patched(ABRA, 18, b"\x15"), "inside the chunk lengths"),
    "base not smallest": (craft([2, 1, 2], 2, 5), "base is not the smallest"),
    "width not smallest": (craft([1, 0, 1], 3, 6), "not the smallest that fits"),
    "chunk shorter than possible": (craft([], 0, 2), "at least 3 bits"),
    "chunk longer than possible": (craft([5, 0, 2], 3, 5), "at most 9 bits"),
    "chunks beyond the stream": (craft([2, 0, 2], 2, 9), "the bit stream holds"),
    "chunks sum beyond the stream": (craft([4, 0, 4], 3, 5), "the bit stream holds"),
    "field padding": (patched(ABRA, 23, b"\x89"), "padding bits after the chunk lengths"),
    "chunk end mismatch": (craft([0, 2, 2], 2, 5), "chunk 0 ends at bit 7, the next starts at 5"),
    "stream too short": (ABRA[:-1], "bit stream holds 16"),
    "trailing byte": (ABRA + b"\x00", "found 4 bytes"),
    "stream padding": (patched(ABRA, 26, b"\x9d"), "padding bits after the bit stream"),
}


def test_craft_reproduces_the_golden_bytes():
    assert craft([2, 0, 2], 2, 5) == ABRA


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_abracadabra(case, decoder):
    data, message = HOSTILE[case]
    with pytest.raises(FormatError, match=message):
        ABRA_CODEC.decode({"data": data}, BytesSpec(11))


def test_hostile_huge_count_is_rejected_before_allocating(decoder):
    # The spec says 2**40 symbols and the data agrees: the tiny stream cannot hold them.
    huge = (2**40).to_bytes(8, "little")
    for data, message in [
        (patched(ABRA, 0, huge), "inside the chunk lengths"),  # 2 bits per chunk length
        (patched(craft([], 0, 5), 0, huge), "the bit stream holds"),  # width 0: no fields
    ]:
        with pytest.raises(FormatError, match=message):
            ABRA_CODEC.decode({"data": data}, BytesSpec(2**40))
        with pytest.raises(FormatError, match=message):
            Huffman(chunk=3).decode({"data": data}, ArraySpec(U16, (2**20, 2**20)))


def test_hostile_lengths_above_max_length():
    with pytest.raises(FormatError, match="exceeds max_length 2"):
        Huffman(chunk=3, max_length=2).decode({"data": ABRA}, BytesSpec(11))


def test_hostile_symbol_outside_the_alphabet():
    values = np.array([5, 300, 5, 5], np.uint16)
    data = Huffman().encode(values, ArraySpec(U16, (4,)))["data"]
    with pytest.raises(FormatError, match="outside the alphabet of 256"):
        Huffman().decode({"data": data}, ArraySpec(U8, (4,)))
    with pytest.raises(FormatError, match="outside the alphabet of 256"):
        Huffman().decode({"data": data}, BytesSpec(4))


def test_hostile_empty_and_one_symbol():
    with pytest.raises(FormatError, match="empty stream is 8 bytes"):
        Huffman().decode({"data": EMPTY + b"\x00"}, BytesSpec(0))
    with pytest.raises(FormatError, match="declares 0 symbols"):
        Huffman().decode({"data": EMPTY}, BytesSpec(1))
    with pytest.raises(FormatError, match="no bit stream"):
        Huffman().decode({"data": ONE + b"\x00"}, BytesSpec(5))
    with pytest.raises(FormatError, match="one-symbol code takes 0 bits"):
        Huffman(chunk=2).decode({"data": patched(ONE, 14, b"\x01")}, BytesSpec(5))
    with pytest.raises(FormatError, match="with one chunk, width and base must be 0"):
        Huffman(chunk=8).decode({"data": patched(ONE, 13, b"\x01")}, BytesSpec(5))


def test_every_truncation_is_rejected(decoder):
    for cut in range(len(ABRA)):
        with pytest.raises(FormatError):
            ABRA_CODEC.decode({"data": ABRA[:cut]}, BytesSpec(11))


@settings(max_examples=300, deadline=None, suppress_health_check=FIXTURE)
@given(st.data())
def test_corruption_gives_format_error_or_a_value(decoder, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    values = np.minimum(rng.geometric(0.3, data.draw(st.integers(1, 400))), 40).astype(np.uint8)
    codec = Huffman(chunk=data.draw(st.integers(1, 64)), max_length=data.draw(st.integers(6, 16)))
    spec = ArraySpec(U8, (values.size,))
    good = bytearray(codec.encode(values, spec)["data"])
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(good) - 1))
        good[at] = data.draw(st.integers(0, 255))
    try:
        out = codec.decode({"data": bytes(good)}, spec)
    except FormatError:
        return
    assert out.shape == spec.shape and out.dtype == np.uint8


def test_decoders_agree_on_errors(monkeypatch):
    data = HOSTILE["chunk end mismatch"][0]
    messages = set()
    for force in DECODERS:
        monkeypatch.setattr(hm, "_FORCE", force)
        with pytest.raises(FormatError) as info:
            ABRA_CODEC.decode({"data": data}, BytesSpec(11))
        messages.add(str(info.value))
    assert len(messages) == 1


def test_big_streams_decode_in_pieces_on_threads(monkeypatch):
    """The C decoder splits the chunks among threads: the same symbols, the same errors."""
    if hm.speedups is None:
        pytest.skip("the C kernels are not built")
    monkeypatch.setattr(hm, "PIECE_MIN", 2048)  # pieces of a few chunks
    rng = np.random.default_rng(3)
    x = np.minimum(rng.geometric(0.2, 50_000), 255).astype(np.uint8)
    codec = Huffman(chunk=64, max_length=12)
    spec = ArraySpec(U8, x.shape)
    data = bytes(codec.encode(x, spec)["data"])
    assert np.array_equal(codec.decode({"data": data}, spec), x)
    bad = bytearray(data)
    bad[len(bad) * 3 // 4] ^= 0x10  # a flip in a later piece
    with pytest.raises(CmfError):
        got = codec.decode({"data": bytes(bad)}, spec)
        assert np.array_equal(got, x)  # a flip may decode to other symbols: never silently equal


def test_in_pieces_covers_the_range_once_and_raises():
    from cmf.kernels import in_pieces

    seen = []
    in_pieces(lambda a, b: seen.append((a, b)), 10_000, min_piece=100)
    seen.sort()
    assert seen[0][0] == 0 and seen[-1][1] == 10_000
    assert all(p[1] == q[0] for p, q in zip(seen, seen[1:], strict=False))

    def boom(a, b):
        raise ValueError(f"piece {a}")

    with pytest.raises(ValueError, match="piece"):
        in_pieces(boom, 10_000, min_piece=100)
