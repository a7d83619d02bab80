"""A .cmf holding given GGML types per tensor (a fixed recipe, e.g. llama.cpp's Q4_K_M from
cmf.plan.ggml_recipes), written as a ``--gguf`` plan writes its tensors: each typed tensor a
``ggml`` tree encoded by cmf.ggml_encode with the planner's importance (``moments``: the
calibration's input moments, cmf.plan.harness), the others lossless. ``cmf unpack -o x.gguf``
then writes those blocks. Used by ``tools/bench.py gguf-plan`` as the fixed-recipe baseline."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..codecs import ArraySpec
from .candidates import channel_weights
from .ggml_candidates import encode_ggml


def write_ggml_types(path: str | os.PathLike, tensors: Mapping[str, Any], types: Mapping[str, str | None],
                     moments: Mapping[str, Any] | None = None, *, attachments: Mapping[str, bytes] | None = None,
                     metadata: Mapping[str, Any] | None = None, level: int = 3) -> int:
    """Write ``tensors`` (name -> float32 array) with ``types`` (name -> GGML type or None for
    lossless) to ``path``; returns the file's size. CmfError where a type does not take a
    tensor's rows."""
    from ..parallel import WriterSink, write_tensors
    from ..pipeline import encode_lossless
    from ..writer import Writer

    moments = moments or {}

    def encoder(name: str):
        t = types.get(name)

        def encode(a: np.ndarray, spec: ArraySpec):
            if t is None or t in ("F32", "F16", "BF16"):
                return encode_lossless(a, spec, level)
            axis, w = channel_weights(spec.shape, moments.get(name))
            return encode_ggml(a, spec, t, axis, w, level)[0]

        return encode

    with Writer(path, metadata=dict(metadata or {}), level=level) as w:
        write_tensors(WriterSink(w), tensors.items(), encoder, (attachments or {}).items())
    return os.path.getsize(path)


__all__ = ["write_ggml_types"]
