"""Error of a lossy encoding, as recorded in a tensor's ``error`` map (spec/format.md §3.2).

All metrics are computed in float64 over every element:

* ``rel_rmse`` = ||x̂ - x|| / ||x||  (0 if both are 0; inf if only x is 0);
* ``max_abs``  = max |x̂ - x|  (0 for an empty tensor);
* ``sqnr_db``  = 10 log10(||x||² / ||x̂ - x||²)  (inf for an exact reconstruction).

A non-finite value in either tensor makes the metrics it touches non-finite (NaN or inf); the
quantizer rejects such inputs, so this only shows up for hand-made trees.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import CmfError


def error_stats(original: np.ndarray, decoded: np.ndarray) -> dict[str, float]:
    """``{"rel_rmse", "max_abs", "sqnr_db"}`` of ``decoded`` against ``original`` (same shape;
    any real dtypes, bf16 and fp8 included)."""
    x = np.asarray(original)
    y = np.asarray(decoded)
    if x.shape != y.shape:
        raise CmfError(f"error_stats: shapes differ: {list(x.shape)} and {list(y.shape)}")
    if not (_real(x.dtype) and _real(y.dtype)):
        raise CmfError(f"error_stats: needs real arrays, found {x.dtype} and {y.dtype}")
    x, y = x.reshape(-1), y.reshape(-1)
    if x.size == 0:
        return {"rel_rmse": 0.0, "max_abs": 0.0, "sqnr_db": math.inf}
    noise = signal = max_abs = np.float64(0.0)
    with np.errstate(all="ignore"):
        for start in range(0, x.size, _CHUNK):  # float64 scratch of one chunk, not of the tensor
            x64 = x[start : start + _CHUNK].astype(np.float64)
            d = y[start : start + _CHUNK].astype(np.float64) - x64
            # einsum, not np.dot: BLAS splits long dot products across its threads, so the
            # last bits would depend on the thread count (parallel packs must record the same)
            noise += np.einsum("i,i->", d, d)
            signal += np.einsum("i,i->", x64, x64)
            max_abs = np.maximum(max_abs, np.max(np.abs(d)))  # NaN propagates
        if noise == 0.0:
            rel, sqnr = 0.0, math.inf
        else:
            rel = float(np.sqrt(noise / signal))  # inf if the original is all zeros
            sqnr = float(10.0 * np.log10(signal / noise))
    max_abs = float(max_abs)
    return {"rel_rmse": rel, "max_abs": max_abs, "sqnr_db": sqnr}


_CHUNK = 1 << 20


def _real(dtype: np.dtype) -> bool:
    """Ints, bools and real floats (ml_dtypes' bf16/fp8 included); not complex or objects."""
    try:
        np.zeros(1, dtype).astype(np.float64)
    except (TypeError, ValueError):
        return False
    return dtype.kind in "biuf" or dtype.kind == "V" and dtype.itemsize <= 2
