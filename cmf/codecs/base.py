"""The codec contract (DESIGN.md) and the specs that flow through a codec tree.

A codec turns one value into named *parts* and back:

* ``name``      registered, never reused (spec/codecs/<name>.md);
* ``to_config`` / ``from_config``: a JSON-able map that is the codec's identity (same name +
  config => same bytes); ``from_config`` rejects unknown keys and bad values with CmfError;
* ``resolve(spec) -> {part: spec}``: data-free; given the spec of the value this codec decodes
  to, the spec of each part (raises CmfError if the codec cannot produce that spec);
* ``encode(value, spec) -> {part: value}`` and ``decode(parts, spec) -> value``: pure;
* ``fit(value, spec, options) -> (codec, value)`` (optional, encoder side only): choose a config
  from the data and encode-time *options* (a target rank energy, a sparsity, a codebook size),
  returning the configured codec and the value it is to encode (transformed when fitting is
  itself lossy, e.g. pruned). Recipes use it through ``{"codec": name, "fit": {...}}``.

A value is a numpy array (ArraySpec) or a bytes-like object (BytesSpec). Decoders treat their
input as hostile: they check every value that drives decoding and raise CmfError.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Union

import numpy as np

from ..dtypes import DType
from ..errors import FormatError


@dataclass(frozen=True)
class ArraySpec:
    """An array of ``dtype`` and ``shape`` (C order)."""

    dtype: DType
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)  # Python ints: never wraps

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    def describe(self) -> str:
        return f"{self.dtype.name}{list(self.shape)}"


@dataclass(frozen=True)
class BytesSpec:
    """A byte string of ``length`` bytes, or of any length when ``length`` is None."""

    length: int | None

    def describe(self) -> str:
        return f"bytes[{'?' if self.length is None else self.length}]"


Spec = Union[ArraySpec, BytesSpec]
Value = Union[np.ndarray, bytes, bytearray, memoryview]


class Codec:
    """Base class of all codecs; subclasses are frozen dataclasses with keyword-only config."""

    name: ClassVar[str]
    lossless: ClassVar[bool] = True

    def to_config(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Codec":
        raise NotImplementedError

    def resolve(self, spec: Spec) -> dict[str, Spec]:
        raise NotImplementedError

    def encode(self, value: Value, spec: Spec) -> dict[str, Value]:
        raise NotImplementedError

    def decode(self, parts: dict[str, Value], spec: Spec) -> Value:
        raise NotImplementedError

    @classmethod
    def check_fit(cls, options: Any) -> None:
        """Raise CmfError unless ``options`` are fit options this codec accepts."""
        raise FormatError(f"codec {cls.name!r} takes no fit options; give its 'config'")

    @classmethod
    def fit(cls, value: Value, spec: Spec, options: dict[str, Any]) -> tuple["Codec", Value]:
        """The codec configured for ``value`` by ``options`` (checked by check_fit), and the
        value to encode with it."""
        raise FormatError(f"codec {cls.name!r} takes no fit options; give its 'config'")


def check_config_keys(name: str, config: Any, allowed: dict[str, type]) -> dict[str, Any]:
    """Check that ``config`` is a map with exactly the keys of ``allowed`` (every key is
    required: a default would change how bytes decode), each of the right type."""
    if not isinstance(config, dict):
        raise FormatError(f"codec {name!r}: config must be a map, found {type(config).__name__}")
    missing = sorted(set(allowed) - set(config))
    if missing:
        raise FormatError(f"codec {name!r}: config lacks required keys {missing}")
    for key, value in config.items():
        if key not in allowed:
            raise FormatError(
                f"codec {name!r}: unknown config key {key!r}; expected {sorted(allowed)}"
            )
        want = allowed[key]
        # bool is a subclass of int: keep them apart both ways.
        if isinstance(value, bool) != (want is bool) or not isinstance(value, want):
            raise FormatError(
                f"codec {name!r}: config {key!r} must be {want.__name__}, "
                f"found {type(value).__name__}"
            )
    return config


def require_config_keys(name: str, config: Any, keys: Any) -> dict[str, Any]:
    """``config`` checked to be a map with exactly ``keys`` (every key required), for codecs
    that check the values themselves; FormatError naming codec ``name`` otherwise."""
    if not isinstance(config, dict):
        raise FormatError(f"{name}: config must be a map, found {type(config).__name__}")
    unknown = set(config) - set(keys)
    if unknown:
        raise FormatError(f"{name}: unknown config keys {sorted(map(str, unknown))}; expected {list(keys)}")
    missing = [key for key in keys if key not in config]
    if missing:
        raise FormatError(f"{name}: config is missing {missing}; every key of {list(keys)} is required")
    return config


def require_array_spec(name: str, spec: Spec) -> ArraySpec:
    if not isinstance(spec, ArraySpec):
        raise FormatError(f"codec {name!r} decodes to an array, but {spec.describe()} is expected")
    return spec


def require_bytes_spec(name: str, spec: Spec) -> BytesSpec:
    if not isinstance(spec, BytesSpec):
        raise FormatError(f"codec {name!r} decodes to bytes, but {spec.describe()} is expected")
    return spec
