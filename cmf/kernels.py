"""The optional C kernels (cmf/_speedups.c: byte-plane shuffles, Huffman chunk decoding), or
None when they were not built or ``CMF_NO_SPEEDUPS`` is set. Codecs give the same bytes
either way; the kernels are only faster. ``in_pieces`` runs a kernel over ranges of a big input
on several threads."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

try:
    if os.environ.get("CMF_NO_SPEEDUPS"):
        raise ImportError
    from . import _speedups as speedups
except ImportError:
    speedups = None


# ----------------------------------------------------------------------------- pieces in threads

PIECE_MIN = 1 << 18  # items (symbols, words) per piece worth handing to another thread
_pools: dict[str, ThreadPoolExecutor] = {}
_pool_lock = threading.Lock()


def in_pieces(fn: Callable[[int, int], None], n: int, min_piece: int = PIECE_MIN) -> None:
    """Call ``fn(a, b)`` over ranges covering ``[0, n)``: one per core while each holds at least
    ``min_piece`` items, run in a thread pool of their own (the C kernels release the GIL, so the
    pieces run at once; no piece waits on another task, so nesting cannot deadlock).
    Small ``n`` runs in the caller's thread. Exceptions are raised in the caller."""
    k = max(1, min(_cores(), n // max(min_piece, 1)))
    if k == 1:
        fn(0, n)
        return
    cuts = [n * i // k for i in range(k + 1)]
    for future in [
        executor("pieces").submit(fn, a, b) for a, b in zip(cuts, cuts[1:], strict=False)
    ]:
        future.result()


def executor(kind: str) -> ThreadPoolExecutor:
    """The process's thread pool ``kind`` (one thread per usable core). A task must never wait
    on tasks of its own pool (``in_pieces`` pieces wait on nothing; cmf.pipeline's "parts"
    tasks decode serially below them)."""
    with _pool_lock:
        if kind not in _pools:
            _pools[kind] = ThreadPoolExecutor(
                max_workers=_cores(), thread_name_prefix=f"cmf-{kind}"
            )
        return _pools[kind]


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _after_fork() -> None:
    """A forked child inherits the pools but not their threads: start afresh."""
    global _pool_lock
    _pools.clear()
    _pool_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
