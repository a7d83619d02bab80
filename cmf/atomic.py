"""Atomic file output: temp file beside the target, fsync, os.replace, fsync the directory.

The target path holds the old file or the complete new one, never a torn one. A writer of a big
file may call :meth:`AtomicFile.sync_behind` as it goes, so that the disk writes what it wrote
so far while it works on the rest and the final fsync has less to wait for.
"""

from __future__ import annotations

import os
import tempfile
import threading
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
        self._behind: threading.Thread | None = None
        self._behind_errors: list[OSError] = []

    def sync_behind(self) -> None:
        """Start an fdatasync of what was written so far on a thread (a no-op while the last
        one runs); :meth:`commit` waits for it and raises its error, :meth:`discard` waits."""
        if self._behind is not None and self._behind.is_alive():
            return
        self.file.flush()
        fd, errors = self.file.fileno(), self._behind_errors

        def sync() -> None:
            try:
                getattr(os, "fdatasync", os.fsync)(fd)
            except OSError as exc:
                errors.append(exc)

        self._behind = threading.Thread(target=sync, name="cmf-sync-behind", daemon=True)
        self._behind.start()

    def _wait_behind(self) -> None:
        if self._behind is not None:
            self._behind.join()
            self._behind = None

    def commit(self) -> None:
        try:
            self.file.flush()
            self._wait_behind()
            if self._behind_errors:
                raise self._behind_errors[0]
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
        self._wait_behind()  # before the file descriptor it syncs is closed
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
