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
    as in safetensors (needs PyTorch). Only the index is read on opening; each tensor is read
    and decoded when asked for. Use it as a context manager (or call ``close()``).

    Args:
        path: a ``.cmf`` file, a shard index (``*.cmf.index.json``) or a directory holding one.
        limits: reader limits (spec/format.md §6) checked against the file's declared sizes.
        framework: ``"np"`` (or ``"numpy"``) for numpy arrays, ``"pt"`` (or ``"torch"``) for
            torch tensors.
        device: where torch tensors go (``"cpu"``, ``"cuda:0"``, ...); with ``"np"`` it must be
            ``"cpu"`` or None.

    Returns:
        A :class:`~cmf.CmfFile` (one file) or :class:`~cmf.shards.ShardedFile` (a sharded set)
        for ``"np"``; a :class:`cmf.torch.TorchFile` wrapping either for ``"pt"``.

    Raises:
        UsageError: ``framework`` is neither numpy nor torch, or a ``device`` other than the
            cpu is asked of numpy.
        CmfError: the file cannot be opened or read, or is not a valid cmf file
            (:class:`~cmf.FormatError`, :class:`~cmf.ChecksumError`, :class:`~cmf.LimitError`,
            :class:`~cmf.UnsupportedError` are subclasses); ``"pt"`` without PyTorch installed.

    Example:
        >>> import numpy as np, cmf
        >>> cmf.save_file({"w": np.ones((2, 3), np.float32)}, "model.cmf")
        >>> with cmf.open("model.cmf") as f:
        ...     print(f.keys(), f.get_tensor("w").shape)
        ['w'] (2, 3)
    """
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
