"""GGML blocks rounded with error feedback (GPTQ) for the ``--gguf`` planner (spec/planner.md,
"Planning into GGML types").

:func:`gptq_blocks` encodes ``x`` (rows, n) — a weight whose columns are the layer's input
channels, GGUF rows = numpy rows — as ``ggml_type`` blocks, one column block (the type's block
length, 32 or 256 columns) at a time, left to right:

1. the block's parameters (scales, mins, sub-block scales) are chosen by cmf.ggml_encode's
   importance-weighted search on the block's **current** columns (the original ones plus the
   error fed forward from the blocks before);
2. with those parameters fixed, each column's codes are rounded to the nearest value, one column
   at a time, and its error ``e_j = (w_j - q_j) / u_jj`` fed to the block's later columns
   (``w_k -= e_j u_jk``);
3. the block's errors are fed to every later column in one product (``W[:, after] -= E U``).

``u`` is the upper Cholesky factor of the damped inverse input matrix of calibration fold 0
(cmf.plan.candidates.channel_hessian, the step candidates' feedback), so the error is moved
to where fold 0's inputs cancel it; the planner measures the result on fold 1 and keeps, per
tensor and type, whichever of this and the plain rounding measures better. The bytes are a
valid block of the type either way (the same fields, the codes chosen differently), so
llama.cpp runs them as it runs its own.

The code of each value comes from the block's fields: for every type but IQ4_NL / IQ4_XS the
value is affine in the code field (``V(q) = V(0) + q (V(1) - V(0))``, Q8_0's code an int8), for
those two it is ``D * KV_IQ4[q]`` with ``D = V(8)`` (``KV_IQ4[8] = 1``); the values written are
the ones the dequantizer gives for the final fields.
"""

from __future__ import annotations

import numpy as np

from ..codecs.ggml_dequant import KV_IQ4, dequantize
from ..codecs.ggml_layout import join, split
from ..codecs.ggml_types import LAYOUTS
from ..errors import CmfError
from ..ggml_encode import TYPES, quantize_blocks

TABLE_TYPES = ("IQ4_NL", "IQ4_XS")  # value = D * KV_IQ4[code]
SIGNED_TYPES = ("Q8_0",)  # the code field holds an int8
ROW_CHUNK = 1 << 13  # rows rounded at a time (rows are independent): bounds the temporaries


def _with_codes(fields: dict[str, np.ndarray], code: int) -> dict[str, np.ndarray]:
    out = dict(fields)
    out["q"] = np.full_like(fields["q"], code)
    return out


def _block(
    w: np.ndarray, ggml_type: str, u: np.ndarray, imp: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One column block ``w`` (rows, B), updated in place as its columns are rounded: the
    block bytes (rows, nbytes), the values (rows, B) and the scaled errors (rows, B)."""
    lay = LAYOUTS[ggml_type]
    rows, width = w.shape
    fields = split(lay, quantize_blocks(w, ggml_type, imp).reshape(rows, lay.nbytes))
    bits = next(f.bits for f in lay.fields if f.name == "q")
    if ggml_type in TABLE_TYPES:
        scale = dequantize(ggml_type, _with_codes(fields, 8))  # (rows, B): D of each element
    else:
        base = dequantize(ggml_type, _with_codes(fields, 0))
        slope = dequantize(ggml_type, _with_codes(fields, 1)) - base
        lo, hi = (-128, 127) if ggml_type in SIGNED_TYPES else (0, (1 << bits) - 1)
        flat = slope == 0
        slope = np.where(flat, np.float32(1), slope)
    codes = np.empty((rows, width), np.int64)
    err = np.empty((rows, width), np.float32)
    for k in range(width):
        if k:
            w[:, k] -= err[:, :k] @ u[:k, k]
        col = w[:, k]
        if ggml_type in TABLE_TYPES:
            c = np.abs(scale[:, k, None] * KV_IQ4[None, :] - col[:, None]).argmin(axis=1)
            v = scale[:, k] * KV_IQ4[c]
        else:
            c = np.clip(np.rint((col - base[:, k]) / slope[:, k]), lo, hi)
            c = np.where(flat[:, k], 0, c).astype(np.int64)
            v = base[:, k] + slope[:, k] * c
        codes[:, k] = c
        err[:, k] = (col - v) / u[k, k]
    q = codes & 0xFF if ggml_type in SIGNED_TYPES else codes
    fields["q"] = q.astype(fields["q"].dtype)
    return join(lay, fields), dequantize(ggml_type, fields), err


def gptq_blocks(
    x: np.ndarray, ggml_type: str, u: np.ndarray, importance: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(blocks (rows, n // B * nbytes) u8, values (rows, n) f32)`` of ``x`` (rows, n) in
    ``ggml_type`` rounded with error feedback through ``u`` (n, n) (module docstring);
    ``importance`` (n,) is the imatrix of each block's parameter search. CmfError where the
    type does not take the rows or ``u`` does not fit."""
    if ggml_type not in TYPES:
        raise CmfError(f"GPTQ rounding: {ggml_type!r} is not a GGML type cmf encodes")
    x = np.asarray(x, np.float32)
    if x.ndim != 2:
        raise CmfError(f"GPTQ rounding: expected a (rows, cols) matrix, found shape {x.shape}")
    rows, n = x.shape
    width, nbytes = TYPES[ggml_type].block, TYPES[ggml_type].nbytes
    if n % width:
        raise CmfError(f"{ggml_type}: row length must be a multiple of {width}, found {n}")
    u = np.asarray(u, np.float32)
    if u.shape != (n, n) or not np.isfinite(u).all() or (np.diag(u) <= 0).any():
        raise CmfError(
            f"GPTQ rounding: the feedback factor must be ({n}, {n}) with a positive diagonal"
        )
    if not np.isfinite(x).all():
        raise CmfError(f"{ggml_type}: the input holds NaN or infinite values")
    imp = None if importance is None else np.asarray(importance, np.float32).reshape(n)
    blocks = np.empty((rows, n // width, nbytes), np.uint8)
    values = np.empty((rows, n), np.float32)
    for r0 in range(0, rows, ROW_CHUNK):
        r1 = min(r0 + ROW_CHUNK, rows)
        w = x[r0:r1].copy()  # (r, n): the columns as the errors before them left them
        for b, c0 in enumerate(range(0, n, width)):
            c1 = c0 + width
            blk = np.ascontiguousarray(w[:, c0:c1])
            blocks[r0:r1, b], values[r0:r1, c0:c1], err = _block(
                blk, ggml_type, u[c0:c1, c0:c1], None if imp is None else imp[c0:c1]
            )
            if c1 < n:
                w[:, c1:] -= err @ u[c0:c1, c1:]
    return blocks.reshape(rows, -1), values


__all__ = ["gptq_blocks"]
