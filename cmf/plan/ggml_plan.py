"""``--gguf`` in cmf.plan.planner.plan_and_write: the source checked and the fixed bytes, before
any work (spec/planner.md, "Planning into GGML types").

- :func:`gguf_source`: CmfError for a model the GGUF writer cannot write (no GGUF mapping for
  its architecture, no tokenizer, a tensor llama.cpp has no name for), for a sharded output, or
  for a size target below the smallest GGUF the GGML types can make; else the tensors with
  every float array as float32 (the ``ggml`` codec decodes to f32, and llama.cpp's converter
  stores 1-D tensors as F32). Called before the model is loaded to run (no work done yet);
- :func:`gguf_fixed`: the GGUF bytes the plan does not choose.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import CmfError
from .contracts import PlanOptions, parse_target_size
from .ggml_size import check_gguf_source, gguf_fixed_bytes, gguf_min_bytes


def gguf_source(
    tensors: Mapping[str, Any],
    attachments: Mapping[str, bytes],
    shard_size: int | None,
    options: PlanOptions | None = None,
) -> dict[str, Any]:
    """The tensors to plan (module docstring)."""
    if shard_size is not None:
        raise CmfError("GGUF planning writes one .cmf (one GGUF), not a sharded set")
    config = check_gguf_source(tensors, attachments)
    out = {}
    for name, x in tensors.items():
        if isinstance(x, np.ndarray) and (x.dtype.kind == "f" or x.dtype.name == "bfloat16"):
            x = np.asarray(x, np.float32)
        out[name] = x
    if options is not None and options.target_size is not None:
        _check_target(out, _planned(out), attachments, config, options)
    return out


def _planned(tensors: Mapping[str, Any]) -> set[str]:
    """The tensors the planner chooses a type for (cmf.plan.candidates.plannable)."""
    from .. import dtypes
    from ..codecs import ArraySpec
    from .candidates import plannable

    out = set()
    for name, x in tensors.items():
        try:
            if isinstance(x, np.ndarray) and plannable(
                ArraySpec(dtypes.of_array(x), tuple(int(d) for d in x.shape))
            ):
                out.add(name)
        except CmfError:
            continue
    return out


def _check_target(
    tensors: Mapping[str, Any],
    planned: set[str],
    attachments: Mapping[str, bytes],
    config: dict[str, Any],
    options: PlanOptions,
) -> None:
    fixed = gguf_fixed_bytes(tensors, planned, attachments, config)
    unit, value = parse_target_size(options.target_size)
    params = sum(int(np.asarray(v).size) for v in tensors.values() if isinstance(v, np.ndarray))
    goal = value * params / 8 if unit == "bpp" else value
    least = fixed + gguf_min_bytes(tensors, planned)
    if goal < least:
        raise CmfError(
            f"target size {int(goal)} bytes is below the smallest GGUF the GGML types "
            f"make of this model (about {least} bytes, {least * 8 / max(params, 1):.2f} "
            f"bits/parameter: the header and unplanned tensors {fixed}, the planned "
            f"tensors in their smallest types {least - fixed})"
        )


def gguf_fixed(
    tensors: Mapping[str, Any],
    planned: set[str],
    attachments: Mapping[str, bytes],
    options: PlanOptions,
) -> int:
    """The fixed GGUF bytes (module docstring)."""
    return gguf_fixed_bytes(tensors, planned, attachments, check_gguf_source(tensors, attachments))


__all__ = ["gguf_fixed", "gguf_source"]
