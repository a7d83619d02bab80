"""safetensors in and out: read tensor by tensor (mmap), write streaming and atomically."""

from __future__ import annotations

import json
import os
import struct
from typing import Any, Callable, Iterator

import numpy as np

from ..atomic import AtomicFile
from ..codecs import ArraySpec
from ..dtypes import BY_NAME
from ..errors import CmfError

# cmf dtype name <-> safetensors dtype string
_ST_NAMES = {
    "f64": "F64", "f32": "F32", "f16": "F16", "bf16": "BF16",
    "f8_e4m3": "F8_E4M3", "f8_e5m2": "F8_E5M2",
    "i8": "I8", "i16": "I16", "i32": "I32", "i64": "I64",
    "u8": "U8", "u16": "U16", "u32": "U32", "u64": "U64", "bool": "BOOL",
}
# safetensors' numpy reader cannot make fp8 arrays (numpy has no such attribute; safetensors#682)
_FP8 = {"F8_E4M3": BY_NAME["f8_e4m3"].numpy, "F8_E5M2": BY_NAME["f8_e5m2"].numpy}


class SafetensorsSource:
    """A safetensors file opened for reading one tensor at a time."""

    def __init__(self, path: str | os.PathLike) -> None:
        from safetensors import SafetensorError, safe_open

        self.path = os.fspath(path)
        self._error = SafetensorError
        try:
            self._handle = safe_open(self.path, framework="numpy")
            self._names = list(self._handle.keys())
            self.metadata: dict[str, str] = dict(self._handle.metadata() or {})
        except (SafetensorError, OSError, ValueError) as exc:
            raise CmfError(f"{self.path}: not a readable safetensors file ({exc})") from None
        self.attachments: dict[str, bytes] = {}
        self._header: tuple[int, dict] | None = None  # (data start, header), read for fp8 only

    def _get(self, name: str) -> np.ndarray:
        st_dtype = self._handle.get_slice(name).get_dtype()
        if st_dtype not in _FP8:
            if st_dtype not in _ST_NAMES.values():
                raise CmfError(f"dtype {st_dtype} is not one cmf stores")  # items() names the tensor
            return self._handle.get_tensor(name)
        # fp8: read the bytes at the header's offsets (safe_open has checked the header)
        with open(self.path, "rb") as fh:
            if self._header is None:
                (n,) = struct.unpack("<Q", fh.read(8))
                self._header = (8 + n, json.loads(fh.read(n)))
            start, header = self._header
            begin, end = header[name]["data_offsets"]
            fh.seek(start + begin)
            data = bytearray(fh.read(end - begin))
        return np.frombuffer(data, dtype=_FP8[st_dtype]).reshape(header[name]["shape"])

    def __len__(self) -> int:
        return len(self._names)

    def names(self) -> list[str]:
        return list(self._names)

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        for name in self._names:
            try:
                array = self._get(name)
            except (self._error, OSError, ValueError, TypeError, KeyError) as exc:
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

