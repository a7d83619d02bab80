"""``outlier`` codec (spec/codecs/outlier.md): dense-and-sparse split, as in SqueezeLLM.

The ``count`` elements of largest magnitude are kept exactly in part ``values`` (the tensor's
dtype, ``(count,)``), their positions in part ``index`` (the delta codes of ``sparse``, shared
code: cmf.codecs.sparse), and every element goes to part ``dense`` (the tensor's spec), which
holds ``+0.0`` at the outlier positions so that a quantizer sub-tree fits its scales to the
remaining, well-behaved values. Decoding takes ``dense`` and *replaces* the elements at the
outlier positions by ``values``, bit for bit: whatever a lossy sub-tree made of ``dense``
there does not matter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..dtypes import BY_NAME
from ..errors import CmfError
from .base import ArraySpec, Codec, Spec, Value, require_array_spec
from .registry import register
from .sparse import (
    MAX_COUNT,
    MAX_INDEX_BITS,
    bits_view,
    check_delta_counts,
    check_index_bits,
    check_int,
    check_keys,
    choose_index_bits,
    delta_chunks,
    delta_decode,  # noqa: F401  (re-exported: the position coding is sparse's, tests check it)
    delta_encode,
    fail,
    index_dtype,
    input_array,
    largest,
    magnitudes,
    part_array,
    round_count,
    scatter,
)

_KEYS = ("count", "bits", "entries")
_FIT_KEYS = ("fraction", "count", "index_bits")
TENSOR_DTYPES = tuple(d.name for d in BY_NAME.values() if d.is_float)


def outlier_positions(x: np.ndarray, count: int) -> np.ndarray:
    """Positions (sorted, C order) of the ``count`` elements of largest magnitude (NaN counts
    as the largest; ties go to the lowest positions)."""
    return largest(magnitudes(x), count)


@register
@dataclass(frozen=True, kw_only=True)
class Outlier(Codec):
    """Dense part plus exact outliers; see the module docstring and spec/codecs/outlier.md."""

    name = "outlier"
    since_minor: ClassVar[int] = 1  # defined by cmf 1.1: a writer using it writes minor 1
    count: int
    bits: int
    entries: int

    def __post_init__(self) -> None:
        check_int(self.name, "count", self.count, 0, MAX_COUNT)
        check_int(self.name, "bits", self.bits, 1, MAX_INDEX_BITS)
        check_int(self.name, "entries", self.entries, 0, MAX_COUNT)

    def to_config(self) -> dict:
        return {k: getattr(self, k) for k in _KEYS}

    @classmethod
    def from_config(cls, config: Any) -> Outlier:
        return cls(**check_keys(cls.name, config, _KEYS))

    @classmethod
    def _check(cls, spec: Spec) -> ArraySpec:
        spec = require_array_spec(cls.name, spec)
        if not spec.dtype.is_float:
            raise fail(
                cls.name,
                f"decodes to a float tensor ({', '.join(TENSOR_DTYPES)}), not {spec.dtype.name}",
            )
        return spec

    def resolve(self, spec: Spec) -> dict[str, Spec]:
        spec = self._check(spec)
        check_delta_counts(self.name, self.count, self.entries, spec.numel, self.bits)
        return {
            "dense": spec,
            "index": ArraySpec(BY_NAME[index_dtype(self.bits)], (self.entries,)),
            "values": ArraySpec(spec.dtype, (self.count,)),
        }

    def decode(self, parts: dict[str, Value], spec: Spec) -> np.ndarray:
        spec = self._check(spec)
        specs = self.resolve(spec)
        dense = part_array(self.name, parts, "dense", spec)
        codes = part_array(self.name, parts, "index", specs["index"])  # type: ignore[arg-type]
        values = part_array(self.name, parts, "values", specs["values"])  # type: ignore[arg-type]
        chunks = delta_chunks(self.name, codes, self.count, spec.numel, self.bits)
        out = bits_view(dense).copy()  # the dense part may be read-only (a segment's bytes)
        scatter(out, chunks, bits_view(values))  # positions a chunk at a time: bounded scratch
        return out.view(spec.dtype.numpy).reshape(spec.shape)

    def encode(self, value: Value, spec: Spec) -> dict[str, Value]:
        spec = self._check(spec)
        x = input_array(self.name, value, spec)
        self.resolve(spec)
        if self.count > x.size:
            raise CmfError(f"outlier: count {self.count} is more than the {x.size} elements")
        where = outlier_positions(x, self.count)
        codes = delta_encode(where, self.bits)
        if codes.size != self.entries:
            raise CmfError(
                f"outlier: the outlier positions take {codes.size} {self.bits}-bit codes, the "
                f"config says {self.entries} (use the codec's fit to configure it)"
            )
        bits = bits_view(x)
        dense = bits.copy()
        dense[where] = 0  # +0.0: no pull on the dense part's quantization scales
        return {
            "dense": dense.view(spec.dtype.numpy).reshape(spec.shape),
            "index": codes,
            "values": bits[where].view(spec.dtype.numpy),
        }

    @classmethod
    def check_fit(cls, options: Any) -> None:
        if not isinstance(options, dict):
            raise CmfError(f"outlier: fit options must be a map, found {type(options).__name__}")
        unknown = sorted(str(k) for k in options if k not in _FIT_KEYS)
        if unknown:
            raise CmfError(
                f"outlier: unknown fit options {unknown}; expected some of {list(_FIT_KEYS)}"
            )
        if ("fraction" in options) == ("count" in options):
            raise CmfError("outlier: fit options need exactly one of 'fraction' and 'count'")
        if "fraction" in options:
            f = options["fraction"]
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f <= 1:
                raise CmfError(
                    f"outlier: fit option 'fraction' must be a number in [0, 1], found {f!r}"
                )
        else:
            c = options["count"]
            if isinstance(c, bool) or not isinstance(c, int) or c < 0:
                raise CmfError(f"outlier: fit option 'count' must be an integer >= 0, found {c!r}")
        check_index_bits(cls.name, options)

    @classmethod
    def fit(cls, value: Value, spec: Spec, options: dict[str, Any]) -> tuple[Outlier, Value]:
        cls.check_fit(options)
        spec = cls._check(spec)
        x = input_array(cls.name, value, spec)
        if "fraction" in options:
            count = round_count(float(options["fraction"]), x.size)
        else:
            count = min(options["count"], x.size)
        where = outlier_positions(x, count)
        bits, entries, _ = choose_index_bits(where, check_index_bits(cls.name, options))
        return cls(count=count, bits=bits, entries=entries), x
