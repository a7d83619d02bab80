"""GGUF import (read with gguf-py): metadata kept, GGML blocks kept exactly where cmf can.

Contract of :class:`GGUFSource` (a converter source, see cmf.convert):

- Tensors, in file order, shapes in numpy order (GGUF lists dimensions fastest first):
  F32/F16/BF16/F64/I8/I16/I32/I64 as numpy arrays of that dtype, bit for bit (big-endian files
  are converted to little-endian); Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 as :class:`Encoded` ``quantize``
  trees holding the blocks as they are (cmf.codecs.ggml), decoding to f32 equal to
  ``gguf.quants.dequantize`` bit for bit; every other type gguf-py can dequantize (K-quants,
  IQ*, TQ*, MXFP4 ...) as gguf-py's f32 dequantization, for the chosen preset to encode. A
  kept-type tensor with a non-finite block scale takes that last path too.
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
from dataclasses import dataclass
from typing import Any, Iterator

import ml_dtypes
import numpy as np

from ..codecs import ArraySpec
from ..dtypes import BY_NAME
from ..errors import CmfError
from ..pipeline import Pending

_PLAIN = {  # GGML type name -> numpy dtype of its elements (little-endian)
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "I8": np.dtype("i1"), "I16": np.dtype("<i2"), "I32": np.dtype("<i4"), "I64": np.dtype("<i8"),
}
KEPT_BLOCKS = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")
_READER_FIELDS = ("GGUF.version", "GGUF.tensor_count", "GGUF.kv_count")  # not key/values


@dataclass(frozen=True)
class Encoded:
    """A tensor that arrives already encoded; the writer stores the tree as it is."""

    spec: ArraySpec
    pending: Pending


class GGUFSource:
    """A GGUF file opened for packing (see module docstring)."""

    def __init__(self, path: str | os.PathLike) -> None:
        try:
            import gguf
        except ImportError:
            raise CmfError(
                "reading GGUF files needs the gguf package: pip install 'cmf[gguf]'"
            ) from None

        self._gguf = gguf
        self.path = os.fspath(path)
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
            return bits.view(ml_dtypes.bfloat16).reshape(shape)
        if kind in KEPT_BLOCKS:
            from ..codecs.ggml import gguf_tensor_to_pending  # exact block representation

            pending = gguf_tensor_to_pending(data, kind, shape)
            if pending is not None:
                return Encoded(ArraySpec(BY_NAME["f32"], shape), pending)
        rows = data.reshape(-1, data.shape[-1]) if data.size else data
        values = self._gguf.quants.dequantize(rows, t.tensor_type)
        return np.asarray(values, dtype=np.float32).reshape(shape)


def _plain(value: Any) -> Any:
    """GGUF field contents as msgpack-able plain values."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value
