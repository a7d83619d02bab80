"""``cmf run``'s engines side by side: torch (transformers, float32) against the numpy reference.

Used by ``python tools/bench.py torch`` (tools/bench_torch.py), which packs the models. For each
``.cmf`` and engine, in this process: the load time (``load_runner``), then

* an encoder (MiniLM): sentences/s of ``embed`` over the built-in sentences ``repeat`` times,
  after one warm-up pass;
* a decoder (SmolLM2 packed from its f32 directory, or from a GGUF): prompt tokens/s (the logits
  of the first ``prompt`` tokens of the built-in sentences in one pass, median of three) and
  greedy generation tokens/s (``gen`` new tokens after 8 prompt tokens, KV cache).

The torch engine runs once with torch's default intra-op thread count and once with one thread
(``torch.set_num_threads``): on a machine whose cores are busy with other work, OpenMP threads
that spin-wait for each other can make the default many times slower than one thread. The
machine may be shared: figures are medians or single passes, with the load average beside them.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any


def _timed(fn: Any, *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def encoder_row(path: str, engine: str, repeat: int) -> dict[str, Any]:
    """Load seconds and sentences/s of ``embed`` for the encoder in ``path`` on ``engine``."""
    from cmf.runtime.evaluate import sample_sentences
    from cmf.runtime.rebuild import load_runner

    runner, load = _timed(lambda: load_runner(path, engine=engine))
    sentences = sample_sentences()
    runner.embed(sentences)  # warm-up
    _, seconds = _timed(lambda: [runner.embed(sentences) for _ in range(repeat)])
    return {
        "engine": runner.engine,
        "load_s": load,
        "sentences_per_s": len(sentences) * repeat / seconds,
    }


def decoder_row(path: str, engine: str, prompt: int, gen: int) -> dict[str, Any]:
    """Load seconds, prompt tokens/s and greedy generation tokens/s of the decoder in ``path``."""
    from cmf.runtime.evaluate import sample_sentences
    from cmf.runtime.rebuild import load_runner

    runner, load = _timed(lambda: load_runner(path, engine=engine))
    ids = runner.encode(" ".join(sample_sentences()))[:prompt]
    runner.logits(ids[:8])  # warm-up
    passes = [_timed(runner.logits, ids)[1] for _ in range(3)]
    runner.generate(ids[:8], 2)  # warm-up
    out, seconds = _timed(runner.generate, ids[:8], gen)
    return {
        "engine": runner.engine,
        "load_s": load,
        "prompt_tok_per_s": len(ids) / statistics.median(passes),
        "gen_tok_per_s": len(out) / seconds,
        "generated": len(out),
    }


def _thread_counts() -> list[int]:
    import torch

    default = torch.get_num_threads()
    return [default] + ([1] if default > 1 else [])


def measure(
    models: list[tuple[str, str, str]], *, repeat: int = 3, prompt: int = 128, gen: int = 16
) -> list[dict[str, Any]]:
    """One row per (label, kind, path) of ``models`` ("encoder" or "decoder"), engine and (for
    torch) thread count."""
    import torch
    import transformers

    for name in ("BertModel", "LlamaForCausalLM"):  # import their code before any load is timed
        getattr(transformers, name)
    rows, default = [], torch.get_num_threads()
    for label, kind, path in models:
        for engine, threads in [("torch", t) for t in _thread_counts()] + [("reference", None)]:
            torch.set_num_threads(threads or default)
            try:
                row = (
                    encoder_row(path, engine, repeat)
                    if kind == "encoder"
                    else decoder_row(path, engine, prompt, gen)
                )
            finally:
                torch.set_num_threads(default)
            rows.append(
                {
                    "model": label,
                    "kind": kind,
                    **row,
                    "threads": threads,
                    "loadavg": os.getloadavg()[0],
                }
            )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    """Markdown: throughput per model and engine, and torch's speed-up over the reference."""
    print(
        "| model | engine | load s | sentences/s | prompt tok/s | gen tok/s | torch / reference "
        "| load avg |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    ref = {(r["model"], r["kind"]): r for r in rows if r["engine"] == "reference"}
    for r in rows:
        base = ref.get((r["model"], r["kind"]))
        keys = (
            ("sentences_per_s",)
            if r["kind"] == "encoder"
            else ("prompt_tok_per_s", "gen_tok_per_s")
        )
        speedup = (
            ""
            if base is None or r["engine"] != "torch"
            else " / ".join(f"{r[k] / base[k]:.2f}x" for k in keys)
        )
        cell = {k: f"{r[k]:.1f}" for k in keys}
        engine = (
            r["engine"]
            if r["threads"] is None
            else f"{r['engine']} ({r['threads']} thread{'s' if r['threads'] > 1 else ''})"
        )
        print(
            f"| {r['model']} | {engine} | {r['load_s']:.2f} | {cell.get('sentences_per_s', '')} "
            f"| {cell.get('prompt_tok_per_s', '')} | {cell.get('gen_tok_per_s', '')} | {speedup} "
            f"| {r['loadavg']:.1f} |"
        )
