"""``byteplanes`` codec (spec/codecs/byteplanes.md): k-byte elements -> k planes of bytes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import FormatError
from ..kernels import in_pieces
from ..kernels import speedups as _speedups  # optional C kernels; same bytes either way
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
_CHUNK = (
    1 << 16
)  # elements per decode step: chunk + planes stay in L2 (measured best of 2^14..2^18)


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
    def from_config(cls, config) -> BytePlanes:
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
        n = u.size
        planes = np.empty((k, n), dtype=np.uint8)  # (k, n), row j = byte j
        if _speedups is not None and n:
            _speedups.split(u, list(planes), self.rotate)
            return {p: planes[j].data for j, p in enumerate(plane_names(k))}
        rot = np.empty(min(n, _CHUNK), dtype=_UINT[k])
        tmp = np.empty(min(n, _CHUNK), dtype=_UINT[k])
        for a in range(0, n, _CHUNK):  # cache-sized chunks; byte j = (u >> 8j) truncated
            b = min(a + _CHUNK, n)
            c = u[a:b]
            if self.rotate:  # sign -> bit 0
                r, t = rot[: b - a], tmp[: b - a]
                np.left_shift(c, np.uint8(1), out=r)
                np.right_shift(c, np.uint8(bits - 1), out=t)
                r |= t
                c = r
            planes[0, a:b] = c
            for j in range(1, k):
                t = tmp[: b - a]
                np.right_shift(c, np.uint8(8 * j), out=t)
                planes[j, a:b] = t
        return {p: planes[j].data for j, p in enumerate(plane_names(k))}

    def decode(self, parts: dict[str, Value], spec: Spec) -> np.ndarray:
        return self._decode(parts, spec, None)

    def decode_into(self, parts: dict[str, Value], spec: Spec, out: np.ndarray) -> None:
        """decode() written into ``out`` (C-contiguous, writable, the spec's dtype and shape)."""
        self._decode(parts, spec, out)

    def _decode(self, parts: dict[str, Value], spec: Spec, out: np.ndarray | None) -> np.ndarray:
        spec = self._check(spec)
        k, n = spec.dtype.itemsize, spec.numel
        planes = []
        for p in plane_names(k):
            plane = parts[p]
            if len(plane) != n:
                raise FormatError(f"byteplanes: plane {p} holds {len(plane)} bytes, {n} expected")
            planes.append(np.frombuffer(plane, dtype=np.uint8))
        # Build the words with shifts/ors on cache-sized chunks (u = p{k-1} << 8(k-1) | ... | p0),
        # rotating each chunk while it is hot: about 2x faster than writing strided byte columns.
        if out is None:
            u = np.empty(n, dtype=_UINT[k])  # (n,) owned, writable: the reader need not copy it
        else:
            u = out.reshape(-1).view(_UINT[k])  # a view: out is C-contiguous
        if _speedups is not None and n:  # big tensors: ranges of words on several threads
            in_pieces(
                lambda a, b: _speedups.interleave(u[a:b], [p[a:b] for p in planes], self.rotate), n
            )
            return u.view(spec.dtype.numpy).reshape(spec.shape)
        tmp = np.empty(min(n, _CHUNK), dtype=_UINT[k])
        for a in range(0, n, _CHUNK):
            b = min(a + _CHUNK, n)
            c = u[a:b]
            c[...] = planes[k - 1][a:b]
            for j in range(k - 2, -1, -1):
                c <<= np.uint8(8)
                c |= planes[j][a:b]
            if self.rotate:  # bit 0 -> sign
                t = tmp[: b - a]
                np.left_shift(c, np.uint8(8 * k - 1), out=t)
                c >>= np.uint8(1)
                c |= t
        return u.view(spec.dtype.numpy).reshape(spec.shape)
