"""``cmf report`` of a ``--gguf`` plan: each tensor's GGML type in the GGUF the file unpacks to,
beside the type llama.cpp's fixed recipes (cmf.plan.ggml_recipes.COMPARED: Q4_K_M, Q5_K_M,
Q6_K) would give it, and the GGUF's size. Reads the index only (no tensor decoded)."""

from __future__ import annotations

import json
from typing import Any

from ..errors import CmfError
from .ggml_recipes import COMPARED, hf_recipe_types


def gguf_columns(f: Any) -> dict[str, Any] | None:
    """``{"gguf_bytes": n, "types": {name: {"gguf": type, "Q4_K_M": type, ...}}}`` for an open
    .cmf the GGUF writer takes, else None (tensors the GGUF leaves out are absent)."""
    from ..convert.hf_gguf import _names, hf_out
    from .ggml_size import gguf_out_bytes

    try:
        meta = f.metadata()
        out = hf_out(f, meta)
        config = json.loads(f.get_attachment("config.json"))
        names = _names(f, config)
    except (CmfError, ValueError, KeyError):
        return None
    by_gguf = {t.name: t.ggml_type for t in out.tensors}
    shapes = {n: tuple(f.spec(n).shape) for n in f.keys()}
    recipes = {r: hf_recipe_types(shapes, config, r) for r in COMPARED}
    types = {}
    for name, gguf_name in names:
        row = {"gguf": by_gguf.get(gguf_name)}
        for r in COMPARED:
            row[r] = recipes[r].get(name) or "F32"
        types[name] = row
    return {"gguf_bytes": gguf_out_bytes(out), "types": types}


__all__ = ["gguf_columns"]
