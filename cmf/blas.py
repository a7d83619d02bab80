"""BLAS threads. The planner measures and encodes with BLAS on one thread, in its own process
(:func:`one_blas_thread`) as in its worker processes (:func:`blas_threads` at their start):
OpenBLAS splits some calls (dot products, matrix-vector products) over its threads and sums the
parts, so their last bits depend on the thread count, and ``--jobs N`` must write the bytes of
``--jobs 1``. One thread per worker also keeps N workers from contending for N CPUs (OpenBLAS's
idle threads spin). threadpoolctl (a core dependency) does the work; without it BLAS keeps its
threads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


def blas_threads(count: int) -> None:
    """Run BLAS on ``count`` threads from now on in this process."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(count, user_api="blas")


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS on one thread inside the block, its thread count restored after."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(1, user_api="blas"):
        yield
