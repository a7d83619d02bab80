"""A GGUF tensor's GGML blocks as a pending ``ggml`` tree (spec/codecs/ggml.md, "Writing").

Each field is its own sub-tree: codes take the smallest of bit packing, zstd literals and
Huffman (:func:`encode_codes`); f16 scales the lossless rule (byte planes or
raw, each stored or zstd-coded).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..dtypes import BY_NAME
from .base import ArraySpec
from .ggml_codec import Blocks, Ggml, layout_of


def blocks_to_pending(raw: Any, ggml_type: Any, shape: tuple[int, ...], level: int = 3):
    """The pending ``ggml`` tree of the GGML bytes ``raw`` of a tensor of numpy ``shape`` (rows
    are the last axis); decodes to f32 equal to ``gguf.quants.dequantize`` bit for bit.
    CmfError if the type is not held or the bytes do not fit the shape."""
    from ..pipeline import PendingNode, encode_lossless

    lay = layout_of(ggml_type)
    codec = Ggml(type=lay.name)
    spec = ArraySpec(BY_NAME["f32"], tuple(int(d) for d in shape))
    specs = codec.resolve(spec)
    parts = codec.encode(Blocks(raw), spec)
    children = {}
    for f in lay.fields:
        s = specs[f.name]
        children[f.name] = (
            encode_lossless(parts[f.name], s, level)
            if f.kind == "f16"
            else encode_codes(parts[f.name], s, f.bits)
        )
    return PendingNode(codec, children, spec)


def encode_codes(codes: np.ndarray, spec: ArraySpec, bits: int):
    """The smallest of: ``bitpack``, ``raw`` + entropy-only ``zstd``, ``huffman`` and, for 1-,
    2- and 4-bit codes, ``bitpack`` + entropy-only ``zstd`` (a byte holds whole codes, so the
    byte coder codes them jointly) (codes of ``bits`` bits, a u8/u16 array of ``spec``)."""
    from ..pipeline import PendingLeaf, apply
    from .bitpack import BitPack
    from .huffman import Huffman
    from .raw import Raw
    from .zstd import Zstd

    def stored(v, s):
        return PendingLeaf(v, s)

    def literals(v, s):
        return apply(Zstd(level=1, literals_only=True), v, s, stored) if s.length else stored(v, s)

    candidates = [
        apply(BitPack(bits=bits), codes, spec, stored),
        apply(Raw(), codes, spec, literals),
    ]
    if bits in (1, 2, 4) and spec.numel:  # whole codes per byte: Huffman on 8 / bits codes at once
        candidates.append(apply(BitPack(bits=bits), codes, spec, literals))
    best = min(candidates, key=lambda p: p.stored)
    if spec.numel and _huffman_bits(codes, 16) // 8 < best.stored:  # else it cannot win: skipped
        candidates.append(apply(Huffman(chunk=1024, max_length=16), codes, spec, stored))
    return min(candidates, key=lambda p: p.stored)


def _huffman_bits(codes: np.ndarray, max_length: int) -> int:
    """The bits of the code words alone (a lower bound on the ``huffman`` codec's output)."""
    from .huffman import limited_lengths

    counts = np.bincount(np.asarray(codes).reshape(-1))
    used = counts[counts > 0]
    return int(used @ limited_lengths(used, max_length))
