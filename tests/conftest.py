"""Shared fixtures: byte-exact comparison, random bit patterns, small files to read back.

Helpers are handed out as session-scoped fixtures so that hypothesis tests can use them too.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from typing import NamedTuple

import ml_dtypes  # noqa: F401  (registers bf16/fp8 with numpy, as safetensors.numpy needs)
import numpy as np
import pytest

import cmf
from cmf.dtypes import BY_NAME


def _le_bytes(array: np.ndarray) -> bytes:
    """The C-order, little-endian bytes of ``array``'s values (computed without cmf)."""
    c = np.ascontiguousarray(array)
    if c.dtype.byteorder == ">":
        c = c.byteswap().view(c.dtype.newbyteorder("<"))
    return c.tobytes()


def _assert_same(expected: np.ndarray, actual: np.ndarray) -> None:
    """``actual`` has the cmf dtype of ``expected`` (little-endian), its shape and its bytes."""
    expected = np.asarray(expected)
    assert isinstance(actual, np.ndarray), type(actual)
    want = expected.dtype.newbyteorder("<") if expected.dtype.byteorder == ">" else expected.dtype
    assert actual.dtype == want, (actual.dtype, want)
    assert actual.dtype.byteorder in ("=", "<", "|"), actual.dtype
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.tobytes() == _le_bytes(expected)


def _random_bits(dtype: str | np.dtype, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Uniformly random bit patterns of a cmf dtype (NaN payloads, infinities, subnormals...);
    bools are 0/1. ``dtype`` is a cmf name or a numpy dtype."""
    dt = BY_NAME[dtype].numpy if isinstance(dtype, str) else np.dtype(dtype)
    rng = np.random.default_rng(seed)
    if dt == np.bool_:
        return rng.integers(0, 2, size=shape).astype(bool)
    n = math.prod(shape) * dt.itemsize
    return rng.integers(0, 256, size=n, dtype=np.uint8).view(dt).reshape(shape)


def _read_safetensors(path) -> tuple[dict[str, tuple[str, list[int], bytes]], dict[str, str]]:
    """A tiny safetensors parser (independent of the safetensors package, which cannot read
    fp8 into numpy): name -> (dtype string, shape, bytes), and the __metadata__ map."""
    with open(path, "rb") as fh:
        blob = fh.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    metadata = header.pop("__metadata__", {})
    data = blob[8 + n :]
    out = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        out[name] = (info["dtype"], info["shape"], data[begin:end])
    return out, metadata


@pytest.fixture(autouse=True)
def _no_shared_cache(monkeypatch):
    """cmf.cache is off in tests (a test that patches how a prior is made must not read another
    test's entry); tests of the cache turn it on in a temporary directory."""
    monkeypatch.setenv("CMF_CACHE_DIR", "off")


@pytest.fixture(scope="session")
def assert_same() -> Callable[[np.ndarray, np.ndarray], None]:
    return _assert_same


@pytest.fixture(scope="session")
def random_bits() -> Callable[..., np.ndarray]:
    return _random_bits


@pytest.fixture(scope="session")
def read_safetensors():
    return _read_safetensors


@pytest.fixture
def mixed_tensors() -> dict[str, np.ndarray]:
    """A small model: several dtypes, rank 0, an empty tensor, a tied copy."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 48)).astype(np.float32)
    return {
        "w": w,
        "b": rng.standard_normal(48).astype(ml_dtypes.bfloat16),
        "h": rng.standard_normal((8, 8)).astype(np.float16),
        "ids": np.arange(100, dtype=np.int64),
        "mask": rng.integers(0, 2, 33).astype(bool),
        "f8": _random_bits("f8_e4m3", (5, 7), 2),
        "scalar": np.array(2.5, dtype=np.float64),
        "empty": np.zeros((0, 3), dtype=np.int32),
        "w_tied": w.copy(),
    }


@pytest.fixture
def cmf_file(tmp_path, mixed_tensors):
    """``mixed_tensors`` saved with metadata and two attachments; returns the path."""
    path = tmp_path / "model.cmf"
    cmf.save_file(
        mixed_tensors,
        path,
        metadata={"source": "test", "n": 3},
        attachments={"config.json": b'{"hidden": 48}', "tok/vocab.txt": b"a\nb\n"},
    )
    return path


@pytest.fixture
def segment_of():
    """``segment_of(path, tensor)``: the (offset, length) of each segment of a tensor."""

    def find(path, name: str) -> list[tuple[int, int]]:
        from cmf.index import iter_leaves

        with cmf.open(path) as f:
            entry = f.entry(name)
            return [
                (f.index.segments[leaf.segment].offset, f.index.segments[leaf.segment].length)
                for leaf in iter_leaves(entry.encoding)
            ]

    return find


class CliResult(NamedTuple):
    """What one in-process ``cmf`` call gave: exit code, stdout, stderr."""

    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


@pytest.fixture
def run(capsys) -> Callable[..., CliResult]:
    """``run(*args)``: the console entry point (cmf.cli.run) in-process -> CliResult; asserts
    that no traceback was printed."""
    from cmf import cli

    def invoke(*args) -> CliResult:
        capsys.readouterr()
        try:
            cli.run([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err, out + err
        return CliResult(code, out, err)

    return invoke
