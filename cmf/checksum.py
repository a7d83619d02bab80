"""CRC-32C (Castagnoli) as used for segments and the index."""

from __future__ import annotations

import crc32c as _crc32c


def crc32c(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """CRC-32C of ``data``, continuing from ``value``."""
    return _crc32c.crc32c(data, value)
