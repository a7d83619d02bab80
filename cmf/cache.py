"""cmf's cache of derived arrays (e.g. a tokenizer's token-frequency prior): files under
``$CMF_CACHE_DIR``, else ``$XDG_CACHE_HOME/cmf``, else ``~/.cache/cmf``; ``CMF_CACHE_DIR=off``
turns it off. A cache entry is only ever a speed-up: one that is missing, unreadable or fails its
check is computed again, and a cache that cannot be written is skipped. Entries are ``.npy`` files
read without pickles, named by a SHA-256 of everything they depend on, written atomically."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

import numpy as np


def cache_dir() -> str | None:
    """The cache directory (not created here), or None when the cache is off."""
    given = os.environ.get("CMF_CACHE_DIR")
    if given is not None:
        return None if given.strip().lower() in ("", "off", "0", "none") else given
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "cmf")


def key_of(*parts: object) -> str:
    """A hex SHA-256 naming an entry from ``parts`` (their ``repr``s, in order)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(repr(part).encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()


def _path(kind: str, key: str) -> str | None:
    base = cache_dir()
    return None if base is None else os.path.join(base, kind, f"{key}.npy")


def load_array(kind: str, key: str, check: Callable[[np.ndarray], bool]) -> np.ndarray | None:
    """The array cached as ``kind``/``key`` if it reads and ``check`` accepts it, else None."""
    path = _path(kind, key)
    if path is None or not os.path.isfile(path):
        return None
    try:
        got = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    return got if isinstance(got, np.ndarray) and check(got) else None


def save_array(kind: str, key: str, array: np.ndarray) -> None:
    """Cache ``array`` as ``kind``/``key`` (atomically; silently skipped where it cannot be)."""
    from .atomic import AtomicFile
    from .errors import CmfError

    path = _path(kind, key)
    if path is None:
        return
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        out = AtomicFile(path)
        try:
            np.save(out.file, np.ascontiguousarray(array), allow_pickle=False)
            out.commit()
        except BaseException:
            out.discard()
            raise
    except (OSError, CmfError):
        return
