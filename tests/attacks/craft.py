"""Hand-crafting of .cmf files, valid or hostile, straight from spec/format.md.

Independent of cmf's writer on purpose: its own msgpack encoder (so it can express duplicate
keys, non-string keys, ext types, lying length headers), its own zstd frame builder (raw and RLE
blocks, header fields set by hand), its own preamble/trailer packing. Nothing here imports cmf.

    data = assemble([seg0, seg1], {"tensors": [...]})        # segment table filled in
    data = assemble(segs, idx, major=2, index_crc=0)          # any header/trailer field lied about
    data = rewrite_index(cmf_bytes, lambda idx: ...)         # mutate a file cmf.save_file wrote
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import crc32c as _crc32c
import msgpack

MAGIC = b"\x89CMF\r\n\x1a\n"
TRAILER_MAGIC = b"CMFINDX\x00"
ALIGN = 64
DATA_START = 64
TRAILER_SIZE = 32
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def crc32c(data: bytes) -> int:
    return _crc32c.crc32c(bytes(data))


def align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


# ----------------------------------------------------------------------------- msgpack


@dataclass(frozen=True)
class Pairs:
    """A msgpack map written pair by pair: duplicate or non-string keys allowed."""

    pairs: tuple


@dataclass(frozen=True)
class Ext:
    code: int
    data: bytes


@dataclass(frozen=True)
class RawMP:
    """Bytes inserted verbatim (a lying header, invalid UTF-8, ...)."""

    data: bytes


def _head(
    n: int, fix: int | None, fixmax: int, codes: tuple[int, ...], sizes: tuple[int, ...]
) -> bytes:
    if fix is not None and n <= fixmax:
        return bytes([fix | n])
    for code, size in zip(codes, sizes, strict=True):
        if n < 1 << (8 * size):
            return bytes([code]) + n.to_bytes(size, "big")
    raise ValueError(f"length {n} too large")


def array_header(n: int) -> bytes:
    return _head(n, 0x90, 15, (0xDC, 0xDD), (2, 4))


def map_header(n: int) -> bytes:
    return _head(n, 0x80, 15, (0xDE, 0xDF), (2, 4))


def str_header(n: int) -> bytes:
    return _head(n, 0xA0, 31, (0xD9, 0xDA, 0xDB), (1, 2, 4))


def bin_header(n: int) -> bytes:
    return _head(n, None, 0, (0xC4, 0xC5, 0xC6), (1, 2, 4))


def mp(obj: Any) -> bytes:
    """Encode ``obj`` as msgpack (dict order kept; ints in the smallest form)."""
    if isinstance(obj, RawMP):
        return obj.data
    if obj is None:
        return b"\xc0"
    if obj is True:
        return b"\xc3"
    if obj is False:
        return b"\xc2"
    if isinstance(obj, int):
        if 0 <= obj < 128 or -32 <= obj < 0:
            return struct.pack("b" if obj < 0 else "B", obj)
        if obj >= 0:
            for code, fmt in ((0xCC, ">B"), (0xCD, ">H"), (0xCE, ">I"), (0xCF, ">Q")):
                if obj < 1 << (8 * struct.calcsize(fmt)):
                    return bytes([code]) + struct.pack(fmt, obj)
        else:
            for code, fmt in ((0xD0, ">b"), (0xD1, ">h"), (0xD2, ">i"), (0xD3, ">q")):
                if obj >= -(1 << (8 * struct.calcsize(fmt) - 1)):
                    return bytes([code]) + struct.pack(fmt, obj)
        raise ValueError(f"integer {obj} does not fit msgpack")
    if isinstance(obj, float):
        return b"\xcb" + struct.pack(">d", obj)
    if isinstance(obj, str):
        b = obj.encode("utf-8", "surrogatepass")
        return str_header(len(b)) + b
    if isinstance(obj, (bytes, bytearray)):
        return bin_header(len(obj)) + bytes(obj)
    if isinstance(obj, (list, tuple)):
        return array_header(len(obj)) + b"".join(mp(x) for x in obj)
    if isinstance(obj, dict):
        return mp(Pairs(tuple(obj.items())))
    if isinstance(obj, Pairs):
        return map_header(len(obj.pairs)) + b"".join(mp(k) + mp(v) for k, v in obj.pairs)
    if isinstance(obj, Ext):
        n = len(obj.data)
        fixed = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}
        head = bytes([fixed[n]]) if n in fixed else bytes([0xC7, n])
        return head + struct.pack("b", obj.code) + obj.data
    raise TypeError(f"cannot encode {type(obj).__name__}")


# ----------------------------------------------------------------------------- index nodes


def leaf(i: int) -> dict:
    return {"segment": i}


def raw(data: Any) -> dict:
    return {"codec": "raw", "config": {}, "parts": {"data": data}}


def zstd(data: Any, level: int = 3, literals_only: bool = False) -> dict:
    return {
        "codec": "zstd",
        "config": {"level": level, "literals_only": literals_only},
        "parts": {"data": data},
    }


def byteplanes(planes: list, rotate: bool = False) -> dict:
    return {
        "codec": "byteplanes",
        "config": {"rotate": rotate},
        "parts": {f"p{j}": p for j, p in enumerate(planes)},
    }


def tensor(
    name: Any, dtype: Any, shape: Any, encoding: Any = None, alias: Any = None, **extra: Any
) -> dict:
    t = {"name": name, "dtype": dtype, "shape": shape}
    if encoding is not None:
        t["encoding"] = encoding
    if alias is not None:
        t["alias"] = alias
    t.update(extra)
    return t


def attachment(name: Any, size: Any, encoding: Any) -> dict:
    return {"name": name, "size": size, "encoding": encoding}


# ----------------------------------------------------------------------------- zstd frames


def zstd_frame(
    content: bytes = b"",
    *,
    declared: int | None = -1,
    rle: tuple[int, int] | None = None,
    checksum: int | None = None,
    dict_id: int | None = None,
    single_segment: bool = True,
) -> bytes:
    """One Zstandard frame (RFC 8878) built by hand from raw blocks, or one RLE block.

    ``declared``: frame content size to write (-1: the true size; None: omit the field).
    ``rle=(byte, count)``: RLE blocks (4 bytes per 128 KiB) instead of ``content``.
    ``checksum``: set the content-checksum flag and write this 32-bit value as the checksum.
    """
    true_size = rle[1] if rle is not None else len(content)
    size = true_size if declared == -1 else declared
    if size is None:
        single_segment = False
        fcs_flag, fcs = 0, b""
    elif size < 256 and single_segment:
        fcs_flag, fcs = 0, bytes([size])
    elif 256 <= size < 65536 + 256:
        fcs_flag, fcs = 1, struct.pack("<H", size - 256)
    elif size < 1 << 32:
        fcs_flag, fcs = 2, struct.pack("<I", size)
    else:
        fcs_flag, fcs = 3, struct.pack("<Q", size)
    did_flag, did = 0, b""
    if dict_id is not None:
        did_flag, did = 3, struct.pack("<I", dict_id)
    fhd = (
        (fcs_flag << 6)
        | (0x20 if single_segment else 0)
        | (0x04 if checksum is not None else 0)
        | did_flag
    )
    window = b"" if single_segment else bytes([(17 - 10) << 3])  # 128 KiB window
    blocks = []
    if rle is not None:  # RLE blocks of at most 128 KiB each
        left = rle[1]
        while True:
            n = min(left, 128 << 10)
            blocks.append((1, bytes([rle[0]]), n))
            left -= n
            if left <= 0:
                break
    else:
        chunks = [content[i : i + (128 << 10)] for i in range(0, len(content), 128 << 10)] or [b""]
        blocks.extend((0, c, len(c)) for c in chunks)
    body = b""
    for k, (btype, payload, bsize) in enumerate(blocks):
        last = 1 if k == len(blocks) - 1 else 0
        body += (last | (btype << 1) | (bsize << 3)).to_bytes(3, "little") + payload
    tail = b"" if checksum is None else struct.pack("<I", checksum)
    return ZSTD_MAGIC + bytes([fhd]) + window + did + fcs + body + tail


def skippable_frame(payload: bytes, declared: int | None = None) -> bytes:
    n = len(payload) if declared is None else declared
    return struct.pack("<II", 0x184D2A50, n) + payload


# ----------------------------------------------------------------------------- container


def preamble(
    magic: bytes = MAGIC, major: int = 1, minor: int = 0, flags: int = 0, pad: bytes | None = None
) -> bytes:
    head = magic + struct.pack("<HHI", major, minor, flags)
    pad = bytes(DATA_START - len(head)) if pad is None else pad
    return head + pad


def trailer(
    index_offset: int,
    index_length: int,
    index_crc: int,
    reserved: int = 0,
    magic: bytes = TRAILER_MAGIC,
) -> bytes:
    return struct.pack("<QQII", index_offset, index_length, index_crc, reserved) + magic


def segment_table(segments: list[bytes]) -> list[list[int]]:
    table, pos = [], DATA_START
    for s in segments:
        table.append([pos, len(s), crc32c(s)])
        pos = align(pos + len(s))
    return table


def assemble(
    segments: list[bytes],
    index: Any,
    *,
    magic: bytes = MAGIC,
    major: int = 1,
    minor: int = 0,
    flags: int = 0,
    preamble_pad: bytes | None = None,
    pad_byte: int = 0,
    index_offset: int | None = None,
    index_length: int | None = None,
    index_crc: int | None = None,
    reserved: int = 0,
    trailer_magic: bytes = TRAILER_MAGIC,
    gap_after_data: bytes = b"",
) -> bytes:
    """A whole file: preamble, ``segments`` 64-aligned, index, trailer.

    ``index`` is a dict (a "segments" key is added, first, when missing), any other object
    (encoded with :func:`mp`), or ``bytes`` used as the index verbatim. Every header and trailer
    field can be overridden to lie.
    """
    out = bytearray(preamble(magic, major, minor, flags, preamble_pad))
    for s in segments:
        out += bytes([pad_byte]) * (align(len(out)) - len(out))
        out += s
    out += bytes([pad_byte]) * (align(len(out)) - len(out))
    out += gap_after_data
    if isinstance(index, dict) and "segments" not in index:
        index = {"segments": segment_table(segments), **index}
    blob = index if isinstance(index, (bytes, bytearray)) else mp(index)
    off = len(out)
    out += blob
    out += trailer(
        off if index_offset is None else index_offset,
        len(blob) if index_length is None else index_length,
        crc32c(blob) if index_crc is None else index_crc,
        reserved,
        trailer_magic,
    )
    return bytes(out)


@dataclass
class Parsed:
    """A file split per its trailer (no checks: for mutating files cmf wrote)."""

    data: bytes
    index_offset: int
    index_length: int
    index: Any

    def segment(self, i: int) -> bytes:
        off, length, _ = self.index["segments"][i]
        return self.data[off : off + length]


def parse(data: bytes) -> Parsed:
    off, length, _, _, _ = struct.unpack("<QQII8s", data[-TRAILER_SIZE:])
    index = msgpack.unpackb(data[off : off + length], raw=False, strict_map_key=False)
    return Parsed(data, off, length, index)


def rewrite_index(
    data: bytes,
    edit: Callable[[dict], Any] | None = None,
    *,
    blob: bytes | None = None,
    **trailer_fields: Any,
) -> bytes:
    """Replace the index of a file (``edit`` mutates the decoded dict in place or returns a new
    object), keeping the data area, and write a consistent (or overridden) trailer."""
    p = parse(data)
    if blob is None:
        index = p.index
        if edit is not None:
            result = edit(index)
            index = index if result is None else result
        blob = mp(index)
    head = data[: p.index_offset]
    fields = dict(index_offset=p.index_offset, index_length=len(blob), index_crc=crc32c(blob))
    fields.update(trailer_fields)
    return head + blob + trailer(**fields)


def patch_segment(data: bytes, i: int, new: bytes, *, fix_crc: bool = True) -> bytes:
    """Overwrite segment ``i`` with bytes of the same length (fixing its CRC in the index)."""
    p = parse(data)
    off, length, _ = p.index["segments"][i]
    assert len(new) == length  # noqa: S101 - test helper precondition
    out = data[:off] + new + data[off + length :]
    if not fix_crc:
        return out

    def edit(idx: dict) -> None:
        idx["segments"][i][2] = crc32c(new)

    return rewrite_index(out, edit)
