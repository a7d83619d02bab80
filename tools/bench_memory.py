"""Peak memory of ``cmf pack`` on a generated sharded Hugging Face model vs the model's size.

Writes a model directory (``model.safetensors.index.json`` + shards of f32 tensors drawn from a
normal distribution, plus a config.json), packs it with ``cmf pack`` in a child process, and
prints the child's peak resident set (``VmHWM``: its own address space since exec, mapped file
pages included; ``ru_maxrss`` would also count the parent's size at fork time) next to the
model size, and the same for a tiny model packed the same way (the interpreter's baseline).
Bounded memory means the difference stays near a few tensors, whatever the model size.

    python tools/bench_memory.py [--gib 1.5] [--shards 4] [--tensor-mib 32] [--dir DIR]

tests/convert/test_shards_memory.py runs the same functions on a model of a few tens of MB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

# The child: pack with the CLI entry point, then report its own peak resident set.
# With --jobs, each worker process's peak is read from /proc just before the pool shuts down.
_CHILD = """
import json, os, resource, sys
from cmf import cli, parallel
workers, worker_cpu = [], []
close = parallel.ProcessExecutor.close
def peaks_then_close(self, cancel):
    workers.extend(self.peaks())
    for pid in list(getattr(self.pool, "_processes", None) or {}):
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        worker_cpu.append((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
    close(self, cancel)
parallel.ProcessExecutor.close = peaks_then_close
try:
    cli.run(sys.argv[1:])
except SystemExit as exc:
    if exc.code:
        raise
status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"peak": int(status["VmHWM"].split()[0]) * 1024, "workers": workers,
                  "cpu": usage.ru_utime + usage.ru_stime, "worker_cpu": worker_cpu}))
"""


def make_sharded_model(
    directory: str, total_bytes: int, shards: int, tensor_bytes: int, seed: int = 0
) -> int:
    """Write a sharded f32 model of about ``total_bytes`` (tensors of ``tensor_bytes``, rows of
    256) into ``directory``, one tensor in memory at a time; return its tensor bytes."""
    from safetensors.numpy import save_file

    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = max(1, tensor_bytes // (4 * 256))
    per_shard = max(1, total_bytes // (shards * rows * 256 * 4))
    weight_map, written = {}, 0
    for s in range(shards):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        names = [f"model.layers.{s}.{i}.weight" for i in range(per_shard)]
        # safetensors' save_file needs the whole shard in memory: keep shards modest
        tensors = {n: rng.standard_normal((rows, 256), dtype=np.float32) for n in names}
        save_file(tensors, os.path.join(directory, fname), metadata={"format": "pt"})
        written += sum(t.nbytes for t in tensors.values())
        del tensors
        weight_map.update({n: fname for n in names})
    index = {"metadata": {"total_size": written}, "weight_map": weight_map}
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as fh:
        json.dump(index, fh)
    with open(os.path.join(directory, "config.json"), "w") as fh:
        json.dump({"model_type": "llama", "hidden_size": 256}, fh)
    return written


def measure_pack(source: str, output: str, jobs: int = 1, extra: tuple[str, ...] = ()) -> dict:
    """Pack ``source`` to ``output`` with ``cmf pack`` in a child process: its peak resident
    set in bytes (``peak``), each worker's with ``jobs`` > 1 (``workers``), the CPU seconds of
    the writer process (``cpu``) and of each worker (``worker_cpu``), and the wall time
    (``seconds``)."""
    start = time.perf_counter()
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            _CHILD,
            "pack",
            source,
            "-o",
            output,
            "-q",
            "--force",
            "--jobs",
            str(jobs),
            *extra,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode:
        raise RuntimeError(f"cmf pack failed ({r.returncode}): {r.stderr.strip()}")
    result = json.loads(r.stdout.strip().splitlines()[-1])
    result["seconds"] = time.perf_counter() - start
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=1.5, help="model size (GiB)")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--tensor-mib", type=float, default=32)
    ap.add_argument("--dir", help="work directory (default: a temporary one, removed after)")
    args = ap.parse_args()
    work = args.dir or tempfile.mkdtemp(prefix="cmf-bench-memory-")
    try:
        tiny_dir, big_dir = os.path.join(work, "tiny"), os.path.join(work, "big")
        tiny_bytes = make_sharded_model(tiny_dir, 64 << 10, 2, 16 << 10)
        t0 = time.perf_counter()
        big_bytes = make_sharded_model(
            big_dir, int(args.gib * (1 << 30)), args.shards, int(args.tensor_mib * (1 << 20))
        )
        made = time.perf_counter() - t0
        tiny = measure_pack(tiny_dir, os.path.join(work, "tiny.cmf"))
        big = measure_pack(big_dir, os.path.join(work, "big.cmf"))
        mib = 1 << 20
        print(
            f"generated {big_bytes / mib:,.0f} MiB in {args.shards} shards, "
            f"{args.tensor_mib:g} MiB tensors, in {made:.0f} s"
        )
        print("| model | model MiB | .cmf MiB | peak RSS MiB | over baseline MiB | pack s |")
        print("|---|---:|---:|---:|---:|---:|")
        runs = (
            ("tiny (baseline)", tiny_bytes, tiny, "tiny.cmf"),
            ("sharded", big_bytes, big, "big.cmf"),
        )
        for label, size, m, out in runs:
            packed = os.path.getsize(os.path.join(work, out))
            print(
                f"| {label} | {size / mib:,.2f} | {packed / mib:,.2f} | {m['peak'] / mib:,.0f} | "
                f"{(m['peak'] - tiny['peak']) / mib:,.0f} | {m['seconds']:.1f} |"
            )
        over = (big["peak"] - tiny["peak"]) / big_bytes
        print(f"peak over baseline = {over:.1%} of the model size")
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
