"""cmf.ggml_encode on a real checkpoint: error vs naive rounding (and llama.cpp), with and without
an importance vector from real activations, and encode speed.

    python tools/ggml_encode_measure.py /work/models/smollm2-hf [--texts 16] [--heldout 32]
        [--layers N] [--types Q4_K,Q6_K] [--llama-lib /path/to/libggml-base.so]

For every 2-D weight (GGUF rows = the last numpy axis) and every type of ``cmf.ggml_encode.TYPES``
whose block divides the row length: relative RMS error ``|W' - W| / |W|`` of the naive rounding
(max-abs scales), of ``quantize_blocks`` and of ``quantize_blocks(..., importance)``; the
importance-weighted relative error ``sqrt(sum imp (W' - W)^2 / sum imp W^2)`` (the imatrix
objective, i.e. the output error under a diagonal activation covariance) of each; each the mean
over the tensors a type applies to (pooled sums would be one layer's figure: a few columns of
SmolLM2's down projections carry activations 1e7 times the median column's).
And the output error on held-out text,
``sqrt(tr(dW C dW^T) / tr(W C W^T))`` with ``C`` the second-moment matrix of the layer's inputs
over ``--heldout`` sentences of tools/data/heldout_sentences.txt (the expected ``|dW x| / |W x|``,
no diagonal approximation, texts never used for calibration). The importance of a Linear layer's
weight is the mean square of its inputs per column over ``--texts`` of cmf's calibration
sentences, run through ``transformers`` (CPU). ``--llama-lib`` adds llama.cpp's own quantizer
(``ggml_quantize_chunk`` of a ``libggml-base.so`` built from the llama-cpp-python sdist) as a
reference column, and checks
that llama.cpp's own dequantizer decodes cmf's bytes exactly as gguf-py does.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import time

import numpy as np

from cmf.ggml_encode import TYPES, naive_blocks, quantize_blocks

HERE = os.path.dirname(os.path.abspath(__file__))
SENTENCES = os.path.join(HERE, "..", "cmf", "runtime", "data", "sentences.txt")  # calibration
HELDOUT = os.path.join(HERE, "data", "heldout_sentences.txt")  # evaluation only


def activation_stats(model_dir: str, texts: list[str], full: bool) -> dict[str, np.ndarray]:
    """Per nn.Linear weight name: the mean square of its inputs per column ``(in,)`` or, with
    ``full``, their second-moment matrix ``E[x x^T]`` ``(in, in)``, over the tokens of ``texts``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    sums: dict[str, list] = {}

    def hook(name):
        def f(_mod, args):
            a = args[0].detach().reshape(-1, args[0].shape[-1]).double()  # (tokens, in)
            s = sums.setdefault(name, [0.0, 0])
            s[0] = s[0] + (a.T @ a if full else (a * a).sum(0))
            s[1] += a.shape[0]

        return f

    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            mod.register_forward_pre_hook(hook(name + ".weight"))
    with torch.no_grad():
        for t in texts:
            model(**tok(t, return_tensors="pt"))
    out = {k: (v[0] / v[1]).numpy() for k, v in sums.items()}
    if "lm_head.weight" in out:  # tied embeddings: the output projection's inputs
        out.setdefault("model.embed_tokens.weight", out["lm_head.weight"])
    return out


def _texts(path: str, n: int) -> list[str]:
    return [t.strip() for t in open(path, encoding="utf-8") if t.strip()][:n]


def llama_quantizer(path: str):
    """``f(x, name, imp) -> bytes`` through llama.cpp's ggml_quantize_chunk."""
    import gguf

    lib = ctypes.CDLL(path)
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    lib.ggml_quantize_chunk.argtypes += [ctypes.c_int64] * 3 + [ctypes.c_void_p]
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]

    def quantize(x, name, imp=None):
        qt = gguf.GGMLQuantizationType[name]
        x = np.ascontiguousarray(x, np.float32)
        blk, nb = gguf.GGML_QUANT_SIZES[qt]
        out = np.zeros((x.shape[0], x.shape[1] // blk * nb), np.uint8)
        lib.ggml_quantize_init(int(qt))
        imp = None if imp is None else np.ascontiguousarray(imp, np.float32)
        lib.ggml_quantize_chunk(
            int(qt),
            x.ctypes.data,
            out.ctypes.data,
            0,
            x.shape[0],
            x.shape[1],
            None if imp is None else imp.ctypes.data,
        )
        return out

    class Traits(ctypes.Structure):  # ggml.h struct ggml_type_traits
        _fields_ = [
            ("type_name", ctypes.c_char_p),
            ("blck_size", ctypes.c_int64),
            ("blck_size_interleave", ctypes.c_int64),
            ("type_size", ctypes.c_size_t),
            ("is_quantized", ctypes.c_bool),
            ("to_float", ctypes.c_void_p),
            ("from_float_ref", ctypes.c_void_p),
        ]

    lib.ggml_get_type_traits.restype = ctypes.POINTER(Traits)
    to_float_t = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)

    def decode(b, name, n):
        """llama.cpp's own dequantizer (type traits ``to_float``) on block bytes."""
        qt = gguf.GGMLQuantizationType[name]
        b = np.ascontiguousarray(b)
        out = np.empty(n, np.float32)
        fn = to_float_t(lib.ggml_get_type_traits(int(qt)).contents.to_float)
        fn(b.ctypes.data, out.ctypes.data, n)
        return out

    quantize.decode = decode
    return quantize


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("--texts", type=int, default=16, help="calibration sentences (importance)")
    ap.add_argument("--heldout", type=int, default=32, help="held-out sentences (output error)")
    ap.add_argument("--layers", type=int, default=None, help="only the first N layers' tensors")
    ap.add_argument("--llama-lib", default=None)
    ap.add_argument("--types", default=",".join(TYPES), help="comma-separated GGML types")
    args = ap.parse_args(argv)
    import gguf
    from gguf.quants import dequantize
    from safetensors.numpy import load_file

    weights = {
        k: v
        for k, v in load_file(os.path.join(args.model_dir, "model.safetensors")).items()
        if v.ndim == 2 and v.dtype == np.float32
    }
    if args.layers is not None:
        weights = {
            k: v
            for k, v in weights.items()
            if ".layers." not in k or int(k.split(".layers.")[1].split(".")[0]) < args.layers
        }
    imps = {
        k: v.astype(np.float32)
        for k, v in activation_stats(args.model_dir, _texts(SENTENCES, args.texts), False).items()
    }
    covs = activation_stats(args.model_dir, _texts(HELDOUT, args.heldout), True)
    ref = llama_quantizer(args.llama_lib) if args.llama_lib else None
    methods = ["naive", "cmf", "cmf+imp"] + (["llama", "llama+imp"] if ref else [])
    print(
        f"{len(weights)} 2-D tensors; importance from {args.texts} calibration texts, "
        f"output error on {args.heldout} held-out texts"
    )
    checks: list[str] = []
    names = [t.strip().upper() for t in args.types.split(",") if t.strip()]
    fits = {n: [k for k, v in weights.items() if v.shape[1] % TYPES[n].block == 0] for n in names}
    for n, ks in fits.items():
        print(
            f"  {n:7s} can take {len(ks):3d} tensors: "
            f"{sorted({tuple(weights[k].shape) for k in ks})}"
        )
    heads = " ".join(f"{m:>9s}" for m in methods)
    print(
        f"\n{'type':7s} {'tensors':>7s} | relative RMS error "
        + heads
        + " | importance-weighted "
        + heads
        + " | held-out output err "
        + heads
        + " | cmf MB/s"
    )
    for n, ks in fits.items():
        qt = gguf.GGMLQuantizationType[n]
        err = {m: [[], [], []] for m in methods}  # per tensor: relative, imp-weighted, output
        secs = mb = 0.0
        for k in ks:
            x = weights[k]
            imp = imps.get(k)
            imp = np.ones(x.shape[1], np.float32) if imp is None else imp
            for m in methods:
                t0 = time.perf_counter()
                fn, extra = {
                    "naive": (naive_blocks, ()),
                    "cmf": (quantize_blocks, ()),
                    "cmf+imp": (quantize_blocks, (imp,)),
                    "llama": (ref, ()),
                    "llama+imp": (ref, (imp,)),
                }[m]
                b = fn(x, n, *extra)
                if m == "cmf":
                    secs += time.perf_counter() - t0
                    mb += x.nbytes / 1e6
                    if ref and k == ks[0]:  # llama.cpp decodes cmf's bytes as gguf-py does
                        same = np.array_equal(
                            ref.decode(b, n, x.size), dequantize(b, qt).reshape(-1)
                        )
                        checks.append(f"{n}: llama.cpp decode {'==' if same else '!='} gguf-py")
                e2 = (dequantize(b, qt).reshape(x.shape) - x).astype(np.float64) ** 2
                x2 = x.astype(np.float64) ** 2
                err[m][0].append(np.sqrt(e2.sum() / x2.sum()))
                err[m][1].append(np.sqrt((e2 * imp).sum() / (x2 * imp).sum()))
                if k in covs:  # |dW x| / |W x| over held-out inputs x: full second moments
                    c, dw = covs[k], dequantize(b, qt).reshape(x.shape).astype(np.float64) - x
                    xw = x.astype(np.float64)
                    err[m][2].append(np.sqrt(((dw @ c) * dw).sum() / ((xw @ c) * xw).sum()))
        rel = " ".join(f"{np.mean(err[m][0]):9.5f}" for m in methods)
        wrel = " ".join(f"{np.mean(err[m][1]):9.5f}" for m in methods)
        orel = " ".join(f"{np.mean(err[m][2]) if err[m][2] else np.nan:9.5f}" for m in methods)
        print(
            f"{n:7s} {len(ks):7d} | {'':19s}{rel} | {'':20s}{wrel} | {'':19s}{orel} "
            f"| {mb / max(secs, 1e-9):7.1f}"
        )

    if checks:
        print("\n" + "; ".join(checks))


if __name__ == "__main__":
    main()
