"""Converters: open a model in another format as a *source* of tensors, write cmf back out.

A source has ``metadata`` (dict), ``attachments`` (name -> bytes), ``names()``, ``len()`` and
``items()`` yielding ``(name, array)`` one tensor at a time (``(name, Encoded)`` for a tensor
that arrives encoded, as GGUF's GGML blocks do). ``Source`` names every one.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Union

from ..encoded import Encoded
from ..errors import CmfError
from .gguf import GGUFSource
from .hfdir import HFDirectorySource
from .safetensors import SafetensorsSource, write_safetensors
from .torch_pickle import TorchPickleSource, looks_like_pickle

if TYPE_CHECKING:  # imported when an .onnx is opened (it brings the onnx package)
    from .onnx import OnnxSource

# Every source open_source returns; each has metadata, attachments, names(), len() and items().
Source = Union[SafetensorsSource, HFDirectorySource, GGUFSource, TorchPickleSource, "OnnxSource"]


def open_source(path: str | os.PathLike) -> Source:
    """Open a model for packing: a safetensors, GGUF or ONNX (``.onnx``) file, a PyTorch
    checkpoint (read weights-only, with PyTorch installed), or a Hugging Face model directory."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return HFDirectorySource(path)
    if not os.path.isfile(path):
        raise CmfError(f"{path}: no such file")
    with open(path, "rb") as fh:
        magic = fh.read(8)
    if magic[:4] == b"GGUF" or path.lower().endswith(".gguf"):
        return GGUFSource(path)  # a .gguf without the magic gets GGUF's "not a GGUF file" error
    if path.lower().endswith(".onnx"):
        from .onnx import OnnxSource  # graph + weights; the graph becomes an attachment

        return OnnxSource(path)
    if looks_like_pickle(path, magic) and not path.lower().endswith(".safetensors"):
        return TorchPickleSource(path)
    return SafetensorsSource(path)


__all__ = [
    "Encoded",
    "GGUFSource",
    "HFDirectorySource",
    "SafetensorsSource",
    "Source",
    "TorchPickleSource",
    "open_source",
    "write_safetensors",
]
