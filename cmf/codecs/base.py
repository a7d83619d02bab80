"""The codec contract and the specs that flow through a codec tree.

A codec turns one value into named *parts* and back. Every codec is a frozen dataclass with
keyword-only config, subclassing :class:`Codec`, registered under its name
(cmf.codecs.registry); the abstract methods below are what it must implement, the rest has a
default it may override without changing what the method means:

* ``name``      (class attribute) registered, never reused (spec/codecs/<name>.md);
* ``since_minor`` (class attribute, default 0) the format minor version that defined the codec:
  a writer that uses it writes at least that minor version (spec/format.md §8);
* ``lossless``  (class attribute, default True) False when ``decode(encode(x))`` may differ
  from ``x`` (quantize, lowrank, ...) or when the codec decodes to values it does not encode
  from (``ggml``: GGML blocks in, floats out);
* ``to_config()`` / ``from_config(config)`` (abstract): a JSON-able map that is the codec's
  identity (same name + config => same bytes); ``from_config(c.to_config()) == c``;
  ``from_config`` rejects unknown keys and bad values with CmfError;
* ``resolve(spec) -> {part: spec}`` (abstract): data-free; given the spec of the value this
  codec decodes to, the spec of each part (CmfError if the codec cannot produce that spec);
* ``encode(value, spec) -> {part: value}`` and ``decode(parts, spec) -> value`` (abstract):
  pure; every part ``encode`` returns matches its ``resolve`` spec, and ``decode`` of them
  gives a value of ``spec`` — equal to ``value`` bit for bit when ``lossless``, within the
  codec's own error contract (its spec page) otherwise;
* ``check_fit(options)`` and ``fit(value, spec, options) -> (codec, value)`` (class methods,
  encoder side only; by default the codec takes no fit options): choose a config from the data
  and encode-time *options* (a target rank energy, a sparsity, a codebook size), returning the
  configured codec and the value it is to encode (transformed when fitting is itself lossy,
  e.g. pruned). Recipes use it through ``{"codec": name, "fit": {...}}``. A codec's own
  helpers take other names (``Quantize.quantize_blocks``, ``Codebook.fit_group``).

A value is a numpy array (ArraySpec) or a bytes-like object (BytesSpec). Decoders treat their
input as hostile: they check every value that drives decoding and raise CmfError.
tests/codecs/test_registry.py checks the contract for every registered codec (a spec page, a
config that round-trips, encode -> decode within the contract).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

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


Spec = ArraySpec | BytesSpec
Value = np.ndarray | bytes | bytearray | memoryview


class Codec(ABC):
    """Base class of all codecs; subclasses are frozen dataclasses with keyword-only config.
    The contract is the module docstring."""

    name: ClassVar[str]
    since_minor: ClassVar[int] = 0  # the format minor version that defined the codec
    lossless: ClassVar[bool] = True

    @abstractmethod
    def to_config(self) -> dict[str, Any]:
        """The codec's configuration: a JSON-able map, its identity."""

    @classmethod
    @abstractmethod
    def from_config(cls, config: dict[str, Any]) -> Codec:
        """The codec of ``config`` (as ``to_config`` gives it); CmfError for unknown keys,
        missing keys and bad values."""

    @abstractmethod
    def resolve(self, spec: Spec) -> dict[str, Spec]:
        """The spec of each part, from the spec of the decoded value alone (no data)."""

    @abstractmethod
    def encode(self, value: Value, spec: Spec) -> dict[str, Value]:
        """The parts of ``value`` (of ``spec``), each matching its ``resolve`` spec."""

    @abstractmethod
    def decode(self, parts: dict[str, Value], spec: Spec) -> Value:
        """The value of ``spec`` from ``parts`` (hostile: CmfError for anything that does not
        decode)."""

    @classmethod
    def check_fit(cls, options: Any) -> None:
        """Raise CmfError unless ``options`` are fit options this codec accepts."""
        raise FormatError(f"codec {cls.name!r} takes no fit options; give its 'config'")

    @classmethod
    def fit(cls, value: Value, spec: Spec, options: dict[str, Any]) -> tuple[Codec, Value]:
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
        raise FormatError(
            f"{name}: unknown config keys {sorted(map(str, unknown))}; expected {list(keys)}"
        )
    missing = [key for key in keys if key not in config]
    if missing:
        raise FormatError(
            f"{name}: config is missing {missing}; every key of {list(keys)} is required"
        )
    return config


def require_array_spec(name: str, spec: Spec) -> ArraySpec:
    if not isinstance(spec, ArraySpec):
        raise FormatError(f"codec {name!r} decodes to an array, but {spec.describe()} is expected")
    return spec


def require_bytes_spec(name: str, spec: Spec) -> BytesSpec:
    if not isinstance(spec, BytesSpec):
        raise FormatError(f"codec {name!r} decodes to bytes, but {spec.describe()} is expected")
    return spec
