"""Streaming, atomic writer (spec/format.md §7).

States: ``open`` -> (add_tensor / add_attachment / add_shared)* -> ``closed`` | ``aborted``.
Each tensor's segments go to disk as soon as it is encoded, so peak memory is about one tensor.
A shared value (spec §3.5) is written when it is added, or just before the first tensor that
references it. Output goes to a temporary file beside the target that replaces it only when
complete (fsync + os.replace).
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np

from . import dtypes
from . import format as fmt
from .atomic import AtomicFile
from .checksum import crc32c
from .codecs import ArraySpec, BytesSpec
from .errors import CmfError
from .index import (
    SHARED_MINOR,
    Attachment,
    CodecNode,
    Index,
    Leaf,
    Node,
    Segment,
    SharedEntry,
    SharedRef,
    TensorEntry,
    check_attachment_name,
    check_metadata,
    pack,
)
from .limits import DEFAULT_LIMITS, Limits
from .metrics import error_stats
from .pipeline import (
    Encoder,
    Pending,
    PendingCounted,
    PendingLeaf,
    PendingNode,
    PendingShared,
    SharedValue,
    best_bytes,
    decode_pending,
    encode_lossless,
    is_lossy,
    shared_ref,
)

Progress = Callable[[str, int], None]


class Writer:
    """Write a ``.cmf`` file tensor by tensor.

    ``encoder(array, spec) -> pending tree`` chooses each tensor's encoding (lossless by default).

    Each tensor goes to disk as soon as it is added; :meth:`close` writes the index and
    atomically replaces ``path``. Used as a context manager it closes on success and aborts
    (leaving ``path`` as it was) on an exception.

    Args:
        path: the ``.cmf`` file to write; a temporary file beside it is written meanwhile.
        metadata: string keys -> JSON-like values (spec/format.md §3.4), stored in the index.
        encoder: ``encoder(array, spec) -> Pending``, the default encoding of every tensor.
        level: the zstd level of lossless encodings (and of attachments).
        dedupe: store a tensor identical to an earlier one as an alias of it.
        limits: the limits written values are checked against (names, rank, sizes).

    Raises:
        CmfError: ``metadata`` is not valid (a FormatError), or the temporary file cannot be
            created (e.g. the directory does not exist).

    Example:
        >>> import numpy as np, cmf
        >>> with cmf.Writer("model.cmf", metadata={"source": "example"}) as w:
        ...     _ = w.add_tensor("w", np.arange(6, dtype=np.float32).reshape(2, 3))
        ...     w.add_attachment("config.json", b"{}")
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        metadata: dict[str, Any] | None = None,
        encoder: Encoder | None = None,
        level: int = 3,
        dedupe: bool = True,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.level = level
        self.encoder: Encoder = encoder or (lambda a, s: encode_lossless(a, s, level))
        self.dedupe = dedupe
        self.limits = limits
        self.index = Index(metadata=check_metadata(dict(metadata or {})))
        self._names: set[str] = set()
        self._hashes: dict[bytes, str] = {}
        self._shared: dict[int, tuple[int, SharedValue]] = {}  # id(value) -> (number, value)
        self._shared_values: list[SharedValue] = []
        self._shared_uses: list[int] = []
        self._shared_bytes = 0
        self.minor = 0  # raised to what the file uses (spec §8)
        self.raw_bytes = 0  # sum of decoded tensor sizes written
        self._out = AtomicFile(self.path)
        self._file: BinaryIO = self._out.file
        self._pos = 0
        self.state = "open"
        self._write(fmt.pack_preamble())

    # -- state ----------------------------------------------------------------------
    def _expect(self, state: str, action: str) -> None:
        if self.state != state:
            raise CmfError(f"cannot {action}: writer is {self.state}, expected {state}")

    def _write(self, data: Any) -> None:
        self._file.write(data)
        self._pos += memoryview(data).nbytes

    def _write_segment(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        pad = fmt.align(self._pos) - self._pos
        if pad:
            self._write(bytes(pad))
        seg = Segment(self._pos, len(view), crc32c(view))
        self._write(view)
        self.index.segments.append(seg)
        return len(self.index.segments) - 1

    def _commit_root(self, pending: Pending) -> Node:
        """Write the shared values a tree references that are not written yet, then the tree."""
        stack = [pending]
        while stack:
            p = stack.pop()
            if isinstance(p, PendingShared):
                self._shared_number(p.target)
            elif isinstance(p, PendingNode):
                stack.extend(reversed(list(p.parts.values())))
        return self._commit(pending)

    def _commit(self, pending: Pending) -> Node:
        """Write the leaves of a pending tree as segments; return the index tree.
        (:func:`_check_refs` has checked its shared references: nothing fails half-written.)"""
        if isinstance(pending, PendingLeaf):
            return Leaf(self._write_segment(pending.data), pending.spec)
        if isinstance(pending, PendingShared):
            number = self._shared_number(pending.target)
            self._shared_uses[number] += 1
            return SharedRef(number, pending.spec)
        self.minor = max(self.minor, pending.codec.since_minor)
        parts = {name: self._commit(child) for name, child in pending.parts.items()}
        return CodecNode(pending.codec, parts, pending.spec)

    def _shared_number(self, value: SharedValue) -> int:
        """The number of shared value ``value``, writing it first if it is new."""
        known = self._shared.get(id(value))
        if known is not None and known[1] is value:
            return known[0]
        if len(self.index.shared) >= self.limits.max_shared:
            raise CmfError(f"more than {self.limits.max_shared} shared values")
        if self._shared_bytes + value.spec.nbytes > self.limits.max_shared_bytes:
            raise CmfError(
                f"shared values would decode to more than {self.limits.max_shared_bytes} bytes"
            )
        if value.spec.nbytes > self.limits.max_tensor_bytes:
            raise CmfError(f"a shared value of {value.spec.nbytes} bytes is over the memory budget")
        _check_refs(value.encoding, in_shared=True)
        node = self._commit(value.encoding)
        self.index.shared.append(SharedEntry(value.spec, node))
        self._shared_bytes += value.spec.nbytes
        self._shared_values.append(value)
        self._shared_uses.append(0)
        number = len(self.index.shared) - 1
        self._shared[id(value)] = (number, value)  # the value is kept: ids are never reused
        self.minor = max(self.minor, SHARED_MINOR)
        return number

    def _claim(self, name: str) -> None:
        """Check a new tensor name (spec §3.2) and reserve it."""
        self._expect("open", "add a tensor")
        check_tensor_name(name, self.limits)
        if name in self._names:
            raise CmfError(f"duplicate tensor name {name!r}")
        self._names.add(name)

    def _append(self, entry: TensorEntry) -> TensorEntry:
        self.index.tensors.append(entry)
        self.raw_bytes += entry.spec.nbytes
        return entry

    # -- public ---------------------------------------------------------------------
    def add_tensor(
        self, name: str, array: np.ndarray, encoder: Encoder | None = None
    ) -> TensorEntry:
        """Encode and write one tensor. Identical tensors become aliases of the first.

        If the encoding is lossy, its measured error goes into the index entry.

        Args:
            name: the tensor's name (1 to 1024 bytes of UTF-8, no NUL), unique in the file.
            array: the values (any numpy array of a dtype cmf stores; stored little-endian,
                C order).
            encoder: this tensor's encoder instead of the writer's.

        Returns:
            The :class:`~cmf.index.TensorEntry` written (``alias`` set for a duplicate).

        Raises:
            CmfError: the writer is not open; the name is invalid or already used; the dtype is
                not one cmf stores or the rank is over the limit; the encoding's shared
                references do not fit (nothing is written then).

        Example:
            >>> import numpy as np, cmf
            >>> with cmf.Writer("model.cmf") as w:
            ...     entry = w.add_tensor("b", np.zeros(4, np.float16))
            >>> entry.name, entry.spec.shape
            ('b', (4,))
        """
        self._expect("open", "add a tensor")
        spec, array = tensor_array(name, array, self.limits)
        self._claim(name)
        key = tensor_key(array, spec) if self.dedupe else None
        if key is not None and key in self._hashes:
            return self._append(TensorEntry(name, spec, alias=self._hashes[key]))
        pending = (encoder or self.encoder)(array, spec)
        _check_root(name, pending, spec)
        return self._add_result(name, spec, pending, tensor_error(array, pending), key)

    def add_result(
        self,
        name: str,
        spec: ArraySpec,
        pending: Pending | None,
        error: dict[str, float] | None = None,
        key: bytes | None = None,
    ) -> TensorEntry:
        """Write a tensor encoded elsewhere (cmf.parallel: a worker ran :func:`tensor_array`,
        :func:`tensor_key`, the encoder and :func:`tensor_error`), exactly as :meth:`add_tensor`
        would have: an alias if ``key`` is an earlier tensor's (``pending`` may then be None)."""
        self._expect("open", "add a tensor")
        if len(spec.shape) > self.limits.max_rank:
            raise CmfError(
                f"tensor {name!r} has rank {len(spec.shape)}, limit {self.limits.max_rank}"
            )
        self._claim(name)
        if key is not None and self.dedupe and key in self._hashes:
            return self._append(TensorEntry(name, spec, alias=self._hashes[key]))
        if pending is None:
            raise CmfError(f"tensor {name!r}: no encoding given and no earlier identical tensor")
        _check_root(name, pending, spec)
        return self._add_result(name, spec, pending, error, key if self.dedupe else None)

    def _add_result(
        self, name: str, spec: ArraySpec, pending: Pending, error: dict | None, key: bytes | None
    ) -> TensorEntry:
        node = self._commit_root(pending)
        entry = self._append(TensorEntry(name, spec, encoding=node, error=error))
        if key is not None:  # only now: a tensor whose encoding failed is no alias target
            self._hashes[key] = name
        return entry

    def has_key(self, key: bytes) -> bool:
        """True if a tensor with dedupe digest ``key`` (:func:`tensor_key`) is written."""
        return key in self._hashes

    def add_shared(self, value: np.ndarray | SharedValue, encoding: Pending | None = None) -> int:
        """Write a shared value now (an array, encoded losslessly unless ``encoding`` is given,
        or a :class:`SharedValue`); return its number. ``shared_ref(number)`` makes the node
        that references it; a SharedValue may also be referenced before it is added."""
        self._expect("open", "add a shared value")
        if not isinstance(value, SharedValue):
            value = SharedValue(value, encoding, level=self.level)
        elif encoding is not None:
            raise CmfError("a SharedValue carries its own encoding")
        return self._shared_number(value)

    def shared_ref(self, number: int) -> PendingShared:
        """A pending node that stands for shared value ``number`` (from :meth:`add_shared`)."""
        if not 0 <= number < len(self._shared_values):
            raise CmfError(f"no shared value {number}; {len(self._shared_values)} were added")
        return shared_ref(self._shared_values[number])

    def add_encoded(
        self, name: str, spec: ArraySpec, pending: Pending, error: dict[str, float] | None = None
    ) -> TensorEntry:
        """Write a tensor that is already encoded (e.g. GGUF blocks kept as they are).

        No deduplication and no error measurement: ``error`` is recorded as given.

        Args:
            name: the tensor's name (1 to 1024 bytes of UTF-8, no NUL), unique in the file.
            spec: the decoded tensor's dtype and shape.
            pending: its encoding (a pending codec tree that decodes to ``spec``).
            error: the encoding's error statistics for the index entry, None if lossless.

        Returns:
            The :class:`~cmf.index.TensorEntry` written.

        Raises:
            CmfError: the writer is not open; the name is invalid or already used; a shared
                reference in ``pending`` does not stand for a part of its spec.

        Example:
            >>> import numpy as np, cmf
            >>> from cmf.pipeline import encode_lossless
            >>> from cmf.writer import tensor_array
            >>> spec, x = tensor_array("x", np.ones(8, np.float32))
            >>> with cmf.Writer("model.cmf") as w:
            ...     _ = w.add_encoded("x", spec, encode_lossless(x, spec))
        """
        self._expect("open", "add a tensor")
        _check_root(name, pending, spec)
        self._claim(name)
        node = self._commit_root(pending)
        return self._append(TensorEntry(name, spec, encoding=node, error=error))

    def add_attachment(self, name: str, data: bytes) -> None:
        """Carry a small file (config.json, tokenizer.json, ...) inside the cmf file.

        Args:
            name: the attachment's name (spec/format.md §3.3), unique among attachments.
            data: its bytes (``bytes``, ``bytearray`` or ``memoryview``); stored losslessly.

        Raises:
            CmfError: the writer is not open; the name is invalid or already used; ``data`` is
                not bytes or is over ``limits.max_attachment_bytes``.

        Example:
            >>> import cmf
            >>> with cmf.Writer("model.cmf") as w:
            ...     w.add_attachment("tokenizer.json", b'{"version": "1.0"}')
        """
        self._expect("open", "add an attachment")
        name = check_attachment_name(name)
        if any(a.name == name for a in self.index.attachments):
            raise CmfError(f"duplicate attachment name {name!r}")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise CmfError(f"attachment {name!r} must be bytes, found {type(data).__name__}")
        data = bytes(data)
        if len(data) > self.limits.max_attachment_bytes:
            raise CmfError(f"attachment {name!r} is over {self.limits.max_attachment_bytes} bytes")
        spec = BytesSpec(len(data))
        node = self._commit(best_bytes(data, spec, self.level))
        self.index.attachments.append(Attachment(name, len(data), node))

    def close(self) -> None:
        """Write index and trailer, then atomically replace the target.

        On any failure the temporary file is dropped (:meth:`abort`) and ``path`` is left as it
        was. ``with Writer(...)`` calls it on leaving the block without an exception.

        Raises:
            CmfError: the writer is not open; a shared value was added but never referenced;
                the index is over ``limits.max_index_bytes``.
            OSError: the file cannot be written or moved into place.

        Example:
            >>> import numpy as np, cmf
            >>> w = cmf.Writer("model.cmf")
            >>> _ = w.add_tensor("w", np.ones(3, np.float32))
            >>> w.close()
        """
        self._expect("open", "close")
        try:
            unused = [i for i, uses in enumerate(self._shared_uses) if not uses]
            if unused:  # spec §3.5: every shared value is referenced
                raise CmfError(f"shared values {unused} were added but no tree references them")
            pad = fmt.align(self._pos) - self._pos
            if pad:
                self._write(bytes(pad))
            index_offset = self._pos
            if self.minor:  # the preamble went out first: patch its minor version field
                self._file.seek(10)
                self._file.write(struct.pack("<H", self.minor))
                self._file.seek(0, os.SEEK_END)
            blob = pack(self.index)
            if len(blob) > self.limits.max_index_bytes:
                raise CmfError(f"index of {len(blob)} bytes exceeds {self.limits.max_index_bytes}")
            self._write(blob)
            self._write(fmt.pack_trailer(index_offset, len(blob), crc32c(blob)))
            self._out.commit()
        except BaseException:
            self.abort()
            raise
        self.state = "closed"

    def abort(self) -> None:
        """Drop the temporary file; the target is left as it was. Safe to call more than once.

        Example:
            >>> import numpy as np, cmf
            >>> w = cmf.Writer("draft.cmf")
            >>> w.abort()
            >>> w.state
            'aborted'
        """
        if self.state == "open":
            self.state = "aborted"
        self._out.discard()

    @property
    def stored_bytes(self) -> int:
        return self._pos

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            if self.state == "open":
                self.abort()
        elif self.state == "open":
            self.close()


def check_tensor_name(name: str, limits: Limits = DEFAULT_LIMITS) -> None:
    """CmfError unless ``name`` is a valid tensor name (spec §3.2)."""
    if (
        not isinstance(name, str)
        or not name
        or "\x00" in name
        or len(name.encode("utf-8", "surrogatepass")) > limits.max_name_bytes
    ):
        raise CmfError(f"bad tensor name {name!r}: 1 to 1024 bytes of UTF-8, no NUL")
    if any("\ud800" <= c <= "\udfff" for c in name):  # not encodable as UTF-8
        raise CmfError(f"bad tensor name {name!r}: a lone surrogate is not UTF-8")


def tensor_array(
    name: str, array: np.ndarray, limits: Limits = DEFAULT_LIMITS
) -> tuple[ArraySpec, np.ndarray]:
    """(spec, the array as stored: little-endian, C order); CmfError if its rank is too high."""
    array = np.asarray(array)
    spec = ArraySpec(dtypes.of_array(array), tuple(int(d) for d in array.shape))
    if len(spec.shape) > limits.max_rank:
        raise CmfError(f"tensor {name!r} has rank {len(spec.shape)}, limit {limits.max_rank}")
    array = np.ascontiguousarray(array, dtype=spec.dtype.numpy)  # little-endian, C order
    return spec, array.reshape(spec.shape)  # ascontiguousarray makes a 0-d array 1-d


def tensor_key(array: np.ndarray, spec: ArraySpec) -> bytes:
    """The dedupe digest of a stored array (tensor_array): equal digests => identical tensors."""
    digest = hashlib.blake2b(array.reshape(-1).view(np.uint8), digest_size=32)
    digest.update(f"|{spec.dtype.name}|{spec.shape}".encode())
    return digest.digest()


def tensor_error(array: np.ndarray, pending: Pending) -> dict[str, float] | None:
    """The error a lossy encoding introduces (recorded in the index), None if lossless."""
    return error_stats(array, decode_pending(pending)) if is_lossy(pending) else None


def _check_root(name: str, pending: Pending, spec: ArraySpec) -> None:
    if isinstance(pending, PendingShared) and pending.spec != spec:
        raise CmfError(
            f"tensor {name!r} is {spec.describe()}; "
            f"a shared {pending.spec.describe()} cannot stand for it"
        )
    _check_refs(pending)


def _check_refs(pending: Pending, in_shared: bool = False) -> None:
    """Every shared reference in ``pending`` stands for a part of its own spec (spec §5) and
    none is inside a shared value's encoding; CmfError before anything is written otherwise."""
    if isinstance(pending, PendingShared):
        if in_shared:
            raise CmfError("a shared value's encoding must not reference a shared value")
        return
    if isinstance(pending, PendingLeaf):
        return
    if isinstance(pending, PendingCounted):
        raise CmfError(
            "internal error: an encoding whose bytes were only counted (a planner curve point) "
            "cannot be written"
        )
    shared = [n for n, c in pending.parts.items() if isinstance(c, PendingShared)]
    resolved = pending.codec.resolve(pending.spec) if shared else {}
    for name, child in pending.parts.items():
        if name in shared and resolved.get(name) != child.spec:
            found = resolved[name].describe() if name in resolved else "not a part"
            raise CmfError(
                f"codec {pending.codec.name!r} part {name!r} is {found}; "
                f"a shared {child.spec.describe()} cannot stand for it"
            )
        _check_refs(child, in_shared)
