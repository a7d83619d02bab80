"""``ggml`` codec (spec/codecs/ggml.md): GGML blocks kept exactly, one part per block field.

A tensor of GGML type ``type`` (f32 of rank >= 1, its last axis a whole number of blocks, as
GGUF rows are) is held as the fields of its ``n`` blocks: part ``<field>`` is an array
``(n, count)`` of u8 / u16 codes or f16 scales (cmf.codecs.ggml_types), so each field gets its
own entropy coder. Decoding checks every part (dtype, shape, codes within their bits) and
dequantizes a chunk of blocks at a time (cmf.codecs.ggml_dequant): f32 equal to
``gguf.quants.dequantize`` of the same blocks, bit for bit. :func:`blocks_of` gives the block
bytes back from the parts (``GGUF -> .cmf -> GGUF`` is the identity).

``encode`` takes :class:`Blocks` (the tensor's GGML bytes), not floats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..dtypes import BY_NAME
from ..errors import CmfError
from .base import ArraySpec, Codec, Spec, Value, require_array_spec
from .ggml_dequant import dequantize
from .ggml_layout import Layout, join_into, join_nibbles_into, nibble_halves, part_dtype, split
from .ggml_types import LAYOUTS
from .registry import register
from .sparse import check_keys, fail, part_array

CHUNK_ELEMENTS = 1 << 20  # elements dequantized at a time: scratch of a few MiB beside the output


@dataclass(frozen=True)
class Blocks:
    """The value ``Ggml.encode`` takes: a tensor's GGML block bytes (bytes-like or a u8 array)."""

    data: Any


def layout_of(name: Any) -> Layout:
    """The layout of GGML type ``name`` (a string or a gguf-py enum member); CmfError if the
    codec does not hold that type."""
    name = getattr(name, "name", name)
    if not isinstance(name, str) or name not in LAYOUTS:
        raise CmfError(f"ggml: type {str(name)[:40]!r} is not one of {', '.join(LAYOUTS)}")
    return LAYOUTS[name]


@register
@dataclass(frozen=True, kw_only=True)
class Ggml(Codec):
    """GGML blocks as their fields; see the module docstring."""

    name = "ggml"
    lossless: ClassVar[bool] = False  # decodes to floats it cannot encode from
    since_minor: ClassVar[int] = 3  # defined by cmf 1.3: a writer using it writes minor 3
    type: str

    def __post_init__(self) -> None:
        if not isinstance(self.type, str) or self.type not in LAYOUTS:
            raise fail(
                self.name,
                f"config 'type' must be one of {', '.join(LAYOUTS)}, found {str(self.type)[:40]!r}",
            )

    @property
    def layout(self) -> Layout:
        return LAYOUTS[self.type]

    def to_config(self) -> dict:
        return {"type": self.type}

    @classmethod
    def from_config(cls, config: Any) -> Ggml:
        return cls(type=check_keys(cls.name, config, ("type",))["type"])

    def blocks(self, spec: Spec) -> int:
        """Blocks in a tensor of ``spec``; FormatError unless it is f32, rank >= 1, and its
        rows are whole blocks."""
        spec = require_array_spec(self.name, spec)
        lay = self.layout
        if spec.dtype.name != "f32" or not spec.shape or spec.shape[-1] % lay.block:
            raise fail(
                self.name,
                f"{self.type} decodes to f32 of rank >= 1 whose last dimension "
                f"is a multiple of {lay.block}, not {spec.describe()}",
            )
        return math.prod(spec.shape) // lay.block

    def resolve(self, spec: Spec) -> dict[str, Spec]:
        n = self.blocks(spec)
        return {f.name: ArraySpec(BY_NAME[f.dtype], (n, f.count)) for f in self.layout.fields}

    def fields(
        self, parts: dict[str, Value], spec: Spec, given: str | None = None
    ) -> dict[str, np.ndarray]:
        """The parts, checked: exactly the layout's fields (but ``given``, which the caller
        checks), each of its spec, codes within their bits. FormatError otherwise."""
        specs = self.resolve(spec)
        if set(parts) != set(specs) - {given} or given in parts:
            raise fail(
                self.name, f"{self.type}: parts {sorted(map(str, parts))}, expected {sorted(specs)}"
            )
        out = {}
        for f in self.layout.fields:
            if f.name == given:
                continue
            v = part_array(self.name, parts, f.name, specs[f.name])  # type: ignore[arg-type]
            if f.kind == "u" and f.bits < 8 * v.dtype.itemsize and v.size:
                top = int(v.max())
                if top >> f.bits:
                    what = "grid index" if f.name == "grid" else "code"
                    raise fail(
                        self.name,
                        f"{self.type}: part {f.name!r} holds {what} {top}, "
                        f"which does not fit {f.bits} bits (< {1 << f.bits})",
                    )
            out[f.name] = v
        return out

    def decode(self, parts: dict[str, Value], spec: Spec) -> np.ndarray:
        fields = self.fields(parts, spec)
        lay = self.layout
        n = self.blocks(spec)
        out = np.empty((n, lay.block), np.float32)  # (blocks, block)
        step = max(1, CHUNK_ELEMENTS // lay.block)
        for a in range(0, n, step):
            out[a : a + step] = dequantize(
                self.type, {k: v[a : a + step] for k, v in fields.items()}
            )
        return out.reshape(spec.shape)  # type: ignore[union-attr]

    def encode(self, value: Value, spec: Spec) -> dict[str, Value]:
        if not isinstance(value, Blocks):
            raise CmfError(
                f"ggml: encode takes cmf.codecs.ggml_codec.Blocks(bytes), "
                f"not {type(value).__name__}"
            )
        n = self.blocks(spec)
        lay = self.layout
        data = value.data
        raw = (
            np.ascontiguousarray(data).reshape(-1).view(np.uint8)
            if isinstance(data, np.ndarray)
            else np.frombuffer(data, np.uint8)
        )
        if raw.size != n * lay.nbytes:
            raise CmfError(
                f"ggml: {raw.size} bytes given, {n} {self.type} blocks of {lay.nbytes} "
                f"bytes = {n * lay.nbytes} expected for {spec.describe()}"
            )  # type: ignore[union-attr]
        blocks = raw.reshape(n, lay.nbytes)
        step = max(1, CHUNK_ELEMENTS // lay.block)
        chunks = [split(lay, blocks[a : a + step]) for a in range(0, n, step)] or [
            split(lay, blocks)
        ]
        return {
            f.name: np.ascontiguousarray(np.concatenate([c[f.name] for c in chunks])).astype(
                part_dtype(f), copy=False
            )
            for f in lay.fields
        }

    def blocks_of(
        self, parts: dict[str, Value], spec: Spec, nibbles: str | None = None
    ) -> np.ndarray:
        """The GGML block bytes (flat u8) the parts hold: the inverse of ``encode``.
        ``nibbles``: a part given as the bytes of its ``bitpack`` node of 4 bits, for a field
        :func:`~cmf.codecs.ggml_layout.nibble_halves` finds (Q4_0 / Q4_1 codes): its blocks
        are joined from those bytes, never unpacked (their length is checked)."""
        lay = self.layout
        n = self.blocks(spec)
        out = np.empty((n, lay.nbytes), np.uint8)  # (blocks, bytes)
        if nibbles is None:
            join_into(lay, self.fields(parts, spec), out)
            return out.reshape(-1)
        if nibble_halves(lay, nibbles) is None:
            raise fail(self.name, f"{self.type}: part {nibbles!r} is not 4-bit halves")
        packed = np.frombuffer(parts[nibbles], np.uint8)
        if packed.size != 16 * n:
            raise fail(
                self.name,
                f"{self.type}: part {nibbles!r} holds {packed.size} bitpacked bytes, "
                f"{16 * n} expected",
            )
        fields = self.fields({k: v for k, v in parts.items() if k != nibbles}, spec, nibbles)
        join_nibbles_into(lay, fields, out, nibbles, packed.reshape(n, 16))
        return out.reshape(-1)
