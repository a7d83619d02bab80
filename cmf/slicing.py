"""Rows of a stored tensor, decoding only what those rows need where the codec tree allows it.

``read_rows(f, name, a, b)`` returns rows ``[a, b)`` (along axis 0) of tensor ``name``, exactly
``f.get_tensor(name)[a:b]``. A node decodes only its rows when it is

* ``raw`` or ``byteplanes`` (each byte range of a row range is contiguous),
* ``quantize`` blocked along an axis other than the first (blocks never cross rows: the rows
  of the codes and of every per-block part are decoded, then dequantized),
* ``partition`` (its ``class`` part is decoded whole, one byte per row, and checked; each
  class's rows are decoded as a row range of that class's sub-tree),
* ``bitpack`` when the first row starts on a byte boundary,
* a shared value (decoded once per file by the reader, then sliced);

its byte leaves are read as ranges of their (CRC-checked) segment, and a ``zstd`` frame is
decompressed as a stream up to the last byte needed. Any other node (``huffman``, ``codebook``,
``sparse``, ``lowrank``, ``outlier``, ...) is decoded whole and sliced; :class:`RowReader`
lists the codecs it decoded whole in ``whole``. A partial read checks what it decodes (codes
in range, finite scales, class counts) but not bytes it never reads (a zstd frame's tail):
``cmf validate`` checks whole files.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import zstandard

from .codecs import ArraySpec
from .codecs.bitpack import BitPack
from .codecs.byteplanes import BytePlanes, plane_names
from .codecs.partition import Partition, part_names
from .codecs.quantize import Quantize
from .codecs.raw import Raw
from .codecs.zstd import _MAX_RATIO, Zstd
from .errors import CmfError, FormatError
from .index import CodecNode, Leaf, Node, SharedRef
from .pipeline import check_decodable
from .reader import CmfFile

_STREAM_STEP = 1 << 20  # bytes decompressed at a time when skipping to a row range


class RowReader:
    """Decodes row ranges of nodes of one open :class:`CmfFile` (see the module docstring)."""

    def __init__(self, f: CmfFile) -> None:
        self.f = f
        self.whole: list[str] = []  # codecs (or "segment"/"shared") decoded whole, in order

    # ----------------------------------------------------------------------------- arrays
    def rows(self, node: Node, a: int, b: int) -> np.ndarray:
        """Rows ``[a, b)`` of the array ``node`` decodes to (0 <= a <= b <= rows)."""
        spec = node.spec
        if not isinstance(spec, ArraySpec) or not spec.shape:
            raise FormatError(f"row ranges need an array of rank >= 1, found {spec.describe()}")
        d0 = spec.shape[0]
        if not 0 <= a <= b <= d0:
            raise CmfError(f"rows [{a}, {b}) are outside [0, {d0}) of {spec.describe()}")
        sub = ArraySpec(spec.dtype, (b - a, *spec.shape[1:]))
        check_decodable(sub, self.f.limits)
        if isinstance(node, SharedRef):
            return self.f.shared_value(node.index)[a:b]
        if isinstance(node, CodecNode) and isinstance(node.codec, Partition) and (a, b) != (0, d0):
            return self.partition_rows(node, a, b)
        if isinstance(node, CodecNode) and (a, b) != (0, d0):
            parts = self._row_parts(node, a, b, sub)
            if parts is not None:
                value = node.codec.decode(parts, sub)
                if not (
                    isinstance(value, np.ndarray)
                    and value.shape == sub.shape
                    and value.dtype == sub.dtype.numpy
                ):
                    raise FormatError(f"codec {node.codec.name!r} did not produce {sub.describe()}")
                return value
        if (a, b) != (0, d0):
            self.whole.append(node.codec.name if isinstance(node, CodecNode) else "segment")
        return self.f.decode_node(node)[a:b]

    def _row_parts(self, node: CodecNode, a: int, b: int, sub: ArraySpec) -> dict | None:
        """The parts that decode to rows [a, b) with ``node.codec`` on ``sub``, or None."""
        codec, spec = node.codec, node.spec
        width = math.prod(spec.shape[1:])  # elements per row
        if isinstance(codec, Raw):
            per = width * spec.dtype.itemsize
            return {"data": self.byte_range(node.parts["data"], a * per, b * per)}
        if isinstance(codec, BytePlanes):
            return {
                p: self.byte_range(node.parts[p], a * width, b * width)
                for p in plane_names(spec.dtype.itemsize)
            }
        if isinstance(codec, Quantize):
            rank = len(spec.shape)
            if codec.axis is None or rank < 2 or codec.axis % rank == 0:
                return None  # blocks may run across rows
            if any(
                not c.spec.shape or c.spec.shape[0] != spec.shape[0] for c in node.parts.values()
            ):
                return None
            return {n: self.rows(c, a, b) for n, c in node.parts.items()}
        if isinstance(codec, BitPack):
            first, last = a * width * codec.bits, b * width * codec.bits
            if first % 8:
                return None
            data = self.byte_range(node.parts["data"], first // 8, -(-last // 8))
            used = last % 8
            if used and b < spec.shape[0]:  # the last byte also holds the next row's codes
                data = bytearray(data)
                data[-1] &= (1 << used) - 1
            return {"data": data}
        return None

    def partition_rows(self, node: CodecNode, a: int, b: int) -> np.ndarray:
        """Rows [a, b) of a ``partition`` node: its classes decoded and checked, then each class's
        rows decoded as a row range of its sub-tree and put in place bit for bit."""
        codec: Partition = node.codec  # type: ignore[assignment]
        spec = node.spec
        k = len(codec.counts)
        cls = self.f.decode_node(node.parts["class"])
        if cls.size and int(cls.max()) >= k:
            raise FormatError(
                f"partition: class value {int(cls.max())} is out of range for {k} classes"
            )
        found = np.bincount(cls, minlength=k)
        bad = np.flatnonzero(found != np.asarray(codec.counts, dtype=np.int64))
        if bad.size:
            j = int(bad[0])
            raise FormatError(
                f"partition: class {j} occurs {int(found[j])} times, counts says {codec.counts[j]}"
            )
        before = np.bincount(cls[:a], minlength=k)
        chosen = cls[a:b]
        out = np.empty((b - a, *spec.shape[1:]), dtype=spec.dtype.numpy)
        bits = out.view(f"u{spec.dtype.itemsize}")  # bits copied, never converted
        for j, name in enumerate(part_names(k)):
            where = chosen == j
            n = int(where.sum())
            if n:
                start = int(before[j])
                rows = self.rows(node.parts[name], start, start + n)
                bits[where] = rows.view(bits.dtype)
        return out

    # ----------------------------------------------------------------------------- bytes
    def byte_range(self, node: Node, lo: int, hi: int) -> Any:
        """Bytes ``[lo, hi)`` of the byte string ``node`` decodes to."""
        length = node.spec.length
        if length is None or not 0 <= lo <= hi <= length:
            raise FormatError(f"bytes [{lo}, {hi}) are outside {node.spec.describe()}")
        if isinstance(node, Leaf):
            return self.f.segment(node.segment)[lo:hi]  # the whole segment is CRC-checked
        part = (lo, hi) != (0, length)
        if (
            part
            and isinstance(node, CodecNode)
            and isinstance(node.codec, Zstd)
            and isinstance(node.parts["data"], Leaf)
        ):
            return _zstd_range(self.f.segment(node.parts["data"].segment), length, lo, hi)
        if part:
            self.whole.append(node.codec.name if isinstance(node, CodecNode) else "shared")
        return memoryview(self.f.decode_node(node)).cast("B")[lo:hi]


def _zstd_range(frame: Any, length: int, lo: int, hi: int) -> bytes:
    """Bytes [lo, hi) of a zstd frame declaring ``length`` bytes, decompressed as a stream and
    stopped at ``hi`` (the frame header is checked as the zstd codec checks it)."""
    try:
        params = zstandard.get_frame_parameters(frame)
    except zstandard.ZstdError as exc:
        raise FormatError(f"zstd: not a zstd frame header ({exc})") from None
    if params.content_size != length:
        raise FormatError(f"zstd: frame declares {params.content_size} bytes, {length} expected")
    if params.dict_id != 0:
        raise FormatError(f"zstd: frame needs dictionary {params.dict_id}; none are used")
    if length > len(frame) * _MAX_RATIO:
        raise FormatError(f"zstd: a {len(frame)}-byte frame cannot hold {length} bytes")
    out = bytearray(hi - lo)
    pos = 0  # decompressed bytes so far
    try:
        with zstandard.ZstdDecompressor().stream_reader(frame, read_across_frames=False) as r:
            while pos < hi:
                chunk = r.read(min(_STREAM_STEP, hi - pos))
                if not chunk:
                    raise FormatError(f"zstd: frame ended after {pos} bytes, {length} declared")
                start, end = max(pos, lo), pos + len(chunk)
                if end > start:
                    out[start - lo : end - lo] = chunk[start - pos :]
                pos = end
    except zstandard.ZstdError as exc:
        raise FormatError(f"zstd: corrupt frame ({exc})") from None
    return bytes(out)


def read_rows(f: CmfFile, name: str, a: int, b: int, reader: RowReader | None = None) -> np.ndarray:
    """Rows ``[a, b)`` of tensor ``name`` of ``f`` as a new writable array (see the module
    docstring for which codec trees decode only those rows)."""
    entry = f.entry(name)
    if entry.alias is not None:
        entry = f.entry(entry.alias)
    reader = reader or RowReader(f)
    rows = reader.rows(entry.encoding, a, b)
    return _owned(rows)


def _owned(array: np.ndarray) -> np.ndarray:
    """``array`` itself if it owns writable memory, else a copy (never a view of the mapping)."""
    root = array
    while isinstance(root, np.ndarray) and root.base is not None:
        root = root.base
    if (
        array.flags.writeable
        and array.flags.c_contiguous
        and isinstance(root, np.ndarray)
        and root.flags.owndata
        and root.nbytes == array.nbytes
    ):
        return array
    return np.array(array, copy=True, order="C")


# --------------------------------------------------------------------------------- indexing
def row_span(key: Any, d0: int) -> tuple[int, int, Any]:
    """For an index ``key`` into an array of ``d0`` rows: the rows ``[a, b)`` it touches and the
    same index rebased onto those rows. Keys whose first entry is not an int or a slice read
    every row."""
    parts = key if isinstance(key, tuple) else (key,)
    if not parts:
        return 0, d0, key
    first, rest = parts[0], parts[1:]
    if isinstance(first, (int, np.integer)) and not isinstance(first, (bool, np.bool_)):
        i = int(first)
        if not -d0 <= i < d0:
            raise CmfError(f"index {i} is out of range for {d0} rows")
        i %= d0
        return i, i + 1, (0, *rest)
    if isinstance(first, slice):
        start, stop, step = first.indices(d0)
        picked = range(start, stop, step)
        if not picked:
            return 0, 0, (slice(0, 0), *rest)
        lo, hi = min(picked[0], picked[-1]), max(picked[0], picked[-1]) + 1
        if step > 0:
            return lo, hi, (slice(start - lo, hi - lo, step), *rest)
        return lo, hi, (slice(start - lo, None, step), *rest)
    return 0, d0, key


def slice_of(f: CmfFile, name: str, key: Any) -> np.ndarray:
    """``f.get_tensor(name)[key]`` as a new C-contiguous array, decoding only the rows ``key``
    touches where the codec tree allows it."""
    spec = f.entry(name).spec
    a, b, rebased = row_span(key, spec.shape[0]) if spec.shape else (0, 0, key)  # 0-d: no rows
    whole = not spec.shape or (a, b) == (0, spec.shape[0])
    block = f.get_tensor(name) if whole else read_rows(f, name, a, b)
    try:
        out = np.asarray(block[rebased])  # an int per axis gives a numpy scalar
    except IndexError as exc:
        raise CmfError(f"tensor {name!r} {spec.describe()}: bad index {key!r} ({exc})") from None
    if out.base is not None or not out.flags.c_contiguous:  # a view would keep the block
        out = np.array(out, copy=True, order="C")
    return out
