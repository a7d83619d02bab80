"""Fixed byte layouts of spec/format.md: preamble, trailer, alignment."""

from __future__ import annotations

import struct

MAGIC = b"\x89CMF\r\n\x1a\n"
TRAILER_MAGIC = b"CMFINDX\x00"
MAJOR = 1
MINOR = 0
ALIGN = 64
DATA_START = 64  # preamble (16 bytes) + zero padding

PREAMBLE = struct.Struct("<8sHHI")  # magic, major, minor, flags -> 16 bytes
TRAILER = struct.Struct("<QQII8s")  # index_offset, index_length, index_crc32c, reserved, magic
TRAILER_SIZE = TRAILER.size  # 32
MIN_FILE_SIZE = DATA_START + TRAILER_SIZE

assert PREAMBLE.size == 16 and TRAILER_SIZE == 32  # noqa: S101 - layout constants, not input


def align(n: int) -> int:
    """Smallest multiple of ALIGN that is >= n."""
    return -(-n // ALIGN) * ALIGN


def pack_preamble() -> bytes:
    head = PREAMBLE.pack(MAGIC, MAJOR, MINOR, 0)
    return head + bytes(DATA_START - len(head))


def pack_trailer(index_offset: int, index_length: int, index_crc: int) -> bytes:
    return TRAILER.pack(index_offset, index_length, index_crc, 0, TRAILER_MAGIC)
