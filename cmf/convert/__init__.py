"""Converters: open a model in another format as a *source* of tensors, write cmf back out.

A source has ``metadata`` (dict), ``attachments`` (name -> bytes), ``names()``, ``len()`` and
``items()`` yielding ``(name, array)`` one tensor at a time.
"""

from __future__ import annotations

import os

from ..errors import CmfError
from .gguf import Encoded, GGUFSource
from .hfdir import HFDirectorySource
from .safetensors import SafetensorsSource, write_safetensors

Source = SafetensorsSource | HFDirectorySource | GGUFSource


def open_source(path: str | os.PathLike) -> Source:
    """Open a model for packing: a safetensors, GGUF or ONNX (``.onnx``) file, or a Hugging Face
    model directory."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return HFDirectorySource(path)
    if not os.path.isfile(path):
        raise CmfError(f"{path}: no such file")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic == b"GGUF" or path.lower().endswith(".gguf"):
        return GGUFSource(path)  # a .gguf without the magic gets GGUF's "not a GGUF file" error
    if path.lower().endswith(".onnx"):
        from .onnx import OnnxSource  # graph + weights; the graph becomes an attachment

        return OnnxSource(path)
    return SafetensorsSource(path)


__all__ = ["Encoded", "GGUFSource", "HFDirectorySource", "SafetensorsSource", "Source", "open_source", "write_safetensors"]
