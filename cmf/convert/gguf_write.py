"""Write a GGUF file (spec/converters.md § GGUF out): header, then tensors one at a time.

Contract:

- :class:`GGUFOut` describes a whole file (key/values as type + exact value bytes, tensors
  with a producer of their bytes, alignment, and the optional layout of a packed GGUF: data
  offsets, non-zero padding, file size); :func:`check_out` refuses an inconsistent one.
- :func:`write_gguf_file` streams it to ``path`` atomically (a temp file beside it, renamed at the
  end): tensors are produced on ``THREADS`` threads while one is written, the next one always
  and up to ``AHEAD`` of them while they hold at most ``AHEAD_BYTES``, so memory is two
  tensors' bytes or ``AHEAD_BYTES``, whichever is more (a big tensor decoding on one thread
  leaves the small ones after it to the other); the first ones start before the key/values are
  encoded (``kvs`` may be a function giving them). Any CmfError leaves no output.

Which file a .cmf becomes is cmf.convert.gguf_export's choice (``write_gguf``).
"""

from __future__ import annotations

import os
import struct
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..atomic import AtomicFile
from ..errors import CmfError
from .gguf_kv import TYPES, aligned, gguf_nbytes, string_bytes, tensor_info

MAX_FILL = 1 << 20  # non-zero padding bytes a layout may carry
MAX_PADDING = 64 << 20  # zero padding beyond the tensors' own bytes
_CHUNK = 1 << 20
AHEAD = 64  # tensors decoded ahead of the one being written while they hold
AHEAD_BYTES = 64 << 20  # at most this many bytes (one ahead always: memory is 2 tensors or this)
THREADS = 2  # threads producing them (at most AHEAD)
SYNC_BEHIND = 4 << 20  # bytes written between two AtomicFile.sync_behind calls


@dataclass
class TensorOut:
    name: str
    dims: list[int]  # GGUF order: fastest first
    ggml_type: str
    data: Callable[[], Any]  # -> a bytes-like object of exactly nbytes
    nbytes: int = 0


@dataclass
class GGUFOut:
    version: int
    order: str  # "<" or ">"
    # key, value type name, value bytes; or a function giving them (called by write_gguf_file
    # while the first tensors decode; a CmfError from it leaves no output)
    kvs: list[tuple[str, str, bytes]] | Callable[[], list[tuple[str, str, bytes]]]
    tensors: list[TensorOut]
    alignment: int = 32
    offsets: list[int] | None = None  # relative to the data start; None: canonical
    fill: list[tuple[int, bytes]] = field(default_factory=list)  # absolute offset, bytes
    size: int | None = None  # None: canonical (the last tensor padded to the alignment)


def header_bytes(out: GGUFOut, offsets: list[int]) -> bytes:
    """Magic, version, counts, key/values and tensor infos (no padding); ``out.kvs`` is
    resolved (a function giving them is called and replaced by its list)."""
    o = out.order
    if callable(out.kvs):
        out.kvs = out.kvs()
    chunks = [b"GGUF", struct.pack(o + "IQQ", out.version, len(out.tensors), len(out.kvs))]
    for key, type_name, value in out.kvs:
        chunks += [
            string_bytes(key, f"GGUF key {key!r}", o),
            struct.pack(o + "I", TYPES[type_name][0]),
            value,
        ]
    import gguf

    for t, off in zip(out.tensors, offsets, strict=True):
        chunks.append(
            tensor_info(t.name, t.dims, int(gguf.GGMLQuantizationType[t.ggml_type]), off, o)
        )
    return b"".join(chunks)


def canonical_offsets(sizes: list[int], alignment: int) -> list[int]:
    """Each tensor at the end of the previous one rounded up to ``alignment``."""
    offsets, at = [], 0
    for n in sizes:
        offsets.append(at)
        at = aligned(at + n, alignment)
    return offsets


def check_out(out: GGUFOut) -> list[int]:
    """The data offsets ``out`` uses; CmfError for anything a GGUF cannot hold or that would
    not fit the bounds (spec/converters.md § GGUF out)."""
    if out.version not in (2, 3):
        raise CmfError(f"GGUF version {out.version!r}: only 2 and 3 can be written")
    a = out.alignment
    if not isinstance(a, int) or a <= 0 or a & (a - 1) or a >= 1 << 32:
        raise CmfError(f"GGUF alignment {a!r} is not a power of two below 2^32")
    seen: set[str] = set()
    for t in out.tensors:
        if t.name in seen:
            raise CmfError(f"tensor {t.name!r} appears twice")
        seen.add(t.name)
        if not 1 <= len(t.dims) <= 4 or any(not isinstance(d, int) or d < 0 for d in t.dims):
            raise CmfError(
                f"tensor {t.name!r}: GGUF holds 1 to 4 non-negative dimensions, found {t.dims}"
            )
        t.nbytes = gguf_nbytes(t.ggml_type, t.dims)
    sizes = [t.nbytes for t in out.tensors]
    offsets = canonical_offsets(sizes, a) if out.offsets is None else list(out.offsets)
    if len(offsets) != len(sizes):
        raise CmfError(f"{len(offsets)} tensor offsets for {len(sizes)} tensors")
    end = 0
    for t, off in zip(out.tensors, offsets, strict=True):
        if not isinstance(off, int) or isinstance(off, bool) or off < end or off % a:
            raise CmfError(
                f"tensor {t.name!r}: offset {off!r} is not an aligned offset at or "
                f"after {end} (the end of the previous tensor)"
            )
        end = off + t.nbytes
    padding = end - sum(sizes)
    if padding > MAX_PADDING + sum(sizes):
        raise CmfError(
            f"the layout puts {padding} bytes of padding between tensors; at most "
            f"{MAX_PADDING} beyond the tensors' size are written"
        )
    at, total = -1, 0
    for item in out.fill:
        pos, data = item
        if not isinstance(pos, int) or pos < at or not data:
            raise CmfError("padding bytes (fill) are not in increasing, non-overlapping order")
        at, total = pos + len(data), total + len(data)
    if total > MAX_FILL:
        raise CmfError(f"{total} bytes of non-zero padding, more than {MAX_FILL}")
    return offsets


class _Sink:
    """Sequential output with zero gaps overlaid by ``fill``."""

    def __init__(self, file: Any, fill: list[tuple[int, bytes]]) -> None:
        self.file, self.fill, self.pos = file, list(fill), 0

    def write(self, data: Any) -> None:
        if self.fill and self.fill[0][0] < self.pos + len(memoryview(data).cast("B")):
            raise CmfError(
                f"padding bytes (fill) at offset {self.fill[0][0]} lie inside the header "
                "or a tensor"
            )
        self.file.write(data)
        self.pos += len(memoryview(data).cast("B"))

    def gap(self, end: int) -> None:
        """Zeros (and fill) up to ``end``."""
        if end < self.pos:
            raise CmfError(f"the layout goes back from offset {self.pos} to {end}")
        while self.pos < end:
            if self.fill and self.fill[0][0] < end:
                pos, data = self.fill[0]
                if pos < self.pos or pos + len(data) > end:
                    raise CmfError(
                        f"padding bytes (fill) at offset {pos} leave the padding {self.pos}..{end}"
                    )
                self.file.write(bytes(pos - self.pos))
                self.file.write(data)
                self.pos = pos + len(data)
                self.fill.pop(0)
            else:
                n = min(end - self.pos, _CHUNK)
                self.file.write(bytes(n))
                self.pos += n


def write_gguf_file(
    path: str | os.PathLike, out: GGUFOut, progress: Callable[[str], None] | None = None
) -> None:
    """Write ``out`` to ``path`` atomically, one tensor at a time (see the module docstring)."""
    offsets = check_out(out)
    tensors = out.tensors
    with AtomicFile(path) as target, ThreadPoolExecutor(max(1, min(AHEAD, THREADS))) as pool:
        queued: deque = deque()  # futures of tensors i, i + 1, ... in order
        held = [0, 0]  # bytes of tensors i .. k - 1 (queued or being written), k

        def ahead(i: int) -> None:
            """Queue the tensors after ``i`` that the bounds allow (see the module docstring)."""
            k = held[1]
            while k < len(tensors) and (
                k <= i + 1 or (k <= i + AHEAD and held[0] + tensors[k].nbytes <= AHEAD_BYTES)
            ):
                queued.append(pool.submit(tensors[k].data))
                held[0] += tensors[k].nbytes
                k += 1
            held[1] = k

        try:
            ahead(0)  # decoding while the header is made
            header = header_bytes(out, offsets)
            data_start = aligned(len(header), out.alignment)
            size = _file_size(out, offsets, len(header), data_start)
            sink = _Sink(target.file, out.fill)
            sink.write(header)
            synced = 0
            for i, (t, off) in enumerate(zip(tensors, offsets, strict=True)):
                sink.gap(data_start + off)
                ahead(i)
                data = queued.popleft().result()
                n = len(memoryview(data).cast("B"))
                if n != t.nbytes:
                    raise CmfError(
                        f"tensor {t.name!r}: {n} bytes for {t.ggml_type} {t.dims}, "
                        f"{t.nbytes} expected"
                    )
                sink.write(data)
                held[0] -= t.nbytes
                del data
                if sink.pos >= synced + SYNC_BEHIND:  # the disk writes while we decode
                    target.sync_behind()
                    synced = sink.pos
                if progress is not None:
                    progress(t.name)
        except BaseException:
            for job in queued:
                job.cancel()
            raise
        sink.gap(size)
        if sink.fill:
            raise CmfError(
                f"padding bytes (fill) at offset {sink.fill[0][0]} lie past the end of the file"
            )


def _file_size(out: GGUFOut, offsets: list[int], header: int, data_start: int) -> int:
    """The size of the file ``out`` describes (header ``header`` bytes long, data from
    ``data_start``); CmfError if a recorded size is short of its tensors or pads too much."""
    tensors_end = data_start + (offsets[-1] + out.tensors[-1].nbytes if out.tensors else 0)
    size = aligned(tensors_end, out.alignment) if out.size is None else out.size
    if not isinstance(size, int) or size < max(header, tensors_end if out.tensors else 0):
        raise CmfError(
            f"the recorded GGUF size {size!r} is short of its header and tensors "
            f"({tensors_end} bytes)"
        )
    if size - tensors_end > MAX_PADDING:
        raise CmfError(
            f"the recorded GGUF size {size} leaves {size - tensors_end} bytes after "
            f"the tensors; at most {MAX_PADDING} are written"
        )
    return size
