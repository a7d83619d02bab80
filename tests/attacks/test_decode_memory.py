"""Scratch memory of each decoder, relative to what it decodes (tracemalloc peak).

``limits.max_tensor_bytes`` bounds the decoded size of a node; a decoder that needs many times
that in scratch memory lets a file beyond a reader's expectations. The worst inputs found:
``sparse`` with every element stored (u8: 8-byte positions per 1-byte element) needed 10x
(bitmask) and 26x (delta) the output, ``outlier`` 3.3x; they now decode positions a chunk at a
time (scratch bounded by the chunk). Every decoder here stays within ``4x output + 40 MiB``;
sparse and outlier within ``output + dense copy + 40 MiB``.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from cmf.codecs import ArraySpec
from cmf.codecs.bitpack import BitPack
from cmf.codecs.byteplanes import BytePlanes
from cmf.codecs.codebook import Codebook
from cmf.codecs.lowrank import LowRank
from cmf.codecs.outlier import Outlier
from cmf.codecs.partition import Partition
from cmf.codecs.quantize import Quantize
from cmf.codecs.sparse import Sparse
from cmf.dtypes import BY_NAME

MiB = 1 << 20
N = 1 << 23  # 8 Mi elements


def _peak(codec, spec, parts) -> tuple[int, int]:
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        out = codec.decode(parts, spec)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return peak, out.nbytes


def _spec(dtype: str, shape) -> ArraySpec:
    return ArraySpec(BY_NAME[dtype], tuple(shape))


def _cases():
    u8, f32, f16 = _spec("u8", (N,)), _spec("f32", (N,)), _spec("f16", (N,))
    yield (
        "sparse bitmask u8 all stored",
        1,
        Sparse(layout="bitmask", nnz=N),
        u8,
        {"values": np.ones(N, np.uint8), "mask": b"\xff" * (N // 8)},
    )
    yield (
        "sparse delta u8 all stored",
        1,
        Sparse(layout="delta", nnz=N, bits=8, entries=N),
        u8,
        {"values": np.ones(N, np.uint8), "index": np.zeros(N, np.uint8)},
    )
    yield (
        "sparse delta u8 fillers",
        1,
        Sparse(layout="delta", nnz=N // 2, bits=1, entries=N),
        u8,
        {"values": np.ones(N // 2, np.uint8), "index": np.tile(np.array([1, 0], np.uint8), N // 2)},
    )
    yield (
        "outlier f16 every element",
        2,
        Outlier(count=N, bits=8, entries=N),
        f16,
        {
            "dense": np.zeros(N, np.float16),
            "index": np.zeros(N, np.uint8),
            "values": np.ones(N, np.float16),
        },
    )
    yield "bitpack 3-bit u8", 4, BitPack(bits=3), u8, {"data": bytes((N * 3 + 7) // 8)}
    yield (
        "codebook u8 indices",
        4,
        Codebook(k=256, block=0, axis=None, scale_dtype=None),
        f32,
        {"indices": np.zeros(N, np.uint8), "codebook": np.zeros(256, np.float32)},
    )
    q = Quantize(bits=8, block=1, axis=-1, scheme="zero_point", scale_dtype="f32", search=False)
    yield (
        "quantize block 1",
        4,
        q,
        f32,
        {
            "q": np.zeros(N, np.uint8),
            "scale": np.ones(N, np.float32),
            "zero": np.zeros(N, np.uint8),
        },
    )
    yield "byteplanes f32", 4, BytePlanes(rotate=True), f32, {f"p{j}": bytes(N) for j in range(4)}
    classes = (np.arange(N) % 256).astype(np.uint8)  # narrow rows: the order scratch would be 8x
    rows = {f"p{j}": np.zeros((N // 256, 1), np.uint8) for j in range(256)}
    yield (
        "partition u8 rows of 1",
        1,
        Partition(counts=(N // 256,) * 256),
        _spec("u8", (N, 1)),
        {"class": classes, **rows},
    )
    yield (
        "partition rows of 0",
        0,
        Partition(counts=(N // 256,) * 256),
        _spec("u8", (N, 0)),
        {"class": classes, **{n: np.zeros((N // 256, 0), np.uint8) for n in rows}},
    )
    m = _spec("f32", (2048, N // 2048))
    yield (
        "lowrank rank 1",
        4,
        LowRank(rank=1, split=-1, factor_dtype="f32"),
        m,
        {"u": np.ones((2048, 1), np.float32), "v": np.ones((1, N // 2048), np.float32)},
    )


CASES = {name: rest for name, *rest in _cases()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_decode_scratch_is_bounded(name):
    factor, codec, spec, parts = CASES[name]
    peak, out = _peak(codec, spec, parts)
    print(
        f"\n{name}: output {out / MiB:.0f} MiB, peak {peak / MiB:.0f} MiB "
        f"({peak / max(out, 1):.2f}x)"
    )
    assert peak <= factor * out + 40 * MiB, (
        f"{name}: peak {peak / MiB:.0f} MiB for {out / MiB:.0f} MiB"
    )
