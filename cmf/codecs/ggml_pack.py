"""A GGUF tensor's GGML blocks as a pending ``ggml`` tree (spec/codecs/ggml.md, "Writing").

Each field is its own sub-tree: codes take the smallest of bit packing, zstd literals and
Huffman (:func:`cmf.codecs.ggml.encode_codes`); f16 scales the lossless rule (byte planes or
raw, each stored or zstd-coded).
"""

from __future__ import annotations

from typing import Any

from ..dtypes import BY_NAME
from .base import ArraySpec
from .ggml_codec import Blocks, Ggml, layout_of


def blocks_to_pending(raw: Any, ggml_type: Any, shape: tuple[int, ...], level: int = 3):
    """The pending ``ggml`` tree of the GGML bytes ``raw`` of a tensor of numpy ``shape`` (rows
    are the last axis); decodes to f32 equal to ``gguf.quants.dequantize`` bit for bit.
    CmfError if the type is not held or the bytes do not fit the shape."""
    from ..pipeline import PendingNode, encode_lossless
    from .ggml import encode_codes

    lay = layout_of(ggml_type)
    codec = Ggml(type=lay.name)
    spec = ArraySpec(BY_NAME["f32"], tuple(int(d) for d in shape))
    specs = codec.resolve(spec)
    parts = codec.encode(Blocks(raw), spec)
    children = {}
    for f in lay.fields:
        s = specs[f.name]
        children[f.name] = (encode_lossless(parts[f.name], s, level) if f.kind == "f16"
                            else encode_codes(parts[f.name], s, f.bits))
    return PendingNode(codec, children, spec)
