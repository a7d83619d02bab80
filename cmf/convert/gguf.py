"""GGUF import (read with gguf-py): metadata kept, GGML blocks kept exactly where cmf can.

Contract of :class:`GGUFSource` (a converter source, see cmf.convert):

- Tensors, in file order, shapes in numpy order (GGUF lists dimensions fastest first):
  F32/F16/BF16/F64/I8/I16/I32/I64 as numpy arrays of that dtype, bit for bit (big-endian files
  are converted to little-endian); every block type gguf-py can dequantize (Q4_0 ... Q8_0,
  K-quants, IQ*, TQ*, MXFP4, NVFP4) as an :class:`Encoded` ``ggml`` tree holding the blocks as
  they are, one part per field (spec/codecs/ggml.md), decoding to f32 equal to
  ``gguf.quants.dequantize`` bit for bit, non-finite scales included; a block type the ggml
  codec does not know (none today) as gguf-py's f32 dequantization.
- Metadata: ``cmf.source_format`` = ``"gguf"``; every GGUF key/value as ``gguf.<key>``
  (strings, ints, floats, bools, arrays as lists), so architecture, hyper-parameters and
  tokenizer can be read back; ``cmf.gguf.value_types`` maps each key to its GGUF type
  (``"UINT32"``, ``"ARRAY/STRING"`` ...) and ``cmf.gguf.tensor_types`` each tensor to its GGML
  type, so a GGUF file could be rebuilt; ``cmf.gguf.version`` is the GGUF version.
- Every problem (not GGUF, truncated, corrupt, a type gguf-py cannot dequantize, quantized
  tensors in a big-endian file) is a CmfError raised when the file is opened, before any output.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..codecs import ArraySpec
from ..codecs.ggml_types import LAYOUTS
from ..dtypes import BY_NAME
from ..encoded import Encoded
from ..errors import CmfError
from ..extras import install_hint

_PLAIN = {  # GGML type name -> numpy dtype of its elements (little-endian)
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I8": np.dtype("i1"),
    "I16": np.dtype("<i2"),
    "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"),
}
KEPT_BLOCKS = tuple(LAYOUTS)  # held exactly by the ggml codec (spec/codecs/ggml.md)
_READER_FIELDS = ("GGUF.version", "GGUF.tensor_count", "GGUF.kv_count")  # not key/values


class GGUFSource:
    """A GGUF file opened for packing (see module docstring)."""

    def __init__(self, path: str | os.PathLike) -> None:
        try:
            import gguf
        except ImportError:
            raise CmfError(
                f"reading GGUF files needs the gguf package: {install_hint('gguf')}"
            ) from None

        self._gguf = gguf
        self.path = os.fspath(path)
        check_layout(self.path)  # gguf-py trusts counts: a 500-byte file could make it loop forever
        try:
            self._reader = reader = gguf.GGUFReader(self.path, "r")
            self._tensors = list(reader.tensors)
            fields = {k: f for k, f in reader.fields.items() if k not in _READER_FIELDS}
            self.metadata: dict[str, Any] = {
                "cmf.source_format": "gguf",
                "cmf.gguf.version": int(reader.fields["GGUF.version"].contents()),
                **{f"gguf.{k}": _plain(f.contents()) for k, f in fields.items()},
                "cmf.gguf.value_types": {
                    k: "/".join(t.name for t in f.types) for k, f in fields.items()
                },
                "cmf.gguf.tensor_types": {t.name: t.tensor_type.name for t in self._tensors},
            }
            from .gguf_layout import record_layout  # what writing the same bytes back needs

            self.metadata["cmf.gguf.layout"] = record_layout(reader, self.metadata)
        except CmfError:
            raise
        except Exception as exc:  # gguf-py raises ValueError, IndexError, KeyError, numpy errors
            raise CmfError(
                f"{self.path}: not a valid GGUF file "
                f"(truncated or corrupt; {type(exc).__name__}: {exc})"
            ) from None
        self._swapped = reader.byte_order == "S"  # a big-endian file on this little-endian host
        self.attachments: dict[str, bytes] = {}
        for t in self._tensors:
            self._check_type(t)

    def _check_type(self, t: Any) -> None:
        kind = t.tensor_type.name
        if kind in _PLAIN or kind == "BF16":
            return
        if self._swapped:
            raise CmfError(
                f"{self.path}: tensor {t.name!r}: {kind} blocks in a big-endian GGUF file "
                "are not supported"
            )
        if kind in KEPT_BLOCKS:
            return
        try:  # gguf-py dispatches on the type: one zero block tells whether it can dequantize it
            _, type_size = self._gguf.GGML_QUANT_SIZES[t.tensor_type]
            self._gguf.quants.dequantize(np.zeros((1, type_size), np.uint8), t.tensor_type)
        except Exception:  # NotImplementedError for the types it lacks
            raise CmfError(
                f"{self.path}: tensor {t.name!r} has GGML type {kind}, "
                "which gguf-py cannot dequantize"
            ) from None

    def __len__(self) -> int:
        return len(self._tensors)

    def names(self) -> list[str]:
        return [t.name for t in self._tensors]

    def items(self) -> Iterator[tuple[str, np.ndarray | Encoded]]:
        """``(name, array or Encoded)`` one tensor at a time (data read from the memory map)."""
        for t in self._tensors:
            try:
                value = self._tensor(t)
            except CmfError:
                raise
            except Exception as exc:
                raise CmfError(
                    f"{self.path}: cannot read tensor {t.name!r} ({type(exc).__name__}: {exc})"
                ) from None
            yield t.name, value

    def _tensor(self, t: Any) -> np.ndarray | Encoded:
        kind = t.tensor_type.name
        shape = tuple(reversed([int(d) for d in t.shape]))  # numpy order
        data = np.asarray(t.data)  # gguf-py's view: elements for plain types, bytes otherwise
        if kind in _PLAIN:  # astype converts a big-endian view, and copies out of the map
            return data.astype(_PLAIN[kind]).reshape(shape)
        if kind == "BF16":  # gguf-py gives BF16 as bytes
            order = ">u2" if self._swapped else "<u2"
            bits = np.ascontiguousarray(data).reshape(-1).view(order).astype("<u2")
            return bits.view(BY_NAME["bf16"].numpy).reshape(shape)
        if kind in KEPT_BLOCKS:  # every block type gguf-py dequantizes: the blocks as they are
            from ..codecs.ggml_pack import blocks_to_pending

            return Encoded(ArraySpec(BY_NAME["f32"], shape), blocks_to_pending(data, kind, shape))
        rows = data.reshape(-1, data.shape[-1]) if data.size else data
        values = self._gguf.quants.dequantize(rows, t.tensor_type)
        return np.asarray(values, dtype=np.float32).reshape(shape)


# -- a bounded pre-scan of the header: gguf-py's reader trusts every count it reads (an array of
# 2^60 integers past the end of a 500-byte file makes it append empty views until memory runs
# out), so every count is checked against the bytes left before gguf-py sees the file.
MAX_ITEMS = 1 << 22  # key/values + array elements + tensors: gguf-py keeps ~250 B per item
MAX_DEPTH = 8  # arrays of arrays
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


class _Scan:
    def __init__(self, fh: Any, size: int, path: str) -> None:
        self.fh, self.size, self.path, self.pos, self.items = fh, size, path, 0, 0
        self.order = "<"

    def fail(self, what: str) -> CmfError:
        return CmfError(f"{self.path}: not a valid GGUF file ({what})")

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise self.fail(
                f"{what} needs {n} bytes at offset {self.pos}, "
                f"{self.size - self.pos} left in the file"
            )

    def read(self, n: int, what: str) -> bytes:
        self.need(n, what)
        self.fh.seek(self.pos)
        data = self.fh.read(n)
        if len(data) != n:
            raise self.fail(f"file ends inside {what}")
        self.pos += n
        return data

    def uint(self, n: int, what: str) -> int:
        return int.from_bytes(self.read(n, what), "little" if self.order == "<" else "big")

    def count(self, n: int, each: int, what: str) -> None:
        """``n`` items of at least ``each`` bytes must fit what is left, and the item budget."""
        self.need(n * each, f"{n} {what}")
        self.items += n
        if self.items > MAX_ITEMS:
            raise CmfError(
                f"{self.path}: GGUF header declares more than {MAX_ITEMS} key/values, "
                "array elements and tensors; refusing to parse it"
            )

    def string(self, what: str) -> None:
        n = self.uint(8, f"the length of {what}")
        self.need(n, what)
        self.pos += n

    def value(self, kind: int, depth: int, what: str) -> None:
        if kind in _SCALAR_SIZES:
            self.read(_SCALAR_SIZES[kind], what)
        elif kind == _STRING:
            self.string(what)
        elif kind == _ARRAY:
            if depth >= MAX_DEPTH:
                raise self.fail(f"{what}: arrays nested deeper than {MAX_DEPTH}")
            item = self.uint(4, f"the item type of {what}")
            n = self.uint(8, f"the length of {what}")
            if item in _SCALAR_SIZES:
                self.count(n, _SCALAR_SIZES[item], f"items of {what}")
                self.pos += n * _SCALAR_SIZES[item]
            elif item in (_STRING, _ARRAY):
                self.count(n, 8 if item == _STRING else 12, f"items of {what}")
                for _ in range(n):
                    self.value(item, depth + 1, what)
            else:
                raise self.fail(f"{what}: unknown array item type {item}")
        else:
            raise self.fail(f"{what}: unknown value type {kind}")


def check_layout(path: str) -> None:
    """Walk the GGUF header (key/values and tensor infos) checking that every declared length
    and count fits in the file and a bounded budget; CmfError otherwise. Data is not read."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            s = _Scan(fh, size, path)
            if s.read(4, "the magic") != b"GGUF":
                raise s.fail("no GGUF magic")
            raw = s.read(4, "the version")
            if int.from_bytes(raw, "little") & 0xFFFF == 0:
                s.order = ">"  # a file of the other byte order (as gguf-py detects it)
            s.pos = 8
            n_tensors = s.uint(8, "the tensor count")
            n_kv = s.uint(8, "the key/value count")
            s.count(n_kv, 8 + 4 + 1, "key/values")
            for i in range(n_kv):
                s.string(f"key {i}")
                s.value(s.uint(4, f"the type of key/value {i}"), 0, f"key/value {i}")
            s.count(n_tensors, 8 + 4 + 4 + 8, "tensor infos")
            for i in range(n_tensors):
                s.string(f"the name of tensor {i}")
                n_dims = s.uint(4, f"the rank of tensor {i}")
                s.count(n_dims, 8, f"dimensions of tensor {i}")
                s.pos += 8 * n_dims
                s.read(4 + 8, f"the type and offset of tensor {i}")
    except OSError as exc:
        raise CmfError(f"{path}: cannot read ({exc.strerror})") from None


def _plain(value: Any) -> Any:
    """GGUF field contents as msgpack-able plain values."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value
