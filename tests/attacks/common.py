"""Shared helpers for the hostile-file tests: a crafted valid base file, decode-everything, and
``expect_error`` (CmfError with a message substring, and ``cmf validate`` must not raise)."""

from __future__ import annotations

import copy
import os
import zlib
from typing import Any

import ml_dtypes
import numpy as np
import pytest

import cmf

from . import craft as c

# ----------------------------------------------------------------------------- base file

W = np.arange(12, dtype="<f4").reshape(4, 3) / 7  # raw
B = (np.arange(16) % 5).astype(np.uint8)  # raw > zstd (hand-made frame, raw block)
H = np.array([1.5, -2.0, 0.0, np.inf, -0.25], dtype=ml_dtypes.bfloat16)  # byteplanes(rotate)
FLAGS = np.array([True, False, True])  # raw bool
CONFIG = b'{"model_type": "toy", "hidden": 3}'


def _planes(a: np.ndarray, rotate: bool) -> list[bytes]:
    k = a.dtype.itemsize
    u = a.reshape(-1).view(f"<u{k}")
    if rotate:
        u = (u << np.uint8(1)) | (u >> np.uint8(8 * k - 1))
    by = u.view(np.uint8).reshape(-1, k)
    return [by[:, j].tobytes() for j in range(k)]


def base_parts() -> tuple[list[bytes], dict[str, Any]]:
    """Segments and index (without the segment table) of a small valid file, fresh each call."""
    p0, p1 = _planes(H, rotate=True)
    segments = [
        W.tobytes(),  # 0
        c.zstd_frame(B.tobytes()),  # 1
        p0,  # 2
        c.zstd_frame(p1),  # 3
        FLAGS.view(np.uint8).tobytes(),  # 4
        c.zstd_frame(CONFIG),  # 5
    ]
    index = {
        "tensors": [
            c.tensor("w", "f32", [4, 3], c.raw(c.leaf(0))),
            c.tensor("b", "u8", [16], c.raw(c.zstd(c.leaf(1)))),
            c.tensor("h", "bf16", [5], c.byteplanes([c.leaf(2), c.zstd(c.leaf(3))], rotate=True)),
            c.tensor("w_tied", "f32", [4, 3], alias="w"),
            c.tensor("flags", "bool", [3], c.raw(c.leaf(4))),
        ],
        "attachments": [c.attachment("config.json", len(CONFIG), c.zstd(c.leaf(5)))],
        "metadata": {"format": "toy", "n": 3},
    }
    return copy.deepcopy(segments), copy.deepcopy(index)


def base_file(**overrides: Any) -> bytes:
    segments, index = base_parts()
    return c.assemble(segments, index, **overrides)


EXPECTED = {"w": W, "b": B, "h": H, "w_tied": W, "flags": FLAGS}


# ----------------------------------------------------------------------------- reading


def write(tmp_path: Any, data: bytes, name: str = "f.cmf") -> str:
    path = os.path.join(os.fspath(tmp_path), name)
    with open(path, "wb") as fh:
        fh.write(data)
    return path


def read_all(path: str, limits: cmf.Limits | None = None) -> dict[str, Any]:
    """Open ``path`` and decode every tensor and attachment; a comparable snapshot."""
    kw = {} if limits is None else {"limits": limits}
    with cmf.open(path, **kw) as f:
        tensors = {}
        for name in f.keys():
            a = f.get_tensor(name)
            tensors[name] = (str(a.dtype), a.shape, a.tobytes())
        atts = {name: f.get_attachment(name) for name in f.attachments()}
        return {"tensors": tensors, "attachments": atts, "metadata": f.metadata()}


def expect_error(
    tmp_path: Any,
    data: bytes,
    match: str | tuple[str, ...],
    *,
    limits: cmf.Limits | None = None,
    error: type[cmf.CmfError] = cmf.CmfError,
    name: str = "hostile.cmf",
) -> cmf.CmfError:
    """``data`` must be rejected (on open or when decoding) with a CmfError whose message holds
    ``match`` (or one of several). Any other exception type propagates and fails the test.
    ``cmf.validate`` must report it too, without raising."""
    path = write(tmp_path, data, name)
    with pytest.raises(cmf.CmfError) as info:
        read_all(path, limits)
    exc = info.value
    assert isinstance(exc, error), f"{type(exc).__name__} is not a {error.__name__}: {exc}"
    wanted = (match,) if isinstance(match, str) else match
    message = str(exc)
    assert any(w.lower() in message.lower() for w in wanted), f"{wanted!r} not in {message!r}"
    kw = {} if limits is None else {"limits": limits}
    report = cmf.validate(path, **kw)
    assert not report.valid, f"validate accepted a file the reader rejects ({message})"
    return exc


def expect_ok(tmp_path: Any, data: bytes, limits: cmf.Limits | None = None) -> dict[str, Any]:
    path = write(tmp_path, data, "ok.cmf")
    return read_all(path, limits)


def checksum(data: bytes) -> str:
    return f"{zlib.crc32(data):08x}"
