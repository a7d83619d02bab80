"""``partition`` codec (spec/codecs/partition.md): a tensor's rows split into classes.

The rows (slices along the first axis) of an array of any dtype and rank >= 1 are split into
``K = len(counts)`` classes: part ``class`` (``u8``, one entry per row) says which, and part
``p{k}`` holds the ``counts[k]`` rows of class ``k`` in row order, so that each class gets a
sub-tree of its own (its own quantizer step, its own entropy-coder table). Decoding checks
``class`` (every value ``< K``, value ``k`` exactly ``counts[k]`` times) and puts every row back,
bit for bit, a chunk of rows at a time: scratch memory of O(CHUNK_ROWS) beside the output,
however many (or however narrow) the rows.

The encoder takes a :class:`Partitioned` value (the array and one class per row); ``fit`` makes
one from the recipe option ``{"classes": [...]}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..dtypes import BY_NAME
from ..errors import CmfError
from .base import ArraySpec, Codec, Spec, Value, require_array_spec
from .registry import register
from .sparse import bits_view, check_keys, fail, input_array, part_array

MAX_CLASSES = 256  # classes are u8
MAX_ROWS = 1 << 53  # a count is below 2^53 (exact in a JSON number)
CHUNK_ROWS = 1 << 16  # rows placed at a time: O(CHUNK_ROWS) scratch beside the output
_U8 = BY_NAME["u8"]
_UINT = {1: np.dtype("u1"), 2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8")}


def part_names(k: int) -> list[str]:
    return [f"p{j}" for j in range(k)]


@dataclass(frozen=True)
class Partitioned:
    """The value ``Partition.encode`` takes: ``array`` (rank >= 1) and ``classes``, one class
    per row (1-D integers, ``len(classes) == array.shape[0]``)."""

    array: Any
    classes: Any


def _classes(who: str, classes: Any, d0: int) -> np.ndarray:
    """``classes`` as a 1-D int64 array of ``d0`` values in ``[0, 256)``; CmfError otherwise."""
    c = np.asarray(classes)
    if c.size == 0:
        c = c.astype(np.int64)  # [] is float64 to numpy
    if c.dtype.kind not in "iu":  # bool, floats, objects: not class numbers
        raise CmfError(f"{who}: classes must be integers, found {c.dtype}")
    if c.shape != (d0,):
        raise CmfError(f"{who}: classes of shape {list(c.shape)}, one per row ({d0}) expected")
    if c.size and (int(c.min()) < 0 or int(c.max()) >= MAX_CLASSES):
        raise CmfError(
            f"{who}: classes must be in [0, {MAX_CLASSES - 1}], found "
            f"{int(c.min())}..{int(c.max())}"
        )
    return c.astype(np.int64)


@register
@dataclass(frozen=True, kw_only=True)
class Partition(Codec):
    """Rows by class, one sub-tree per class; see the module docstring."""

    name = "partition"
    since_minor: ClassVar[int] = 2  # defined by cmf 1.2: a writer using it writes minor 2
    counts: tuple[int, ...]

    def __post_init__(self) -> None:
        counts = self.counts
        if not isinstance(counts, (list, tuple)):
            raise fail(self.name, f"config 'counts' must be an array of ints, found {counts!r}")
        if not 1 <= len(counts) <= MAX_CLASSES:
            raise fail(
                self.name,
                f"config 'counts' must have 1 to {MAX_CLASSES} entries, found {len(counts)}",
            )
        for k, n in enumerate(counts):
            if isinstance(n, bool) or not isinstance(n, int):
                raise fail(self.name, f"config 'counts'[{k}] must be an integer, found {n!r}")
            if not 0 <= n < MAX_ROWS:
                raise fail(self.name, f"config 'counts'[{k}] must be in [0, 2^53), found {n}")
        object.__setattr__(self, "counts", tuple(counts))  # hashable, whatever was given

    def to_config(self) -> dict:
        return {"counts": list(self.counts)}

    @classmethod
    def from_config(cls, config: Any) -> Partition:
        counts = check_keys(cls.name, config, ("counts",))["counts"]
        if not isinstance(counts, list):
            raise fail(cls.name, f"config 'counts' must be an array, found {type(counts).__name__}")
        return cls(counts=tuple(counts))

    def _check(self, spec: Spec) -> ArraySpec:
        spec = require_array_spec(self.name, spec)
        if not spec.shape:
            raise fail(self.name, "decodes to an array of rank >= 1, not a rank-0 array")
        total = sum(self.counts)
        if total != spec.shape[0]:
            raise fail(
                self.name,
                f"counts add up to {total} rows, the tensor {spec.describe()} has {spec.shape[0]}",
            )
        return spec

    def resolve(self, spec: Spec) -> dict[str, Spec]:
        spec = self._check(spec)
        rest = spec.shape[1:]
        out: dict[str, Spec] = {"class": ArraySpec(_U8, (spec.shape[0],))}
        for name, n in zip(part_names(len(self.counts)), self.counts, strict=True):
            out[name] = ArraySpec(spec.dtype, (n, *rest))
        return out

    def decode(self, parts: dict[str, Value], spec: Spec) -> np.ndarray:
        spec = self._check(spec)
        specs = self.resolve(spec)
        cls = part_array(self.name, parts, "class", specs["class"])  # type: ignore[arg-type]
        rows = {
            n: part_array(self.name, parts, n, specs[n])  # type: ignore[arg-type]
            for n in part_names(len(self.counts))
        }
        k = len(self.counts)
        d0, width = spec.shape[0], math.prod(spec.shape[1:])
        uniform: list[int] = []  # per chunk: its one class, or -1 if it holds several
        if d0:
            top = int(cls.max())
            if top >= k:
                raise fail(self.name, f"class value {top} is out of range for {k} classes")
            found = np.zeros(k, np.int64)
            for start in range(0, d0, CHUNK_ROWS):  # bincount widens to intp: a chunk at a time
                chunk = cls[start : start + CHUNK_ROWS]
                j = int(chunk[0])
                uniform.append(j if int(chunk.min()) == int(chunk.max()) == j else -1)
                if uniform[-1] >= 0:  # one class: counted without widening
                    found[j] += chunk.size
                else:
                    found += np.bincount(chunk, minlength=k)
            bad = np.flatnonzero(found != np.asarray(self.counts, dtype=np.int64))
            if bad.size:
                j = int(bad[0])
                raise fail(
                    self.name,
                    f"class {j} occurs {int(found[j])} times, counts says {self.counts[j]}",
                )
        uint = _UINT[spec.dtype.itemsize]
        out = np.empty((d0, width), dtype=uint)  # owned, writable; bits copied, never converted
        src = [bits_view(rows[n]).reshape(c, width) for n, c in zip(rows, self.counts, strict=True)]
        cursor = [0] * k  # rows of each class placed so far
        for start, j in zip(
            range(0, d0, CHUNK_ROWS), uniform, strict=True
        ):  # scratch: one chunk's order
            chunk = cls[start : start + CHUNK_ROWS]
            if j >= 0:  # one class: its next rows, in order (no sort, no scatter)
                n = chunk.size
                out[start : start + n] = src[j][cursor[j] : cursor[j] + n]
                cursor[j] += n
                continue
            order = np.argsort(chunk, kind="stable")  # the chunk's rows grouped by class, in order
            per = np.bincount(chunk, minlength=k)
            at = 0
            for j in np.flatnonzero(per).tolist():
                n = int(per[j])
                out[start + order[at : at + n]] = src[j][cursor[j] : cursor[j] + n]
                cursor[j] += n
                at += n
        return out.view(spec.dtype.numpy).reshape(spec.shape)

    def encode(self, value: Value, spec: Spec) -> dict[str, Value]:
        spec = self._check(spec)
        if not isinstance(value, Partitioned):
            raise CmfError(
                f"partition: encode takes cmf.codecs.partition.Partitioned(array, classes), "
                f"not {type(value).__name__} (or use the fit option {{'classes': [...]}})"
            )
        x = input_array(self.name, value.array, spec)
        c = _classes(self.name, value.classes, spec.shape[0])
        k = len(self.counts)
        if c.size and int(c.max()) >= k:
            raise CmfError(f"partition: class {int(c.max())} is out of range for {k} classes")
        found = np.bincount(c, minlength=k)
        if found.tolist() != list(self.counts):
            raise CmfError(
                f"partition: the classes occur {found.tolist()} times, counts says "
                f"{list(self.counts)}"
            )
        out: dict[str, Value] = {"class": c.astype(np.uint8)}
        for j, name in enumerate(part_names(k)):
            out[name] = x[c == j]  # a copy, rows in row order
        return out

    @classmethod
    def check_fit(cls, options: Any) -> None:
        if not isinstance(options, dict):
            raise CmfError(f"partition: fit options must be a map, found {type(options).__name__}")
        if set(options) != {"classes"}:
            raise CmfError(
                f"partition: fit options must be exactly {{'classes': [...]}}, found "
                f"{sorted(map(str, options))}"
            )
        classes = options["classes"]
        if isinstance(classes, np.ndarray):
            if classes.ndim != 1 or (classes.size and classes.dtype.kind not in "iu"):
                raise CmfError("partition: fit option 'classes' must be a 1-D array of ints")
            bad = classes.size and (int(classes.min()) < 0 or int(classes.max()) >= MAX_CLASSES)
        elif isinstance(classes, (list, tuple)):
            if not all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
                raise CmfError("partition: fit option 'classes' must hold ints (one per row)")
            bad = any(not 0 <= c < MAX_CLASSES for c in classes)
        else:
            raise CmfError(
                f"partition: fit option 'classes' must be a list of ints, found "
                f"{type(classes).__name__}"
            )
        if bad:
            raise CmfError(f"partition: fit option 'classes' must be in [0, {MAX_CLASSES - 1}]")

    @classmethod
    def fit(cls, value: Value, spec: Spec, options: dict[str, Any]) -> tuple[Partition, Value]:
        """The codec for the classes of ``options`` (``K = max + 1``; one class, of no rows,
        for an empty tensor) and the :class:`Partitioned` value to encode."""
        cls.check_fit(options)
        spec = require_array_spec(cls.name, spec)
        if not spec.shape:
            raise CmfError("partition: a rank-0 tensor has no rows to partition")
        c = _classes(cls.name, options["classes"], spec.shape[0])
        k = int(c.max()) + 1 if c.size else 1
        counts = tuple(int(n) for n in np.bincount(c, minlength=k))
        x = input_array(cls.name, value, spec)
        return cls(counts=counts), Partitioned(x, c)
