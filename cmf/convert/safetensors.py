"""safetensors in and out: read tensor by tensor (positioned reads), write streaming, atomically."""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import numpy as np

from ..atomic import AtomicFile
from ..codecs import ArraySpec
from ..dtypes import BY_NAME
from ..errors import CmfError

# cmf dtype name <-> safetensors dtype string
_ST_NAMES = {
    "f64": "F64",
    "f32": "F32",
    "f16": "F16",
    "bf16": "BF16",
    "f8_e4m3": "F8_E4M3",
    "f8_e5m2": "F8_E5M2",
    "i8": "I8",
    "i16": "I16",
    "i32": "I32",
    "i64": "I64",
    "u8": "U8",
    "u16": "U16",
    "u32": "U32",
    "u64": "U64",
    "bool": "BOOL",
}
_BY_ST = {st: BY_NAME[name] for name, st in _ST_NAMES.items()}  # .numpy: bf16/fp8 made on use


class SafetensorsSource:
    """A safetensors file opened for reading one tensor at a time.

    ``safe_open`` checks the header (names, dtypes, shapes, offsets inside the file); each tensor
    is then read with one positioned read into a fresh array, nothing else kept. Memory is one
    tensor: no mapping of the file grows the process's resident set as the model is read, so
    packing a model larger than RAM works (tests/convert/test_shards_memory.py measures it).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        from safetensors import SafetensorError, safe_open

        self.path = os.fspath(path)
        try:
            with safe_open(self.path, framework="numpy") as handle:
                self._names = list(handle.keys())
                self.metadata: dict[str, str] = dict(handle.metadata() or {})
            with open(self.path, "rb") as fh:  # the header safe_open has just checked
                (n,) = struct.unpack("<Q", fh.read(8))
                self._header: dict[str, Any] = json.loads(fh.read(n))
            self._start = 8 + n
        except (SafetensorError, OSError, ValueError, struct.error) as exc:
            raise CmfError(f"{self.path}: not a readable safetensors file ({exc})") from None
        self.attachments: dict[str, bytes] = {}

    def _get(self, name: str, fh: BinaryIO | None = None) -> np.ndarray:
        """Tensor ``name`` read from ``fh`` (this file, opened by the caller) or a fresh handle."""
        if fh is None:
            with open(self.path, "rb", buffering=0) as own:
                return self._get(name, own)
        info = self._header[name]
        found = _BY_ST.get(info["dtype"])
        dtype = found.numpy if found is not None else None
        if dtype is None:
            raise CmfError(f"dtype {info['dtype']} is not one cmf stores")  # items() adds the name
        shape = tuple(int(d) for d in info["shape"])
        begin, end = (int(x) for x in info["data_offsets"])
        if end - begin != math.prod(shape) * dtype.itemsize:
            raise CmfError(f"{end - begin} bytes for shape {list(shape)} of {info['dtype']}")
        array = np.empty(shape, dtype)
        view = memoryview(array.reshape(-1).view(np.uint8))
        fh.seek(self._start + begin)
        done = 0
        while done < len(view):  # one read returns at most about 2 GiB on Linux
            got = fh.readinto(view[done:])
            if not got:
                raise CmfError("file ends inside the tensor's data")
            done += got
        return array

    def __len__(self) -> int:
        return len(self._names)

    def names(self) -> list[str]:
        return list(self._names)

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        with open(self.path, "rb", buffering=0) as fh:
            for name in self._names:
                try:
                    array = self._get(name, fh)
                except (CmfError, OSError, ValueError, TypeError, KeyError) as exc:
                    raise CmfError(f"{self.path}: cannot read tensor {name!r} ({exc})") from None
                yield name, array


def write_safetensors(
    path: str | os.PathLike,
    specs: list[tuple[str, ArraySpec]],
    get: Callable[[str], np.ndarray],
    metadata: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Write tensors to a safetensors file, fetching each with ``get(name)`` as it is written.

    The header is computed from ``specs`` first, so memory stays at one tensor.
    """
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {
            k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()
        }
    offset = 0
    for name, spec in specs:
        header[name] = {
            "dtype": _ST_NAMES[spec.dtype.name],
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with AtomicFile(path) as out:
        out.file.write(struct.pack("<Q", len(blob)) + blob)
        for name, spec in specs:
            array = np.asarray(get(name), dtype=spec.dtype.numpy)  # ascontiguousarray makes 0-d 1-d
            if array.shape != spec.shape:
                raise CmfError(f"tensor {name!r} has shape {array.shape}, {spec.shape} expected")
            out.file.write(memoryview(np.ascontiguousarray(array.reshape(-1)).view(np.uint8)))
            if progress:
                progress(name)
