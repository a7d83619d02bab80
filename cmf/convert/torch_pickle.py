"""PyTorch checkpoints (``pytorch_model.bin``, ``*.pt``, ``*.pth``, ``*.ckpt``): pickles.

A pickle can run any code when it is loaded, so cmf never unpickles one itself. With PyTorch
installed (extra ``torch``) a checkpoint is read by ``torch.load(weights_only=True)``, PyTorch's
restricted unpickler that builds only tensors, containers and plain values and refuses every
other global (a hostile pickle is a CmfError, nothing of it runs). Without PyTorch the error
says how to convert the checkpoint. The state dict is taken from the top level or from a
``state_dict`` / ``model`` entry (Lightning and training checkpoints); tensors are converted to
numpy with their exact bytes (bf16 and fp8 through ml_dtypes, never through f32).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..errors import CmfError
from ..extras import install_hint

SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
PICKLE_PROTOCOL = 0x80  # the first byte of a protocol-2+ pickle (torch's legacy format)
WEIGHTS_INDEX = "pytorch_model.bin.index.json"


def looks_like_pickle(path: str, head: bytes) -> bool:
    """A PyTorch checkpoint by name, or by its first bytes (a zip archive or a pickle)."""
    if path.lower().endswith(SUFFIXES):
        return True
    return head[:4] == b"PK\x03\x04" or (
        len(head) >= 2 and head[0] == PICKLE_PROTOCOL and 2 <= head[1] <= 5
    )


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        return None
    return torch


def _no_torch(path: str) -> CmfError:
    return CmfError(
        f"{path} is a PyTorch pickle checkpoint; cmf reads it only with PyTorch's weights-only "
        f"loader ({install_hint('torch')}), or convert it to safetensors first "
        "(safetensors.torch.save_file(torch.load(path, weights_only=True), 'model.safetensors'))"
    )


class TorchPickleSource:
    """A PyTorch checkpoint opened for packing (see the module docstring); ``paths`` are the
    files of one model (a sharded ``pytorch_model-0000i-of-0000N.bin`` set in order)."""

    def __init__(self, path: str | os.PathLike, paths: list[str] | None = None) -> None:
        self.path = os.fspath(path)
        self.paths = list(paths or [self.path])
        if _torch() is None:
            raise _no_torch(self.path)
        self.metadata: dict[str, str] = {"format": "pt"}  # as transformers' safetensors files say
        self.attachments: dict[str, bytes] = {}
        self._names: list[str] = []
        self._where: dict[str, str] = {}
        self._kept: dict[str, Any] | None = None  # a one-file checkpoint's state, loaded once
        for p in self.paths:
            state = self._state(p)
            if len(self.paths) == 1:
                self._kept = state
            for name in state:
                if name in self._where:
                    raise CmfError(f"tensor {name!r} is in both {self._where[name]} and {p}")
                self._where[name] = p
                self._names.append(name)

    def _state(self, path: str) -> dict[str, Any]:
        """The state dict of one checkpoint file (torch.load, weights only)."""
        torch = _torch()
        try:
            mmap = zipfile.is_zipfile(path)  # the zip format maps; the legacy one cannot
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except (
            OSError,
            RuntimeError,
            ValueError,
            EOFError,
            zipfile.BadZipFile,
            TypeError,
            AttributeError,
            ImportError,
            KeyError,
            IndexError,
            MemoryError,
        ) as exc:
            raise CmfError(
                f"{path}: not a checkpoint PyTorch's weights-only loader accepts "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''})"
            ) from None
        except Exception as exc:  # the unpickler's own errors (pickle.UnpicklingError, ...)
            raise CmfError(
                f"{path}: refused by PyTorch's weights-only loader "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''})"
            ) from None
        return _state_dict(path, obj, torch)

    def __len__(self) -> int:
        return len(self._names)

    def names(self) -> list[str]:
        return list(self._names)

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        from ..torch_arrays import to_numpy  # needs torch, which this source has

        for p in self.paths:
            state = self._kept if self._kept is not None else self._state(p)
            for name, tensor in state.items():
                yield name, to_numpy(name, tensor)  # its bytes, bf16 and fp8 never through f32
            del state


def _state_dict(path: str, obj: Any, torch: Any) -> dict[str, Any]:
    """name -> tensor of a loaded checkpoint: the top-level dict, or its ``state_dict`` /
    ``model`` entry; other plain values beside the tensors (an epoch number) are left out."""
    if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model", "module"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise CmfError(f"{path}: holds a {type(obj).__name__}, not a state dict of named tensors")
    out = {}
    for name, value in obj.items():
        if isinstance(value, torch.Tensor):
            if not isinstance(name, str):
                raise CmfError(
                    f"{path}: a tensor name must be a string, found {type(name).__name__}"
                )
            out[name] = value
    if not out and obj:
        raise CmfError(f"{path}: no tensors at its top level or in a 'state_dict' / 'model' entry")
    return out


__all__ = ["SUFFIXES", "WEIGHTS_INDEX", "TorchPickleSource", "looks_like_pickle"]
