"""GGUF import (read with gguf-py): metadata kept, GGML blocks kept exactly where cmf can.

Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1 tensors become ``quantize`` codec trees that decode to exactly
gguf-py's dequantization (cmf.codecs.ggml); other quantized types are dequantized with gguf-py
and handed to the chosen preset like any float tensor; float and int tensors are read as is.
Shapes are numpy order (GGUF lists dimensions fastest first; cmf lists them slowest first).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator

import ml_dtypes
import numpy as np

from ..codecs import ArraySpec
from ..dtypes import of_array
from ..errors import CmfError
from ..pipeline import Pending

_PLAIN = {  # GGML type name -> numpy dtype of its elements
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I8": np.dtype("i1"), "I16": np.dtype("<i2"), "I32": np.dtype("<i4"), "I64": np.dtype("<i8"),
}
KEPT_BLOCKS = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")
_SKIPPED_FIELDS = ("GGUF.version", "GGUF.tensor_count", "GGUF.kv_count")


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
            raise CmfError("reading GGUF files needs the gguf package: pip install 'cmf[gguf]'") from None

        self._gguf = gguf
        self.path = os.fspath(path)
        try:
            self._reader = gguf.GGUFReader(self.path, "r")
            tensors = list(self._reader.tensors)
            fields = {k: f.contents() for k, f in self._reader.fields.items() if k not in _SKIPPED_FIELDS}
        except CmfError:
            raise
        except Exception as exc:  # gguf-py raises ValueError, IndexError, struct and numpy errors
            raise CmfError(f"{self.path}: not a readable GGUF file ({type(exc).__name__}: {exc})") from None
        self._tensors = tensors
        self.metadata: dict[str, Any] = {"cmf.source_format": "gguf"}
        for key, value in fields.items():
            self.metadata[f"gguf.{key}"] = _plain(value)
        self.metadata["gguf.tensor_types"] = {t.name: t.tensor_type.name for t in tensors}
        self.attachments: dict[str, bytes] = {}
        names = [t.name for t in tensors]
        if len(set(names)) != len(names):
            raise CmfError(f"{self.path}: duplicate tensor names")

    def __len__(self) -> int:
        return len(self._tensors)

    def names(self) -> list[str]:
        return [t.name for t in self._tensors]

    def items(self) -> Iterator[tuple[str, np.ndarray | Encoded]]:
        for t in self._tensors:
            try:
                yield t.name, self._tensor(t)
            except CmfError:
                raise
            except Exception as exc:
                raise CmfError(f"{self.path}: cannot read tensor {t.name!r} ({type(exc).__name__}: {exc})") from None

    def _tensor(self, t: Any) -> np.ndarray | Encoded:
        kind = t.tensor_type.name
        shape = tuple(int(d) for d in reversed([int(x) for x in t.shape]))  # numpy order
        if kind in _PLAIN:
            data = np.asarray(t.data).reshape(-1).view(np.uint8)
            return np.frombuffer(data.tobytes(), dtype=_PLAIN[kind]).reshape(shape)
        raw = np.ascontiguousarray(np.asarray(t.data).reshape(-1).view(np.uint8))
        if kind in KEPT_BLOCKS:
            from ..codecs.ggml import gguf_tensor_to_pending  # exact block representation

            spec = ArraySpec(of_array(np.zeros(0, np.float32)), shape)
            return Encoded(spec, gguf_tensor_to_pending(raw, kind, shape))
        rows = raw.reshape(-1, t.data.shape[-1]) if raw.size else raw
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
