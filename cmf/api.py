"""The small public API, mirroring ``safetensors.numpy``: save_file, load_file (cmf.files), open."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .errors import CmfError, UsageError
from .files import load_file, save_file
from .limits import DEFAULT_LIMITS, Limits
from .reader import CmfFile
from .shards import ShardedFile, open_model

if TYPE_CHECKING:
    from .torch import TorchFile


def open(  # noqa: A001
    path: str | os.PathLike,
    *,
    limits: Limits = DEFAULT_LIMITS,
    framework: str = "np",
    device: Any = "cpu",
) -> CmfFile | ShardedFile | TorchFile:
    """Open ``path`` lazily: ``keys()``, ``metadata()``, ``get_tensor(name)``. A shard index
    (``model.cmf.index.json``) or its directory opens a sharded set as one model.

    ``framework="np"`` gives numpy arrays (a CmfFile or ShardedFile); ``"pt"`` gives a
    cmf.torch.TorchFile whose tensors are torch tensors on ``device``, with ``get_slice(name)``
    as in safetensors (needs PyTorch)."""
    if framework in ("np", "numpy"):
        if device is not None and str(device) != "cpu":
            raise UsageError(f"device {device!r} needs framework='pt'; numpy arrays are on the cpu")
        return open_model(path, limits=limits)
    if framework in ("pt", "torch"):
        try:
            from .torch import TorchFile
        except ImportError as exc:
            raise CmfError(str(exc)) from None
        return TorchFile(open_model(path, limits=limits), device)
    raise UsageError(f"framework {framework!r} is not one cmf.open serves; expected 'np' or 'pt'")


__all__ = ["load_file", "open", "save_file"]
