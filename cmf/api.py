"""The small public API, mirroring ``safetensors.numpy``: save_file, load_file, open."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping

import numpy as np

from .limits import DEFAULT_LIMITS, Limits
from .plan.recipe import encoder_for, prepare, resolve_recipe
from .reader import CmfFile
from .writer import Writer


def save_file(
    tensors: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    metadata: Mapping[str, Any] | None = None,
    *,
    attachments: Mapping[str, bytes] | None = None,
    preset: str | None = None,
    recipe: Any = None,
    level: int = 3,
) -> None:
    """Write ``tensors`` (name -> array) to ``path`` atomically.

    Lossless unless ``preset`` ("lossless", "q8", "q4") or ``recipe`` (a Recipe, a dict as in
    cmf.plan.recipe, or a path to a JSON recipe) says otherwise.
    """
    chosen, fallback = resolve_recipe(preset, recipe)
    chosen = prepare(chosen, tensors.items(), level)  # fits shared groups (a no-op without)
    with Writer(path, metadata=dict(metadata or {}), level=level) as w:
        for name, array in tensors.items():
            w.add_tensor(name, array, encoder_for(chosen, name, level, fallback))
        for name, data in (attachments or {}).items():
            w.add_attachment(name, data)


def load_file(
    path: str | os.PathLike, *, limits: Limits = DEFAULT_LIMITS, workers: int | None = None
) -> dict[str, np.ndarray]:
    """Read every tensor of ``path`` into memory, in file order.

    Tensors are decoded by ``workers`` threads (default: CPUs, at most 4), largest first; zstd
    and the byte-plane kernels release the GIL, so this scales with cores.
    """
    workers = workers or min(os.cpu_count() or 1, 4)
    with CmfFile(path, limits=limits) as f:
        names = f.keys()
        if workers <= 1 or len(names) <= 1:
            return {name: f.get_tensor(name) for name in names}
        largest_first = sorted(names, key=lambda n: -f.spec(n).nbytes)
        with ThreadPoolExecutor(workers) as pool:
            decoded = dict(zip(largest_first, pool.map(f.get_tensor, largest_first)))
        return {name: decoded[name] for name in names}


def open(path: str | os.PathLike, *, limits: Limits = DEFAULT_LIMITS) -> CmfFile:  # noqa: A001
    """Open ``path`` lazily: ``keys()``, ``metadata()``, ``get_tensor(name)``."""
    return CmfFile(path, limits=limits)
