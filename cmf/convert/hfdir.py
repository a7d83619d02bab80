"""Hugging Face model directories: one or more safetensors shards plus small side files.

Shards come from ``model.safetensors.index.json`` when present (sharded checkpoints), else every
``*.safetensors`` file in the directory. Side files (config, tokenizer, sentence-transformers
module configs, ...) become attachments so one ``.cmf`` is a complete model. Tensors are read one
shard and one tensor at a time. A shard or side file that is a symlink to a file outside the
directory is refused (a Hugging Face cache snapshot's links into its own ``blobs`` directory are
allowed); FIFOs, devices and symlinked subdirectories are not side files.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterator

import numpy as np

from ..errors import CmfError
from .safetensors import SafetensorsSource
from .torch_pickle import WEIGHTS_INDEX, TorchPickleSource

SHARD_INDEX = "model.safetensors.index.json"
WEIGHT_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".onnx",
    ".gguf",
    ".h5",
    ".msgpack",
    ".npz",
    ".tflite",
    ".cmf",
)
MAX_SIDE_FILE = 64 << 20  # tokenizer.json of large vocabularies is tens of MB


def _read_regular(path: str) -> bytes | None:
    """The bytes of ``path`` if it is (still) a regular file of at most MAX_SIDE_FILE bytes:
    opened without following a symlink and without blocking on a FIFO swapped in meanwhile."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_SIDE_FILE:
            return None
        return fh.read(MAX_SIDE_FILE + 1)[:MAX_SIDE_FILE]


class HFDirectorySource:
    """A model directory opened for packing (see module docstring)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.path.abspath(os.fspath(path))
        shard_names = self._shard_names()
        self.shards: list[SafetensorsSource | TorchPickleSource]
        if shard_names:
            self.shards = [SafetensorsSource(os.path.join(self.path, s)) for s in shard_names]
        else:  # a PyTorch checkpoint (pytorch_model.bin, or its shards): read weights-only
            shard_names = self._pickle_names()
            if not shard_names:
                raise CmfError(
                    f"{self.path}: no *.safetensors files (nor pytorch_model*.bin) in "
                    "this directory"
                )
            paths = [os.path.join(self.path, s) for s in shard_names]
            self.shards = [TorchPickleSource(paths[0], paths)]
            shard_names = shard_names[:1]
        self.metadata: dict[str, str] = dict(self.shards[0].metadata)
        seen: dict[str, str] = {}
        for shard, fname in zip(self.shards, shard_names, strict=True):
            for name in shard.names():
                if name in seen:
                    raise CmfError(f"tensor {name!r} is in both {seen[name]} and {fname}")
                seen[name] = fname
        self._names = list(seen)
        self.attachments = self._side_files()

    def _shard_names(self) -> list[str]:
        """The safetensors files of the model: those of ``model.safetensors.index.json``, else
        every ``*.safetensors``."""
        return self._weight_files(SHARD_INDEX, lambda f: f.endswith(".safetensors"))

    def _pickle_names(self) -> list[str]:
        """The PyTorch checkpoint files of the model: those of ``pytorch_model.bin.index.json``,
        else every ``pytorch_model*.bin`` (never ``training_args.bin`` and other pickles)."""
        return self._weight_files(
            WEIGHTS_INDEX, lambda f: f.startswith("pytorch_model") and f.endswith(".bin")
        )

    def _weight_files(self, index_name: str, matches: Callable[[str], bool]) -> list[str]:
        """The files named by the shard index ``index_name`` (each a plain name of an existing
        file of the directory), else every file ``matches`` accepts, sorted."""
        index_path = os.path.join(self.path, index_name)
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
        else:
            files = sorted(f for f in os.listdir(self.path) if matches(f))
        for f in files:
            self._check_inside(f)
        return files

    def _roots(self) -> list[str]:
        """Where the files of this model may really be: the directory itself, and for a Hugging
        Face cache snapshot (``models--*/snapshots/<rev>``, whose files are symlinks to
        ``../../blobs/<hash>``) that repository's ``blobs`` directory."""
        real = os.path.realpath(self.path)
        roots = [real]
        snapshots = os.path.dirname(real)
        repo = os.path.dirname(snapshots)
        if os.path.basename(snapshots) == "snapshots" and os.path.basename(repo).startswith(
            ("models--", "datasets--", "spaces--")
        ):
            roots.append(os.path.join(repo, "blobs"))
        return roots

    def _check_inside(self, rel: str) -> str:
        """The real path of ``rel`` (a file of the model); CmfError if a symlink takes it
        outside the model directory (a hostile directory could otherwise make ``cmf pack`` carry
        ``~/.ssh/id_rsa`` into the .cmf as a side file)."""
        full = os.path.join(self.path, rel)
        real = os.path.realpath(full)
        if not any(os.path.commonpath([root, real]) == root for root in self._roots()):
            raise CmfError(
                f"{self.path}: refusing to read {rel}: it is a symlink to {real}, outside the "
                "model directory"
            )
        return real

    def _side_files(self) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for root, dirs, files in os.walk(self.path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for f in sorted(files):
                full = os.path.join(root, f)
                rel = os.path.relpath(full, self.path).replace(os.sep, "/")
                if (
                    f.startswith(".")
                    or f.endswith(WEIGHT_SUFFIXES)
                    or f in (SHARD_INDEX, WEIGHTS_INDEX)
                ):
                    continue
                if not os.path.isfile(full) or os.path.getsize(full) > MAX_SIDE_FILE:
                    continue  # FIFOs, devices, dangling links, huge files: not side files
                data = _read_regular(self._check_inside(rel))
                if data is not None:
                    out[rel] = data
        return out

    def __len__(self) -> int:
        return len(self._names)

    def names(self) -> list[str]:
        return list(self._names)

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        for shard in self.shards:
            yield from shard.items()
