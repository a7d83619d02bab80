"""Lazy, hostile-input reader: one bounded read primitive over an mmap (spec/format.md).

``CmfFile`` checks the preamble, trailer, index CRC and the whole index structure at open;
``get_tensor`` reads and CRC-checks only that tensor's segments, and decodes a shared value
(spec §3.5) the first time a tensor references it, keeping it read-only for later tensors.
"""

from __future__ import annotations

import mmap
import os
import stat
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from . import format as fmt
from .checksum import crc32c
from .codecs import ArraySpec
from .errors import ChecksumError, CmfError, FormatError, LimitError, UnsupportedError
from .index import (
    Index,
    Node,
    Problems,
    SharedEntry,
    SharedRef,
    TensorEntry,
    iter_leaves,
    parse_index,
    unpack,
)
from .limits import DEFAULT_LIMITS, Limits
from .pipeline import decode


class CmfFile:
    """An open ``.cmf`` file. Use as a context manager, or call :meth:`close`.

    Thread-safe for concurrent reads (``get_tensor`` only reads the mapping).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        limits: Limits = DEFAULT_LIMITS,
        problems: Problems | None = None,
        follow_symlinks: bool = True,
    ) -> None:
        self.path = os.fspath(path)
        self.limits = limits
        self.problems = problems or Problems()
        self._mm: mmap.mmap | None = None
        self._shared_cache: dict[int, np.ndarray | CmfError] = {}
        self._shared_lock = threading.Lock()
        self._owners: dict[int, list[str]] | None = None
        try:
            flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)  # a FIFO won't hang
            if not follow_symlinks:  # shards of a sharded set (spec/sharding.md §1)
                flags |= getattr(os, "O_NOFOLLOW", 0)
            fd = os.open(self.path, flags)
        except OSError as exc:
            raise CmfError(f"cannot open {self.path}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            self.size = st.st_size
            if not stat.S_ISREG(st.st_mode):
                raise FormatError(f"{self.path} is not a regular file")
            if self.size < fmt.MIN_FILE_SIZE:
                raise FormatError(
                    f"file is {self.size} bytes; a cmf file has at least {fmt.MIN_FILE_SIZE}"
                )
            self._mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        except OSError as exc:
            raise CmfError(f"cannot map {self.path}: {exc}") from None
        finally:
            os.close(fd)
        try:
            self.minor = self._check_preamble()
            self.index_offset, self.index_length = self._check_trailer()
            self.index: Index = self._read_index()
        except BaseException:
            self.close()
            raise
        self._entries = {t.name: t for t in self.index.tensors}
        self._attachments = {a.name: a for a in self.index.attachments}

    # -- the one bounded read primitive ------------------------------------------------
    def _read(self, offset: int, length: int) -> memoryview:
        if self._mm is None:
            raise CmfError("file is closed")
        if offset < 0 or length < 0 or offset + length > self.size:
            raise FormatError(
                f"read of {length} bytes at {offset} is outside the {self.size}-byte file"
            )
        return memoryview(self._mm)[offset : offset + length]

    def _check_preamble(self) -> int:
        magic, major, minor, flags = fmt.PREAMBLE.unpack(self._read(0, fmt.PREAMBLE.size))
        if magic != fmt.MAGIC:
            raise FormatError(f"not a cmf file: magic is {bytes(magic)!r}, expected {fmt.MAGIC!r}")
        if major != fmt.MAJOR:
            raise UnsupportedError(
                f"cmf major version {major} is not supported (this reader reads {fmt.MAJOR}.x)"
            )
        if flags != 0:
            raise UnsupportedError(f"preamble flags {flags:#x} are not supported (expected 0)")
        return minor

    def _check_trailer(self) -> tuple[int, int]:
        start = self.size - fmt.TRAILER_SIZE
        off, length, crc, reserved, magic = fmt.TRAILER.unpack(self._read(start, fmt.TRAILER_SIZE))
        if magic != fmt.TRAILER_MAGIC:
            raise FormatError(
                f"trailer magic is {bytes(magic)!r}, expected {fmt.TRAILER_MAGIC!r} "
                "(truncated or not a cmf file)"
            )
        if reserved != 0:
            raise FormatError(f"trailer reserved field is {reserved}, expected 0")
        if off % fmt.ALIGN or off < fmt.DATA_START:
            raise FormatError(f"index offset {off} is not a multiple of 64 at or after 64")
        if not 1 <= length <= self.limits.max_index_bytes:
            raise LimitError(f"index length {length} is outside [1, {self.limits.max_index_bytes}]")
        if off + length + fmt.TRAILER_SIZE != self.size:
            raise FormatError(
                f"index at {off} of {length} bytes plus the trailer gives "
                f"{off + length + fmt.TRAILER_SIZE} bytes, but the file has {self.size}"
            )
        self._index_crc = crc
        return off, length

    def _read_index(self) -> Index:
        raw = self._read(self.index_offset, self.index_length)
        actual = crc32c(raw)
        if actual != self._index_crc:
            raise ChecksumError(
                f"index CRC-32C is {actual:#010x}, trailer says {self._index_crc:#010x}"
            )
        return parse_index(unpack(raw, self.limits), self.limits, self.index_offset, self.problems)

    # -- segments -------------------------------------------------------------------
    def segment(self, i: int) -> memoryview:
        """Segment ``i``'s bytes (a view into the mapping), CRC-checked."""
        seg = self.index.segments[i]
        data = self._read(seg.offset, seg.length)
        actual = crc32c(data)
        if actual != seg.crc32c:
            owners = self.segment_owners(i)
            err = ChecksumError(
                f"segment {i} CRC-32C is {actual:#010x}, index says {seg.crc32c:#010x}: damaged "
                f"{', '.join(owners) or 'data nothing uses'} in {self.path}"
            )
            err.segment, err.owners, err.path = i, owners, self.path
            raise err
        return data

    def segment_owners(self, i: int) -> list[str]:
        """What segment ``i`` holds data of: ``tensor 'name'`` (its aliases too),
        ``attachment 'name'``, ``shared value k of tensor 'a', ...`` (names as Python reprs:
        control characters from the file escaped)."""
        if self._owners is None:
            owners: dict[int, list[str]] = {}
            users: dict[int, list[str]] = {}  # shared value -> tensors referencing it
            aliases: dict[str, list[str]] = {}
            for t in self.index.tensors:
                if t.alias is not None:
                    aliases.setdefault(t.alias, []).append(t.name)
            for t in self.index.tensors:
                if t.encoding is None:
                    continue
                names = ", ".join(repr(n) for n in [t.name, *aliases.get(t.name, ())])
                for leaf in iter_leaves(t.encoding):
                    owners.setdefault(leaf.segment, []).append(f"tensor {names}")
                for ref in _shared_refs(t.encoding):
                    users.setdefault(ref, []).append(repr(t.name))
            for a in self.index.attachments:
                for leaf in iter_leaves(a.encoding):
                    owners.setdefault(leaf.segment, []).append(f"attachment {a.name!r}")
            for k, entry in enumerate(self.index.shared):
                if entry is None:
                    continue
                used = users.get(k, [])
                by = (
                    f" of tensor {', '.join(used[:3])}{' ...' if len(used) > 3 else ''}"
                    if used
                    else ""
                )
                for leaf in iter_leaves(entry.encoding):
                    owners.setdefault(leaf.segment, []).append(f"shared value {k}{by}")
            self._owners = owners
        return list(dict.fromkeys(self._owners.get(i, [])))

    def decode_node(self, node: Node, out: np.ndarray | None = None) -> Any:
        return decode(node, self.segment, self.limits, self.shared_value, out=out)

    def shared_value(self, i: int) -> np.ndarray:
        """Shared value ``i``, decoded once and kept (read-only; the index bounds their total
        size by ``limits.max_shared_bytes``). A failure is kept too and raised again."""
        with self._shared_lock:
            got = self._shared_cache.get(i)
            if got is None:
                got = self._decode_shared(i, self.index.shared[i])
                self._shared_cache[i] = got
        if isinstance(got, CmfError):
            raise type(got)(str(got))
        return got

    def _decode_shared(self, i: int, entry: SharedEntry | None) -> np.ndarray | CmfError:
        if entry is None:
            return FormatError(f"shared value {i} is invalid")
        try:
            # no shared refs inside; serial: this runs under _shared_lock, maybe on a thread of
            # the pipeline's "parts" pool, and must not wait on that pool
            value = decode(entry.encoding, self.segment, self.limits, parallel=False)
        except CmfError as exc:
            return type(exc)(f"shared value {i}: {exc}")
        value = np.array(value, copy=True)  # own memory, never a view of the mapping
        value.setflags(write=False)
        return value

    # -- safetensors-like API ---------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def metadata(self) -> dict[str, Any]:
        return dict(self.index.metadata)

    def entry(self, name: str) -> TensorEntry:
        try:
            return self._entries[name]
        except KeyError:
            raise CmfError(f"no tensor named {name!r} in {self.path}") from None

    def spec(self, name: str) -> ArraySpec:
        return self.entry(name).spec

    def get_tensor(self, name: str, out: np.ndarray | None = None) -> np.ndarray:
        """Decode tensor ``name`` into a new writable array (its original dtype and shape), or
        into ``out`` (returned): a writable C-contiguous array of that dtype and shape."""
        entry = self.entry(name)
        if entry.alias is not None:
            entry = self._entries[entry.alias]
        if out is not None:
            check_out(name, entry.spec, out)
            return self.decode_node(entry.encoding, out)
        array = self.decode_node(entry.encoding)
        root = array
        while isinstance(root, np.ndarray) and root.base is not None:
            root = root.base  # a decoder's fresh array seen through .view()/.reshape() is fine
        if not (
            array.flags.writeable
            and isinstance(root, np.ndarray)
            and root.flags.owndata
            and root.nbytes == array.nbytes
        ):
            array = array.copy()  # never hand out views of the mapping or of immutable bytes
        return array

    def attachments(self) -> list[str]:
        return list(self._attachments)

    def get_attachment(self, name: str) -> bytes:
        try:
            att = self._attachments[name]
        except KeyError:
            raise CmfError(f"no attachment named {name!r} in {self.path}") from None
        return bytes(self.decode_node(att.encoding))

    def close(self) -> None:
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                pass  # views still exported; the mapping is freed when they go
            self._mm = None

    def __enter__(self) -> CmfFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def check_out(name: str, spec: ArraySpec, out: Any) -> None:
    """CmfError unless ``out`` can receive tensor ``name`` of ``spec``: a writable C-contiguous
    numpy array of its dtype and shape."""
    if not (
        isinstance(out, np.ndarray)
        and out.dtype == spec.dtype.numpy
        and out.shape == spec.shape
        and out.flags.writeable
        and out.flags.c_contiguous
    ):
        found = (
            f"{'a writable' if out.flags.writeable else 'a read-only'} "
            f"{'C-contiguous' if out.flags.c_contiguous else 'strided'} {out.dtype}"
            f"{list(out.shape)} array"
            if isinstance(out, np.ndarray)
            else type(out).__name__
        )
        raise CmfError(
            f"tensor {name!r} is {spec.describe()}: out must be a writable C-contiguous array "
            f"of that dtype and shape, found {found}"
        )


def _shared_refs(node: Node) -> Iterator[int]:
    """The shared values ``node``'s tree references."""
    if isinstance(node, SharedRef):
        yield node.index
    for child in getattr(node, "parts", {}).values():
        yield from _shared_refs(child)
