"""Returning freed memory to the operating system (glibc's allocator; a no-op elsewhere).

glibc serves big allocations from ``mmap`` only above a threshold that rises as big blocks are
freed (up to 32 MiB), so a long run that makes and drops many arrays of a few MiB ends up with
them on the heap, where freed space stays in the process's resident set. The planner, which does
exactly that for every tensor and round, fixes the threshold at start and trims the heap after its
big stages. Nothing here changes what any computation returns."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter numbers (malloc.h)
MMAP_THRESHOLD = 1 << 20  # blocks of 1 MiB and more go to mmap and back to the system when freed


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _ = (libc.mallopt, libc.malloc_trim)  # glibc: both functions exist
    except (OSError, AttributeError):
        return None
    return libc


def keep_big_blocks_off_heap() -> bool:
    """Fix glibc's mmap threshold at ``MMAP_THRESHOLD``; False where that is not possible."""
    libc = _libc()
    return bool(libc is not None and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def trim() -> None:
    """Give the heap's free space back to the system (``malloc_trim(0)``)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
