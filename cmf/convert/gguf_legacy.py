"""GGML's legacy block types as ``quantize`` parts, losslessly both ways (spec/codecs/quantize.md).

Files written since format 1.3 hold every GGML block type in the ``ggml`` codec
(cmf.codecs.ggml_codec); this module stays for files written before (their blocks come back
through :func:`parts_to_gguf_blocks`). Both code their code fields with
:func:`cmf.codecs.ggml_pack.encode_codes`.

Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1 blocks hold 32 consecutive elements of a row (GGUF rows are
cmf's last axis) with an f16 scale ``d`` and, for the ``_1`` types, an f16 min ``m``; gguf-py
dequantizes them as ``d * (u - o)`` or ``d * u + m`` in float32, which is exactly this codec's
``symmetric`` / ``asymmetric`` formula with ``block 32, axis -1, scale_dtype f16``. Every bit of
a block maps to one part value, so blocks -> parts -> blocks gives the same bytes (non-finite
scales included: the conversion keeps them; ``quantize`` decoding rejects them, so
:func:`gguf_tensor_to_pending` declines such tensors).

Block layouts (all little-endian; ``qs`` nibbles: byte ``j`` holds element ``j`` in its low
half and element ``j + 16`` in its high half; ``qh`` bit ``j`` is bit 4 of element ``j``)::

    Q8_0  d f16 | qs[32] i8                      u = qs + 128
    Q4_0  d f16 | qs[16] nibbles                 u = nibble          (o = 8)
    Q4_1  d f16 | m f16 | qs[16] nibbles         u = nibble
    Q5_0  d f16 | qh u32 | qs[16] nibbles        u = nibble | qh_j << 4   (o = 16)
    Q5_1  d f16 | m f16 | qh u32 | qs[16]        u = nibble | qh_j << 4
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..codecs.base import ArraySpec
from ..codecs.ggml_pack import encode_codes
from ..codecs.quantize import Quantize
from ..dtypes import BY_NAME
from ..errors import CmfError

QK = 32  # elements per block, every legacy type


@dataclass(frozen=True)
class BlockType:
    """One GGML block type: its layout and the quantize config it maps to."""

    name: str
    bits: int
    scheme: str  # "symmetric" or "asymmetric"
    has_min: bool
    has_qh: bool

    @property
    def nbytes(self) -> int:  # (block, bytes) = (32, 2 + [2] + [4] + 32 * bits_low / 8)
        return 2 + 2 * self.has_min + 4 * self.has_qh + (QK if self.bits == 8 else QK // 2)

    def codec(self) -> Quantize:
        return Quantize(
            bits=self.bits, block=QK, axis=-1, scheme=self.scheme, scale_dtype="f16", search=False
        )


BLOCK_TYPES = {
    t.name: t
    for t in (
        BlockType("Q8_0", 8, "symmetric", False, False),
        BlockType("Q4_0", 4, "symmetric", False, False),
        BlockType("Q4_1", 4, "asymmetric", True, False),
        BlockType("Q5_0", 5, "symmetric", False, True),
        BlockType("Q5_1", 5, "asymmetric", True, True),
    )
}


def block_type(ggml_type: Any) -> BlockType:
    """The block type named ``ggml_type`` (a name such as "Q4_0" or a gguf-py enum member)."""
    name = getattr(ggml_type, "name", ggml_type)
    if not isinstance(name, str) or name not in BLOCK_TYPES:
        raise CmfError(
            f"GGML type {name!r} has no exact quantize form; expected one of "
            f"{', '.join(BLOCK_TYPES)}"
        )
    return BLOCK_TYPES[name]


def ggml_codec(ggml_type: Any) -> Quantize:
    """The ``quantize`` codec whose parts hold ``ggml_type`` blocks exactly."""
    return block_type(ggml_type).codec()


def _check_shape(bt: BlockType, shape: tuple[int, ...]) -> int:
    """Number of blocks of a tensor of numpy ``shape``; CmfError unless rows are whole blocks."""
    if len(shape) < 1 or shape[-1] % QK:
        raise CmfError(f"{bt.name}: the last dimension of {list(shape)} must be a multiple of {QK}")
    return math.prod(shape) // QK


def gguf_blocks_to_parts(raw: Any, ggml_type: Any, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """``quantize`` parts (``q``, ``scale`` and, for Q4_1/Q5_1, ``min``) holding the GGML blocks
    ``raw`` (the tensor's bytes as GGUF stores them) of a tensor of numpy ``shape``."""
    bt = block_type(ggml_type)
    shape = tuple(int(d) for d in shape)
    nb = _check_shape(bt, shape)
    if isinstance(raw, np.ndarray):
        data = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    else:
        data = np.frombuffer(raw, dtype=np.uint8)
    if data.size != nb * bt.nbytes:
        raise CmfError(
            f"{bt.name}: {data.size} bytes given, {nb} blocks of {bt.nbytes} = "
            f"{nb * bt.nbytes} expected for shape {list(shape)}"
        )
    blocks = data.reshape(nb, bt.nbytes)  # (nb, bytes)
    at = 2
    scale = blocks[:, 0:2].copy().view("<f2")  # (nb, 1)
    parts: dict[str, np.ndarray] = {}
    if bt.has_min:
        parts["min"] = blocks[:, 2:4].copy().view("<f2").reshape(shape[:-1] + (-1,))
        at = 4
    if bt.bits == 8:
        q = blocks[:, at:] ^ np.uint8(0x80)  # int8 two's complement + 128
    else:
        qh = None
        if bt.has_qh:
            qh = blocks[:, at : at + 4].copy().view("<u4")  # (nb, 1)
            at += 4
        qs = blocks[:, at:]  # (nb, 16)
        q = np.concatenate([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=1)  # (nb, 32)
        if qh is not None:
            bit = (qh >> np.arange(QK, dtype=np.uint32)) & np.uint32(1)  # (nb, 32)
            q |= bit.astype(np.uint8) << np.uint8(4)
    parts["q"] = np.ascontiguousarray(q).reshape(shape)
    parts["scale"] = scale.reshape(shape[:-1] + (-1,))
    return {name: parts[name] for name in ("q", "scale", "min") if name in parts}


def parts_to_gguf_blocks(parts: dict[str, np.ndarray], ggml_type: Any) -> np.ndarray:
    """The GGML block bytes (flat uint8) of ``quantize`` parts in ``ggml_type``'s form: the
    inverse of :func:`gguf_blocks_to_parts`. CmfError if a part does not fit the type."""
    bt = block_type(ggml_type)
    q = np.asarray(parts["q"])
    shape = q.shape
    nb = _check_shape(bt, shape)
    specs = bt.codec().resolve(ArraySpec(BY_NAME["f32"], shape))
    for name, spec in specs.items():
        value = parts.get(name)
        if not (
            isinstance(value, np.ndarray)
            and value.dtype == spec.dtype.numpy
            and value.shape == spec.shape
        ):
            raise CmfError(f"{bt.name}: part {name!r} must be {spec.describe()}")
    if set(parts) != set(specs):
        raise CmfError(f"{bt.name}: parts {sorted(parts)}, expected {sorted(specs)}")
    if q.size and int(q.max()) >> bt.bits:
        raise CmfError(f"{bt.name}: code {int(q.max())} does not fit {bt.bits} bits")
    q = q.reshape(nb, QK)
    fields = [np.ascontiguousarray(parts["scale"]).reshape(nb, 1).view(np.uint8)]
    if bt.has_min:
        fields.append(np.ascontiguousarray(parts["min"]).reshape(nb, 1).view(np.uint8))
    if bt.bits == 8:
        fields.append(q ^ np.uint8(0x80))
    else:
        if bt.has_qh:
            high = ((q >> np.uint8(4)) & np.uint8(1)).astype(np.uint32)
            qh = (high << np.arange(QK, dtype=np.uint32)).sum(axis=1, dtype=np.uint32)
            fields.append(qh.astype("<u4").reshape(nb, 1).view(np.uint8))
        low = q & np.uint8(0x0F)
        fields.append(low[:, : QK // 2] | (low[:, QK // 2 :] << np.uint8(4)))
    return np.concatenate(fields, axis=1).reshape(-1)


def gguf_tensor_to_pending(raw: Any, ggml_type: Any, shape: tuple[int, ...], level: int = 3):
    """A pending ``quantize`` tree (cmf.pipeline) for a GGUF tensor of GGML blocks that decodes
    to float32 exactly as gguf-py's ``dequantize``, or None if some block's scale or min is not
    finite (``quantize`` rejects those; the caller stores gguf-py's dequantization instead).
    Codes take the smallest of bit packing, zstd literals and Huffman; scales and mins the
    lossless rule (byte planes or raw, each stored or zstd-coded at ``level``)."""
    from ..pipeline import PendingNode, encode_lossless

    bt = block_type(ggml_type)
    spec = ArraySpec(BY_NAME["f32"], tuple(int(d) for d in shape))
    codec = bt.codec()
    parts = gguf_blocks_to_parts(raw, bt.name, spec.shape)
    if not all(np.isfinite(parts[k]).all() for k in ("scale", "min") if k in parts):
        return None
    specs = codec.resolve(spec)
    children = {
        name: encode_codes(parts[name], specs[name], bt.bits)
        if name == "q"
        else encode_lossless(parts[name], specs[name], level)
        for name in specs
    }
    return PendingNode(codec, children, spec)
