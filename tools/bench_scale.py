"""Speed and scale of cmf (issue 7): ``python tools/bench.py scale`` (or this file).

Three tables, one run:

1. **Parallel pack.** ``cmf pack --jobs 1`` vs ``--jobs N`` (each in a child process, as
   tools/bench_memory.py does) on MiniLM and on a generated model of ``--gib`` GiB (sharded
   safetensors, f32 tensors of ``--tensor-mib``), for the lossless default and ``--preset q4``:
   wall time (median of ``--repeat``), speed-up, peak resident set of the writer process and of
   each worker (``VmHWM`` from /proc), and whether the files are byte-identical.
2. **Decode.** ``cmf.load_file`` of MiniLM packed lossless, q8 and q4 vs
   ``safetensors.numpy.load_file`` of the fp32 original (median of ``--repeat`` runs each,
   interleaved; goal: q8/q4 at most 3x), and lossless decode throughput vs ZipNN's on the same
   float tensors (when zipnn is installed).
3. **dask** (``--dask``): the same pack through a ``LocalCluster`` of N worker processes,
   byte-identical or not, and its time.

The machine matters: on a shared 2-core box the speed-up of --jobs 2 is bounded by what the
other processes leave; the output prints the CPU count and load average next to the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import bench_memory  # noqa: E402

import cmf  # noqa: E402

MiB = 1 << 20


def _same(a: str, b: str) -> bool:
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 24), fb.read(1 << 24)
            if x != y:
                return False
            if not x:
                return True


def pack_rows(
    label: str, source: str, jobs: list[int], presets: list[str], repeat: int, work: str, log
) -> list[dict]:
    rows = []
    for preset in presets:
        ref = None
        for j in jobs:
            out = os.path.join(work, f"{label}-{preset}-j{j}.cmf")
            runs = []
            for _ in range(repeat):
                m = bench_memory.measure_pack(source, out, jobs=j, extra=("--preset", preset))
                runs.append(m)
                log(
                    f"  {label} {preset} --jobs {j}: {m['seconds']:.2f} s, main peak "
                    f"{m['peak'] / MiB:.0f} MiB, "
                    f"workers {[round(w / MiB) for w in m['workers']]} MiB"
                )
            seconds = statistics.median(r["seconds"] for r in runs)
            if ref is None:
                ref = (out + ".ref", seconds)
                shutil.copyfile(out, ref[0])
            best = min(runs, key=lambda r: r["seconds"])
            cpu = [best["cpu"], *best["worker_cpu"]]
            rows.append(
                {
                    "model": label,
                    "preset": preset,
                    "jobs": j,
                    "seconds": seconds,
                    "speedup": ref[1] / seconds,
                    "cpu_s": cpu,  # writer process, then each worker
                    # what idle cores would give: the busiest process, or all CPU time over the
                    # cores
                    "critical_s": max(max(cpu), sum(cpu) / min(j, os.cpu_count() or 1)),
                    "main_peak_mib": max(r["peak"] for r in runs) / MiB,
                    "worker_peak_mib": max(
                        (max(r["workers"]) for r in runs if r["workers"]), default=0
                    )
                    / MiB,
                    "identical": _same(out, ref[0]),
                    "stored_mib": os.path.getsize(out) / MiB,
                }
            )
    return rows


def decode_rows(minilm: str, repeat: int, work: str, log) -> tuple[list[dict], dict]:
    from safetensors.numpy import load_file as st_load

    tensors = st_load(minilm)
    paths = {}
    for preset in ("lossless", "q8", "q4"):
        paths[preset] = os.path.join(work, f"dec-{preset}.cmf")
        cmf.save_file(tensors, paths[preset], preset=preset)
    times: dict[str, list[float]] = {k: [] for k in ("safetensors", *paths)}
    for _ in range(repeat + 1):  # the first round warms the page cache, untimed
        for key in times:
            t0 = time.perf_counter()
            st_load(minilm) if key == "safetensors" else cmf.load_file(paths[key])
            times[key].append(time.perf_counter() - t0)
    st = statistics.median(times["safetensors"][1:])
    raw = sum(a.nbytes for a in tensors.values())
    rows = [
        {
            "method": "safetensors fp32" if k == "safetensors" else f"cmf {k}",
            "seconds": statistics.median(v[1:]),
            "vs_safetensors": statistics.median(v[1:]) / st,
            "MBps": raw / statistics.median(v[1:]) / 1e6,
            "ratio": raw / os.path.getsize(paths[k]) if k in paths else 1.0,
        }
        for k, v in times.items()
    ]
    for r in rows:
        log(f"  decode {r['method']}: {r['seconds'] * 1000:.1f} ms ({r['vs_safetensors']:.2f}x)")
    zipnn = _zipnn_decode(tensors, paths["lossless"], repeat, log)
    return rows, zipnn


def _zipnn_decode(tensors: dict, lossless: str, repeat: int, log) -> dict:
    """Lossless decode throughput of cmf vs ZipNN on the float tensors (MB of tensors / s)."""
    try:
        sys.path.insert(0, HERE)
        from bench import _import_zipnn

        zipnn = _import_zipnn()
    except Exception:  # noqa: BLE001 - optional
        zipnn = None
    if zipnn is None:
        return {"zipnn": "not installed"}
    floats = {k: v for k, v in tensors.items() if v.dtype == np.float32}
    z = zipnn.ZipNN(input_format="byte", bytearray_dtype="float32")
    blobs = {k: z.compress(v.tobytes()) for k, v in floats.items()}
    raw = sum(v.nbytes for v in floats.values())
    with cmf.open(lossless) as f:

        def cmf_all():
            return [f.get_tensor(k) for k in floats]

        def zipnn_all():
            return [z.decompress(b) for b in blobs.values()]

        cmf_all(), zipnn_all()
        tc = statistics.median(_timed(cmf_all) for _ in range(repeat))
        tz = statistics.median(_timed(zipnn_all) for _ in range(repeat))
    out = {
        "cmf_MBps": raw / tc / 1e6,
        "zipnn_MBps": raw / tz / 1e6,
        "cmf_ratio": raw / sum(_stored(lossless, k) for k in floats),
        "zipnn_ratio": raw / sum(len(b) for b in blobs.values()),
    }
    log(f"  lossless decode: cmf {out['cmf_MBps']:.0f} MB/s, ZipNN {out['zipnn_MBps']:.0f} MB/s")
    return out


def _stored(path: str, name: str) -> int:
    from cmf.index import iter_leaves

    with cmf.open(path) as f:
        e = f.entry(name)
        if e.alias is not None:
            return 0
        return sum(f.index.segments[leaf.segment].length for leaf in iter_leaves(e.encoding))


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def dask_rows(
    source: str, label: str, workers: int, presets: list[str], work: str, log
) -> list[dict]:
    try:
        from distributed import LocalCluster
    except ImportError:
        return [{"model": label, "dask": "not installed"}]
    rows = []
    with LocalCluster(
        n_workers=workers, processes=True, threads_per_worker=1, dashboard_address=None
    ) as cluster:
        for preset in presets:
            out = os.path.join(work, f"{label}-{preset}-dask.cmf")
            t0 = time.perf_counter()
            r = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "cmf.cli",
                    "pack",
                    source,
                    "-o",
                    out,
                    "-q",
                    "--force",
                    "--preset",
                    preset,
                    "--executor",
                    "dask",
                    "--scheduler",
                    cluster.scheduler_address,
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            seconds = time.perf_counter() - t0
            if r.returncode:
                raise RuntimeError(r.stderr)
            ref = os.path.join(work, f"{label}-{preset}-j1.cmf.ref")
            rows.append(
                {
                    "model": label,
                    "preset": preset,
                    "workers": workers,
                    "seconds": seconds,
                    "identical": _same(out, ref) if os.path.exists(ref) else None,
                }
            )
            log(f"  dask {label} {preset}: {seconds:.2f} s, identical {rows[-1]['identical']}")
    return rows


def run(args: argparse.Namespace) -> int:
    log = (lambda s: print(s, file=sys.stderr)) if not args.json else (lambda s: None)
    from bench import minilm_path

    minilm = args.model or minilm_path()
    jobs = sorted({1, *args.jobs})
    work = args.dir or tempfile.mkdtemp(prefix="cmf-bench-scale-")
    result: dict[str, Any] = {"cpus": os.cpu_count(), "load_before": os.getloadavg()}
    try:
        sources = []
        if minilm and not args.no_minilm:
            sources.append(("MiniLM", minilm))
        if args.gib > 0:
            gen = os.path.join(work, "generated")
            t0 = time.perf_counter()
            size = bench_memory.make_sharded_model(
                gen, int(args.gib * (1 << 30)), args.shards, int(args.tensor_mib * MiB)
            )
            log(f"generated {size / MiB:.0f} MiB in {time.perf_counter() - t0:.0f} s")
            sources.append((f"generated {size / (1 << 30):.2f} GiB", gen))
        result["pack"] = [
            r
            for label, src in sources
            for r in pack_rows(label, src, jobs, args.presets, args.repeat, work, log)
        ]
        if minilm and not args.no_decode:
            result["decode"], result["zipnn"] = decode_rows(minilm, max(args.repeat, 5), work, log)
        if args.dask:
            result["dask"] = [
                r
                for label, src in sources
                for r in dask_rows(src, label, max(jobs), args.presets, work, log)
            ]
        result["load_after"] = os.getloadavg()
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"cpus: {result['cpus']}, load average before/after: "
        f"{result['load_before'][0]:.1f} / {result['load_after'][0]:.1f}"
    )
    print(
        "\n| model | preset | jobs | pack s | speed-up | CPU s (writer + workers) "
        "| CPU-bound speed-up | writer peak MiB | worker peak MiB | identical |"
    )
    print("|---|---|---:|---:|---:|---|---:|---:|---:|---|")
    serial = {(r["model"], r["preset"]): r["critical_s"] for r in result["pack"] if r["jobs"] == 1}
    for r in result["pack"]:
        cpu = " + ".join(f"{c:.1f}" for c in r["cpu_s"])
        print(
            f"| {r['model']} | {r['preset']} | {r['jobs']} | {r['seconds']:.2f} | "
            f"{r['speedup']:.2f}x | {cpu} | "
            f"{serial[(r['model'], r['preset'])] / r['critical_s']:.2f}x | "
            f"{r['main_peak_mib']:.0f} | {r['worker_peak_mib']:.0f} | "
            f"{'yes' if r['identical'] else 'NO'} |"
        )
    print(
        "(CPU-bound speed-up: serial CPU time / the larger of the busiest process's CPU time "
        "and all CPU time spread over min(jobs, cores): what idle cores would give, I/O aside)"
    )
    if "decode" in result:
        print("\n| MiniLM decode | ratio | ms | vs safetensors fp32 | MB/s |")
        print("|---|---:|---:|---:|---:|")
        for r in result["decode"]:
            print(
                f"| {r['method']} | {r['ratio']:.2f}x | {r['seconds'] * 1000:.1f} | "
                f"{r['vs_safetensors']:.2f}x | {r['MBps']:.0f} |"
            )
        z = result["zipnn"]
        if "cmf_MBps" in z:
            print(
                f"\nlossless decode of MiniLM's f32 tensors, tensor by tensor (cmf: one thread; "
                f"ZipNN: its default threads): cmf {z['cmf_MBps']:.0f} MB/s "
                f"(ratio {z['cmf_ratio']:.3f}), ZipNN {z['zipnn_MBps']:.0f} MB/s "
                f"(ratio {z['zipnn_ratio']:.3f})"
            )
        q = [r for r in result["decode"] if r["method"] in ("cmf q8", "cmf q4")]
        ok = all(r["vs_safetensors"] <= 3.0 for r in q)
        print(f"goal q8/q4 load <= 3x safetensors: {'MET' if ok else 'NOT MET'}")
    for r in result.get("dask", []):
        print(f"dask: {r}")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--jobs", type=int, nargs="+", default=[2], help="job counts to compare with 1 (2)"
    )
    p.add_argument("--presets", nargs="+", default=["lossless", "q4"])
    p.add_argument("--gib", type=float, default=1.0, help="generated model size, 0 to skip (1.0)")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--tensor-mib", type=float, default=32)
    p.add_argument("--repeat", type=int, default=1, help="pack runs per setting; medians (1)")
    p.add_argument("--model", default=None, help="a .safetensors file (default: MiniLM's)")
    p.add_argument("--no-minilm", action="store_true")
    p.add_argument("--no-decode", action="store_true")
    p.add_argument("--dask", action="store_true", help="also pack through a dask LocalCluster")
    p.add_argument("--dir", help="work directory (kept; default: a temporary one)")
    p.add_argument("--json", action="store_true")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap)
    sys.exit(run(ap.parse_args()))
