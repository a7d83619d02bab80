"""Converters: open a model in another format as a *source* of tensors, write cmf back out.

A source has ``metadata`` (dict), ``attachments`` (name -> bytes), ``names()``, ``len()`` and
``items()`` yielding ``(name, array)`` one tensor at a time.
"""

from __future__ import annotations

import os

from ..errors import CmfError
from .safetensors import SafetensorsSource, write_safetensors


def open_source(path: str | os.PathLike) -> SafetensorsSource:
    """Open a model file for packing, choosing the reader by content."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CmfError(f"{path} is a directory; packing model directories is not supported yet")
    if not os.path.isfile(path):
        raise CmfError(f"{path}: no such file")
    return SafetensorsSource(path)


__all__ = ["SafetensorsSource", "open_source", "write_safetensors"]
