"""A tensor's GGML block bytes from a .cmf file, when the file holds them exactly.

:func:`block_bytes` reads the tensor's tree, not its floats: a ``ggml`` node (spec/codecs/ggml.md)
or a legacy ``quantize`` node of a GGML-compatible configuration (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1,
as cmf.convert.gguf_legacy wrote them before the ``ggml`` codec) gives the blocks back; anything
else gives None.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..index import CodecNode


def stored_type(f: Any, name: str) -> str | None:
    """The GGML type whose blocks tensor ``name`` holds exactly (from the index alone), or None."""
    from ..codecs.ggml_codec import Ggml
    from .gguf_legacy import BLOCK_TYPES

    entry = f.entry(name)
    if entry.alias is not None:
        entry = f.entry(entry.alias)
    node = entry.encoding
    if not isinstance(node, CodecNode) or entry.spec.dtype.name != "f32":
        return None
    if isinstance(node.codec, Ggml):
        return node.codec.type
    for bt in BLOCK_TYPES.values():
        if node.codec == bt.codec():
            return bt.name
    return None


def block_bytes(f: Any, name: str, decode_node: Any = None) -> np.ndarray | None:
    """The original GGML block bytes (flat uint8) of tensor ``name`` of the open file ``f``
    (a CmfFile; ``decode_node`` decodes a sub-tree, ``f.decode_node`` by default), or None when
    the file does not hold them exactly. CmfError if the parts are damaged."""
    from ..codecs.ggml_codec import Ggml
    from .gguf_legacy import parts_to_gguf_blocks

    kind = stored_type(f, name)
    if kind is None:
        return None
    entry = f.entry(name)
    if entry.alias is not None:
        entry = f.entry(entry.alias)
    decode = decode_node or f.decode_node
    node = entry.encoding
    if isinstance(node.codec, Ggml):
        nibbles = _nibbles_part(node)
        parts = {  # 4-bit codes stay packed: the blocks are joined from their bytes
            key: decode(child.parts["data"] if key == nibbles else child)
            for key, child in node.parts.items()
        }
        return node.codec.blocks_of(parts, entry.spec, nibbles)
    parts = {key: decode(child) for key, child in node.parts.items()}
    return parts_to_gguf_blocks(parts, kind)


def _nibbles_part(node: CodecNode) -> str | None:
    """The part of a ``ggml`` node held by a 4-bit ``bitpack`` node whose bytes the blocks can
    be joined from as they are (cmf.codecs.ggml_layout.nibble_halves: Q4_0, Q4_1 codes)."""
    from ..codecs.bitpack import BitPack
    from ..codecs.ggml_layout import nibble_halves

    for key, child in node.parts.items():
        if (
            isinstance(child, CodecNode)
            and isinstance(child.codec, BitPack)
            and child.codec.bits == 4
            and nibble_halves(node.codec.layout, key) is not None
        ):
            return key
    return None
