"""CRC-32C (Castagnoli) as used for segments and the index, and the content digest the planner
keys arrays by."""

from __future__ import annotations

import hashlib

import crc32c as _crc32c
import numpy as np


def crc32c(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """CRC-32C of ``data``, continuing from ``value``."""
    return _crc32c.crc32c(data, value)


def content_digest(x: np.ndarray) -> bytes:
    """16-byte BLAKE2b of ``x``'s bytes in C order, its dtype and its shape: equal for arrays of
    equal dtype, shape and bytes (NaN payloads included), whatever their memory layout."""
    h = hashlib.blake2b(np.ascontiguousarray(x).reshape(-1).view(np.uint8), digest_size=16)
    h.update(f"|{x.dtype.str}|{x.shape}".encode())
    return h.digest()
