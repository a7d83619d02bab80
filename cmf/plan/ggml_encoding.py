"""One planned tensor encoded as a GGML type (the bottom of the ``--gguf`` planner:
cmf.plan.candidates and cmf.plan.ggml_candidates use it).

- a block type (Q8_0 ... Q2_K, IQ4_XS, IQ4_NL, the legacy fallbacks): the ``ggml`` codec tree of
  cmf.ggml_encode's blocks (or, with ``feedback``, cmf.plan.ggml_gptq's), decoding to f32;
- F16 / BF16 (:data:`PLAIN_TYPES`): the tensor rounded to that dtype (round to nearest even, as
  llama.cpp converts) and stored losslessly *as that dtype*: the .cmf tensor is f16 / bf16, which
  the GGUF writer (cmf.convert.hf_gguf) writes as F16 / BF16. A value the dtype cannot hold
  (beyond f16's range) refuses the type.
"""

from __future__ import annotations

import numpy as np

from .. import dtypes
from ..codecs import ArraySpec
from ..errors import CmfError
from ..ggml_encode import quantize_blocks
from ..pipeline import Pending, decode_pending, encode_lossless

PLAIN_TYPES = {"F16": "f16", "BF16": "bf16"}  # GGML type -> the cmf dtype it is stored as


def importance_of(axis: int | None, w: np.ndarray | None) -> np.ndarray | None:
    """The imatrix for quantize_blocks: ``w`` when it weighs columns (the GGUF rows' axis);
    a per-row weight scales whole rows, which changes no rounding: None."""
    return np.asarray(w, np.float32) if (axis == 1 and w is not None) else None


def plain_rounded(x: np.ndarray, ggml_type: str) -> np.ndarray:
    """``x`` rounded to F16 / BF16 (as that numpy dtype); CmfError if a value does not fit."""
    dt = dtypes.BY_NAME[PLAIN_TYPES[ggml_type]]
    src = np.asarray(x, np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        y = src.astype(dt.numpy)
    if not np.isfinite(np.asarray(y, np.float32)).all() and np.isfinite(src).all():
        raise CmfError(f"{ggml_type}: the tensor holds values beyond {ggml_type}'s range")
    return y


def encode_ggml(
    x: np.ndarray,
    spec: ArraySpec,
    ggml_type: str,
    axis: int | None,
    w: np.ndarray | None,
    level: int = 3,
    feedback: np.ndarray | None = None,
) -> tuple[Pending, np.ndarray]:
    """The tree of ``x`` in ``ggml_type`` (module docstring) and the f32 array a reader decodes
    it to. ``feedback``: ``u`` of cmf.plan.candidates.channel_hessian for a block type whose
    input channels are the columns (``axis`` 1): the codes rounded with error feedback
    (cmf.plan.ggml_gptq). CmfError where the type does not take the rows."""
    from ..codecs.ggml_pack import blocks_to_pending

    x = np.asarray(x)
    if x.ndim < 2:
        raise CmfError(f"{ggml_type}: a planned GGML tensor has rank >= 2, found shape {x.shape}")
    if spec.dtype.name != "f32":
        raise CmfError(
            f"{ggml_type}: the ggml codec decodes to f32, the tensor is {spec.dtype.name}"
        )
    if ggml_type in PLAIN_TYPES:
        y = plain_rounded(x, ggml_type)
        pending = encode_lossless(
            y, ArraySpec(dtypes.of_array(y), tuple(int(d) for d in x.shape)), level
        )
        return pending, np.asarray(y, np.float32)
    rows = x.reshape(-1, x.shape[-1])
    if feedback is not None and axis == 1 and x.ndim == 2:
        from .ggml_gptq import gptq_blocks

        blocks = gptq_blocks(rows, ggml_type, feedback, importance_of(axis, w))[0]
    else:
        blocks = quantize_blocks(rows, ggml_type, importance_of(axis, w))
    pending = blocks_to_pending(blocks, ggml_type, tuple(int(d) for d in x.shape), level)
    return pending, decode_pending(pending)
