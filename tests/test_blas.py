"""cmf.blas: the planner's BLAS thread limit."""

from __future__ import annotations

from threadpoolctl import threadpool_info

from cmf.blas import one_blas_thread


def _blas_threads() -> list[int]:
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


def test_one_blas_thread_inside_the_block_and_restored_after():
    before = _blas_threads()
    with one_blas_thread():
        assert _blas_threads() and all(n == 1 for n in _blas_threads())
    assert _blas_threads() == before
