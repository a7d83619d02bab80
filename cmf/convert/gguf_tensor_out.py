"""One tensor of a .cmf file as the bytes a GGUF file stores for its GGML type.

Contract of :func:`gguf_tensor_bytes`: the exact GGML bytes (flat ``uint8``) of tensor ``name``
stored as ``ggml_type``, one tensor decoded at a time:

- plain types (F32, F16, BF16, F64, I8 ... I64): the decoded tensor, whose cmf dtype must be the
  type's, in the file's byte order;
- block types: the parts of the tensor's ``ggml`` tree, or of a legacy ``quantize`` tree of
  exactly the type's codec (Q8_0, Q4_*, Q5_*), packed back into blocks (cmf.convert.gguf_blocks);
- anything else, or a block type stored another way (an f32 dequantization):
  :class:`InexactBlocks`, a CmfError saying the blocks cannot be given back.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import CmfError

PLAIN = {  # GGML type -> cmf dtype name of its elements
    "F64": "f64",
    "F32": "f32",
    "F16": "f16",
    "BF16": "bf16",
    "I8": "i8",
    "I16": "i16",
    "I32": "i32",
    "I64": "i64",
}


class InexactBlocks(CmfError):
    """A tensor of a GGML block type whose blocks the .cmf file does not hold exactly."""


def _entry_and_decoder(f: Any, name: str) -> tuple[Any, Any]:
    """The tensor entry of ``name`` (aliases followed) and the decode_node of its file (a
    sharded set decodes in the shard holding the tensor)."""
    entry = f.entry(name)
    if entry.alias is not None:
        entry = f.entry(entry.alias)
        name = entry.name
    shard = getattr(f, "_shard", None)
    owner = shard(name) if shard is not None else f
    return entry, owner.decode_node


def _plain(f: Any, name: str, ggml_type: str, order: str) -> np.ndarray:
    spec = f.spec(name)
    if spec.dtype.name != PLAIN[ggml_type]:
        raise CmfError(
            f"tensor {name!r}: GGML type {ggml_type} needs cmf dtype "
            f"{PLAIN[ggml_type]}, the file stores {spec.dtype.name}"
        )
    array = np.ascontiguousarray(f.get_tensor(name)).reshape(-1)
    if array.dtype.itemsize > 1 and order == ">":
        array = array.view(f"<u{array.dtype.itemsize}").astype(f">u{array.dtype.itemsize}")
    return array.view(np.uint8)


def kept_exactly(f: Any, name: str, ggml_type: str) -> bool:
    """Whether :func:`gguf_tensor_bytes` can give ``name``'s ``ggml_type`` bytes back (from the
    index alone, nothing decoded; plain types: always, their dtype is checked when written)."""
    from .gguf_blocks import stored_type

    if ggml_type in PLAIN:
        return True
    return stored_type(f, name) == ggml_type


def _blocks(f: Any, name: str, ggml_type: str) -> np.ndarray:
    from .gguf_blocks import block_bytes, stored_type

    entry, decode = _entry_and_decoder(f, name)
    if stored_type(f, name) != ggml_type:
        raise InexactBlocks(
            f"tensor {name!r}: its {ggml_type} blocks are not stored as such in this file "
            f"(it holds {entry.spec.dtype.name} values, e.g. a dequantization), so it cannot "
            "be written back as the same GGUF bytes"
        )
    return block_bytes(f, name, decode)


def gguf_tensor_bytes(f: Any, name: str, ggml_type: str, order: str = "<") -> np.ndarray:
    """GGML bytes of tensor ``name`` as ``ggml_type`` (see the module docstring)."""
    if ggml_type in PLAIN:
        return _plain(f, name, ggml_type, order)
    if order != "<":
        raise CmfError(f"tensor {name!r}: {ggml_type} blocks in a big-endian GGUF")
    return _blocks(f, name, ggml_type)
