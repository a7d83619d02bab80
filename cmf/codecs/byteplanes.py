"""``byteplanes`` codec (spec/codecs/byteplanes.md): k-byte elements -> k planes of bytes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import FormatError
from .base import (
    ArraySpec,
    BytesSpec,
    Codec,
    Spec,
    Value,
    check_config_keys,
    require_array_spec,
)
from .registry import register

_UINT = {2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8")}


def plane_names(itemsize: int) -> list[str]:
    return [f"p{j}" for j in range(itemsize)]


@register
@dataclass(frozen=True, kw_only=True)
class BytePlanes(Codec):
    """``rotate`` moves a float's sign bit to bit 0 so the top byte is the exponent."""

    name = "byteplanes"
    rotate: bool = False

    def to_config(self) -> dict:
        return {"rotate": self.rotate}

    @classmethod
    def from_config(cls, config) -> "BytePlanes":
        check_config_keys(cls.name, config, {"rotate": bool})
        return cls(**config)

    def _check(self, spec: Spec) -> ArraySpec:
        spec = require_array_spec(self.name, spec)
        k = spec.dtype.itemsize
        if k not in _UINT:
            raise FormatError(f"byteplanes: needs an item size of 2, 4 or 8, not {spec.dtype.name}")
        if self.rotate and not spec.dtype.is_float:
            raise FormatError(f"byteplanes: rotate is only for floats, not {spec.dtype.name}")
        return spec

    def resolve(self, spec: Spec) -> dict[str, Spec]:
        spec = self._check(spec)
        return {p: BytesSpec(spec.numel) for p in plane_names(spec.dtype.itemsize)}

    def encode(self, value: Value, spec: Spec) -> dict[str, Value]:
        spec = self._check(spec)
        k = spec.dtype.itemsize
        bits = 8 * k
        u = np.ascontiguousarray(value, dtype=spec.dtype.numpy).reshape(-1).view(_UINT[k])  # (n,)
        if self.rotate:
            u = (u << np.uint8(1)) | (u >> np.uint8(bits - 1))  # (n,) sign -> bit 0
        planes = u.view(np.uint8).reshape(-1, k).T  # (k, n), row j = byte j
        return {p: np.ascontiguousarray(planes[j]).data for j, p in enumerate(plane_names(k))}

    def decode(self, parts: dict[str, Value], spec: Spec) -> np.ndarray:
        spec = self._check(spec)
        k, n = spec.dtype.itemsize, spec.numel
        stacked = np.empty((n, k), dtype=np.uint8)  # (n, k): element i, byte j
        for j, p in enumerate(plane_names(k)):
            plane = parts[p]
            if len(plane) != n:
                raise FormatError(f"byteplanes: plane {p} holds {len(plane)} bytes, {n} expected")
            stacked[:, j] = np.frombuffer(plane, dtype=np.uint8)
        u = stacked.reshape(-1).view(_UINT[k])  # (n,)
        if self.rotate:
            u = (u >> np.uint8(1)) | (u << np.uint8(8 * k - 1))  # (n,) bit 0 -> sign
        return u.view(spec.dtype.numpy).reshape(spec.shape)
