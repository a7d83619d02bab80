"""GGUF bytes vs .cmf bytes per GGML type, on real weights, with each field's entropy bound.

    python tools/ggml_measure.py /work/models/smollm2-hf [--layers 4] [--types Q4_K,Q6_K,...]

For each type: the 2-D weights of the first ``--layers`` layers of a safetensors checkpoint
(each flattened to rows of 256 elements, so that every block type applies), quantized to the
type (cmf.ggml_encode's importance-free K-quant/IQ4 encoders, gguf-py's quantizer for the
others; or, with ``--llama-lib``, llama.cpp's own quantizer for every type), written as a GGUF
with gguf-py's GGUFWriter, packed with ``cmf pack`` (the ``ggml`` codec), checked bit-equal to
``gguf.quants.dequantize`` and block-identical, and measured: GGUF tensor-data bytes, .cmf file
bytes, ratio, and per field the stored bytes and the order-0 entropy bound (bits per value x
values; f16 fields at the entropy of each byte plane). The order-0 bound of all fields is the
best any per-field table coder can reach with this layout.
``--styles Q4_K_M,Q6_K`` also packs llama.cpp-like mixes of the unflattened weights and the
embedding (K-quants where rows are whole super-blocks, llama.cpp's fallbacks elsewhere).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

GGUF_PY_QUANTIZES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "TQ1_0", "TQ2_0", "MXFP4")
DEFAULT = ("Q8_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K", "Q3_K", "Q2_K", "IQ4_XS", "IQ4_NL")


def weights(model_dir: str, layers: int, flat: bool = True) -> dict[str, np.ndarray]:
    """The 2-D weights of the first ``layers`` layers (and, unflattened, the token embedding),
    as rows of 256 when ``flat``, else as they are (numpy order: GGUF rows are the last axis)."""
    from safetensors.numpy import load_file

    sd = load_file(os.path.join(model_dir, "model.safetensors"))
    keep = {}
    for k, v in sd.items():
        if v.ndim == 2 and (
            any(f".layers.{i}." in k for i in range(layers)) or (not flat and "embed" in k)
        ):
            x = v.astype(np.float32)
            keep[k] = x.reshape(-1, 256) if flat else x  # (rows, 256) or (out, in)
    return keep


def style_type(style: str, name: str, cols: int) -> str:
    """The GGML type a llama.cpp-like ``style`` gives tensor ``name`` of ``cols`` columns:
    ``Q4_K_M``: Q6_K for attn_v / ffn_down / the embedding, Q4_K otherwise; ``Q6_K``: Q6_K.
    Rows that are not whole super-blocks fall back as llama.cpp does (Q4_K -> Q5_0,
    Q6_K -> Q8_0)."""
    big = style == "Q6_K" or any(k in name for k in ("v_proj", "down_proj", "embed"))
    if big:
        return "Q6_K" if cols % 256 == 0 else "Q8_0"
    return "Q4_K" if cols % 256 == 0 else "Q5_0"


LLAMA = None  # ggml_quantize_chunk of a libggml-base.so, when --llama-lib is given


def llama_quantize(lib_path: str):
    """``f(x, kind) -> blocks`` through llama.cpp's ggml_quantize_chunk (an importance of ones
    for the types that require one: IQ1_*, IQ2_*)."""
    import ctypes

    import gguf

    lib = ctypes.CDLL(lib_path)
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = (
        [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int64] * 3 + [ctypes.c_void_p]
    )
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]

    def f(x: np.ndarray, kind: str) -> np.ndarray:
        qt = gguf.GGMLQuantizationType[kind]
        block, size = gguf.GGML_QUANT_SIZES[qt]
        x = np.ascontiguousarray(x, np.float32)
        out = np.zeros((x.shape[0], x.shape[1] // block * size), np.uint8)
        imp = np.ones(x.shape[1], np.float32)
        lib.ggml_quantize_init(int(qt))
        lib.ggml_quantize_chunk(
            int(qt), x.ctypes.data, out.ctypes.data, 0, x.shape[0], x.shape[1], imp.ctypes.data
        )
        return out

    return f


def quantize(x: np.ndarray, kind: str) -> np.ndarray:
    import gguf

    if LLAMA is not None:
        return LLAMA(x, kind)
    if kind in GGUF_PY_QUANTIZES:
        return gguf.quants.quantize(x, gguf.GGMLQuantizationType[kind])
    from cmf.ggml_encode import quantize_blocks

    return quantize_blocks(x, kind)


def entropy_bytes(values: np.ndarray) -> float:
    """Order-0 entropy of ``values`` in bytes (f16: of each byte plane)."""
    if values.dtype == np.float16:
        b = values.view(np.uint8).reshape(-1, 2)
        return sum(entropy_bytes(b[:, k].copy()) for k in range(2))
    counts = np.bincount(values.reshape(-1).astype(np.int64))
    p = counts[counts > 0] / values.size
    return float(-(p * np.log2(p)).sum() * values.size / 8)


def stored(f, node) -> int:
    """Bytes of the segments under ``node`` of the open file ``f``."""
    from cmf.index import CodecNode, Leaf

    if isinstance(node, Leaf):
        return len(f.segment(node.segment))
    return sum(stored(f, c) for c in node.parts.values()) if isinstance(node, CodecNode) else 0


def measure(label: str, tensors: dict[str, np.ndarray], type_of, tmp: str) -> dict:
    """Write ``tensors`` as a GGUF (tensor ``name`` as ``type_of(name, x)``), pack it, check the
    round trip, and measure bytes per type and per field."""
    import gguf

    import cmf
    from cmf.codecs.ggml_codec import Blocks, Ggml
    from cmf.convert.gguf_blocks import block_bytes

    path, out = os.path.join(tmp, f"{label}.gguf"), os.path.join(tmp, f"{label}.cmf")
    w = gguf.GGUFWriter(path, "llama")
    blocks = {}
    for name, x in tensors.items():
        kind = type_of(name, x)
        b = quantize(x, kind)
        blocks[name] = (b, kind)
        w.add_tensor(name, b, raw_shape=b.shape, raw_dtype=gguf.GGMLQuantizationType[kind])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    subprocess.run(
        [sys.executable, "-m", "cmf.cli", "pack", path, "-o", out, "-q", "--force"], check=True
    )
    fields: dict[str, list[float]] = {}
    types: dict[str, list[int]] = {}
    with cmf.open(out) as f:
        for name, (b, kind) in blocks.items():
            got = f.get_tensor(name)
            want = gguf.quants.dequantize(b, gguf.GGMLQuantizationType[kind])
            assert got.tobytes() == want.tobytes(), (kind, name)
            assert block_bytes(f, name).tobytes() == b.tobytes(), (kind, name)
            node = f.entry(name).encoding
            codec = node.codec
            assert isinstance(codec, Ggml)
            parts = codec.encode(Blocks(b), f.spec(name))
            t = types.setdefault(kind, [0, 0])
            t[0] += b.nbytes
            for field, child in node.parts.items():
                size = stored(f, child)
                t[1] += size
                acc = fields.setdefault(field, [0.0, 0.0, 0.0])
                acc[0] += parts[field].nbytes
                acc[1] += size
                acc[2] += entropy_bytes(parts[field])
    return {
        "label": label,
        "gguf": os.path.getsize(path),
        "data": sum(b.nbytes for b, _ in blocks.values()),
        "cmf": os.path.getsize(out),
        "fields": fields,
        "types": types,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--types", default=",".join(DEFAULT))
    ap.add_argument(
        "--styles",
        default="",
        help="llama.cpp-like mixes on the unflattened weights "
        "and the embedding, e.g. Q4_K_M,Q6_K (see style_type)",
    )
    ap.add_argument(
        "--llama-lib",
        help="quantize with llama.cpp's ggml_quantize_chunk from this libggml-base.so",
    )
    args = ap.parse_args(argv)
    global LLAMA
    if args.llama_lib:
        LLAMA = llama_quantize(args.llama_lib)
    with tempfile.TemporaryDirectory() as tmp:
        if args.types:
            tensors = weights(args.model_dir, args.layers)
            n = sum(x.size for x in tensors.values())
            print(
                f"{len(tensors)} tensors, {n / 1e6:.1f} M weights "
                f"(layers 0..{args.layers - 1}, rows of 256)"
            )
            print(
                f"{'type':8} {'GGUF B':>11} {'.cmf B':>11} {'ratio':>6} {'bound':>6}  "
                "fields: stored/bound bytes"
            )
            for kind in args.types.split(","):
                r = measure(kind, tensors, lambda name, x, kind=kind: kind, tmp)
                bound = sum(v[2] for v in r["fields"].values())
                desc = "  ".join(
                    f"{k} {v[1] / 1e3:.0f}/{v[2] / 1e3:.0f}K" for k, v in r["fields"].items()
                )
                print(
                    f"{kind:8} {r['gguf']:>11} {r['cmf']:>11} {r['cmf'] / r['gguf']:6.3f} "
                    f"{bound / r['data']:6.3f}  {desc}",
                    flush=True,
                )
        if args.styles:
            tensors = weights(args.model_dir, args.layers, flat=False)
            n = sum(x.size for x in tensors.values())
            print(
                f"{len(tensors)} tensors, {n / 1e6:.1f} M weights "
                f"(layers 0..{args.layers - 1} and the embedding)"
            )
            for style in args.styles.split(","):
                r = measure(
                    style,
                    tensors,
                    lambda name, x, style=style: style_type(style, name, x.shape[-1]),
                    tmp,
                )
                per = "  ".join(
                    f"{k} {v[1] / v[0]:.3f} of {v[0] / 1e6:.1f} MB" for k, v in r["types"].items()
                )
                print(
                    f"{style:8} {r['gguf']:>11} {r['cmf']:>11} {r['cmf'] / r['gguf']:6.3f}  {per}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
