"""Atomic file output: temp file beside the target, fsync, os.replace, fsync the directory.

The target path holds the old file or the complete new one, never a torn one.
"""

from __future__ import annotations

import os
import tempfile
from typing import BinaryIO

from .errors import CmfError


class AtomicFile:
    """A binary file that appears at ``path`` only on :meth:`commit`; :meth:`discard` drops it."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.path.abspath(os.fspath(path))
        if os.path.isdir(self.path):
            raise CmfError(f"cannot write {self.path}: it is a directory")
        directory = os.path.dirname(self.path)
        try:
            fd, self.tmp = tempfile.mkstemp(
                dir=directory, prefix=f".{os.path.basename(self.path)}.", suffix=".tmp"
            )
        except OSError as exc:
            raise CmfError(f"cannot create a file in {directory}: {exc.strerror}") from None
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a model file is as any other
        self.file: BinaryIO = os.fdopen(fd, "wb")
        self.done = False

    def commit(self) -> None:
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.tmp, self.path)
        except BaseException:
            self.discard()
            raise
        self.done = True
        _fsync_dir(os.path.dirname(self.path))

    def discard(self) -> None:
        if self.done:
            return
        self.done = True
        try:
            self.file.close()
        except OSError:
            pass
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
