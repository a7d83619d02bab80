"""``raw`` codec (spec/codecs/raw.md): an array as its little-endian C-order bytes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import FormatError
from .base import BytesSpec, Codec, Spec, Value, check_config_keys, require_array_spec
from .registry import register


@register
@dataclass(frozen=True, kw_only=True)
class Raw(Codec):
    name = "raw"

    def to_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config) -> Raw:
        check_config_keys(cls.name, config, {})
        return cls()

    def resolve(self, spec: Spec) -> dict[str, Spec]:
        spec = require_array_spec(self.name, spec)
        return {"data": BytesSpec(spec.nbytes)}

    def encode(self, value: Value, spec: Spec) -> dict[str, Value]:
        spec = require_array_spec(self.name, spec)
        array = np.ascontiguousarray(value, dtype=spec.dtype.numpy)
        return {"data": memoryview(array.reshape(-1).view(np.uint8))}

    def decode(self, parts: dict[str, Value], spec: Spec) -> np.ndarray:
        spec = require_array_spec(self.name, spec)
        data = parts["data"]
        if len(data) != spec.nbytes:
            raise FormatError(f"raw: data holds {len(data)} bytes, {spec.nbytes} expected")
        flat = np.frombuffer(data, dtype=np.uint8)
        if spec.dtype.name == "bool" and flat.size and int(flat.max()) > 1:
            raise FormatError("raw: a bool byte is neither 0 nor 1")
        return flat.view(spec.dtype.numpy).reshape(spec.shape)

    def decode_into(self, parts: dict[str, Value], spec: Spec, out: np.ndarray) -> None:
        """decode() copied into ``out`` (C-contiguous, writable, the spec's dtype and shape):
        the one copy a reader makes of bytes it must not hand out (views of its mapping)."""
        np.copyto(
            out.reshape(-1).view(np.uint8), self.decode(parts, spec).reshape(-1).view(np.uint8)
        )
