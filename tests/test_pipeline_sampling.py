"""Pack speed paths: sampled candidate skipping keeps the exhaustive choice, cached zstd
(de)compressors give the same bytes, and the reader returns arrays that are the caller's own."""

from __future__ import annotations

import numpy as np
import pytest
import zstandard

import cmf
from cmf import dtypes, pipeline
from cmf.codecs.base import ArraySpec, BytesSpec
from cmf.codecs.byteplanes import BytePlanes
from cmf.codecs.raw import Raw
from cmf.codecs.zstd import Zstd
from cmf.pipeline import PendingLeaf, apply, describe


def exhaustive_bytes(data, spec: BytesSpec, level: int = 3):
    best = PendingLeaf(data, spec)
    for codec in (Zstd(level=1, literals_only=True), Zstd(level=level)):
        cand = apply(codec, data, spec, lambda v, s: PendingLeaf(v, s))
        if cand.stored < best.stored:
            best = cand
    return best


def exhaustive(array: np.ndarray, spec: ArraySpec):
    """encode_lossless without any skipping (the rule as spec/format.md §7 states it)."""
    leaf = lambda v, s: exhaustive_bytes(v, s)  # noqa: E731
    best = apply(Raw(), array, spec, leaf)
    if spec.dtype.itemsize in (2, 4, 8) and spec.numel > 0:
        planes = apply(BytePlanes(rotate=spec.dtype.is_float), array, spec, leaf)
        if planes.stored < best.stored:
            best = planes
    return best


def _cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    n = 400_000
    normal = (rng.standard_normal(n) * 0.05).astype(np.float32)
    return {
        "normal": normal,
        "halfzero": np.concatenate([np.zeros(n // 2, np.float32), normal[: n // 2]]),
        "reprows": np.tile(normal[:2688], 150),
        "sorted": np.sort(normal),
        "arange_i64": np.arange(n // 2, dtype=np.int64),
        "sparse": np.where(rng.random(n) < 0.9, 0, normal).astype(np.float32),
        "blocks": np.concatenate([normal[: n // 2], np.ones(n // 2, np.float32)]),
        "small_i16": rng.integers(-3, 3, n).astype(np.int16),
        "bytes_u32": np.frombuffer((b"the quick brown fox " * 80_000)[: 4 * n], np.uint32),
    }


@pytest.mark.parametrize("name", sorted(_cases()))
def test_sampling_keeps_the_exhaustive_choice(name: str) -> None:
    a = _cases()[name]
    spec = ArraySpec(dtypes.of_array(a), a.shape)
    fast, full = pipeline.encode_lossless(a, spec), exhaustive(a, spec)
    assert (describe(fast), fast.stored) == (describe(full), full.stored)


def test_cached_compressors_give_fresh_compressor_bytes() -> None:
    data = np.random.default_rng(1).integers(0, 4, 300_000, dtype=np.uint8).tobytes()
    for codec in (Zstd(level=3), Zstd(level=1, literals_only=True), Zstd(level=3)):
        out = codec.encode(data, BytesSpec(len(data)))["data"]
        assert out == codec._new_compressor().compress(data)
        assert zstandard.ZstdDecompressor().decompress(out) == data


def test_get_tensor_returns_independent_writable_arrays(tmp_path) -> None:
    rng = np.random.default_rng(3)
    tensors = {
        "planes": (rng.standard_normal((300, 70)) * 0.1).astype(np.float32),
        "tied": None,
        "raw": rng.integers(0, 2, 1000).astype(np.bool_),
        "zstd_raw": np.zeros(5000, np.int64),
    }
    tensors["tied"] = tensors["planes"].copy()
    path = tmp_path / "m.cmf"
    cmf.save_file(tensors, path)
    with cmf.open(path) as f:
        a, b = f.get_tensor("planes"), f.get_tensor("tied")
        for name in tensors:
            out = f.get_tensor(name)
            assert out.flags.writeable and out.tobytes() == tensors[name].tobytes()
        a[0, 0] = 42.0
        assert b[0, 0] == tensors["tied"][0, 0]  # no shared memory between results
