"""GGML block layouts as bit fields (spec/codecs/ggml.md, "Layouts").

A block of ``nbytes`` bytes is read as one little-endian bit string: bit ``8 * b + i`` is bit
``i`` of byte ``b``. Each *field* of a layout holds ``count`` values per block; value ``e`` is
made of one or more *runs* of consecutive bits of the block (a run has a start bit and a width
per value), the first run its lowest bits. Every bit of a block belongs to exactly one value of
one field (checked when a layout is built), so blocks -> fields -> blocks is the identity.

Fields of kind ``"f16"`` are 16-bit values seen as IEEE binary16; ``"u"`` fields are unsigned
integers of ``bits`` bits (u8 parts up to 8 bits, u16 parts above).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import CmfError
from ..kernels import in_pieces
from ..kernels import speedups as _speedups  # optional C kernels; same bytes either way

QK_K = 256  # elements of a K-quant / I-quant super-block


@dataclass(frozen=True)
class Field:
    """One field: ``count`` values of ``bits`` bits per block, from ``runs``."""

    name: str
    count: int
    bits: int
    kind: str  # "u" or "f16"
    runs: tuple[tuple[np.ndarray, np.ndarray], ...] = field(
        repr=False
    )  # (start[count], width[count])

    @property
    def dtype(self) -> str:
        if self.kind == "f16":
            return "f16"
        return "u8" if self.bits <= 8 else "u16"


@dataclass(frozen=True)
class Group:
    """Pieces of one field that share a shift in the byte, a width and an offset in the value:
    ``value[elems] |= ((block[bytes] >> shift) & (2**width - 1)) << out``."""

    elems: np.ndarray | slice | Runs
    bytes: np.ndarray | slice | Runs
    shift: int
    width: int
    out: int
    plane: bool = False  # one bit per value, values in consecutive bits: np.packbits / unpackbits


@dataclass(frozen=True)
class Layout:
    """One GGML block type: ``block`` elements in ``nbytes`` bytes, split into ``fields``."""

    name: str
    block: int
    nbytes: int
    fields: tuple[Field, ...]
    groups: dict[str, tuple[Group, ...]] = field(repr=False, compare=False)
    whole: dict[str, slice] = field(
        repr=False, compare=False
    )  # fields that are whole bytes in order


@dataclass(frozen=True)
class Runs:
    """An index of ``m`` runs of ``r`` consecutive positions, run ``k`` starting at
    ``start + k * step``: a strided view of the first axis, no gather needed."""

    start: int
    m: int
    r: int
    step: int


def _as_index(a: np.ndarray) -> np.ndarray | slice | Runs:
    """An index as a slice if contiguous, as :class:`Runs` if equal runs at a constant step
    (the faster numpy paths), else the array."""
    if a.size and np.array_equal(a, np.arange(a[0], a[0] + a.size)):
        return slice(int(a[0]), int(a[0]) + a.size)
    steps = np.diff(a)
    breaks = np.flatnonzero(steps != 1)
    if a.size and breaks.size:
        r = int(breaks[0]) + 1
        if a.size % r == 0:
            m = a.size // r
            step = int(a[r] - a[0])
            want = a[0] + (np.arange(m)[:, None] * step + np.arange(r)).reshape(-1)
            if step >= r and np.array_equal(a, want):
                return Runs(int(a[0]), m, r, step)
    return a


def _groups(f: Field) -> tuple[Group, ...]:
    """The runs of ``f`` cut at byte boundaries and grouped by (shift, width, out)."""
    pieces: dict[tuple[int, int, int], list[tuple[int, int]]] = {}
    out = np.zeros(f.count, np.int64)
    groups = []
    for start, width in f.runs:
        at = int(start[0])
        if (
            np.all(width == 1)
            and np.all(out == out[0])
            and at % 8 == 0
            and f.count % 8 == 0
            and np.array_equal(start, at + np.arange(f.count))
        ):
            groups.append(
                Group(
                    slice(0, f.count),
                    slice(at // 8, at // 8 + f.count // 8),
                    0,
                    1,
                    int(out[0]),
                    plane=True,
                )
            )
            out = out + width
            continue
        for e in range(f.count):
            pos, left, o = int(start[e]), int(width[e]), int(out[e])
            while left > 0:
                shift = pos % 8
                w = min(8 - shift, left)
                pieces.setdefault((shift, w, o), []).append((e, pos // 8))
                pos, left, o = pos + w, left - w, o + w
        out = out + width
    if not np.all(out == f.bits):
        raise CmfError(
            f"layout field {f.name}: runs give {sorted(set(out.tolist()))} bits, {f.bits} declared"
        )
    for (shift, w, o), items in sorted(pieces.items()):
        elems = np.array([e for e, _ in items], np.intp)
        where = np.array([b for _, b in items], np.intp)
        groups.append(Group(_as_index(elems), _as_index(where), shift, w, o))
    return tuple(groups)


def layout(name: str, block: int, nbytes: int, fields: list[Field]) -> Layout:
    """A checked layout: every bit of the block in exactly one field value."""
    seen = np.zeros(nbytes * 8, np.int64)
    for f in fields:
        for start, width in f.runs:
            for s, w in zip(start.tolist(), width.tolist(), strict=True):
                seen[s : s + w] += 1
                if s + w > nbytes * 8:
                    raise CmfError(f"layout {name}: field {f.name} runs past the block")
    if not np.all(seen == 1):
        raise CmfError(
            f"layout {name}: bits {np.flatnonzero(seen != 1)[:8].tolist()} not covered once"
        )
    whole = {}
    for f in fields:  # one run of consecutive whole bytes, values in order: a plain byte range
        if len(f.runs) == 1 and f.bits in (8, 16):
            start, width = f.runs[0]
            at = int(start[0])
            if (
                at % 8 == 0
                and np.all(width == f.bits)
                and np.array_equal(start, at + f.bits * np.arange(f.count))
            ):
                whole[f.name] = slice(at // 8, at // 8 + f.count * f.bits // 8)
    return Layout(name, block, nbytes, tuple(fields), {f.name: _groups(f) for f in fields}, whole)


# ----------------------------------------------------------------------------- field builders


def run(start, width) -> tuple[np.ndarray, np.ndarray]:
    start = np.asarray(start, np.int64).reshape(-1)
    width = np.broadcast_to(np.asarray(width, np.int64), start.shape).copy()
    return start, width


def f16(name: str, byte: int) -> Field:
    return Field(name, 1, 16, "f16", (run([8 * byte], 16),))


def u(name: str, bits: int, *runs: tuple[np.ndarray, np.ndarray]) -> Field:
    return Field(name, int(runs[0][0].size), bits, "u", tuple(runs))


def u8s(name: str, at: int, n: int) -> Field:
    """``n`` whole bytes from byte ``at``."""
    return u(name, 8, run(8 * (at + np.arange(n)), 8))


def bits_at(byte: np.ndarray, shift: np.ndarray | int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Runs of ``width`` bits at bit ``shift`` of bytes ``byte``."""
    return run(8 * np.asarray(byte) + np.asarray(shift), width)


def halves(at: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Element ``e`` of ``2 n`` in nibble ``e // n`` of byte ``at + e % n`` (Q4_0 order)."""
    e = np.arange(2 * n)
    return bits_at(at + e % n, 4 * (e // n), 4)


def crumbs(at: int, n: int, total: int) -> tuple[np.ndarray, np.ndarray]:
    """2-bit values: element ``i = h * 4 n + s * n + j`` in bits ``2 s`` of byte ``at + h n + j``
    (Q2_K order, ``total`` elements)."""
    i = np.arange(total)
    h, s, j = i // (4 * n), (i % (4 * n)) // n, i % n
    return bits_at(at + h * n + j, 2 * s, 2)


def bit_planes(at: int, n: int, total: int) -> tuple[np.ndarray, np.ndarray]:
    """1-bit values: element ``i`` in bit ``i // n`` of byte ``at + i % n``."""
    i = np.arange(total)
    return bits_at(at + i % n, i // n, 1)


def nibble_chunks(at: int, n: int, total: int) -> tuple[np.ndarray, np.ndarray]:
    """Nibbles: element ``i = c * 2 n + h * n + j`` in nibble ``h`` of byte ``at + c n + j``."""
    i = np.arange(total)
    c, h, j = i // (2 * n), (i % (2 * n)) // n, i % n
    return bits_at(at + c * n + j, 4 * h, 4)


def nbits(count: int) -> int:
    return max(1, math.ceil(math.log2(count)))


# ----------------------------------------------------------------------------- blocks <-> fields

_NP = {"u8": np.dtype("u1"), "u16": np.dtype("<u2"), "f16": np.dtype("<f2")}


def part_dtype(f: Field) -> np.dtype:
    return _NP[f.dtype]


def _sliced(lay: Layout) -> bool:
    """Whether every group indexes with slices (then blocks are cut in place, row-major)."""
    return all(
        isinstance(g.elems, slice) and isinstance(g.bytes, slice)
        for gs in lay.groups.values()
        for g in gs
    )


def _view(a: np.ndarray, idx, writeable: bool = False) -> np.ndarray:
    """``a[:, idx]`` as a view (slices and runs) of shape (n, len), or a gather (arrays)."""
    if isinstance(idx, Runs):
        s0, s1 = a.strides
        return np.lib.stride_tricks.as_strided(
            a[:, idx.start :],
            shape=(a.shape[0], idx.m, idx.r),
            strides=(s0, idx.step * s1, s1),
            writeable=writeable,
        )
    return a[:, idx]


def _or(a: np.ndarray, idx, piece: np.ndarray) -> None:
    """``a[:, idx] |= piece`` (positions of ``idx`` distinct)."""
    if isinstance(idx, Runs):
        view = _view(a, idx, writeable=True)
        view |= piece.reshape(view.shape)
    else:
        a[:, idx] |= piece.reshape(a.shape[0], math.prod(piece.shape[1:]))


def split(lay: Layout, blocks: np.ndarray) -> dict[str, np.ndarray]:
    """The fields of ``blocks`` (n, nbytes) u8: ``{name: (n, count)}`` of each field's dtype."""
    n = blocks.shape[0]
    out = {}
    for f in lay.fields:
        if f.name in lay.whole:  # a byte range: copied as is
            v = np.ascontiguousarray(blocks[:, lay.whole[f.name]]).view(part_dtype(f))
            out[f.name] = v.reshape(n, f.count)
            continue
        wide = np.uint16 if f.bits > 8 else np.uint8
        v = np.zeros((n, f.count), wide)  # (n, count)
        for g in lay.groups[f.name]:
            if g.plane:
                piece = np.unpackbits(blocks[:, g.bytes], axis=1, bitorder="little")  # (n, count)
            else:
                piece = (_view(blocks, g.bytes) >> np.uint8(g.shift)) & np.uint8((1 << g.width) - 1)
            _or(v, g.elems, piece.astype(wide) << wide(g.out) if g.out else piece)
        out[f.name] = v.view(np.float16) if f.kind == "f16" else v
    return out


def join(
    lay: Layout,
    fields: dict[str, np.ndarray],
    out: np.ndarray | None = None,
    skip: str | None = None,
) -> np.ndarray:
    """The blocks (n, nbytes) u8 of ``fields`` (each (n, count), values already checked to fit
    their bits): the inverse of :func:`split`. Written into ``out`` when given (numpy only; see
    :func:`join_into` for the fast path). Field ``skip``'s bits are left zero."""
    n = out.shape[0] if out is not None else next(iter(fields.values())).shape[0]
    if out is None:
        blocks = np.zeros((n, lay.nbytes), np.uint8)  # (n, nbytes)
    else:
        blocks = out
        blocks[...] = 0
    for f in lay.fields:
        if f.name == skip:
            continue
        v = fields[f.name]
        if f.name in lay.whole:  # a byte range: copied as is
            blocks[:, lay.whole[f.name]] = np.ascontiguousarray(v).view(np.uint8).reshape(n, -1)
            continue
        if f.kind == "f16":
            v = v.view(np.uint16)
        wide = v.dtype.type
        merged: dict[str, tuple] = {}  # pieces of one field bound for the same bytes, OR-ed first
        for g in lay.groups[f.name]:
            piece = _view(v, g.elems)
            if g.out:
                piece = piece >> wide(g.out)
            if g.out + g.width < f.bits:  # bits above this piece's: masked off
                piece = piece & wide((1 << g.width) - 1)
            piece = piece.astype(np.uint8, copy=False)
            if g.plane:
                piece = np.packbits(piece, axis=1, bitorder="little")  # (n, count / 8)
            piece = (piece << np.uint8(g.shift)) if g.shift else piece
            key = repr(g.bytes) if not isinstance(g.bytes, np.ndarray) else g.bytes.tobytes()
            if key in merged:
                idx, acc = merged[key]
                merged[key] = (idx, acc | piece.reshape(acc.shape))
            else:
                merged[key] = (g.bytes, piece)
        for idx, acc in merged.values():
            _or(blocks, idx, acc)
    return blocks


# ----------------------------------------------------------------------------- join, fast path

JOIN_PIECE = 1 << 14  # blocks per piece handed to another thread by join_into
_JOIN_CHUNK = 1 << 22  # bytes of blocks the numpy path joins at a time
_PLANE = 0  # mask column 0 in a join table row: a bit plane (8 values -> one byte)


def join_into(
    lay: Layout, fields: dict[str, np.ndarray], out: np.ndarray, skip: str | None = None
) -> None:
    """Write the blocks of ``fields`` (as :func:`join`) into ``out``, (n, nbytes) u8 and
    C-contiguous: one pass of the C kernel over ranges of blocks on several threads when it is
    built, else :func:`join` a few MiB at a time. Same bytes either way. Field ``skip`` (not
    in ``fields``) is left zero."""
    n = out.shape[0]
    if _speedups is None or not n:
        step = max(1, _JOIN_CHUNK // lay.nbytes)
        for a in range(0, n, step):
            join(lay, {k: v[a : a + step] for k, v in fields.items()}, out[a : a + step], skip)
        return
    halves = _halves_field(lay) if skip is None else None
    kernel = getattr(_speedups, "halves_join", None)  # None: an older build
    if halves is not None and kernel is not None:  # 4/5-bit codes as halves: a kernel of their own
        name, qs, qh = halves
        codes = np.ascontiguousarray(fields[name])
        if codes.dtype == np.uint8 and codes.shape == (n, 32):
            join_into(lay, fields, out, skip=name)
            in_pieces(lambda a, b: kernel(out[a:b], codes[a:b], qs, qh), n, JOIN_PIECE)
            return
    table = _join_table(lay, skip)
    none = np.empty((n, 0), np.uint8)  # a skipped field: no row reads it
    arrays = [none if f.name == skip else _join_source(lay, f, fields[f.name]) for f in lay.fields]
    in_pieces(
        lambda a, b: _speedups.ggml_join(out[a:b], [v[a:b] for v in arrays], table, lay.nbytes),
        n,
        JOIN_PIECE,
    )


def _join_source(lay: Layout, f: Field, v: np.ndarray) -> np.ndarray:
    """Field ``f``'s part as the C kernel reads it: whole-byte fields as their bytes (n, size),
    others as u8 / little-endian u16 items; C-contiguous."""
    v = np.ascontiguousarray(v)
    if f.name in lay.whole:
        return v.view(np.uint8).reshape(v.shape[0], -1)
    return v.view(np.dtype("<u2")) if v.dtype.itemsize == 2 else v


# (id(layout), skipped field) -> (layout, its join table)
_TABLES: dict[tuple[int, str | None], tuple[Layout, np.ndarray]] = {}


def _join_table(lay: Layout, skip: str | None = None) -> np.ndarray:
    """The rows of ``cmf._speedups.ggml_join`` for ``lay`` (see cmf/_speedups.c): (field,
    itemsize, count, e0, e_step, b0, b_step, len, src_shift, mask, dst_shift), each a run of
    values at a constant step bound for bytes at a constant step; mask 0 marks a bit plane
    (``len`` values into ``len / 8`` bytes). None for field ``skip``."""
    got = _TABLES.get((id(lay), skip))
    if got is not None and got[0] is lay:
        return got[1]
    rows = []
    for k, f in enumerate(lay.fields):
        if f.name == skip:
            continue
        if f.name in lay.whole:
            size = f.count * part_dtype(f).itemsize
            rows.append((k, 1, size, 0, 1, lay.whole[f.name].start, 1, size, 0, 255, 0))
            continue
        isz = part_dtype(f).itemsize
        for g in lay.groups[f.name]:
            elems, where = _positions(g.elems, f.count), _positions(g.bytes, lay.nbytes)
            if g.plane:
                rows.append(
                    (
                        k,
                        isz,
                        f.count,
                        int(elems[0]),
                        1,
                        int(where[0]),
                        1,
                        elems.size,
                        g.out,
                        _PLANE,
                        0,
                    )
                )
                continue
            for e0, es, b0, bs, n in _progressions(elems, where):
                rows.append(
                    (k, isz, f.count, e0, es, b0, bs, n, g.out, (1 << g.width) - 1, g.shift)
                )
    table = np.array(rows, np.int32).reshape(-1, 11)
    _TABLES[(id(lay), skip)] = (lay, table)
    return table


# ----------------------------------------------------------------------------- 4-bit halves

_HALVES: dict[tuple[int, str], tuple[Layout, tuple[int, int] | None]] = {}


def code_halves(lay: Layout, name: str) -> tuple[int, int] | None:
    """``(qs, qh)`` when field ``name`` of a block holds 32 codes of 4 or 5 bits as halves of the
    16 bytes from ``qs`` (byte ``j``: the low 4 bits of code ``j`` in its low nibble, of code
    ``j + 16`` in its high one) and, for 5 bits, their bit 4 as the little-endian 32-bit plane
    at ``qh`` (-1 for 4 bits): Q4_0, Q4_1, IQ4_NL, MXFP4, Q5_0, Q5_1. Else None."""
    got = _HALVES.get((id(lay), name))
    if got is not None and got[0] is lay:
        return got[1]
    f = next((f for f in lay.fields if f.name == name), None)
    found = None
    if f is not None and f.kind == "u" and f.bits in (4, 5) and f.count == 32:
        planes = [g for g in lay.groups[name] if g.plane]
        groups = sorted((g for g in lay.groups[name] if not g.plane), key=lambda g: g.shift)
        qh = -1
        if f.bits == 5 and len(planes) == 1:
            p = planes[0]
            at = _positions(p.bytes, lay.nbytes)
            if (p.out, p.shift, at.size) == (4, 0, 4) and np.array_equal(at, at[0] + np.arange(4)):
                if np.array_equal(_positions(p.elems, 32), np.arange(32)):
                    qh = int(at[0])
        if len(groups) == 2 and (qh >= 0) == (f.bits == 5) and len(planes) == (f.bits == 5):
            lo, hi = groups
            where = _positions(lo.bytes, lay.nbytes)
            if (
                (lo.shift, lo.width, lo.out, hi.shift, hi.width, hi.out) == (0, 4, 0, 4, 4, 0)
                and np.array_equal(_positions(lo.elems, 32), np.arange(16))
                and np.array_equal(_positions(hi.elems, 32), np.arange(16, 32))
                and np.array_equal(_positions(hi.bytes, lay.nbytes), where)
                and np.array_equal(where, where[0] + np.arange(16))
            ):
                found = (int(where[0]), qh)
    _HALVES[(id(lay), name)] = (lay, found)
    return found


def nibble_halves(lay: Layout, name: str) -> int | None:
    """The first of the 16 bytes holding field ``name`` of a block when they hold its 32 codes
    of 4 bits as halves (:func:`code_halves` with no plane: Q4_0, Q4_1, IQ4_NL, MXFP4), else
    None."""
    found = code_halves(lay, name)
    return found[0] if found is not None and found[1] < 0 else None


def _halves_field(lay: Layout) -> tuple[str, int, int] | None:
    """The field of ``lay`` that :func:`code_halves` finds, with its (qs, qh), if any."""
    for f in lay.fields:
        found = code_halves(lay, f.name)
        if found is not None:
            return f.name, found[0], found[1]
    return None


def join_nibbles_into(
    lay: Layout, fields: dict[str, np.ndarray], out: np.ndarray, name: str, packed: np.ndarray
) -> None:
    """:func:`join_into` with field ``name`` (one :func:`nibble_halves` finds) given as its codes
    bitpacked at 4 bits (spec/codecs/bitpack.md: code ``2k`` in the low half of byte ``k``),
    ``packed`` (n, 16) u8: each block's codes go to its bytes without being unpacked (and fit
    4 bits by construction). Same bytes as unpacking them and joining."""
    at = nibble_halves(lay, name)
    n = out.shape[0]
    if at is None or packed.shape != (n, 16) or packed.dtype != np.uint8:
        raise CmfError(f"ggml: {lay.name} field {name!r} is not 4-bit halves given as (n, 16) u8")
    join_into(lay, fields, out, skip=name)
    kernel = getattr(_speedups, "nibble_halves", None)  # None: not built, or an older build
    if kernel is not None:
        in_pieces(lambda a, b: kernel(out[a:b], packed[a:b], at), n, JOIN_PIECE)
        return
    step = max(1, _JOIN_CHUNK // lay.nbytes)
    for a in range(0, n, step):
        lo, hi, q = packed[a : a + step, :8], packed[a : a + step, 8:], out[a : a + step, at:]
        q[:, 0:16:2] = (lo & np.uint8(0x0F)) | (hi << np.uint8(4))
        q[:, 1:16:2] = (lo >> np.uint8(4)) | (hi & np.uint8(0xF0))


def _progressions(elems: np.ndarray, where: np.ndarray) -> list[tuple[int, int, int, int, int]]:
    """``elems -> where`` cut into the fewest runs (greedy) in which both go up by a constant
    step: (e0, e_step, b0, b_step, len)."""
    out, i, k = [], 0, elems.size
    while i < k:
        j = i + 1
        if j < k and elems[j] > elems[i] and where[j] > where[i]:
            es, bs = int(elems[j] - elems[i]), int(where[j] - where[i])
            while j + 1 < k and elems[j + 1] - elems[j] == es and where[j + 1] - where[j] == bs:
                j += 1
            j += 1
        else:
            es = bs = 1
        out.append((int(elems[i]), es, int(where[i]), bs, j - i))
        i = j
    return out


def _positions(idx, size: int) -> np.ndarray:
    """The positions an index (slice, :class:`Runs` or array) selects from ``size``."""
    if isinstance(idx, Runs):
        return (idx.start + np.arange(idx.m)[:, None] * idx.step + np.arange(idx.r)).reshape(-1)
    return np.arange(size)[idx] if isinstance(idx, slice) else np.asarray(idx, np.intp)
