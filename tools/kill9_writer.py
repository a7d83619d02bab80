"""kill -9 a writer at random points; the target must hold the old file or the new one, whole.

    python tools/kill9_writer.py --runs 100        # prints a JSON summary, exit 1 on a torn file
    python tools/kill9_writer.py --runs 100 --cli  # the writer is `cmf pack` instead

Each run: the target holds a known *old* .cmf file; a child process imports cmf, prepares a
model, says "go" and writes a *new* .cmf over the target (``cmf.save_file``, which writes a temp
file beside the target, fsyncs it, ``os.replace``s it and fsyncs the directory; or ``cmf pack``
of a safetensors file). The parent kills it with SIGKILL after a random delay spread over the
measured duration of a whole write (a few runs also before "go" and after the end). Then the
target must be byte-for-byte the old file or the new one (both known in advance: the writer is
deterministic), and ``cmf validate`` must accept it. Temp files left behind (``.name.*.tmp``) are
counted: a killed process cannot remove them, and they never take the target's name.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import sys, numpy as np
sys.path.insert(0, {root!r})
import cmf
from cmf.cli import run as cli_run
rng = np.random.default_rng({seed})
tensors = {{f"layer.{{i}}.w": (rng.standard_normal((256, 256)) * 0.02).astype(np.float32)
            for i in range({layers})}}
tensors["emb"] = rng.standard_normal((512, 64)).astype(np.float16)
mode, target, source = sys.argv[1], sys.argv[2], sys.argv[3]
if mode == "prepare":
    from safetensors.numpy import save_file
    save_file(tensors, source)
    cmf.save_file(tensors, target, {{"version": "new"}})
    sys.exit(0)
print("go", flush=True)
if mode == "api":
    cmf.save_file(tensors, target, {{"version": "new"}})
else:
    cli_run(["pack", source, "-o", target, "--quiet", "--force"])
print("done", flush=True)
"""


def _child(code: str, mode: str, target: str, source: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code, mode, target, source],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def campaign(
    runs: int, workdir: str, cli: bool = False, seed: int = 0, layers: int = 48, calibrate: int = 3
) -> dict:
    import cmf

    rng = random.Random(seed)
    code = CHILD.format(root=ROOT, seed=seed, layers=layers)
    d = os.path.join(workdir, "kill9")
    os.makedirs(d, exist_ok=True)
    target = os.path.join(d, "model.cmf")
    source = os.path.join(d, "model.safetensors")
    new_path = os.path.join(d, "expected-new.cmf")
    subprocess.run([sys.executable, "-c", code, "prepare", new_path, source], check=True)
    mode = "cli" if cli else "api"
    if cli:  # the CLI writes the safetensors metadata, not {"version": "new"}: its own bytes
        p = _child(code, mode, new_path, source)
        p.communicate(timeout=300)
        assert p.returncode == 0
    with open(new_path, "rb") as fh:
        new = fh.read()
    rng_old = __import__("numpy").random.default_rng(seed + 1)
    old_tensors = {"old": rng_old.standard_normal((64, 64)).astype("float32")}
    old_path = os.path.join(d, "old.cmf")
    cmf.save_file(old_tensors, old_path, {"version": "old"})
    with open(old_path, "rb") as fh:
        old = fh.read()
    # How long a whole write takes after "go" (a median), to spread the kills over it.
    durations = []
    for _ in range(calibrate):
        with open(target, "wb") as fh:
            fh.write(old)
        p = _child(code, mode, target, source)
        assert p.stdout.readline().strip() == "go"
        t0 = time.perf_counter()
        assert (
            p.stdout.readline().strip() == "done"
        )  # the write returned (not the interpreter's exit)
        durations.append(time.perf_counter() - t0)
        p.communicate(timeout=300)
    write_time = sorted(durations)[len(durations) // 2]
    outcomes = {"old": 0, "new": 0, "torn": 0}
    torn: list[dict] = []
    invalid = 0
    for run in range(runs):
        with open(target, "wb") as fh:
            fh.write(old)
        for t in glob.glob(os.path.join(d, ".model.cmf.*.tmp")):
            os.unlink(t)
        p = _child(code, mode, target, source)
        assert p.stdout.readline().strip() == "go"
        delay = rng.uniform(0, 1.15 * write_time)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.communicate(timeout=60)
        with open(target, "rb") as fh:
            got = fh.read()
        kind = "old" if got == old else "new" if got == new else "torn"
        outcomes[kind] += 1
        if kind == "torn":
            torn.append({"run": run, "delay": delay, "size": len(got)})
        elif not cmf.validate(target).valid:
            invalid += 1
    leftovers = len(glob.glob(os.path.join(d, ".model.cmf.*.tmp")))
    return {
        "runs": runs,
        "writer": "cmf pack" if cli else "cmf.save_file",
        "write_seconds": round(write_time, 3),
        "new_bytes": len(new),
        **outcomes,
        "invalid": invalid,
        "torn_runs": torn,
        "temp_files_left_after_last_run": leftovers,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--cli", action="store_true", help="kill `cmf pack` instead of save_file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", default=None, help="where to write (default: a temp directory)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        summary = campaign(a.runs, d, cli=a.cli, seed=a.seed)
    print(json.dumps(summary))
    return 1 if summary["torn"] or summary["invalid"] else 0


if __name__ == "__main__":
    sys.exit(main())
