"""The plan's error-feedback factors, kept in files between the curves stage and the rounds.

A step candidate with error feedback (cmf.plan.candidates.gptq_levels) rounds through the factor
``u`` (n, n) of its layer input: an inverse and a Cholesky factor of the input's second-moment
matrix. The curves stage computes it for every input; the rounds need it again for each chosen
point, in each round. Without these files, each round recomputed every layer's moments in the
planning process, sent them (tens of MB a tensor) to a worker, and the worker hashed them and
inverted them again: on SmolLM2-135M about 40 % of the rounds' CPU time.

:class:`FeedbackFiles` is a temporary directory; :func:`keep` writes a factor there as float32
(what the rounding uses: the codes are the same as from the float64 factor) under its content
digest, so the tensors sharing an input share one file; :func:`load` maps it back read-only.
Workers on this machine write and read the same directory. A factor that cannot be written
(a full disk) is simply not kept: the rounds then recompute it from the moments, as before.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref

import numpy as np

from ..checksum import content_digest
from ..errors import CmfError


class FeedbackFiles:
    """A temporary directory of factors, removed by :meth:`close` or when collected."""

    def __init__(self, directory: str | None = None) -> None:
        self.root = tempfile.mkdtemp(prefix="cmf-feedback-", dir=directory)
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.root, True)

    def holds(self, path: str | None) -> bool:
        """Whether ``path`` is a factor file of this directory (a curve measured by an earlier
        plan names one of another, removed, directory)."""
        return (
            path is not None
            and os.path.dirname(path) == self.root
            and os.path.isfile(path)
            and self._cleanup.alive
        )

    def close(self) -> None:
        self._cleanup()


def keep(root: str | None, u: np.ndarray | None) -> str | None:
    """Write the factor ``u`` (n, n) as float32 into the directory ``root`` (once per content;
    the write is atomic, so two workers may keep the same factor at once) and return its path;
    None without a directory or factor, or when it cannot be written."""
    if root is None or u is None:
        return None
    u32 = np.ascontiguousarray(u, dtype=np.float32)
    path = os.path.join(root, content_digest(u32).hex() + ".npy")
    if os.path.isfile(path):
        return path
    try:
        fd, tmp = tempfile.mkstemp(dir=root, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, u32, allow_pickle=False)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:  # a full disk or a removed directory: the rounds recompute it
        return None
    return path


def load(path: str, n: int) -> np.ndarray:
    """The factor kept at ``path``, memory-mapped read-only: float32 (n, n); CmfError if the
    file is missing or is not such a matrix."""
    try:
        u = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CmfError(f"error-feedback factor {path}: cannot be read ({exc})") from None
    if u.dtype != np.float32 or u.shape != (n, n):
        raise CmfError(
            f"error-feedback factor {path}: {u.dtype} {u.shape}, expected float32 ({n}, {n})"
        )
    return u
