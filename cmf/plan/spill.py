"""The rounds' kept encodings, held in a temporary file instead of memory.

The rounds keep the encodings of up to two allocations (the current and the best so far), and the
chosen one is written at the end: for a 1 B-parameter model that is 0.8 GB per allocation, for
SmolLM2-135M ~95 MB. :class:`EncodingStore` writes each encoding's segment bytes to an unnamed
temporary file as it arrives and keeps the tree with :class:`SpilledLeaf` leaves, which read their
bytes back when a run decodes the tensor or the writer writes it: one leaf in memory at a time.
The bytes read back are the bytes written, so the file is the same.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Hashable, Iterator

from ..codecs import BytesSpec
from ..errors import CmfError
from ..pipeline import Pending, PendingLeaf, PendingNode, leaf_bytes

_CHUNK = 1 << 30  # pread/pwrite move at most this many bytes a call


class SpilledLeaf(PendingLeaf):
    """A leaf whose bytes wait in ``store``'s file: ``data`` reads them back at each use (the
    writer and :func:`cmf.pipeline.decode_pending` take it as any leaf), ``stored`` is their
    length without reading them."""

    def __init__(
        self, store: EncodingStore, offset: int, length: int, spec: BytesSpec, serial: int
    ) -> None:
        object.__setattr__(self, "spec", spec)
        object.__setattr__(self, "place", (store, offset, length, serial))

    @property  # type: ignore[override]
    def data(self) -> bytes:  # type: ignore[override]
        store, offset, length, serial = self.place  # type: ignore[attr-defined]
        return store.read(offset, length, serial)

    @property
    def stored(self) -> int:
        return self.place[2]  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"SpilledLeaf(offset={self.place[1]}, stored={self.place[2]})"  # type: ignore[attr-defined]

    __eq__ = object.__eq__
    __hash__ = object.__hash__


class EncodingStore:
    """A mapping key -> pending tree whose leaves live in a temporary file (deleted when the store
    is closed or collected). Setting a key spills the tree's leaves and keeps the skeleton;
    getting it returns the skeleton (``stored`` is exact; its leaves read their bytes on use).
    The space of deleted entries is reused (first fit), so the file stays about as big as the
    entries held at once."""

    def __init__(self, directory: str | None = None) -> None:
        self._directory = directory
        self._file: tempfile._TemporaryFileWrapper | None = None  # made at the first spill
        self._entries: dict[Hashable, Pending] = {}
        self._extents: dict[Hashable, list[tuple[int, int]]] = {}
        self._free: list[tuple[int, int]] = []  # (offset, length), sorted by offset
        self._end = 0
        self._live: dict[int, int] = {}  # offset -> serial of the leaf held there
        self._serial = 0

    # -- mapping
    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __getitem__(self, key: Hashable) -> Pending:
        return self._entries[key]

    def __setitem__(self, key: Hashable, pending: Pending) -> None:
        if key in self._entries:
            del self[key]
        extents: list[tuple[int, int]] = []
        self._entries[key] = self._spill(pending, extents)
        self._extents[key] = extents

    def __delitem__(self, key: Hashable) -> None:
        del self._entries[key]
        for extent in self._extents.pop(key):
            self._live.pop(extent[0], None)
            self._release(extent)

    def __iter__(self) -> Iterator[Hashable]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def file_bytes(self) -> int:
        """How big the temporary file is (bytes held plus free space between them)."""
        return self._end

    def close(self) -> None:
        """Delete the file; skeletons handed out can no longer be read."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._entries.clear()
        self._extents.clear()
        self._free.clear()
        self._live.clear()
        self._end = 0

    # -- bytes
    def read(self, offset: int, length: int, serial: int) -> bytes:
        """The bytes of one spilled leaf, exactly as they were given."""
        if length == 0:
            return b""
        if self._file is None:
            raise CmfError("the planner's encodings were read after their store was closed")
        if self._live.get(offset) != serial:
            raise CmfError("the planner read an encoding it had already dropped (a bug)")
        fd = self._file.fileno()
        pieces = []
        done = 0
        while done < length:
            piece = os.pread(fd, min(_CHUNK, length - done), offset + done)
            if not piece:
                raise CmfError("the planner's temporary file of encodings came back short")
            pieces.append(piece)
            done += len(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _spill(self, p: Pending, extents: list[tuple[int, int]]) -> Pending:
        if isinstance(p, PendingLeaf):
            view = leaf_bytes(p.data)
            offset = self._allocate(len(view))
            extents.append((offset, len(view)))
            self._write(view, offset)
            self._serial += 1
            if len(view):
                self._live[offset] = self._serial
            return SpilledLeaf(self, offset, len(view), p.spec, self._serial)
        if isinstance(p, PendingNode):
            parts = {n: self._spill(c, extents) for n, c in p.parts.items()}
            return PendingNode(p.codec, parts, p.spec)
        return p  # shared references and counted parts stay in memory as they are

    def _write(self, view: memoryview, offset: int) -> None:
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="cmf-plan-", dir=self._directory)
        fd = self._file.fileno()
        done = 0
        while done < len(view):
            done += os.pwrite(fd, view[done : done + _CHUNK], offset + done)

    def _allocate(self, length: int) -> int:
        for i, (offset, free) in enumerate(self._free):
            if free >= length:
                if free == length:
                    del self._free[i]
                else:
                    self._free[i] = (offset + length, free - length)
                return offset
        offset = self._end
        self._end += length
        return offset

    def _release(self, extent: tuple[int, int]) -> None:
        if extent[1] == 0:
            return
        free = sorted([*self._free, extent])
        merged: list[tuple[int, int]] = []
        for offset, length in free:  # adjacent free extents become one
            if merged and merged[-1][0] + merged[-1][1] == offset:
                merged[-1] = (merged[-1][0], merged[-1][1] + length)
            else:
                merged.append((offset, length))
        if merged and merged[-1][0] + merged[-1][1] == self._end:  # free space at the end: drop it
            self._end = merged.pop()[0]
            if self._file is not None:
                os.ftruncate(self._file.fileno(), self._end)
        self._free = merged
