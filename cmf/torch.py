"""PyTorch adapter, shaped like ``safetensors.torch``: save_file, load_file, save_model,
load_model, and the lazy :class:`TorchFile` that ``cmf.open(path, framework="pt")`` returns.

Tensors cross between numpy and torch through their bytes, never their values: every cmf dtype
(bf16 and fp8 included) comes back bit for bit, NaN payloads too. A decoded array becomes a
tensor without a copy (``torch.from_numpy``; bf16, fp8 and unsigned ints through an integer
array of the same item size and ``Tensor.view(dtype)``). A lossy tensor comes back in the dtype
it was stored with. Needs ``pip install 'cmf-container[torch]'``; ``import cmf`` never imports
torch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

from .extras import install_hint

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised only without torch
    raise ImportError(f"cmf.torch needs PyTorch: {install_hint('torch')}") from exc

from . import files
from .errors import CmfError
from .limits import DEFAULT_LIMITS, Limits
from .shards import ShardedFile, open_model
from .slicing import slice_of
from .torch_arrays import CMF_OF, TORCH_DTYPES, to_numpy, to_torch


# ----------------------------------------------------------------------------- files
def save_file(
    tensors: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    metadata: Mapping[str, Any] | None = None,
    **options: Any,
) -> None:
    """Write ``tensors`` to ``path`` as :func:`cmf.save_file` does (``options``: preset, recipe,
    level, jobs, attachments). Tensors sharing memory are fine: identical ones are stored once
    (aliases).

    Each tensor is stored through its bytes (bit for bit, bf16 and fp8 included); the file is
    written atomically (a temporary file beside ``path`` replaces it only when complete).

    Args:
        tensors: name -> ``torch.Tensor`` (dense, on any device; moved to the cpu to be stored).
        path: the ``.cmf`` file to write (replaced if it exists).
        metadata: string keys -> JSON-like values (spec/format.md §3.4), stored in the index.
        **options: passed to :func:`cmf.save_file`: ``attachments``, ``preset``, ``recipe``,
            ``level``, ``jobs``.

    Returns:
        None.

    Raises:
        CmfError: ``tensors`` is not a mapping, a value is not a dense torch tensor of a dtype
            cmf stores, or a name, metadata value or option is invalid (:class:`UsageError` for
            options that cannot go together, such as a preset and a recipe).

    Example:
        >>> import torch, cmf.torch
        >>> cmf.torch.save_file({"w": torch.zeros(2, 3, dtype=torch.bfloat16)}, "model.cmf")
    """
    if not isinstance(tensors, Mapping):
        raise CmfError(
            f"save_file takes a dict of name -> torch.Tensor, not {type(tensors).__name__}"
        )
    arrays = {name: to_numpy(name, t) for name, t in tensors.items()}
    files.save_file(arrays, path, metadata, **options)


def load_file(
    path: str | os.PathLike, device: Any = "cpu", *, limits: Limits = DEFAULT_LIMITS
) -> dict[str, torch.Tensor]:
    """Every tensor of ``path`` (a .cmf file or a sharded set), in file order, on ``device``.

    Args:
        path: a ``.cmf`` file, a shard index (``*.cmf.index.json``) or its directory.
        device: where the tensors go (``"cpu"``, ``"cuda:0"``, a ``torch.device``).
        limits: reader limits (spec/format.md §6).

    Returns:
        A dict name -> ``torch.Tensor`` in the dtype each tensor was stored with.

    Raises:
        CmfError: the file cannot be read or is not valid (FormatError, ChecksumError,
            LimitError, UnsupportedError are subclasses).

    Example:
        >>> import cmf.torch
        >>> tensors = cmf.torch.load_file("model.cmf")
        >>> tensors["w"].dtype
        torch.bfloat16
    """
    return {name: to_torch(a, device) for name, a in files.load_file(path, limits=limits).items()}


def save_model(
    model: torch.nn.Module,
    path: str | os.PathLike,
    metadata: Mapping[str, Any] | None = None,
    **options: Any,
) -> None:
    """Write ``model.state_dict()``; tied and shared weights are stored once (every name kept,
    as an alias of the first), so :func:`load_model` needs no special case for them.

    Args:
        model: the module whose parameters and buffers are written.
        path: the ``.cmf`` file to write (replaced if it exists).
        metadata: string keys -> JSON-like values (spec/format.md §3.4), stored in the index.
        **options: as for :func:`save_file` (``preset``, ``recipe``, ``level``, ``jobs``,
            ``attachments``).

    Returns:
        None.

    Raises:
        CmfError: as :func:`save_file`.

    Example:
        >>> import torch, cmf.torch
        >>> cmf.torch.save_model(torch.nn.Linear(4, 2), "linear.cmf")
    """
    save_file(model.state_dict(), path, metadata, **options)


def shared_groups(state: Mapping[str, torch.Tensor]) -> list[list[str]]:
    """Names of ``state`` that are the same tensor memory (tied weights), in groups of two or
    more: same storage, offset, shape and strides."""
    groups: dict[tuple, list[str]] = {}
    for name, t in state.items():
        if t.device.type == "meta" or t.numel() == 0:
            continue
        key = (
            t.device,
            t.untyped_storage().data_ptr(),
            t.storage_offset(),
            tuple(t.shape),
            t.stride(),
            t.dtype,
        )
        groups.setdefault(key, []).append(name)
    return [g for g in groups.values() if len(g) > 1]


def check_compatible(path: Any, f: Any, state: Mapping[str, torch.Tensor]) -> None:
    """CmfError listing every tensor whose shape or dtype in ``f`` differs from ``state``'s."""
    bad = []
    for name in f.keys():
        if name not in state:
            continue
        spec, want = f.spec(name), state[name]
        got_dtype = TORCH_DTYPES.get(spec.dtype.name)
        if tuple(spec.shape) != tuple(want.shape) or got_dtype != want.dtype:
            model = f"{CMF_OF.get(want.dtype, str(want.dtype))}{list(want.shape)}"
            bad.append(f"{name}: file {spec.describe()}, model {model}")
    if bad:
        raise CmfError(
            f"{os.fspath(path)}: {len(bad)} tensor(s) differ from the model: " + "; ".join(bad)
        )


def load_model(
    model: torch.nn.Module,
    path: str | os.PathLike,
    strict: bool = True,
    device: Any = "cpu",
    *,
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[list[str], list[str]]:
    """Fill ``model``'s parameters and buffers from ``path``; returns ``(missing, unexpected)``
    key lists as ``model.load_state_dict(..., strict=False)`` does. A model name absent from the
    file is not missing when it is tied to (the same memory as) a name the file has. Shapes and
    dtypes are checked first: one CmfError lists every tensor that differs. With ``strict``,
    missing or unexpected keys raise CmfError before anything is loaded. Tensors are decoded and
    loaded in batches (bounded memory: about 256 MiB at a time beside the model).

    Args:
        model: the module to fill (in place, through ``load_state_dict(..., strict=False)``).
        path: a ``.cmf`` file, a shard index (``*.cmf.index.json``) or its directory.
        strict: raise if the file and the model's keys differ (else report them).
        device: where the decoded tensors go before they are copied into the model.
        limits: reader limits (spec/format.md §6).

    Returns:
        ``(missing, unexpected)``: model keys the file lacks, file keys the model lacks.

    Raises:
        CmfError: a tensor's shape or dtype differs from the model's; with ``strict``, keys
            are missing or unexpected; the file cannot be read or is not valid.

    Example:
        >>> import torch, cmf.torch
        >>> cmf.torch.save_model(torch.nn.Linear(4, 2), "linear.cmf")
        >>> cmf.torch.load_model(torch.nn.Linear(4, 2), "linear.cmf")
        ([], [])
    """
    state = model.state_dict()
    with open_model(path, limits=limits) as f:
        names = f.keys()
        present = set(names)
        check_compatible(path, f, state)
        covered = {n for g in shared_groups(state) if present.intersection(g) for n in g}
        missing = [n for n in state if n not in present and n not in covered]
        unexpected = [n for n in names if n not in state]
        if strict and (missing or unexpected):
            raise CmfError(
                f"{os.fspath(path)} does not match {type(model).__name__}: "
                f"missing {missing or 'none'}; unexpected {unexpected or 'none'} "
                "(load_model(..., strict=False) loads what matches)"
            )
        batch: dict[str, torch.Tensor] = {}
        size = 0
        for name in names:
            if name not in state:
                continue
            batch[name] = to_torch(f.get_tensor(name), device)
            size += f.spec(name).nbytes
            if size >= _BATCH_BYTES:
                model.load_state_dict(batch, strict=False)
                batch, size = {}, 0
        if batch:
            model.load_state_dict(batch, strict=False)
    return missing, unexpected


_BATCH_BYTES = 256 << 20


# ----------------------------------------------------------------------------- lazy file
class TorchSlice:
    """One tensor of an open file, read in part: ``get_shape()``, ``get_dtype()`` and
    ``[rows, ...]`` indexing that decodes only the rows asked for where the codec tree allows
    it (cmf.slicing)."""

    def __init__(self, owner: TorchFile, name: str) -> None:
        self._owner, self._name = owner, name
        self._spec = owner._file_of(name).entry(name).spec

    def get_shape(self) -> list[int]:
        return list(self._spec.shape)

    def get_dtype(self) -> str:
        """The dtype as safetensors names it: ``F32``, ``BF16``, ``F8_E4M3``, ``I64``, ``BOOL``."""
        return self._spec.dtype.name.upper()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._spec.shape)

    def __getitem__(self, key: Any) -> torch.Tensor:
        array = slice_of(self._owner._file_of(self._name), self._name, key)
        return to_torch(array, self._owner.device)


class TorchFile:
    """An open .cmf file or sharded set whose tensors come out as torch tensors on ``device``:
    ``keys()``, ``metadata()``, ``get_tensor(name)``, ``get_slice(name)``, attachments.

    Made by ``cmf.open(path, framework="pt", device=...)``; ``get_tensor`` and ``get_slice``
    raise CmfError for a name the file does not have.

    Example:
        >>> import cmf
        >>> with cmf.open("model.cmf", framework="pt") as f:
        ...     print(f.keys(), f.get_slice("w")[:1].shape)
        ['w'] torch.Size([1, 3])
    """

    def __init__(self, f: Any, device: Any = "cpu") -> None:
        self.file = f
        self.device = device

    def _file_of(self, name: str) -> Any:
        if isinstance(self.file, ShardedFile):
            return self.file._shard(name)  # the shard holding ``name`` (CmfError if none)
        self.file.entry(name)  # CmfError naming the tensor if there is none
        return self.file

    def keys(self) -> list[str]:
        return self.file.keys()

    def __iter__(self) -> Iterator[str]:
        return iter(self.file.keys())

    def __contains__(self, name: object) -> bool:
        return name in self.file

    def __len__(self) -> int:
        return len(self.file)

    def metadata(self) -> dict[str, Any]:
        return self.file.metadata()

    def attachments(self) -> list[str]:
        return self.file.attachments()

    def get_attachment(self, name: str) -> bytes:
        return self.file.get_attachment(name)

    def get_tensor(self, name: str) -> torch.Tensor:
        return to_torch(self.file.get_tensor(name), self.device)

    def get_slice(self, name: str) -> TorchSlice:
        return TorchSlice(self, name)

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> TorchFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "TorchFile",
    "TorchSlice",
    "load_file",
    "load_model",
    "save_file",
    "save_model",
    "to_numpy",
    "to_torch",
]
