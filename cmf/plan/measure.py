"""Decode a pending (not yet written) tree in memory, to measure what a lossy encode did."""

from __future__ import annotations

from ..codecs import Value
from ..pipeline import Pending, PendingLeaf


def decode_pending(p: Pending) -> Value:
    """The value ``p`` decodes to, exactly as a reader would decode the written tree."""
    if isinstance(p, PendingLeaf):
        return bytes(memoryview(p.data).cast("B")) if not isinstance(p.data, bytes) else p.data
    parts = {name: decode_pending(child) for name, child in p.parts.items()}
    return p.codec.decode(parts, p.spec)


def is_lossy(p: Pending) -> bool:
    """True if any codec in the tree is lossy."""
    if isinstance(p, PendingLeaf):
        return False
    return (not p.codec.lossless) or any(is_lossy(c) for c in p.parts.values())
