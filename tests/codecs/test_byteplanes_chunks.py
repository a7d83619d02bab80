"""``byteplanes`` encode/decode work in cache-sized chunks: check them against a plain reference
at and around the chunk boundaries, for every item size, with and without rotation."""

from __future__ import annotations

import numpy as np
import pytest

from cmf.codecs import byteplanes as bp
from cmf.codecs.base import ArraySpec
from cmf.codecs.byteplanes import BytePlanes
from cmf.dtypes import by_name

UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}
SIZES = [0, 1, 7, bp._CHUNK - 1, bp._CHUNK, bp._CHUNK + 1, 3 * bp._CHUNK + 5]
CASES = [(d, r) for d in ("f64", "f32", "f16", "bf16") for r in (False, True)] + [
    (d, False) for d in ("i16", "i32", "i64", "u16", "u32", "u64")
]


def reference_planes(a: np.ndarray, rotate: bool) -> list[bytes]:
    k = a.dtype.itemsize
    u = a.reshape(-1).view(UINT[k])
    if rotate:
        u = (u << np.uint8(1)) | (u >> np.uint8(8 * k - 1))
    cols = u.view(np.uint8).reshape(-1, k)
    return [cols[:, j].tobytes() for j in range(k)]


@pytest.mark.parametrize("dtype,rotate", CASES)
@pytest.mark.parametrize("n", SIZES)
def test_chunked_encode_decode_match_reference(dtype: str, rotate: bool, n: int) -> None:
    dt = by_name(dtype)
    raw = np.random.default_rng(n).integers(0, 256, n * dt.itemsize, dtype=np.uint8)
    a = raw.view(dt.numpy)  # any bit pattern: NaN payloads, -0.0, subnormals
    spec = ArraySpec(dt, (n,))
    codec = BytePlanes(rotate=rotate)
    parts = codec.encode(a, spec)
    assert [bytes(parts[f"p{j}"]) for j in range(dt.itemsize)] == reference_planes(a, rotate)
    out = codec.decode({p: bytes(v) for p, v in parts.items()}, spec)
    assert out.dtype == dt.numpy and out.shape == (n,)
    assert out.flags.writeable and out.tobytes() == raw.tobytes()


def test_decode_output_owns_its_memory() -> None:
    """The reader hands a decoded array out without copying only if nothing else holds it."""
    spec = ArraySpec(by_name("f32"), (3, 5))
    a = np.arange(15, dtype=np.float32).reshape(3, 5)
    codec = BytePlanes(rotate=True)
    out = codec.decode({p: bytes(v) for p, v in codec.encode(a, spec).items()}, spec)
    root = out
    while root.base is not None:
        root = root.base
    assert isinstance(root, np.ndarray) and root.flags.owndata and root.nbytes == out.nbytes
