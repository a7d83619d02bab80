"""CI smoke run of every fuzz target: a fixed number of inputs, a fixed seed, about a minute.

    python tools/fuzz_smoke.py                 # every target, default counts; exit 1 on a finding
    python tools/fuzz_smoke.py --scale 0.1     # a tenth of the inputs
    python tools/fuzz_smoke.py --engine atheris   # each target under atheris (one process each)

The python engine (tools/fuzz_common.py) is deterministic for a seed, so a CI failure replays
locally with the same command; the failing inputs are written to ``--findings`` (keep them:
each becomes a regression file in tests/attacks/corpus/<target>/).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools import fuzz_codecs, fuzz_container, fuzz_convert, fuzz_shards  # noqa: E402
from tools.fuzz_common import fuzz_python  # noqa: E402

TARGETS = {
    **fuzz_container.TARGETS,
    **fuzz_codecs.TARGETS,
    **fuzz_convert.TARGETS,
    **fuzz_shards.TARGETS,
}
RUNS = {
    "container": 12000,
    "index": 12000,
    "safetensors": 10000,
    "onnx": 8000,
    "gguf": 10000,
    "gguf-write": 3000,
    "gguf-write-hf": 3000,
    "shards": 10000,
}
CODEC_RUNS = 6000
SCRIPTS = {
    "fuzz_container.py": fuzz_container.TARGETS,
    "fuzz_codecs.py": fuzz_codecs.TARGETS,
    "fuzz_convert.py": fuzz_convert.TARGETS,
    "fuzz_shards.py": fuzz_shards.TARGETS,
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("targets", nargs="*")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every input count")
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--engine", choices=("python", "atheris"), default="python")
    ap.add_argument("--findings", default=os.path.join(tempfile.gettempdir(), "cmf-fuzz-smoke"))
    a = ap.parse_args()
    names = a.targets or sorted(TARGETS)
    failed = []
    start = time.perf_counter()
    for name in names:
        runs = max(1, int(RUNS.get(name, CODEC_RUNS) * a.scale))
        if a.engine == "atheris":
            script = next(s for s, ts in SCRIPTS.items() if name in ts)
            with tempfile.TemporaryDirectory() as corpus:
                rc = subprocess.call(
                    [
                        sys.executable,
                        os.path.join(os.path.dirname(__file__), script),
                        name,
                        "--engine",
                        "atheris",
                        "--runs",
                        str(runs),
                        "--seed",
                        str(a.seed),
                        "--corpus",
                        corpus,
                        "--findings",
                        a.findings,
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            line = f"{name:18s} {runs:7d} inputs  {'FINDING' if rc else 'ok'}"
            if rc:
                failed.append(name)
        else:
            s = fuzz_python(
                TARGETS[name],
                runs=runs,
                seconds=None,
                seed=a.seed,
                findings_dir=a.findings,
                quiet=False,
            )
            line = (
                f"{name:18s} {s.execs:7d} inputs {s.seconds:6.1f} s "
                f"{s.execs / max(s.seconds, 1e-9):8.0f}/s  accepted {s.accepted:6d}  "
                f"outcomes {s.outcomes:4d}  slowest {1000 * s.slowest:6.1f} ms  "
                f"{'FINDINGS ' + str(len(s.findings)) if s.findings else 'ok'}"
            )
            if s.findings:
                failed.append(name)
        print(line, flush=True)
    print(
        f"{len(names)} targets in {time.perf_counter() - start:.0f} s; "
        + (f"findings in {', '.join(failed)} (inputs in {a.findings})" if failed else "no findings")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
