"""Encode float32 matrices into GGML block bytes (K-quants, IQ4, legacy types), importance-weighted.

``quantize_blocks(x, "Q4_K", importance)`` returns the bytes llama.cpp would store for ``x``
(rows x cols, GGUF rows = the last numpy axis): ``rows * cols / block`` blocks of the type's
size, row after row, decodable by ``gguf.quants.dequantize`` and by llama.cpp. ``importance``
(per column, ``(cols,)``, or per element, ``(rows, cols)``) is what llama.cpp's imatrix holds:
the mean square of the activations that multiply each column; the searches then minimise the
importance-weighted squared error. The method is described in spec/planner.md ("GGML encoders").
``naive_blocks`` is the baseline: max-abs scales, round to nearest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import CmfError
from . import kquants as kq
from . import legacy as lg


@dataclass(frozen=True)
class EncodedType:
    """A GGML type this package encodes: elements per block, bytes per block, encoder."""

    name: str
    block: int
    nbytes: int
    encode: Callable[..., np.ndarray]


TYPES = {
    t.name: t
    for t in (
        EncodedType("Q2_K", 256, 84, kq.encode_q2_k),
        EncodedType("Q3_K", 256, 110, kq.encode_q3_k),
        EncodedType("Q4_K", 256, 144, kq.encode_q4_k),
        EncodedType("Q5_K", 256, 176, kq.encode_q5_k),
        EncodedType("Q6_K", 256, 210, kq.encode_q6_k),
        EncodedType("IQ4_NL", 32, 18, kq.encode_iq4_nl),
        EncodedType("IQ4_XS", 256, 136, kq.encode_iq4_xs),
        EncodedType("Q4_0", 32, 18, lg.encode_q4_0),
        EncodedType("Q4_1", 32, 20, lg.encode_q4_1),
        EncodedType("Q5_0", 32, 22, lg.encode_q5_0),
        EncodedType("Q5_1", 32, 24, lg.encode_q5_1),
        EncodedType("Q8_0", 32, 34, lg.encode_q8_0),
    )
}

# What llama.cpp's quantizer uses when a row length is not a multiple of a type's block
# (llama-quant.cpp ``tensor_type_fallback``, llama.cpp as vendored by llama-cpp-python 0.3.36);
# a row that does not fit the fallback either is stored as F16.
FALLBACK = {
    "Q2_K": "Q4_0",
    "Q3_K": "Q4_0",
    "Q4_K": "Q5_0",
    "Q5_K": "Q5_1",
    "Q6_K": "Q8_0",
    "IQ4_XS": "IQ4_NL",
}


def fallback_type(ggml_type: str, cols: int) -> str:
    """The GGML type llama.cpp stores a tensor of row length ``cols`` in when asked for
    ``ggml_type``: the type itself when its block divides ``cols``, else its fallback, else
    "F16"."""
    name = ggml_type.upper()
    if name not in TYPES:
        raise CmfError(f"GGML type: expected one of {sorted(TYPES)}, found {ggml_type!r}")
    for t in (name, FALLBACK.get(name)):
        if t is not None and cols > 0 and cols % TYPES[t].block == 0:
            return t
    return "F16"


CHUNK_ELEMENTS = 1 << 20  # elements encoded at a time (bounds the searches' temporaries)


def _check(x, ggml_type: str, importance):
    """Validated ``(x (rows, cols) float32, type, importance (cols,) or (rows, cols) or None)``."""
    if not isinstance(ggml_type, str) or ggml_type.upper() not in TYPES:
        raise CmfError(f"GGML type to encode: expected one of {sorted(TYPES)}, found {ggml_type!r}")
    t = TYPES[ggml_type.upper()]
    x = np.asarray(x)
    if x.ndim != 2:
        raise CmfError(f"GGML encoding: expected a (rows, cols) matrix, found shape {x.shape}")
    if x.dtype.kind not in "fiu" and x.dtype.name != "bfloat16":
        raise CmfError(f"GGML encoding: expected a real float array, found dtype {x.dtype}")
    rows, cols = x.shape
    if cols == 0 or cols % t.block:
        raise CmfError(
            f"{t.name}: row length must be a positive multiple of {t.block}, found {cols} "
            f"(GGUF rows are the last axis)"
        )
    with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf: refused
        x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise CmfError(f"{t.name}: the input holds NaN or infinite values (or overflows float32)")
    if importance is not None:
        imp = np.asarray(importance)
        if imp.dtype.kind not in "fiu" or imp.shape not in ((cols,), (rows, cols)):
            raise CmfError(
                f"{t.name}: importance must be real, of shape ({cols},) or ({rows}, {cols}); "
                f"found {imp.dtype} {imp.shape}"
            )
        with np.errstate(over="ignore"):
            imp = imp.astype(np.float32)
        if not np.isfinite(imp).all() or (imp < 0).any():
            raise CmfError(f"{t.name}: importance values must be finite and >= 0")
        mean = float(imp.mean(dtype=np.float64)) if imp.size else 0.0
        # a small floor keeps every weight positive (all-zero importance = unweighted)
        imp = imp + np.float32(1e-6 * mean) if mean > 0 else np.ones_like(imp)
        importance = np.ascontiguousarray(imp)
    return x, t, importance


def _run(x, ggml_type, importance, search: bool) -> np.ndarray:
    x, t, imp = _check(x, ggml_type, importance)
    rows, cols = x.shape
    blocks = x.reshape(-1, t.block)  # (rows * cols / block, block)
    per_row = cols // t.block
    wblocks = None if imp is None else imp.reshape(-1, t.block)  # (per_row or all blocks, block)
    out = np.empty((blocks.shape[0], t.nbytes), dtype=np.uint8)
    step = max(1, CHUNK_ELEMENTS // t.block)
    for s in range(0, blocks.shape[0], step):
        e = min(s + step, blocks.shape[0])
        if wblocks is None:
            w = None
        elif imp.ndim == 1:  # one importance per column: block j of every row shares it
            w = wblocks[np.arange(s, e) % per_row]
        else:
            w = wblocks[s:e]
        out[s:e] = t.encode(blocks[s:e], w, search=search)
    return out.reshape(rows, cols // t.block * t.nbytes)


def quantize_blocks(x, ggml_type: str, importance=None) -> np.ndarray:
    """GGML block bytes of ``x`` (rows, cols) for ``ggml_type`` (a name of :data:`TYPES`).

    Returns ``(rows, cols // block * nbytes)`` uint8: each row's blocks in order, as GGUF stores
    them. Raises CmfError for a row length not a multiple of the block size, a non-2-D or
    non-finite input, an importance of the wrong shape or with negative/non-finite values.
    Values beyond what float16 scales can reach (about 6e7 for Q4_K) saturate.
    """
    return _run(x, ggml_type, importance, search=True)


def naive_blocks(x, ggml_type: str) -> np.ndarray:
    """The baseline encoding of ``x``: max-abs (max - min) scales at every level, rounding to
    nearest."""
    return _run(x, ggml_type, None, search=False)


__all__ = ["FALLBACK", "TYPES", "EncodedType", "fallback_type", "naive_blocks", "quantize_blocks"]
