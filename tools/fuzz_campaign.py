"""Run a fuzzing campaign: every target in turn under atheris, figures added up across runs.

    python tools/fuzz_campaign.py --seconds 120                 # every target, 2 min each
    python tools/fuzz_campaign.py --seconds 600 index onnx      # some targets
    python tools/fuzz_campaign.py --executions 10000000         # each target up to 10 M in all
    python tools/fuzz_campaign.py --report                      # print the table so far

One target at a time, each in its own process under ``nice -n 10``; the corpus of each target
is kept in ``--work`` (default $TMPDIR/cmf-fuzz) so later runs continue where earlier ones
stopped. Per run it records libFuzzer's final figures (runs, exec/s, coverage ``cov`` and
features ``ft``, peak RSS) and the harness's (slowest input, findings) in ``<work>/campaign.json``
(runs are appended: executions and seconds add up). A run that ends on a finding is restarted
for the rest of its time, so one crash does not stop the campaign; the failing inputs are in
``<work>/findings``. ``--engine python`` runs the dependency-free engine instead.

Each run gets its own seed, recorded with it: by default one more than the highest seed any
earlier run of that target used, so a continued campaign does not replay the mutations of the
first one (``--seed N`` starts at N instead).

Stopping the campaign (Ctrl-C, or SIGTERM: ``kill PID``) stops the running target cleanly and
records what it did so far, marked ``interrupted``, so no executions are lost.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GROUPS = {
    "fuzz_container.py": ["container", "index"],
    "fuzz_codecs.py": [
        f"codec-{n}"
        for n in (
            "bitpack",
            "byteplanes",
            "codebook",
            "ggml",
            "huffman",
            "lowrank",
            "outlier",
            "partition",
            "quantize",
            "raw",
            "sparse",
            "zstd",
        )
    ],
    "fuzz_convert.py": ["safetensors", "onnx", "gguf", "gguf-write", "gguf-write-hf"],
    "fuzz_shards.py": ["shards"],
}
SCRIPT = {t: s for s, ts in GROUPS.items() for t in ts}
ALL = [t for ts in GROUPS.values() for t in ts]

_DONE = re.compile(r"Done (\d+) runs in (\d+) second")
_STAT = re.compile(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+).*?exec/s: (\d+) rss: (\d+)Mb")


def parse_log(text: str) -> dict:
    out: dict = {}
    stats = _STAT.findall(text)
    if stats:
        runs, cov, ft, eps, rss = stats[-1]
        out.update(runs=int(runs), cov=int(cov), ft=int(ft), exec_per_s=int(eps), rss_mb=int(rss))
    done = _DONE.search(text)
    if done:
        out["runs"] = int(done.group(1))
        out["libfuzzer_seconds"] = int(done.group(2))
    out["crashed"] = "ERROR: libFuzzer" in text or "Uncaught Python exception" in text
    return out


class Interrupted(Exception):
    """The campaign was stopped; ``records`` holds the runs done so far, the last one cut short."""

    def __init__(self, records: list[dict]) -> None:
        super().__init__("interrupted")
        self.records = records


def _wait(proc: subprocess.Popen, timeout: float) -> tuple[int, bool]:
    """(exit code, interrupted): wait for the target's process; on Ctrl-C or SIGTERM ask it to
    stop (SIGINT: libFuzzer and the python engine both end a run on it) and wait for that."""
    try:
        return proc.wait(timeout=timeout), False
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(), False
    except KeyboardInterrupt:
        try:  # a Ctrl-C at the terminal reached the target too
            return proc.wait(timeout=2), True
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout=60), True
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(), True


def run_one(
    target: str, seconds: float, work: str, engine: str, seed: int, runs: int | None = None
) -> list[dict]:
    """Run ``target`` for ``seconds`` or ``runs`` executions, whichever ends first (restarting
    after a finding); one record per process. Interrupted (with the records) if stopped."""
    records = []
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left < 5:
            break
        stats_path = os.path.join(work, f"stats-{target}.json")
        log_path = os.path.join(work, "logs", f"{target}-{int(time.time())}.log")
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        cmd = [
            "nice",
            "-n",
            "10",
            sys.executable,
            os.path.join(ROOT, "tools", SCRIPT[target]),
            target,
            "--engine",
            engine,
            "--seconds",
            str(int(left)),
            "--seed",
            str(seed),
            "--corpus",
            os.path.join(work, "corpus", target),
            "--findings",
            os.path.join(work, "findings"),
            "--stats",
            stats_path,
        ]
        if runs is not None:
            done = sum(r.get("runs", 0) for r in records)
            if done >= runs:
                break
            cmd += ["--runs", str(runs - done)]
        elif engine == "python":
            cmd += ["--runs", str(10**12)]
        start = time.monotonic()
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=work)
            rc, interrupted = _wait(proc, left + 120)
        wall = time.monotonic() - start
        with open(log_path) as fh:
            text = fh.read()
        rec = {
            "target": target,
            "engine": engine,
            "seed": seed,
            "rc": rc,
            "wall_seconds": round(wall, 1),
            "log": log_path,
            **parse_log(text),
        }
        try:
            with open(stats_path) as fh:
                h = json.load(fh)
            rec.update(
                harness_execs=h["execs"],
                accepted=h["accepted"],
                rejected=h["rejected"],
                slowest=h["slowest"],
                slowest_sha1=h["slowest_sha1"],
                findings=h["findings"],
                peak_rss=h["peak_rss"],
            )
            if engine == "python":
                rec.update(runs=h["execs"], exec_per_s=h.get("exec_per_s"))
            elif interrupted:  # libFuzzer's last status line may be old; the harness's count is not
                rec["runs"] = max(rec.get("runs", 0), h["execs"])
        except (OSError, ValueError, KeyError):
            pass
        records.append(rec)
        if interrupted:
            rec["interrupted"] = True
            raise Interrupted(records)
        seed += 1
        if rc == 0:
            break
    return records


def executions(records: list[dict], target: str) -> int:
    """Executions of ``target`` over every recorded run."""
    return sum(r.get("runs", 0) for r in records if r["target"] == target)


def next_seed(records: list[dict], target: str) -> int:
    """One more than the highest seed recorded for ``target`` (runs before seeds were recorded
    count as seeds 1, 2, ...); 1 for a target never run."""
    rs = [r for r in records if r["target"] == target]
    return max((r.get("seed", i + 1) for i, r in enumerate(rs)), default=0) + 1


def load(work: str) -> list[dict]:
    try:
        with open(os.path.join(work, "campaign.json")) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return []


def save(work: str, records: list[dict]) -> None:
    path = os.path.join(work, "campaign.json")
    with open(path + ".tmp", "w") as fh:
        json.dump(records, fh, indent=1)
    os.replace(path + ".tmp", path)


def table(records: list[dict]) -> str:
    rows = [
        "| target | runs | executions | seconds | exec/s | cov | ft | slowest (ms) "
        "| peak RSS (MiB) | findings |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in ALL:
        rs = [r for r in records if r["target"] == t]
        if not rs:
            continue
        execs = sum(r.get("runs", 0) for r in rs)
        secs = sum(r.get("wall_seconds", 0) for r in rs)
        cov = max((r.get("cov", 0) for r in rs), default=0)
        ft = max((r.get("ft", 0) for r in rs), default=0)
        slow = max((r.get("slowest", 0) for r in rs), default=0)
        rss = max((r.get("peak_rss", 0) for r in rs), default=0) / 2**20
        rss = max(rss, max((r.get("rss_mb", 0) for r in rs), default=0))
        found = sum(len(r.get("findings", [])) for r in rs)
        rows.append(
            f"| {t} | {len(rs)} | {execs:,} | {secs:,.0f} | {execs / secs if secs else 0:,.0f} "
            f"| {cov or '-'} | {ft or '-'} | {1000 * slow:.1f} | {rss:.0f} | {found} |"
        )
    return "\n".join(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("targets", nargs="*", default=None)
    p.add_argument(
        "--seconds", type=float, default=120, help="per target (at most, with --executions)"
    )
    p.add_argument(
        "--executions",
        type=int,
        default=None,
        help="run each target until its executions over all runs reach this many",
    )
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "cmf-fuzz"))
    p.add_argument("--engine", choices=("atheris", "python"), default="atheris")
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="first run's seed (default: one more than the target's last recorded seed)",
    )
    p.add_argument("--report", action="store_true", help="print the table of the runs so far")
    a = p.parse_args()
    os.makedirs(a.work, exist_ok=True)
    records = load(a.work)
    if a.report:
        print(table(records))
        return 0
    for t in a.targets or ALL:
        if t not in SCRIPT:
            p.error(f"unknown target {t}; expected some of {', '.join(ALL)}")
    signal.signal(signal.SIGTERM, _raise_interrupt)
    status = 0
    for t in a.targets or ALL:
        runs = None
        if a.executions is not None:
            runs = a.executions - executions(records, t)
            if runs <= 0:
                continue
        try:
            seed = a.seed if a.seed is not None else next_seed(records, t)
            new = run_one(t, a.seconds, a.work, a.engine, seed, runs)
        except Interrupted as stop:
            new, status = stop.records, 130
        records = load(a.work) + new  # other campaigns may share the work directory
        save(a.work, records)
        for r in new:
            print(
                json.dumps(
                    {
                        k: r.get(k)
                        for k in (
                            "target",
                            "rc",
                            "runs",
                            "exec_per_s",
                            "cov",
                            "ft",
                            "slowest",
                            "findings",
                            "interrupted",
                        )
                    }
                ),
                flush=True,
            )
        if status:
            break
    print(table(records))
    return status


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
