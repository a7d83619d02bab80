"""Encode a tensor as a codec tree, and decode a tree back (DESIGN.md, spec/format.md §5).

Encoding builds a *pending* tree whose leaves hold bytes not yet written; the writer turns them
into segments. Decoding walks a parsed tree bottom-up, fetching (CRC-checked) segment bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

import numpy as np

from .codecs import ArraySpec, BytesSpec, Codec, Spec, Value
from .codecs.byteplanes import BytePlanes
from .codecs.raw import Raw
from .codecs.zstd import Zstd
from .errors import FormatError, LimitError
from .index import CodecNode, Leaf, Node
from .limits import Limits


@dataclass(frozen=True)
class PendingLeaf:
    """Bytes that will become one segment."""

    data: Value
    spec: BytesSpec

    @property
    def stored(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class PendingNode:
    codec: Codec
    parts: dict[str, "Pending"]
    spec: Spec

    @property
    def stored(self) -> int:
        return sum(p.stored for p in self.parts.values())


Pending = Union[PendingLeaf, PendingNode]
Encoder = Callable[[np.ndarray, ArraySpec], Pending]


def apply(codec: Codec, value: Value, spec: Spec, encode_part: Callable[[Value, Spec], Pending]) -> PendingNode:
    """Encode ``value`` with ``codec``, then each part with ``encode_part``."""
    part_specs = codec.resolve(spec)
    parts = codec.encode(value, spec)
    return PendingNode(codec, {n: encode_part(parts[n], part_specs[n]) for n in part_specs}, spec)


def best_bytes(data: Value, spec: BytesSpec, level: int = 3) -> Pending:
    """The smallest of: stored as is, zstd at ``level``, entropy-only zstd."""
    best: Pending = PendingLeaf(data, spec)
    if spec.length is None or spec.length == 0:
        return best
    for codec in (Zstd(level=1, literals_only=True), Zstd(level=level)):
        candidate = apply(codec, data, spec, lambda v, s: PendingLeaf(v, s))
        if candidate.stored < best.stored:
            best = candidate
    return best


def encode_lossless(array: np.ndarray, spec: ArraySpec, level: int = 3) -> Pending:
    """Choose-the-smallest lossless rule: raw or byte planes, each leaf stored or zstd'ed."""
    def leaf(v: Value, s: Spec) -> Pending:
        return best_bytes(v, s, level)  # type: ignore[arg-type]

    best: Pending = apply(Raw(), array, spec, leaf)
    if spec.dtype.itemsize in (2, 4, 8) and spec.numel > 0:
        planes = apply(BytePlanes(rotate=spec.dtype.is_float), array, spec, leaf)
        if planes.stored < best.stored:
            best = planes
    return best


def spec_nbytes(spec: Spec) -> int:
    if isinstance(spec, ArraySpec):
        return spec.nbytes
    return spec.length or 0


def decode(node: Node, fetch: Callable[[int], Value], limits: Limits) -> Value:
    """Decode ``node``; ``fetch(i)`` returns segment ``i``'s bytes, already CRC-checked."""
    size = spec_nbytes(node.spec)
    if size > limits.max_tensor_bytes:
        raise LimitError(
            f"decoding needs {size} bytes for {node.spec.describe()}, "
            f"over the memory budget of {limits.max_tensor_bytes}"
        )
    if isinstance(node, Leaf):
        return fetch(node.segment)
    parts = {name: decode(child, fetch, limits) for name, child in node.parts.items()}
    value = node.codec.decode(parts, node.spec)
    _check_matches(value, node.spec, node.codec.name)
    return value


def _check_matches(value: Value, spec: Spec, codec: str) -> None:
    if isinstance(spec, ArraySpec):
        ok = (
            isinstance(value, np.ndarray)
            and value.dtype == spec.dtype.numpy
            and value.shape == spec.shape
        )
    else:
        ok = not isinstance(value, np.ndarray) and (spec.length is None or len(value) == spec.length)
    if not ok:
        raise FormatError(f"codec {codec!r} did not produce {spec.describe()}")


def describe(node: Node | Pending) -> str:
    """A one-line summary of a tree, e.g. ``byteplanes(p0=zstd*,p1=zstd,p2=seg,p3=seg)``."""
    if isinstance(node, (Leaf, PendingLeaf)):
        return "seg"
    name = node.codec.name
    if isinstance(node.codec, Zstd) and node.codec.literals_only:
        name = "zstd-lit"
    if len(node.parts) == 1:
        (child,) = node.parts.values()
        sub = describe(child)
        return name if sub == "seg" else f"{name}>{sub}"
    return f"{name}(" + ",".join(
        f"{k}={describe(c)}" for k, c in node.parts.items()
    ) + ")"
