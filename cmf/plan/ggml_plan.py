"""``--gguf`` in cmf.plan.planner.plan_and_write: the source checked and the fixed bytes, before
any work (spec/planner.md, "Planning into GGML types").

- :func:`gguf_source`: CmfError for a model the GGUF writer cannot write (no GGUF mapping for
  its architecture, no tokenizer, a tensor llama.cpp has no name for) or for a sharded output;
  else the tensors with every float array as float32 (the ``ggml`` codec decodes to f32, and
  llama.cpp's converter stores 1-D tensors as F32);
- :func:`gguf_fixed`: the GGUF bytes the plan does not choose; CmfError when a size target is
  below the smallest GGUF the GGML types can make.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import CmfError
from .contracts import PlanOptions, parse_target_size
from .ggml_size import check_gguf_source, gguf_fixed_bytes, gguf_min_bytes


def gguf_source(tensors: Mapping[str, Any], attachments: Mapping[str, bytes],
                shard_size: int | None) -> dict[str, Any]:
    """The tensors to plan (module docstring)."""
    if shard_size is not None:
        raise CmfError("--gguf writes one .cmf (one GGUF): it does not go with --shard-size")
    check_gguf_source(tensors, attachments)
    out = {}
    for name, x in tensors.items():
        if isinstance(x, np.ndarray) and (x.dtype.kind == "f" or x.dtype.name == "bfloat16"):
            x = np.asarray(x, np.float32)
        out[name] = x
    return out


def gguf_fixed(tensors: Mapping[str, Any], planned: set[str], attachments: Mapping[str, bytes],
               options: PlanOptions) -> int:
    """The fixed GGUF bytes (module docstring)."""
    config = check_gguf_source(tensors, attachments)
    fixed = gguf_fixed_bytes(tensors, planned, attachments, config)
    if options.target_size is not None:
        unit, value = parse_target_size(options.target_size)
        params = sum(int(np.asarray(v).size) for v in tensors.values() if isinstance(v, np.ndarray))
        goal = value * params / 8 if unit == "bpp" else value
        least = fixed + gguf_min_bytes(tensors, planned)
        if goal < least:
            raise CmfError(f"target size {int(goal)} bytes is below the smallest GGUF the GGML types "
                           f"make of this model (about {least} bytes, {least * 8 / max(params, 1):.2f} "
                           f"bits/parameter: the header and unplanned tensors {fixed}, the planned "
                           f"tensors in their smallest types {least - fixed})")
    return fixed


__all__ = ["gguf_fixed", "gguf_source"]
