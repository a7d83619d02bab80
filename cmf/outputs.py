"""Where a command writes: one rule for ``cmf pack`` and ``cmf unpack`` (spec/converters.md §6).

The kind of output follows its name:

- a name ending in ``/``, an existing directory, or a name without a suffix: a directory
  (created, parents too) holding the model as ``model.cmf`` (a sharded set:
  ``model-0000i-of-0000N.cmf`` and ``model.cmf.index.json``) or ``model.safetensors`` and the
  attachments beside it;
- ``.cmf`` (pack; ``.cmf.index.json`` too for a sharded set): a cmf file;
- ``.safetensors``, ``.onnx``, ``.gguf`` (unpack): that format, where it applies to the file;
- anything else: :class:`~cmf.errors.UsageError` naming the choices.

Nothing is ever written onto an input (the same file, also through a symlink or a hard link),
whatever ``force`` says; an existing output is replaced only with ``force``. Every check runs
before any work is done.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable

from .atomic import AtomicFile
from .errors import CmfError, UsageError
from .shards import set_paths

DIRECTORY = "directory"
PACK_KINDS = {".cmf": "cmf"}
UNPACK_KINDS = {".safetensors": "safetensors", ".onnx": "onnx", ".gguf": "gguf"}
SHARD_INDEX_SUFFIX = ".cmf.index.json"


def output_kind(path: str, kinds: dict[str, str]) -> str:
    """``DIRECTORY`` or ``kinds[suffix]`` for the output name ``path`` (see the module
    docstring); UsageError for a suffix ``kinds`` does not name."""
    if not path:
        raise UsageError("the output name is empty")
    if path.endswith(("/", os.sep)) or os.path.isdir(path):
        return DIRECTORY
    suffix = os.path.splitext(os.path.basename(path))[1].lower()
    if not suffix:
        return DIRECTORY
    if suffix in kinds:
        return kinds[suffix]
    choices = ", ".join(kinds)
    raise UsageError(
        f"cannot tell what to write to {path}: name a {choices} file, or a directory "
        f"(a name ending in /)"
    )


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)  # follows symlinks: a link to the input is the input
    except OSError:
        return None
    return st.st_dev, st.st_ino


def input_files(paths: Iterable[str]) -> list[str]:
    """Every file the given inputs consist of: a file itself, every file under a directory."""
    out: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            for root, _, files in os.walk(p):
                out.extend(os.path.join(root, f) for f in files)
        elif os.path.exists(p):
            out.append(p)
    return out


def check_outputs(
    outputs: Iterable[str], inputs: Iterable[str], force: bool, flag: str = "--force"
) -> None:
    """UsageError if an output is one of ``inputs`` (same inode: links too; never allowed) or
    exists and ``force`` is false (``flag`` names the way to allow it)."""
    taken = {}
    for p in input_files(inputs):
        ident = _identity(p)
        if ident is not None:
            taken.setdefault(ident, p)
    existing = []
    for out in outputs:
        ident = _identity(out)
        if ident is not None and ident in taken:
            same = taken[ident]
            how = "" if os.path.abspath(same) == os.path.abspath(out) else f" (it is {same})"
            raise UsageError(
                f"refusing to write {out}: it is an input of this command{how}; "
                "choose another output name"
            )
        if os.path.lexists(out):
            existing.append(out)
    if existing and not force:
        shown = ", ".join(existing[:5]) + (
            f" and {len(existing) - 5} more" if len(existing) > 5 else ""
        )
        raise UsageError(
            f"{shown} already exist{'s' if len(existing) == 1 else ''}; "
            f"use {flag} to replace {'it' if len(existing) == 1 else 'them'}"
        )


def make_directory(path: str) -> None:
    """Create output directory ``path`` and its parents (UsageError if a file is in the way)."""
    try:
        os.makedirs(path, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"cannot create directory {path}: a file of that name exists") from None
    except NotADirectoryError:
        raise UsageError(f"cannot create directory {path}: a file is in the way") from None


def shard_set_files(output: str) -> list[str]:
    """The files of an existing sharded set named ``output`` (``dir/model.cmf`` or its shard
    index): the shard index and every ``model-NNNNN-of-NNNNN.cmf`` beside it."""
    directory, stem = set_paths(output)
    found = glob.glob(
        os.path.join(glob.escape(directory), glob.escape(stem) + "-?????-of-?????.cmf")
    )
    return [os.path.join(directory, stem + SHARD_INDEX_SUFFIX), *sorted(found)]


def pack_output(source: str, output: str | None) -> str:
    """The .cmf file ``cmf pack SOURCE -o OUTPUT`` writes (of a sharded set: its name): OUTPUT
    itself, ``OUTPUT/model.cmf`` for a directory (a directory holds one model, as a Hugging
    Face directory does, and as ``cmf unpack -o DIR/`` writes ``DIR/model.safetensors``),
    ``SOURCE`` with ``.cmf`` by default."""
    if output is None:
        base = source.rstrip("/" + os.sep)
        return (base if os.path.isdir(source) else os.path.splitext(base)[0]) + ".cmf"
    if output.lower().endswith(SHARD_INDEX_SUFFIX):  # a sharded set named by its index
        return output
    if output_kind(output, PACK_KINDS) == DIRECTORY:
        return os.path.join(output, "model.cmf")
    return output


def write_attachment(directory: str, name: str, data: bytes) -> str:
    """Write attachment ``name`` (``a/b.json``: subdirectories made) under ``directory``, never
    through a symlink or outside it; returns the path written, under ``directory`` as given."""
    root = os.path.realpath(directory)
    parts = name.split("/")
    target = os.path.join(root, *parts)
    parent = root
    for part in parts[:-1]:
        parent = os.path.join(parent, part)
        if os.path.islink(parent):
            raise CmfError(f"refusing to write attachment {name!r}: {parent} is a symlink")
        os.makedirs(parent, exist_ok=True)
    if os.path.islink(target) or os.path.commonpath([root, os.path.realpath(target)]) != root:
        raise CmfError(f"refusing to write attachment {name!r} outside {root}")
    with AtomicFile(target) as out:
        out.file.write(data)
    return os.path.join(directory, *parts)


__all__ = [
    "DIRECTORY",
    "PACK_KINDS",
    "UNPACK_KINDS",
    "check_outputs",
    "input_files",
    "make_directory",
    "output_kind",
    "pack_output",
    "shard_set_files",
    "write_attachment",
]
