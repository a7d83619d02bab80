"""Encode a tensor as a codec tree, and decode a tree back (spec/format.md §5).

Encoding builds a *pending* tree whose leaves hold bytes not yet written; the writer turns them
into segments. A :class:`PendingShared` node stands for a :class:`SharedValue` (an array stored
once in the file, spec/format.md §3.5): the writer writes the value's own tree when it first
commits a reference to it. Decoding walks a parsed tree bottom-up, fetching (CRC-checked)
segment bytes, and shared values through a callback (the reader decodes each once).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import wait
from dataclasses import dataclass

import numpy as np

from .codecs import ArraySpec, BytesSpec, Codec, Spec, Value
from .codecs.byteplanes import BytePlanes
from .codecs.raw import Raw
from .codecs.zstd import Zstd
from .errors import CmfError, FormatError, LimitError
from .index import Leaf, Node, SharedRef
from .kernels import executor
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
    parts: dict[str, Pending]
    spec: Spec

    @property
    def stored(self) -> int:
        return sum(p.stored for p in self.parts.values())


class SharedValue:
    """An array to be stored once and referenced from many trees (``PendingShared``).

    ``encoding`` is its own pending tree (lossless by default); it must not reference shared
    values. Compared by identity: two SharedValue objects are two shared values in the file.
    """

    def __init__(
        self,
        value: np.ndarray,
        encoding: Pending | None = None,
        *,
        level: int = 3,
        label: str = "",
    ) -> None:
        from . import dtypes

        array = np.array(value, copy=True)  # private and read-only: it is decoded from here
        self.spec = ArraySpec(dtypes.of_array(array), tuple(int(d) for d in array.shape))
        array = np.ascontiguousarray(array, dtype=self.spec.dtype.numpy).reshape(self.spec.shape)
        array.setflags(write=False)
        self.value = array
        if encoding is None:
            encoding = encode_lossless(array, self.spec, level)
        self.encoding: Pending = encoding
        if self.encoding.spec != self.spec:
            raise CmfError(
                f"shared value: encoding decodes to {self.encoding.spec.describe()}, "
                f"{self.spec.describe()} expected"
            )
        if _has_shared(self.encoding):
            raise CmfError("shared value: its encoding must not reference shared values")
        self.label = label

    def __repr__(self) -> str:
        return f"SharedValue({self.label or '?'}: {self.spec.describe()})"


@dataclass(frozen=True, eq=False)
class PendingShared:
    """A reference to ``target`` standing for a part (or a whole tensor) of the same spec."""

    target: SharedValue
    spec: ArraySpec

    def __post_init__(self) -> None:
        if self.spec != self.target.spec:
            raise CmfError(
                f"shared reference: {self.target.spec.describe()} cannot stand for "
                f"{self.spec.describe()}"
            )

    @property
    def stored(self) -> int:
        return 0  # stored once, with the shared value


@dataclass(frozen=True)
class PendingCounted:
    """A lossless part whose bytes were counted, not made (the planner's candidate curves):
    ``stored`` is the length its codec's encoding would have, ``value`` what it decodes to.
    Nothing holding one can be written (cmf.writer refuses it before writing anything)."""

    value: Value
    spec: Spec
    stored: int


Pending = PendingLeaf | PendingNode | PendingShared | PendingCounted
Encoder = Callable[[np.ndarray, ArraySpec], Pending]


def shared_ref(target: SharedValue) -> PendingShared:
    return PendingShared(target, target.spec)


def _has_shared(p: Pending) -> bool:
    if isinstance(p, PendingShared):
        return True
    return isinstance(p, PendingNode) and any(_has_shared(c) for c in p.parts.values())


def leaf_bytes(data: object) -> memoryview:
    """A leaf's data (bytes, bytearray, a numpy array of any dtype, a memoryview) as a flat
    memoryview of its bytes in C order: no copy unless it is not contiguous."""
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    view = memoryview(data)  # type: ignore[arg-type]
    if not view.c_contiguous:
        view = memoryview(view.tobytes())
    return view.cast("B")


def decode_pending(p: Pending) -> Value:
    """The value ``p`` decodes to, exactly as a reader would decode the written tree."""
    if isinstance(p, PendingLeaf):
        data = p.data  # once: a spilled leaf (cmf.plan.spill) reads its bytes at each use
        return data if isinstance(data, bytes) else bytes(memoryview(data).cast("B"))
    if isinstance(p, PendingShared):
        return p.target.value
    if isinstance(p, PendingCounted):
        return p.value
    parts = {name: decode_pending(child) for name, child in p.parts.items()}
    return p.codec.decode(parts, p.spec)


def is_lossy(p: Pending) -> bool:
    """True if any codec in the tree (shared values included) is lossy."""
    if isinstance(p, (PendingLeaf, PendingCounted)):
        return False
    if isinstance(p, PendingShared):
        return is_lossy(p.target.encoding)
    return (not p.codec.lossless) or any(is_lossy(c) for c in p.parts.values())


def apply(
    codec: Codec, value: Value, spec: Spec, encode_part: Callable[[Value, Spec], Pending]
) -> PendingNode:
    """Encode ``value`` with ``codec``, then each part with ``encode_part``."""
    part_specs = codec.resolve(spec)
    parts = codec.encode(value, spec)
    return PendingNode(codec, {n: encode_part(parts[n], part_specs[n]) for n in part_specs}, spec)


# Sampling to skip candidates that cannot win (pack speed; the smallest is still kept): a value
# of at least _SAMPLE_MIN bytes is first compressed on a stratified sample (one _SAMPLE_SLICE
# from the middle of each of 4..32 equal stretches, about 1/16 of it, each slice on its own),
# and a candidate whose sample size is over _SKIP_MARGIN times the best plus _SKIP_SLACK of the
# sample is not tried on the whole value. On MiniLM (f32, bf16, f16) the files stay identical.
PARALLEL_PART_BYTES = 1 << 20  # parts this big decode on threads when a node has two or more
_SAMPLE_SLICE = 16 << 10
_SAMPLE_MIN = 256 << 10
_SKIP_MARGIN = 1.05
_SKIP_SLACK = 0.02


def _sample(data: Value) -> list[memoryview] | None:
    """Stratified sample of ``data`` (64-byte-aligned slices), or None if it is small."""
    view = memoryview(data).cast("B")
    n = len(view)
    if n < _SAMPLE_MIN:
        return None
    count = min(32, max(4, n // (16 * _SAMPLE_SLICE)))
    step = n // count
    starts = (((i * step) + (step - _SAMPLE_SLICE) // 2) // 64 * 64 for i in range(count))
    return [view[a : a + _SAMPLE_SLICE] for a in starts]


def _sample_sizes(sample: list[memoryview], codecs: tuple[Zstd, ...]) -> list[int]:
    """Compressed size of the sample with each codec (slices compressed one by one)."""
    return [
        sum(len(c.encode(piece, BytesSpec(len(piece)))["data"]) for piece in sample) for c in codecs
    ]


def _skip_above(sample: list[memoryview], sizes: list[int]) -> float:
    """Sample size above which a candidate is clearly beaten."""
    total = sum(len(piece) for piece in sample)
    return _SKIP_MARGIN * min(total, *sizes) + _SKIP_SLACK * total


def best_bytes(data: Value, spec: BytesSpec, level: int = 3) -> Pending:
    """The smallest of: stored as is, zstd at ``level``, entropy-only zstd."""
    best: Pending = PendingLeaf(data, spec)
    if spec.length is None or spec.length == 0:
        return best
    codecs: tuple[Zstd, ...] = (Zstd(level=1, literals_only=True), Zstd(level=level))
    sample = _sample(data)
    if sample is not None:  # skip a zstd that is clearly beaten on the sample
        sizes = _sample_sizes(sample, codecs)
        above = _skip_above(sample, sizes)
        codecs = tuple(c for c, size in zip(codecs, sizes, strict=True) if size <= above)
    for codec in codecs:
        candidate = apply(codec, data, spec, lambda v, s: PendingLeaf(v, s))
        if candidate.stored < best.stored:
            best = candidate
    return best


def encode_lossless(array: np.ndarray, spec: ArraySpec, level: int = 3) -> Pending:
    """Choose-the-smallest lossless rule: raw or byte planes, each leaf stored or zstd'ed."""

    def leaf(v: Value, s: Spec) -> Pending:
        return best_bytes(v, s, level)  # type: ignore[arg-type]

    if spec.dtype.itemsize in (2, 4, 8) and spec.numel > 0:
        planes = apply(BytePlanes(rotate=spec.dtype.is_float), array, spec, leaf)
        if planes.stored < spec.nbytes:  # raw can win only by compressing: check on a sample
            sample = _sample(Raw().encode(array, spec)["data"])
            if sample is not None:
                codecs = (Zstd(level=1, literals_only=True), Zstd(level=level))
                total = sum(len(piece) for piece in sample)
                sizes = [total, *_sample_sizes(sample, codecs)]
                if min(sizes) > _skip_above(sample, [total * planes.stored // spec.nbytes]):
                    return planes  # raw is clearly beaten: skip its compressions
        best: Pending = apply(Raw(), array, spec, leaf)
        if planes.stored < best.stored:
            best = planes
        return best
    return apply(Raw(), array, spec, leaf)


def spec_nbytes(spec: Spec) -> int:
    if isinstance(spec, ArraySpec):
        return spec.nbytes
    return spec.length or 0


_NUMPY_MAX = (1 << 63) - 1  # numpy refuses shapes whose non-zero dims x itemsize exceed this


def check_decodable(spec: Spec, limits: Limits) -> None:
    """LimitError unless a value of ``spec`` fits the memory budget and numpy's shape limit
    (checked for every node before it is decoded)."""
    size = spec_nbytes(spec)
    if size > limits.max_tensor_bytes:
        raise LimitError(
            f"decoding needs {size} bytes for {spec.describe()}, "
            f"over the memory budget of {limits.max_tensor_bytes}"
        )
    if (
        isinstance(spec, ArraySpec)
        and math.prod(d for d in spec.shape if d) * spec.dtype.itemsize > _NUMPY_MAX
    ):
        raise LimitError(  # e.g. [0, 2^40, 2^40]: empty, yet numpy cannot make that shape
            f"{spec.describe()} cannot be an array here: its non-zero dimensions times the "
            f"item size exceed {_NUMPY_MAX} (numpy's limit, even for an empty array)"
        )


def decode(
    node: Node,
    fetch: Callable[[int], Value],
    limits: Limits,
    shared: Callable[[int], np.ndarray] | None = None,
    parallel: bool = True,
    out: np.ndarray | None = None,
) -> Value:
    """Decode ``node``; ``fetch(i)`` returns segment ``i``'s bytes, already CRC-checked, and
    ``shared(i)`` shared value ``i`` (read-only; codecs never write to their parts). With
    ``parallel``, the big parts of the top node decode on the "parts" thread pool (``fetch``
    and ``shared`` are then called from several threads); callers running on that pool, or
    holding a lock those threads may need, pass ``parallel=False``. ``out`` (an array node
    only: writable, C-contiguous, of the node's dtype and shape) receives the value and is
    returned: codecs with a ``decode_into(parts, spec, out)`` method (byteplanes, quantize,
    raw) write their result there directly, the others' result is copied in."""
    check_decodable(node.spec, limits)
    if isinstance(node, Leaf):
        return fetch(node.segment)
    if isinstance(node, SharedRef):
        if shared is None:
            raise FormatError(f"shared value {node.index} referenced where none can be")
        value = shared(node.index)
        _check_matches(value, node.spec, "shared")
        return value if out is None else _copy_into(out, value)
    big = (
        [n for n, c in node.parts.items() if _nbytes(c.spec) >= PARALLEL_PART_BYTES]
        if parallel
        else []
    )
    if len(big) < 2:
        parts = {
            name: decode(child, fetch, limits, shared, parallel=False)
            for name, child in node.parts.items()
        }
    else:  # big parts (byte planes; not a small scale next to codes) decode at once on threads:
        # zstd and the C kernels release the GIL; below the top level it stays serial
        jobs = {
            n: executor("parts").submit(
                decode, node.parts[n], fetch, limits, shared, parallel=False
            )
            for n in big
        }
        try:
            parts = {
                name: jobs[name].result()
                if name in jobs
                else decode(child, fetch, limits, shared, parallel=False)
                for name, child in node.parts.items()
            }
        except BaseException:
            for job in jobs.values():  # no orphaned work after an error: cancel or wait
                job.cancel()
            wait(list(jobs.values()))
            raise
    into = getattr(node.codec, "decode_into", None) if out is not None else None
    if into is not None:
        into(parts, node.spec, out)
        return out
    value = node.codec.decode(parts, node.spec)
    _check_matches(value, node.spec, node.codec.name)
    return value if out is None else _copy_into(out, value)


def _copy_into(out: np.ndarray, value: Value) -> np.ndarray:
    out[...] = value  # shapes and dtypes already match (_check_matches)
    return out


def _nbytes(spec: Spec) -> int:
    if isinstance(spec, ArraySpec):
        return spec.numel * spec.dtype.itemsize
    return spec.length or 0


def _check_matches(value: Value, spec: Spec, codec: str) -> None:
    if isinstance(spec, ArraySpec):
        ok = (
            isinstance(value, np.ndarray)
            and value.dtype == spec.dtype.numpy
            and value.shape == spec.shape
        )
    else:
        ok = not isinstance(value, np.ndarray) and (
            spec.length is None or len(value) == spec.length
        )
    if not ok:
        raise FormatError(f"codec {codec!r} did not produce {spec.describe()}")


def describe(node: Node | Pending) -> str:
    """A one-line summary of a tree, e.g. ``byteplanes(p0=zstd*,p1=zstd,p2=seg,p3=seg)``."""
    if isinstance(node, (Leaf, PendingLeaf)):
        return "seg"
    if isinstance(node, SharedRef):
        return f"shared#{node.index}"
    if isinstance(node, PendingShared):
        return "shared"
    if isinstance(node, PendingCounted):
        return "counted"
    name = node.codec.name
    if isinstance(node.codec, Zstd) and node.codec.literals_only:
        name = "zstd-lit"
    if len(node.parts) == 1:
        (child,) = node.parts.values()
        sub = describe(child)
        return name if sub == "seg" else f"{name}>{sub}"
    return f"{name}(" + ",".join(f"{k}={describe(c)}" for k, c in node.parts.items()) + ")"
