"""One planned tensor encoded as a GGML type: the ``ggml`` codec tree of cmf.ggml_encode's blocks
(the bottom of the ``--gguf`` planner: cmf.plan.candidates and cmf.plan.ggml_candidates use it)."""

from __future__ import annotations

import numpy as np

from ..codecs import ArraySpec
from ..errors import CmfError
from ..ggml_encode import quantize_blocks
from ..pipeline import Pending, decode_pending


def importance_of(axis: int | None, w: np.ndarray | None) -> np.ndarray | None:
    """The imatrix for quantize_blocks: ``w`` when it weighs columns (the GGUF rows' axis);
    a per-row weight scales whole rows, which changes no rounding: None."""
    return np.asarray(w, np.float32) if (axis == 1 and w is not None) else None


def encode_ggml(x: np.ndarray, spec: ArraySpec, ggml_type: str, axis: int | None,
                w: np.ndarray | None, level: int = 3) -> tuple[Pending, np.ndarray]:
    """The ``ggml`` tree of ``x`` in ``ggml_type`` and the f32 array a reader decodes it to.
    CmfError where the type does not take the rows."""
    from ..codecs.ggml_pack import blocks_to_pending

    x = np.asarray(x)
    if x.ndim < 2:
        raise CmfError(f"{ggml_type}: a planned GGML tensor has rank >= 2, found shape {x.shape}")
    if spec.dtype.name != "f32":
        raise CmfError(f"{ggml_type}: the ggml codec decodes to f32, the tensor is {spec.dtype.name}")
    rows = x.reshape(-1, x.shape[-1])
    blocks = quantize_blocks(rows, ggml_type, importance_of(axis, w))
    pending = blocks_to_pending(blocks, ggml_type, tuple(int(d) for d in x.shape), level)
    return pending, decode_pending(pending)
