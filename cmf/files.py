"""Whole files of tensors: ``save_file`` and ``load_file`` (re-exported by cmf.api, used by the
framework adapters such as cmf.torch, which cmf.api's ``open`` imports in turn)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from .errors import UsageError
from .limits import DEFAULT_LIMITS, Limits
from .parallel import WriterSink, write_tensors
from .plan.presets import resolve_recipe
from .plan.recipe import encoder_for, prepare
from .shards import load_all, open_model
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
    jobs: int = 1,
) -> None:
    """Write ``tensors`` (name -> array) to ``path`` atomically.

    Lossless unless ``preset`` ("lossless", "q8", "q4") or ``recipe`` (a Recipe, a dict as in
    cmf.plan.recipe, or a path to a JSON recipe) says otherwise. The planning presets
    "balanced" and "small" choose each tensor's encoding with the data-free proxy (relative
    weight error; a dict of arrays is no model that can be run): cmf.plan.planner.plan_and_write
    plans a model directory or .onnx file on its measured output error. ``jobs`` > 1 encodes (for
    a planning preset: measures the candidates) in that many worker processes (the same bytes; a
    script calling it needs the ``if __name__ == "__main__":`` guard of multiprocessing's spawn
    start method).

    Args:
        tensors: name -> numpy array (f64, f32, f16, bf16, fp8, ints, bool; any shape, 0-d and
            empty included).
        path: the ``.cmf`` file to write; replaced atomically if it exists.
        metadata: JSON-able values stored in the file's metadata.
        attachments: name -> bytes carried inside the file (``config.json``, tokenizer files).
        preset: "lossless", "q8", "q4", or a planning preset "balanced" / "small".
        recipe: a Recipe, a dict as in cmf.plan.recipe, or a path to a JSON recipe.
        level: zstd level of the lossless candidates (-7..22).
        jobs: worker processes that encode (or measure) tensors.

    Returns:
        None; the file exists at ``path`` when the call returns, and not before.

    Raises:
        UsageError: a preset and a recipe both given, an unknown preset, bad ``jobs``.
        CmfError: a value cmf cannot store (an unsupported dtype, a non-array), a recipe that
            does not fit a tensor.
        OSError: the file cannot be written (nothing is left at ``path`` then).

    Example:
        >>> import numpy as np, cmf
        >>> cmf.save_file({"w": np.ones((64, 64), np.float32)}, "model.cmf", preset="q8")
        >>> cmf.load_file("model.cmf")["w"].shape
        (64, 64)
    """
    if preset in ("balanced", "small"):  # planned per tensor; a dict has no model to run
        from .plan.planner import PlanOptions, save_planned

        if recipe is not None:
            raise UsageError("give a preset or a recipe, not both")
        save_planned(
            tensors,
            path,
            PlanOptions(preset=preset, level=level, jobs=jobs),
            metadata=metadata,
            attachments=attachments,
        )
        return
    chosen, fallback = resolve_recipe(preset, recipe)
    chosen = prepare(chosen, tensors.items(), level)  # fits shared groups (a no-op without)
    if jobs != 1:
        from .parallel import EncodeSettings, closing, make_executor, pack_tasks

        with closing(make_executor(jobs)) as executor:
            with Writer(path, metadata=dict(metadata or {}), level=level) as w:
                pack_tasks(
                    WriterSink(w),
                    tensors.items(),
                    EncodeSettings(chosen, level, fallback),
                    executor,
                )
                for name, data in (attachments or {}).items():
                    w.add_attachment(name, data)
        return
    with Writer(path, metadata=dict(metadata or {}), level=level) as w:
        write_tensors(
            WriterSink(w),
            tensors.items(),
            lambda name: encoder_for(chosen, name, level, fallback),
            (attachments or {}).items(),
        )


def load_file(
    path: str | os.PathLike, *, limits: Limits = DEFAULT_LIMITS, workers: int | None = None
) -> dict[str, np.ndarray]:
    """Read every tensor of ``path`` (a .cmf file or a sharded set) into memory, in file order.

    Tensors are decoded by ``workers`` threads (default: CPUs, at most 4), largest first; zstd
    and the byte-plane kernels release the GIL, so this scales with cores.

    Args:
        path: a ``.cmf`` file, or a sharded set's ``.cmf.index.json``.
        limits: bounds on what the file may ask for (tensor bytes, node counts ...).
        workers: decoding threads.

    Returns:
        name -> numpy array, each in its recorded dtype and shape (a lossy tensor decoded).

    Raises:
        CmfError: a missing, truncated, corrupt or hostile file, or one over ``limits``.

    Example:
        >>> import cmf
        >>> tensors = cmf.load_file("model.cmf")
        >>> sorted(tensors)
        ['w']
    """
    workers = workers or min(os.cpu_count() or 1, 4)
    with open_model(path, limits=limits) as f:
        return load_all(f, workers)
