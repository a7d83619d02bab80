"""``huffman`` codec (spec/codecs/huffman.md): canonical, length-limited Huffman in chunks.

Symbols are bytes (a byte spec) or the elements of a ``u8``/``u16`` array. The one part,
``data``, holds a header (symbol count), the code table (used-symbol bitmap + 4-bit code
lengths), the bit lengths of all chunks but the last (fixed width, offset by their minimum), and
one MSB-first bit stream in which chunk ``c`` holds symbols ``c*chunk ... c*chunk+chunk-1``.

Code lengths come from package-merge (optimal under the ``max_length`` limit). The encoder packs
codes with whole-array numpy passes. The decoder advances every chunk in lock-step: one lookup
in a table of ``2**Lt`` entries (``Lt`` the longest code) per chunk per step, in preallocated
arrays with in-place ufuncs. When that loop would be long for few chunks (short streams), it
decodes a symbol at every bit position instead and follows the chunks by pointer jumping.
Either way every chunk must end exactly where the next begins.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CmfError, FormatError
from ..kernels import PIECE_MIN, in_pieces, speedups
from .base import ArraySpec, BytesSpec, Codec, Spec, Value, check_config_keys
from .registry import register

MAX_LENGTH = 16  # longest code a table may hold: 2**16 symbols, 4-bit length fields
MAX_CHUNK = 1 << 16  # symbols per chunk: a chunk's bit length is < 2**21
_ALPHABET = {"u8": 256, "u16": 65536}  # array dtypes this codec decodes to -> alphabet size
_BLOCK = 1 << 20  # encoder working set, in symbols (bounded temporary memory)
_MAX_JUMP_BITS = 1 << 22  # pointer jumping keeps ~3 int64 arrays of this many entries
# Decoder cost model, ns (measured on one core): per lock-step step and per symbol; per bit
# position, per bit position and doubling, per numpy call and per symbol for pointer jumping.
_NS_STEP, _NS_LANE = 4500, 9
_NS_BIT, _NS_ROUND, _NS_CALL, _NS_ROW = 13, 2, 1200, 4
_FORCE: str | None = None  # "lanes", "jumps" or "c" overrides the choice (tests only)

# Layout sizes (spec/codecs/huffman.md, "Format").
_COUNT = 8  # n: u64
_RANGE = 4  # lo, hi: u16 each
_CHUNKS = 5  # width: u8, base: u32
_MAX_WIDTH = 21  # a chunk length is at most 2**16 * 16 = 2**20 bits


def _fail(msg: str) -> FormatError:
    return FormatError(f"huffman: {msg}")


# ----------------------------------------------------------------------------- code lengths


def limited_lengths(counts: np.ndarray, max_length: int) -> np.ndarray:
    """Optimal code lengths (int64) for positive ``counts`` with no code longer than
    ``max_length`` (package-merge, Larmore & Hirschberg 1990). One symbol gets length 0."""
    m = counts.size
    if m == 1:
        return np.zeros(1, np.int64)
    if m > 1 << max_length:
        raise CmfError(
            f"huffman: {m} distinct symbols need codes longer than max_length {max_length}"
        )
    order = np.argsort(counts, kind="stable")
    leaves = counts[order].astype(np.int64)  # ascending weights
    # Lists from the deepest level (max_length) up to level 1. A list is the sorted merge of the
    # leaves and the pairwise packages of the list below; we keep which entries are leaves.
    is_leaf = [np.ones(m, bool)]
    items = leaves
    for _ in range(max_length - 1):
        pairs = items.size // 2 * 2
        packages = items[0:pairs:2] + items[1:pairs:2]
        merged = np.concatenate([leaves, packages])
        by = np.argsort(merged, kind="stable")  # ties: leaves first
        items = merged[by]
        is_leaf.append(by < m)
    # Select the 2m-2 cheapest items of level 1; a leaf's length is how many selected items
    # (through packages) contain it. Selected leaves at a level are the lightest ones.
    lengths = np.zeros(m, np.int64)
    take = 2 * m - 2
    for leaf in reversed(is_leaf):
        n_leaves = int(np.count_nonzero(leaf[:take]))
        lengths[:n_leaves] += 1
        take = 2 * (take - n_leaves)
    out = np.empty(m, np.int64)
    out[order] = lengths
    return out


def canonical_codes(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, codes): ``order`` sorts symbols by (length, symbol); ``codes[i]`` is the canonical
    code of symbol ``order[i]`` (the first code is all zeros; each next one is the previous plus
    one, shifted left to the next length)."""
    order = np.lexsort((np.arange(lengths.size), lengths))
    sl = lengths[order]
    step = np.left_shift(1, MAX_LENGTH - sl)  # Kraft share, in units of 2**-16
    start = np.cumsum(step) - step
    return order, start >> (MAX_LENGTH - sl)


# ----------------------------------------------------------------------------- bit packing


def _pack_bits(total_bits: int, blocks) -> bytes:
    """Concatenate codes MSB-first. ``blocks`` yields pieces (left, lens) in order: ``left`` the
    codes left-aligned in a u64 (code << (64 - len)), ``lens`` their lengths (1..32, any
    integer dtype). Returns ceil(total_bits / 8) bytes, zero padded."""
    acc = np.zeros(total_bits // 32 + 2, np.uint64)  # acc[i]: bits for 32-bit words i and i+1
    base = 0
    for left, lens in blocks:
        if lens.size == 0:
            continue
        offs = np.cumsum(lens, dtype=np.int64)  # fast when lens is int64
        end = int(offs[-1])
        offs -= lens
        offs += base  # (b,) first bit of each code
        base += end
        word = offs >> 5
        offs &= 31
        val = left >> offs.view(np.uint64)  # bits of 32-bit words word, word+1
        first = np.flatnonzero(word[1:] != word[:-1])
        first += 1
        first = np.concatenate([[0], first])
        acc[word[first]] |= np.bitwise_or.reduceat(val, first)  # disjoint bits: OR = sum
    words = np.empty(acc.size, ">u4")  # big-endian 32-bit words, made a slice at a time
    step = 1 << 20
    for i in range(0, acc.size, step):
        part = (acc[i : i + step] >> np.uint64(32)).astype(np.uint32)
        part[1:] |= acc[i : i + part.size - 1].astype(
            np.uint32
        )  # the low halves spill into the next word
        if i:
            part[0] |= np.uint32(int(acc[i - 1]) & 0xFFFFFFFF)
        words[i : i + step] = part
    return words.view(np.uint8)[: (total_bits + 7) // 8].tobytes()


def _windows(buf: np.ndarray) -> np.ndarray:
    """windows[i] = the 32 bits starting at byte i, big-endian (zeros past the end), int64."""
    p = np.zeros(buf.size + 4, np.int64)
    p[: buf.size] = buf
    win = p[:-3] << 24
    win |= p[1:-2] << 16
    win |= p[2:-1] << 8
    win |= p[3:]
    return win  # (buf.size + 1,)


def _unpack_fixed(buf: np.ndarray, count: int, width: int) -> np.ndarray:
    """``count`` unsigned fields of ``width`` (<= 25) bits, MSB-first, as int64."""
    if width == 0:
        return np.zeros(count, np.int64)
    bit = np.arange(count, dtype=np.int64) * width
    win = _windows(buf)
    vals = win[bit >> 3] << (bit & 7)
    vals &= 0xFFFFFFFF
    vals >>= 32 - width
    return vals


# ----------------------------------------------------------------------------- the codec


@register
@dataclass(frozen=True, kw_only=True)
class Huffman(Codec):
    """``chunk`` symbols per independently decodable chunk; codes of at most ``max_length`` bits."""

    name = "huffman"
    chunk: int = 1024
    max_length: int = 12

    def __post_init__(self) -> None:
        if not 1 <= self.chunk <= MAX_CHUNK:
            raise _fail(f"chunk must be in [1, {MAX_CHUNK}], found {self.chunk}")
        if not 1 <= self.max_length <= MAX_LENGTH:
            raise _fail(f"max_length must be in [1, {MAX_LENGTH}], found {self.max_length}")

    def to_config(self) -> dict:
        return {"chunk": self.chunk, "max_length": self.max_length}

    @classmethod
    def from_config(cls, config) -> Huffman:
        check_config_keys(cls.name, config, {"chunk": int, "max_length": int})
        return cls(**config)

    def _target(self, spec: Spec) -> tuple[int, int, np.dtype]:
        """(symbol count, alphabet size, output dtype) of ``spec``."""
        if isinstance(spec, BytesSpec):
            if spec.length is None:
                raise _fail("the decoded length must be known (is huffman nested in zstd?)")
            return spec.length, 256, np.dtype(np.uint8)
        if isinstance(spec, ArraySpec) and spec.dtype.name in _ALPHABET:
            return spec.numel, _ALPHABET[spec.dtype.name], spec.dtype.numpy
        raise _fail(f"decodes to bytes, u8 or u16 arrays, not {spec.describe()}")

    def resolve(self, spec: Spec) -> dict[str, Spec]:
        self._target(spec)
        return {"data": BytesSpec(None)}

    # ------------------------------------------------------------------------- encode

    def _symbols(self, value: Value, spec: Spec) -> tuple[np.ndarray, int, np.dtype]:
        """(flat symbols, alphabet size, output dtype) of ``value``; CmfError on a wrong count."""
        n, alphabet, dtype = self._target(spec)
        if isinstance(value, np.ndarray):
            sym = np.ascontiguousarray(value, dtype=dtype).reshape(-1)
        else:
            sym = np.frombuffer(value, dtype=np.uint8)
        if sym.size != n:
            raise CmfError(f"huffman: {sym.size} symbols given, {spec.describe()} expected")
        return sym, alphabet, dtype

    def _code(
        self, sym: np.ndarray, alphabet: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
        """(counts, used symbols, their code lengths, the code table's byte pieces) of a
        non-empty stream."""
        counts = np.zeros(alphabet, np.int64)
        for a in range(0, sym.size, _BLOCK):  # bincount widens to intp: a block at a time
            counts += np.bincount(sym[a : a + _BLOCK], minlength=alphabet)
        used = np.flatnonzero(counts)  # (m,) ascending symbols
        lengths = limited_lengths(counts[used], self.max_length)
        lo, hi = int(used[0]), int(used[-1])
        present = np.zeros(hi - lo + 1, np.uint8)
        present[used - lo] = 1
        table = [lo.to_bytes(2, "little"), hi.to_bytes(2, "little"), np.packbits(present).tobytes()]
        if used.size > 1:
            nib = np.zeros(used.size + used.size % 2, np.uint8)
            nib[: used.size] = lengths - 1
            table.append(((nib[0::2] << 4) | nib[1::2]).tobytes())
        return counts, used, lengths, table

    def encoded_size(self, value: Value, spec: Spec) -> int:
        """``len(self.encode(value, spec)["data"])``, counted without making the bit stream
        (the code table and each chunk's bit length are computed; the codes are not packed)."""
        sym, alphabet, _ = self._symbols(value, spec)
        n = sym.size
        if n == 0:
            return _COUNT
        counts, used, lengths, table = self._code(sym, alphabet)
        size = _COUNT + sum(len(t) for t in table) + _CHUNKS
        if used.size == 1:
            return size
        len_of = np.zeros(alphabet, np.int32)
        len_of[used] = lengths
        k = self.chunk
        total_bits = int(counts[used] @ lengths)
        lo = hi = None
        step = max(k, _BLOCK // k * k)
        for a in range(0, n - k, step):  # every chunk but the last: its length is implied
            b = min(a + step, (n - 1) // k * k)
            bits = np.add.reduceat(len_of.take(sym[a:b]), np.arange(0, b - a, k))
            lo = int(bits.min()) if lo is None else min(lo, int(bits.min()))
            hi = int(bits.max()) if hi is None else max(hi, int(bits.max()))
        width = (hi - lo).bit_length() if lo is not None else 0
        chunks = (n - 1) // k  # chunks whose length is stored
        return size + (chunks * width + 7) // 8 + (total_bits + 7) // 8

    def encode(self, value: Value, spec: Spec) -> dict[str, Value]:
        sym, alphabet, _ = self._symbols(value, spec)
        n = sym.size
        head = n.to_bytes(8, "little")
        if n == 0:
            return {"data": head}
        counts, used, lengths, table = self._code(sym, alphabet)
        k = self.chunk
        if used.size == 1:  # the empty code: no bits at all
            return {"data": b"".join([head, *table, bytes(_CHUNKS)])}
        order, codes = canonical_codes(lengths)
        left_of = np.zeros(alphabet, np.uint64)  # code << (64 - length), by symbol
        left_of[used[order]] = codes.astype(np.uint64) << (64 - lengths[order]).astype(np.uint64)
        len_of = np.zeros(alphabet, np.int64)
        len_of[used] = lengths
        total_bits = int(counts[used] @ lengths)
        chunk_bits: list[np.ndarray] = []
        step = max(k, _BLOCK // k * k)  # a multiple of the chunk size

        def blocks():
            for a in range(0, n, step):
                s = sym[a : a + step].astype(np.intp)
                lens = len_of.take(s)
                chunk_bits.append(np.add.reduceat(lens, np.arange(0, s.size, k)))
                yield left_of.take(s), lens

        stream = _pack_bits(total_bits, blocks())
        bits = np.concatenate(chunk_bits)[:-1]  # the last chunk's length is implied
        base = int(bits.min()) if bits.size else 0
        width = int(bits.max() - base).bit_length() if bits.size else 0
        fields = b""
        if width:
            left = (bits - base).astype(np.uint64) << np.uint64(64 - width)
            fields = _pack_bits(bits.size * width, [(left, np.full(bits.size, width, np.int64))])
        layout = bytes([width]) + base.to_bytes(4, "little")
        return {"data": b"".join([head, *table, layout, fields, stream])}

    # ------------------------------------------------------------------------- decode

    def decode(self, parts: dict[str, Value], spec: Spec) -> Value:
        n, alphabet, dtype = self._target(spec)
        buf = np.frombuffer(parts["data"], dtype=np.uint8)
        size = buf.size
        if size < _COUNT:
            raise _fail(f"data holds {size} bytes, at least {_COUNT} expected")
        declared = int(buf[:_COUNT].view("<u8")[0])
        if declared != n:
            raise _fail(f"data declares {declared} symbols, {spec.describe()} holds {n}")
        if n == 0:
            if size != _COUNT:
                raise _fail(f"an empty stream is {_COUNT} bytes, found {size}")
            return self._finish(np.zeros(0, dtype), spec)
        at = _COUNT
        symbols, lengths, at = self._table(buf, at, alphabet)
        k = self.chunk
        n_chunks = -(-n // k)
        last = n - (n_chunks - 1) * k  # symbols in the last chunk
        if size < at + _CHUNKS:
            raise _fail("data ends inside the chunk layout")
        width = int(buf[at])
        base = int(buf[at + 1 : at + _CHUNKS].view("<u4")[0])
        at += _CHUNKS
        count = n_chunks - 1  # chunks with a stored bit length
        if count == 0 and (width or base):
            raise _fail(f"with one chunk, width and base must be 0, found {width} and {base}")
        if width > _MAX_WIDTH:
            raise _fail(f"chunk length width {width} exceeds {_MAX_WIDTH} bits")
        nbytes = (count * width + 7) // 8
        if size < at + nbytes:
            raise _fail(f"data ends inside the chunk lengths ({nbytes} bytes expected)")
        fields = buf[at : at + nbytes]
        stream = buf[at + nbytes :]
        shortest, longest = int(lengths.min()), int(lengths.max())
        if symbols.size == 1:  # the empty code: every chunk takes 0 bits
            if width or base:
                raise _fail(f"a one-symbol code takes 0 bits, found chunk length base {base}")
            if stream.size:
                raise _fail(f"a one-symbol code has no bit stream, found {stream.size} bytes")
            return self._finish(np.full(n, symbols[0], dtype), spec)
        if count and base < k * shortest:
            raise _fail(f"a chunk of {k} symbols takes at least {k * shortest} bits, found {base}")
        if count * base + last * shortest > 8 * stream.size:  # checked before allocating
            raise _fail(
                f"chunks need at least {count * base + last * shortest} bits, "
                f"the bit stream holds {8 * stream.size}"
            )
        bits = self._chunk_bits(fields, count, width, base, k * longest)
        starts = np.zeros(n_chunks, np.int64)
        np.cumsum(bits, out=starts[1:])
        if int(starts[-1]) + last * shortest > 8 * stream.size:
            raise _fail(
                f"chunks need at least {int(starts[-1]) + last * shortest} bits, "
                f"the bit stream holds {8 * stream.size}"
            )
        out = self._decode_chunks(stream, starts, k, last, symbols, lengths, dtype)
        return self._finish(out[:n], spec)

    def _finish(self, flat: np.ndarray, spec: Spec) -> Value:
        if isinstance(spec, BytesSpec):
            return flat.tobytes()
        return flat.reshape(spec.shape)

    def _table(self, buf: np.ndarray, at: int, alphabet: int):
        """Parse the code table: (symbols ascending, their lengths, next offset)."""
        if buf.size < at + _RANGE:
            raise _fail("data ends inside the code table")
        lo, hi = (int(v) for v in buf[at : at + _RANGE].view("<u2"))
        at += _RANGE
        if hi >= alphabet:
            raise _fail(f"symbol {hi} is outside the alphabet of {alphabet} symbols")
        if lo > hi:
            raise _fail(f"the first used symbol {lo} is after the last {hi}")
        span = hi - lo + 1
        nbytes = (span + 7) // 8
        if buf.size < at + nbytes:
            raise _fail("data ends inside the symbol bitmap")
        present = np.unpackbits(buf[at : at + nbytes])
        at += nbytes
        if present[span:].any():
            raise _fail("padding bits after the symbol bitmap are not zero")
        if not (present[0] and present[span - 1]):
            raise _fail(f"symbols {lo} and {hi} (the range ends) must both be used")
        symbols = lo + np.flatnonzero(present[:span])
        m = symbols.size
        if m == 1:
            return symbols, np.zeros(1, np.int64), at
        nbytes = (m + 1) // 2
        if buf.size < at + nbytes:
            raise _fail("data ends inside the code lengths")
        packed = buf[at : at + nbytes]
        at += nbytes
        nib = np.empty(2 * nbytes, np.int64)
        nib[0::2] = packed >> 4
        nib[1::2] = packed & 15
        if m % 2 and nib[-1]:
            raise _fail("the padding nibble after the code lengths is not zero")
        lengths = nib[:m] + 1
        longest = int(lengths.max())
        if longest > self.max_length:
            raise _fail(f"a code length of {longest} exceeds max_length {self.max_length}")
        kraft = int(np.left_shift(1, MAX_LENGTH - lengths).sum())
        if kraft != 1 << MAX_LENGTH:
            state = "over-subscribed" if kraft > 1 << MAX_LENGTH else "incomplete"
            raise _fail(
                f"the code is {state}: Kraft sum {kraft}/{1 << MAX_LENGTH}, exactly 1 expected"
            )
        return symbols, lengths, at

    def _chunk_bits(self, fields: np.ndarray, count: int, width: int, base: int, most: int):
        """The bit lengths (int64) of the first ``count`` chunks, from their packed fields."""
        values = _unpack_fixed(fields, count, width)
        pad = count * width % 8
        if pad and int(fields[-1]) & ((1 << (8 - pad)) - 1):
            raise _fail("padding bits after the chunk lengths are not zero")
        if count and int(values.min()) != 0:
            raise _fail("chunk length base is not the smallest chunk length")
        if width and int(values.max()) >> (width - 1) == 0:
            raise _fail(f"chunk length width {width} is not the smallest that fits")
        values += base
        if count and int(values.max()) > most:
            raise _fail(
                f"a chunk of {self.chunk} symbols takes at most {most} bits, "
                f"found {int(values.max())}"
            )
        return values

    def _decode_chunks(self, stream, starts, k, last, symbols, lengths, dtype) -> np.ndarray:
        """Decode every chunk; check each ends where the next begins and the stream's end.
        Returns the symbols chunk after chunk (the last chunk padded to ``k``)."""
        n_chunks = starts.size
        longest = int(lengths.max())
        order, _ = canonical_codes(lengths)
        # 2**longest entries: code c of length l fills [c, c + 1) << (longest - l).
        reps = np.left_shift(1, longest - lengths[order])
        sym_tab = np.repeat(symbols[order].astype(dtype), reps)
        len_tab = np.repeat(lengths[order], reps)
        steps = k if n_chunks > 1 else last
        nbits = 8 * stream.size
        n = (n_chunks - 1) * k + last
        # Rough costs in ns (numpy, one core): lock-step pays ~9 ufunc calls per step; pointer
        # jumping pays a few passes over every bit position, one more per doubling, and one
        # call per block of rows.
        lanes_ns = steps * _NS_STEP + n * _NS_LANE
        jumps_ns, rounds = min(
            (nbits * (_NS_BIT + r * _NS_ROUND) + (steps >> r) * _NS_CALL + n * _NS_ROW, r)
            for r in range(max(steps, 1).bit_length())
        )
        use_jumps = jumps_ns < lanes_ns and nbits <= _MAX_JUMP_BITS
        use_c = speedups is not None and _FORCE in (None, "c")
        if _FORCE is not None:  # tests exercise every decoder
            use_jumps = _FORCE == "jumps"
        if use_c:  # one sequential table lookup per symbol, GIL released: same result
            by_chunk = np.empty((n_chunks, steps), sym_tab.dtype)
            ends = np.empty(n_chunks, np.int64)
            lens8 = len_tab.astype(np.uint8)

            def decode_range(a: int, b: int) -> None:  # chunks [a, b); only the final one is short
                speedups.huffman_chunks(
                    stream,
                    starts[a:b],
                    steps,
                    last if b == n_chunks else steps,
                    sym_tab,
                    lens8,
                    longest,
                    by_chunk[a:b],
                    ends[a:b],
                )

            in_pieces(decode_range, n_chunks, max(1, PIECE_MIN // max(steps, 1)))
            out = by_chunk.T  # out[s, c], as the numpy decoders give it
        elif use_jumps:
            out, ends = _jumps(stream, starts, steps, last, sym_tab, len_tab, longest, rounds)
        else:
            out, ends = _lanes(stream, starts, steps, last, sym_tab, len_tab, longest)
        bad = np.flatnonzero(ends[:-1] != starts[1:])
        if bad.size:
            c = int(bad[0])
            raise _fail(
                f"chunk {c} ends at bit {int(ends[c])}, the next starts at {int(starts[c + 1])}"
            )
        end = int(ends[-1])
        if (end + 7) // 8 != stream.size:
            raise _fail(
                f"the bit stream ends at bit {end} ({(end + 7) // 8} bytes), "
                f"found {stream.size} bytes"
            )
        if end % 8 and int(stream[-1]) & ((1 << (8 - end % 8)) - 1):
            raise _fail("padding bits after the bit stream are not zero")
        return out.T.reshape(-1)


def _lanes(stream, starts, steps, last, sym_tab, len_tab, longest):
    """Lock-step decoding: step s decodes symbol s of every chunk (one table lookup per chunk).
    Returns (out[s, c], end bit of each chunk); the last chunk stops after ``last`` symbols."""
    n_chunks = starts.size
    win = _windows(stream)
    pos = starts.copy()
    idx = np.empty(n_chunks, np.int64)
    sh = np.empty(n_chunks, np.int64)
    w = np.empty(n_chunks, np.int64)
    ln = np.empty(n_chunks, np.int64)
    out = np.empty((steps, n_chunks), sym_tab.dtype)  # out[s, c]: symbol s of chunk c
    down = 32 - longest
    end_last = -1
    for s in range(steps):
        if s == last:
            end_last = int(pos[-1])
        np.right_shift(pos, 3, out=idx)
        win.take(idx, out=w, mode="clip")  # garbage past the end; the ends catch it
        np.bitwise_and(pos, 7, out=sh)
        np.left_shift(w, sh, out=w)
        np.bitwise_and(w, 0xFFFFFFFF, out=w)
        np.right_shift(w, down, out=w)
        sym_tab.take(w, out=out[s])
        len_tab.take(w, out=ln)
        np.add(pos, ln, out=pos)
    if end_last >= 0:
        pos[-1] = end_last
    return out, pos


def _jumps(stream, starts, steps, last, sym_tab, len_tab, longest, rounds):
    """Pointer jumping, for short streams or few chunks: decode a symbol at *every* bit position
    (``nxt[p]`` = where the next symbol starts), then fill ``at[s, c]`` (first bit of symbol s of
    chunk c) by applying ``jump`` = ``nxt`` composed ``span`` times to earlier rows, doubling
    ``span`` ``rounds`` times (each doubling is one pass over all bit positions; each row block
    is one numpy call). Same result as :func:`_lanes`."""
    nbits = 8 * stream.size
    sink = nbits + MAX_LENGTH  # positions past the end all lead here (never a valid end)
    padded = np.zeros(stream.size + 3 + 3, np.int64)  # windows up to bit sink + 7
    padded[: stream.size] = stream
    win = padded[:-3] << 24
    win |= padded[1:-2] << 16
    win |= padded[2:-1] << 8
    win |= padded[3:]  # (size + 3,) 32 bits from each byte
    bit = np.arange(8, dtype=np.int64)
    w = win[:, None] >> (32 - longest - bit)  # (size + 3, 8): from each bit
    w &= (1 << longest) - 1  # table index of the symbol starting at each bit
    nxt = len_tab.take(w)
    nxt += (np.arange(win.size, dtype=np.int64) << 3)[:, None] + bit  # + the bit position
    nxt = nxt.reshape(-1)[: sink + 1]
    np.minimum(nxt, sink, out=nxt)
    sym_at = sym_tab.take(w.reshape(-1)[: sink + 1])
    del win, w
    at = np.empty((steps + 1, starts.size), np.int64)
    at[0] = starts
    filled, span, jump = 1, 1, nxt
    while filled <= steps:
        count = min(span, steps + 1 - filled)
        jump.take(at[filled - span : filled - span + count], out=at[filled : filled + count])
        filled += count
        if span < 1 << rounds and filled == 2 * span and filled <= steps:
            jump = jump.take(jump)
            span *= 2
    ends = at[steps].copy()
    ends[-1] = at[last, -1]
    return sym_at.take(at[:steps]), ends
