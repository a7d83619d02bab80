"""The Llama runner on a generated model: speed, memory and fidelity of cmf presets.

    python tools/bench_llama.py [--layers 4] [--hidden 256] [--vocab 2000] [--json] [--out DIR]

Builds a small Llama-family model (random weights, fixed seed; by default 8 query / 4 key-value
heads and tied embeddings as SmolLM has them; ``--heads``, ``--kv-heads``, ``--ff`` and
``--untied`` change that: SmolLM-135M's shape is ``--layers 30 --hidden 576 --heads 9
--kv-heads 3 --ff 1536 --vocab 49152``), saves it as ``model.safetensors`` + ``config.json``,
and packs it with ``cmf.save_file`` three ways: ``lossless``, ``q8`` and ``q4`` (config.json
carried as an attachment). Then, for the safetensors original and for each ``.cmf``, a fresh
Python process (so peak RSS is that variant's own; ``--threads`` BLAS threads, default 1) loads
the model into ``cmf.runtime.llama.LlamaRunner`` and measures:

* load: seconds from opening the file to a ready runner (every tensor decoded to float32);
* prompt: tokens/s of the first ``--prompt`` tokens as one whole-sequence pass (median of
  ``--repeat`` runs);
* generation: tokens/s of ``--gen`` greedy steps against the KV cache after that prompt;
* RSS with the model loaded (file closed), peak RSS of the process (VmHWM: while loading, the
  mapped file's pages count too; the perplexity and logits passes add [tokens, vocab] arrays),
  and RSS before loading the model;
* perplexity on a fixed ``--eval-len``-token sequence.

Random weights give a near-uniform next-token distribution, so the weights are scaled to give
peaked, "confident" distributions, and the fixed sequence is *sampled from the original model*
(temperature 1, fixed seed): its perplexity is then well below the vocabulary size and moves
when the weights are damaged. Against the original's logits on that sequence the parent reports
the mean KL(original || variant) of next-token distributions, top-1 agreement, the max abs
logit error, and how many of the greedy tokens match the original's.

A random network is not a trained one: how much a given weight error moves its outputs depends
on the weight scales chosen here (with q/k weights twice as large, q8 gave a mean KL of 0.11
instead of 0.003). Quote these numbers for speed and memory, and as a relative ordering of the
presets; fidelity of a real checkpoint has to be measured on that checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import cmf  # noqa: E402  (the working tree's cmf, not an installed copy)
from cmf.runtime.llama import LlamaRunner, log_softmax  # noqa: E402

PRESETS = ("lossless", "q8", "q4")


def rss_bytes() -> int:
    """Current resident set size (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def peak_rss_bytes() -> int:
    """Peak RSS of this process image: VmHWM (Linux), else ru_maxrss, which Linux carries over
    from the forked parent across exec (it would report the parent's size)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


# ----------------------------------------------------------------------------- the model


def make_config(
    layers: int, hidden: int, vocab: int, tied: bool, heads: int = 0, kv_heads: int = 0, ff: int = 0
) -> dict[str, Any]:
    heads = heads or max(hidden // 32, 2)
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": ff or 3 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads or max(heads // 2, 1),
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": tied,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def make_weights(config: dict[str, Any], seed: int = 0) -> dict[str, np.ndarray]:
    """Gaussian weights, std gain/sqrt(fan_in), norms around 1; the final norm around 3 so that
    next-token distributions are peaked (logit std about 3) instead of near uniform."""
    rng = np.random.default_rng(seed)
    d, ff, V = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    H, K = config["num_attention_heads"], config["num_key_value_heads"]
    hd = d // H

    def mat(rows: int, cols: int, gain: float = 1.0) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * gain / np.sqrt(cols)).astype(np.float32)

    def norm(scale: float = 1.0) -> np.ndarray:
        return (scale * (1 + 0.1 * rng.standard_normal(d))).astype(np.float32)

    w = {"model.embed_tokens.weight": mat(V, d)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm()
        w[p + "self_attn.q_proj.weight"] = mat(H * hd, d)
        w[p + "self_attn.k_proj.weight"] = mat(K * hd, d)
        w[p + "self_attn.v_proj.weight"] = mat(K * hd, d)
        w[p + "self_attn.o_proj.weight"] = mat(d, H * hd, 0.5)
        w[p + "post_attention_layernorm.weight"] = norm()
        w[p + "mlp.gate_proj.weight"] = mat(ff, d)
        w[p + "mlp.up_proj.weight"] = mat(ff, d)
        w[p + "mlp.down_proj.weight"] = mat(d, ff, 0.5)
    w["model.norm.weight"] = norm(3.0)
    if not config["tie_word_embeddings"]:
        w["lm_head.weight"] = mat(V, d)
    return w


def sample_sequence(runner: LlamaRunner, n: int, seed: int) -> np.ndarray:
    """``n`` tokens sampled from the model itself at temperature 1, starting from token 1."""
    rng = np.random.default_rng(seed)
    ids, cache = [1], runner.new_cache()
    logits = runner.next_logits(ids, cache)
    while len(ids) < n:
        p = np.exp(log_softmax(logits.astype(np.float64)))
        ids.append(int(rng.choice(len(p), p=p / p.sum())))
        logits = runner.next_logits(ids[-1:], cache)
    return np.array(ids, dtype=np.int64)


# ----------------------------------------------------------------------- one variant (child)


def measure(
    path: str, eval_path: str, logits_path: str, prompt: int, gen: int, repeat: int
) -> dict[str, Any]:
    rss_before = rss_bytes()
    start = time.perf_counter()
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with open(os.path.join(os.path.dirname(path), "config.json"), encoding="utf-8") as fh:
            config = json.load(fh)
        with safe_open(path, "numpy") as f:
            runner = LlamaRunner.from_tensors(f.get_tensor, config)
    else:
        with cmf.open(path) as f:
            config = json.loads(f.get_attachment("config.json"))
            runner = LlamaRunner.from_tensors(f.get_tensor, config)
    load_s = time.perf_counter() - start
    rss_loaded = rss_bytes()
    ids = np.load(eval_path)
    prompt_ids = ids[:prompt]

    prompt_times, gen_times, tokens = [], [], []
    for _ in range(repeat):
        cache = runner.new_cache()
        t0 = time.perf_counter()
        logits = runner.next_logits(prompt_ids, cache)
        t1 = time.perf_counter()
        tokens = []
        for _ in range(gen):
            tokens.append(int(np.argmax(logits)))
            logits = runner.next_logits(tokens[-1:], cache)
        t2 = time.perf_counter()
        prompt_times.append(t1 - t0)
        gen_times.append(t2 - t1)
    assert tokens == runner.generate(list(prompt_ids), gen)  # the timed loop is greedy decoding
    perplexity = runner.perplexity(ids)
    np.save(logits_path, runner.logits(ids))
    return {
        "load_s": load_s,
        "prompt_tok_s": len(prompt_ids) / statistics.median(prompt_times),
        "gen_tok_s": gen / statistics.median(gen_times) if gen else None,
        "perplexity": perplexity,
        "generated": tokens,
        "rss_before_model": rss_before,
        "rss_loaded": rss_loaded,
        "peak_rss": peak_rss_bytes(),
    }


# ------------------------------------------------------------------------------ the parent


def kl_stats(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    lp, lq = log_softmax(ref.astype(np.float64)), log_softmax(got.astype(np.float64))
    kl = np.sum(np.exp(lp) * (lp - lq), axis=-1)  # [n]
    return {
        "mean_kl": float(kl.mean()),
        "max_kl": float(kl.max()),
        "top1_agreement": float(np.mean(ref.argmax(-1) == got.argmax(-1))),
        "max_abs_logit_error": float(np.abs(ref - got).max()),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from safetensors.numpy import load_file as st_load_file
    from safetensors.numpy import save_file as st_save_file

    out = args.out or tempfile.mkdtemp(prefix="bench_llama_")
    os.makedirs(out, exist_ok=True)
    config = make_config(
        args.layers, args.hidden, args.vocab, not args.untied, args.heads, args.kv_heads, args.ff
    )
    weights = make_weights(config, args.seed)
    st_path = os.path.join(out, "model.safetensors")
    st_save_file(weights, st_path)
    config_bytes = json.dumps(config, indent=2).encode()
    with open(os.path.join(out, "config.json"), "wb") as fh:
        fh.write(config_bytes)
    params = sum(w.size for w in weights.values())

    eval_ids = sample_sequence(
        LlamaRunner.from_tensors(weights.__getitem__, config), args.eval_len, args.seed + 1
    )
    eval_path = os.path.join(out, "eval_ids.npy")
    np.save(eval_path, eval_ids)
    del weights

    variants = [("safetensors f32", st_path)]
    pack_s = {}
    tensors = st_load_file(st_path)
    for name in PRESETS:
        path = os.path.join(out, f"model.{name}.cmf")
        t0 = time.perf_counter()
        cmf.save_file(tensors, path, preset=name, attachments={"config.json": config_bytes})
        pack_s[name] = time.perf_counter() - t0
        variants.append((f"cmf {name}", path))
    del tensors

    rows = []
    for label, path in variants:
        logits_path = path + ".logits.npy"
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--measure",
            path,
            "--eval-ids",
            eval_path,
            "--logits-out",
            logits_path,
            "--prompt",
            str(args.prompt),
            "--gen",
            str(args.gen),
            "--repeat",
            str(args.repeat),
        ]
        if args.in_process:
            result = measure(path, eval_path, logits_path, args.prompt, args.gen, args.repeat)
        else:
            env = dict(os.environ)
            if args.threads:  # BLAS threads of the child, fixed before it imports numpy
                for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                    env[var] = str(args.threads)
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
            if proc.returncode != 0:
                raise SystemExit(f"measuring {label} failed:\n{proc.stderr}")
            result = json.loads(proc.stdout)
        result.update(variant=label, file_bytes=os.path.getsize(path), logits_path=logits_path)
        rows.append(result)
    ref_logits, ref_tokens = np.load(rows[0]["logits_path"]), list(rows[0]["generated"])
    for row in rows:
        row.update(kl_stats(ref_logits, np.load(row.pop("logits_path"))))
        same = 0
        for a, b in zip(ref_tokens, row["generated"], strict=False):
            if a != b:
                break
            same += 1
        row["greedy_prefix_match"] = same
        row["ratio_vs_safetensors"] = rows[0]["file_bytes"] / row["file_bytes"]
        row["pack_s"] = pack_s.get(row["variant"].removeprefix("cmf "))
        row.pop("generated")
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, numpy {np.__version__}, "
        f"python {platform.python_version()}",
        "model": {
            **{
                k: config[k]
                for k in (
                    "num_hidden_layers",
                    "hidden_size",
                    "intermediate_size",
                    "num_attention_heads",
                    "num_key_value_heads",
                    "vocab_size",
                    "tie_word_embeddings",
                )
            },
            "parameters": params,
        },
        "settings": {
            "prompt": args.prompt,
            "gen": args.gen,
            "eval_len": args.eval_len,
            "repeat": args.repeat,
            "seed": args.seed,
            "blas_threads": None if args.in_process else args.threads or "default",
        },
        "directory": out,
        "rows": rows,
    }


def print_table(report: dict[str, Any]) -> None:
    m, s = report["model"], report["settings"]
    print(
        f"Llama-family model: {m['num_hidden_layers']} layers, hidden {m['hidden_size']}, "
        f"ff {m['intermediate_size']}, "
        f"{m['num_attention_heads']}/{m['num_key_value_heads']} heads, vocab {m['vocab_size']}, "
        f"{'tied' if m['tie_word_embeddings'] else 'untied'}, {m['parameters'] / 1e6:.2f} M params"
    )
    print(
        f"prompt {s['prompt']} tokens, {s['gen']} generated, eval sequence {s['eval_len']} tokens "
        f"(sampled from the original), medians of {s['repeat']}, "
        f"BLAS threads {s['blas_threads']}; {report['machine']}"
    )
    head = (
        "variant",
        "MB",
        "ratio",
        "load s",
        "prompt tok/s",
        "gen tok/s",
        "loaded RSS MB",
        "peak RSS MB",
        "ppl",
        "mean KL",
        "top-1",
        "max |dlogit|",
        "greedy",
    )
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
    for r in report["rows"]:
        cells = [
            r["variant"],
            f"{r['file_bytes'] / 1e6:.2f}",
            f"{r['ratio_vs_safetensors']:.2f}x",
            f"{r['load_s']:.2f}",
            f"{r['prompt_tok_s']:.0f}",
            f"{r['gen_tok_s']:.0f}" if r["gen_tok_s"] else "-",
            f"{r['rss_loaded'] / 1e6:.0f}",
            f"{r['peak_rss'] / 1e6:.0f}",
            f"{r['perplexity']:.3f}",
            f"{r['mean_kl']:.2e}",
            f"{r['top1_agreement']:.3f}",
            f"{r['max_abs_logit_error']:.3f}",
            f"{r['greedy_prefix_match']}/{s['gen']}",
        ]
        print("| " + " | ".join(cells) + " |")
    print(
        f"(files in {report['directory']}; RSS before loading the model: "
        f"{report['rows'][0]['rss_before_model'] / 1e6:.0f} MB)"
    )


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=2000)
    ap.add_argument("--heads", type=int, default=0, help="query heads (default: hidden / 32)")
    ap.add_argument("--kv-heads", type=int, default=0, help="key/value heads (default: heads / 2)")
    ap.add_argument("--ff", type=int, default=0, help="MLP size (default: 3 * hidden)")
    ap.add_argument(
        "--untied", action="store_true", help="separate lm_head (default: tied, as SmolLM)"
    )
    ap.add_argument(
        "--prompt", type=int, default=128, help="prompt tokens for the prompt-speed pass"
    )
    ap.add_argument("--gen", type=int, default=64, help="greedy tokens generated after the prompt")
    ap.add_argument(
        "--eval-len", type=int, default=512, help="tokens of the perplexity / KL sequence"
    )
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="directory for the model files (default: a new temporary one)")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="BLAS threads per measuring process (0: library default; on a busy 2-core box "
        "multi-threaded OpenBLAS ran 10x slower than 1 thread)",
    )
    ap.add_argument(
        "--in-process",
        action="store_true",
        help="measure in this process (peak RSS is then shared)",
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--measure", help=argparse.SUPPRESS)  # child mode: one variant
    ap.add_argument("--eval-ids", help=argparse.SUPPRESS)
    ap.add_argument("--logits-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measure:
        print(
            json.dumps(
                measure(
                    args.measure, args.eval_ids, args.logits_out, args.prompt, args.gen, args.repeat
                )
            )
        )
        return None
    if args.prompt > args.eval_len:
        ap.error("--prompt must not exceed --eval-len (the prompt is the eval sequence's start)")
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return report


if __name__ == "__main__":
    main()
