"""Hugging Face model directories: one or more safetensors shards plus small side files.

Shards come from ``model.safetensors.index.json`` when present (sharded checkpoints), else every
``*.safetensors`` file in the directory. Side files (config, tokenizer, sentence-transformers
module configs, ...) become attachments so one ``.cmf`` is a complete model. Tensors are read one
shard and one tensor at a time.
"""

from __future__ import annotations

import json
import os
from typing import Iterator

import numpy as np

from ..errors import CmfError
from .safetensors import SafetensorsSource

SHARD_INDEX = "model.safetensors.index.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".gguf", ".h5", ".msgpack", ".npz", ".tflite", ".cmf")
MAX_SIDE_FILE = 64 << 20  # tokenizer.json of large vocabularies is tens of MB


class HFDirectorySource:
    """A model directory opened for packing (see module docstring)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.path.abspath(os.fspath(path))
        shard_names = self._shard_names()
        if not shard_names:
            raise CmfError(f"{self.path}: no *.safetensors files in this directory")
        self.shards = [SafetensorsSource(os.path.join(self.path, s)) for s in shard_names]
        self.metadata: dict[str, str] = dict(self.shards[0].metadata)
        seen: dict[str, str] = {}
        for shard, fname in zip(self.shards, shard_names):
            for name in shard.names():
                if name in seen:
                    raise CmfError(f"tensor {name!r} is in both {seen[name]} and {fname}")
                seen[name] = fname
        self._names = list(seen)
        self.attachments = self._side_files()

    def _shard_names(self) -> list[str]:
        index_path = os.path.join(self.path, SHARD_INDEX)
        if os.path.isfile(index_path):
            try:
                with open(index_path, encoding="utf-8") as fh:
                    weight_map = json.load(fh)["weight_map"]
                files = list(dict.fromkeys(weight_map.values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise CmfError(f"{index_path}: not a valid shard index ({exc})") from None
            for f in files:
                if not isinstance(f, str) or os.path.basename(f) != f or f in ("", ".", ".."):
                    raise CmfError(f"{index_path}: shard name {f!r} is not a file in the directory")
                if not os.path.isfile(os.path.join(self.path, f)):
                    raise CmfError(f"{index_path}: shard {f} is missing")
            return files
        return sorted(f for f in os.listdir(self.path) if f.endswith(".safetensors"))

    def _side_files(self) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for root, dirs, files in os.walk(self.path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for f in sorted(files):
                full = os.path.join(root, f)
                rel = os.path.relpath(full, self.path).replace(os.sep, "/")
                if f.startswith(".") or f.endswith(WEIGHT_SUFFIXES) or f == SHARD_INDEX:
                    continue
                if not os.path.isfile(full) or os.path.getsize(full) > MAX_SIDE_FILE:
                    continue
                with open(full, "rb") as fh:
                    out[rel] = fh.read()
        return out

    def __len__(self) -> int:
        return len(self._names)

    def names(self) -> list[str]:
        return list(self._names)

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        for shard in self.shards:
            yield from shard.items()
