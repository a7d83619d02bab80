"""Write the golden vectors in spec/vectors/ and their manifest.

Run only when the spec deliberately changes (a new vector, a new minor version): the committed
bytes are what tests/test_vectors.py decodes forever. Each vector is built from deterministic
inputs by ``VECTORS[name]()``; the manifest records, per tensor, dtype, shape, the encoding tree
summary and the SHA-256 of its little-endian bytes, and the zstd library version that wrote it.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
from typing import Any, Callable

import ml_dtypes
import numpy as np
import zstandard

import cmf
from cmf import format as fmt
from cmf.checksum import crc32c
from cmf.index import unpack
from cmf.limits import DEFAULT_LIMITS
from cmf.pipeline import describe

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "spec", "vectors")


def _bits(dtype: Any, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, n).astype(bool)
    return rng.integers(0, 256, n * dtype.itemsize, dtype=np.uint8).view(dtype)


def dtypes_vector(path: str) -> None:
    """One tensor per dtype (every bit pattern), plus rank 0 and empty tensors."""
    tensors = {d.name: _bits(d.numpy, 37, i).reshape(37) for i, d in enumerate(cmf.dtypes.BY_NAME.values())}
    tensors["scalar_f32"] = np.array(-2.5, np.float32)
    tensors["scalar_bool"] = np.array(True)
    tensors["empty_f16"] = np.zeros((3, 0, 2), np.float16)
    tensors["empty_i64"] = np.zeros((0,), np.int64)
    cmf.save_file(tensors, path)


def lossless_paths_vector(path: str) -> None:
    """Every lossless path: rotated planes (f32/bf16/f16/f64), unrotated int planes, raw>zstd,
    raw leaf, an alias, attachments and metadata of every JSON-like type."""
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((64, 48)) * 0.05).astype(np.float32)
    tensors = {
        "w_f32": w,
        "w_bf16": w.astype(ml_dtypes.bfloat16),
        "w_f16": w.astype(np.float16),
        "w_f64": w.astype(np.float64)[:16],
        "ids_i32": rng.integers(-1000, 1000, 3000).astype(np.int32),
        "zeros": np.zeros(4096, np.float32),
        "tiny": np.array([1, 2, 3], np.uint8),
        "tied": w.copy(),
    }
    metadata = {"s": "text", "i": -7, "u": 2**64 - 1, "f": 0.25, "b": False, "n": None, "l": [1, "x", [2.5]], "m": {"k": {"v": True}}}
    attachments = {"config.json": b'{"model_type": "golden"}' * 20, "sub/vocab.txt": b"a\nb\nc\n"}
    cmf.save_file(tensors, path, metadata, attachments=attachments)


def nan_payloads_vector(path: str) -> None:
    """Distinct NaN payloads, infinities, signed zeros and subnormals in f32, f16 and bf16."""
    f32 = np.array([0x7FC00000, 0x7FC00001, 0xFFBFFFFF, 0x7F800001, 0x7F800000, 0xFF800000, 0x00000001, 0x80000000], np.uint32)
    f16 = np.array([0x7E01, 0xFC01, 0x7C00, 0xFC00, 0x0001, 0x8000], np.uint16)
    bf = np.array([0x7FC1, 0xFF81, 0x7F80, 0x0001], np.uint16)
    cmf.save_file({
        "f32": np.tile(f32, 512).view(np.float32),
        "f16": f16.view(np.float16),
        "bf16": bf.view(ml_dtypes.bfloat16),
    }, path)


def huffman_vector(path: str) -> None:
    """4-bit codes (u8) and a u16 alphabet through the huffman codec."""
    rng = np.random.default_rng(11)
    codes = np.clip(np.round(rng.standard_normal(5000) * 2.5 + 8), 0, 15).astype(np.uint8)
    wide = (rng.zipf(1.3, 3000) % 40000).astype(np.uint16)
    recipe = {"rules": [{"match": "*", "encoding": {"codec": "huffman", "config": {"chunk": 256, "max_length": 12}}}]}
    cmf.save_file({"codes_u8": codes.reshape(50, 100), "wide_u16": wide}, path, recipe=recipe)


def future_minor_vector(path: str) -> None:
    """Minor version 7 with an unknown top-level index key: a 1.0 reader must still read it."""
    cmf.save_file({"x": np.arange(12, dtype=np.int16).reshape(3, 4)}, path)
    data = bytearray(open(path, "rb").read())
    off, length, _, _, _ = fmt.TRAILER.unpack(data[-fmt.TRAILER_SIZE:])
    index = unpack(bytes(data[off : off + length]), DEFAULT_LIMITS)
    index["x-future"] = {"note": "ignored by 1.0 readers"}
    import msgpack

    blob = msgpack.packb(index, use_bin_type=True)
    struct.pack_into("<H", data, 10, 7)  # minor
    out = bytes(data[:off]) + blob + fmt.pack_trailer(off, len(blob), crc32c(blob))
    with open(path, "wb") as fh:
        fh.write(out)


VECTORS: dict[str, Callable[[str], None]] = {
    "dtypes.cmf": dtypes_vector,
    "lossless_paths.cmf": lossless_paths_vector,
    "nan_payloads.cmf": nan_payloads_vector,
    "huffman.cmf": huffman_vector,
    "future_minor.cmf": future_minor_vector,
}


def describe_file(path: str) -> dict[str, Any]:
    """What a reader must get from ``path``: the manifest entry."""
    with cmf.open(path) as f:
        tensors = {}
        for entry in f.index.tensors:
            t = f.get_tensor(entry.name)
            tensors[entry.name] = {
                "dtype": entry.spec.dtype.name,
                "shape": list(entry.spec.shape),
                "encoding": f"alias of {entry.alias}" if entry.alias else describe(entry.encoding),
                "sha256": hashlib.sha256(t.tobytes()).hexdigest(),
            }
        return {
            "minor": f.minor,
            "bytes": f.size,
            "sha256_file": hashlib.sha256(open(path, "rb").read()).hexdigest(),
            "tensors": tensors,
            "attachments": {a: hashlib.sha256(f.get_attachment(a)).hexdigest() for a in f.attachments()},
            "metadata": f.metadata(),
        }


def main(out_dir: str = HERE) -> None:
    os.makedirs(out_dir, exist_ok=True)
    manifest: dict[str, Any] = {"zstd_version": zstandard.ZSTD_VERSION, "vectors": {}}
    for name, build in VECTORS.items():
        path = os.path.join(out_dir, name)
        build(path)
        manifest["vectors"][name] = describe_file(path)
    with open(os.path.join(out_dir, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=1)  # key order = tensor order
        fh.write("\n")
    print(f"wrote {len(VECTORS)} vectors to {out_dir}")


if __name__ == "__main__":
    main(*sys.argv[1:])
