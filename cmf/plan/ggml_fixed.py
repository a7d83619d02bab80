"""A .cmf holding given GGML types per tensor (a fixed recipe, e.g. llama.cpp's Q4_K_M from
cmf.plan.ggml_recipes), written as a ``--gguf`` plan writes its tensors: each typed tensor a
``ggml`` tree encoded by cmf.ggml_encode with the planner's importance (``moments``: the
calibration's input moments, cmf.plan.harness), F16 / BF16 tensors rounded to that dtype (as
llama.cpp's converter stores them), the others lossless. ``cmf unpack -o x.gguf``
then writes those blocks. Used by ``tools/bench.py gguf-plan`` as the fixed-recipe baseline."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..codecs import ArraySpec
from .candidates import channel_weights
from .ggml_candidates import PLAIN_TYPES, encode_ggml, plain_rounded


def write_ggml_types(
    path: str | os.PathLike,
    tensors: Mapping[str, Any],
    types: Mapping[str, str | None],
    moments: Mapping[str, Any] | None = None,
    *,
    attachments: Mapping[str, bytes] | None = None,
    metadata: Mapping[str, Any] | None = None,
    level: int = 3,
) -> int:
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
            if t is None or t == "F32" or t in PLAIN_TYPES:  # rounded already (items below)
                return encode_lossless(a, spec, level)
            axis, w = channel_weights(spec.shape, moments.get(name))
            return encode_ggml(a, spec, t, axis, w, level)[0]

        return encode

    with Writer(path, metadata=dict(metadata or {}), level=level) as w:
        items = (
            (n, plain_rounded(x, types[n]) if types.get(n) in PLAIN_TYPES else x)
            for n, x in tensors.items()
        )
        write_tensors(WriterSink(w), items, encoder, (attachments or {}).items())
    return os.path.getsize(path)


__all__ = ["write_ggml_types"]
