"""llama.cpp's own perplexity (and KL divergence) on the GGUF a .cmf unpacks to, beside
``cmf eval``.

    python tools/llama_perplexity.py PLANNED.cmf|x.gguf [--original ORIGINAL.cmf|x.gguf]
        [--text FILE] [--ctx 512] [--chunks N] [--llama-bin DIR] [--threads 2] [--out DIR] [--json]

Checks that llama.cpp itself loads and runs what ``cmf unpack x.cmf -o x.gguf`` writes (not
in CI: it needs a llama.cpp build). A ``.cmf`` is unpacked to a GGUF first (cmf's GGUF writer);
a ``.gguf`` is used as it is. ``llama-perplexity`` then runs on the text (default: the texts of
``tools/data/heldout/`` joined, as ``tools/bench.py gguf-plan`` uses them; ``--ctx`` tokens a
chunk, llama.cpp scores the second half of each chunk). With ``--original``, the original's
GGUF is run first with ``--kl-divergence-base`` (its logits saved) and the planned file with
``--kl-divergence``: llama.cpp's mean KL(original || planned) and same-top-token share; and,
when both are .cmf files, ``cmf eval ORIGINAL PLANNED`` (cmf's own runner, ``--tokens`` tokens
in one window) for the figures beside.

llama.cpp: ``--llama-bin`` (default ``$LLAMA_BIN`` or ``/tmp/llamabuild/bin``) holds
``llama-perplexity``, built from the llama-cpp-python source distribution on PyPI::

    pip download --no-binary :all: --no-deps llama-cpp-python && tar xzf llama_cpp_python-*.tar.gz
    cmake -S llama_cpp_python-*/vendor/llama.cpp -B /tmp/llamabuild -DCMAKE_BUILD_TYPE=Release \\
        -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF
    nice make -C /tmp/llamabuild -j2 llama-perplexity
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

DEFAULT_BIN = os.environ.get("LLAMA_BIN", "/tmp/llamabuild/bin")
_FLOAT = r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"


def heldout_text(path: str) -> str:
    """The held-out texts of tools/data/heldout joined, written to ``path`` (as bench_gguf_plan)."""
    with open(path, "w") as fh:
        for p in sorted(glob.glob(os.path.join(HERE, "data", "heldout", "*.txt"))):
            with open(p) as src:
                fh.write(src.read().strip() + "\n")
    return path


def as_gguf(path: str, out_dir: str) -> str:
    """``path`` if it is a GGUF, else the GGUF ``cmf unpack path -o x.gguf`` writes."""
    if path.lower().endswith(".gguf"):
        return path
    import cmf
    from cmf.convert.gguf_export import write_gguf

    out = os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0] + ".gguf")
    with cmf.open(path) as f:
        write_gguf(f, out)
    return out


def run_perplexity(
    binary: str, model: str, text: str, ctx: int, chunks: int | None, threads: int, extra: list[str]
) -> dict[str, Any]:
    """One ``llama-perplexity`` run; its figures parsed from the log (CmfError-free: a failed
    run raises RuntimeError with the log's tail)."""
    cmd = [
        binary,
        "-m",
        model,
        "-f",
        text,
        "-c",
        str(ctx),
        "-t",
        str(threads),
        "-b",
        str(ctx),
        *extra,
    ]
    if chunks is not None:
        cmd += ["--chunks", str(chunks)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} exited with {proc.returncode}:\n" + "\n".join(log.splitlines()[-25:])
        )
    out: dict[str, Any] = {"seconds": time.perf_counter() - t0}
    m = re.search(r"Final estimate: PPL = " + _FLOAT + r" \+/- " + _FLOAT, log)
    if m:
        out["perplexity"], out["perplexity_err"] = float(m.group(1)), float(m.group(2))
    m = re.search(r"Mean\s+PPL\(Q\)\s*:\s*" + _FLOAT, log)  # --kl-divergence prints this instead
    if m and "perplexity" not in out:
        out["perplexity"] = float(m.group(1))
    m = re.search(r"Mean\s+PPL\(base\)\s*:\s*" + _FLOAT, log)
    if m:
        out["perplexity_base"] = float(m.group(1))
    m = re.search(r"Mean\s+KLD:\s*" + _FLOAT + r"\s*±\s*" + _FLOAT, log)
    if m:
        out["kl_mean"], out["kl_err"] = float(m.group(1)), float(m.group(2))
    m = re.search(r"Same top p:\s*" + _FLOAT, log)
    if m:
        out["top1"] = float(m.group(1)) / 100
    m = re.search(r"Maximum KLD:\s*" + _FLOAT, log)
    if m:
        out["kl_max"] = float(m.group(1))
    m = re.search(r"over (\d+) chunks, n_ctx", log)
    if m:
        out["chunks"] = int(m.group(1))
    if "perplexity" not in out:
        raise RuntimeError(
            "no perplexity in llama-perplexity's output:\n" + "\n".join(log.splitlines()[-25:])
        )
    return out


def gguf_types(path: str) -> dict[str, int]:
    """Tensors per GGML type in a GGUF (gguf-py)."""
    import gguf

    counts: dict[str, int] = {}
    for t in gguf.GGUFReader(path).tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return counts


def cmf_eval(original: str, planned: str, text: str, tokens: int) -> dict[str, Any]:
    from cmf.runtime.evaluate import evaluate

    r = evaluate(original, planned, text, max_tokens=tokens)
    return {
        "perplexity_original": r["perplexity_original"],
        "perplexity": r["perplexity_compressed"],
        "kl_mean": r["kl_mean"],
        "top1": r.get("top1_agreement"),
        "tokens": r["tokens"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="the planned .cmf (unpacked to GGUF) or a .gguf")
    p.add_argument("--original", help="the original .cmf or .gguf: KL divergence against it")
    p.add_argument("--text", help="evaluation text (default: tools/data/heldout joined)")
    p.add_argument(
        "--ctx",
        type=int,
        default=512,
        help="llama-perplexity context (tokens per chunk; default 512)",
    )
    p.add_argument(
        "--chunks",
        type=int,
        default=None,
        help="at most this many chunks (default: all the text gives)",
    )
    p.add_argument("--tokens", type=int, default=1024, help="cmf eval --max-tokens (default 1024)")
    p.add_argument(
        "--llama-bin",
        default=DEFAULT_BIN,
        help=f"directory of llama-perplexity (default {DEFAULT_BIN})",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="keep the GGUFs and logits here (default: a temporary directory)")
    p.add_argument("--no-cmf-eval", action="store_true", help="llama.cpp only")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    binary = os.path.join(args.llama_bin, "llama-perplexity")
    if not os.access(binary, os.X_OK):
        p.error(
            f"{binary} not found: build llama.cpp (see this tool's docstring) or pass --llama-bin"
        )
    out_dir = args.out or tempfile.mkdtemp(prefix="cmf-llama-ppl-")
    os.makedirs(out_dir, exist_ok=True)
    text = args.text or heldout_text(os.path.join(out_dir, "heldout.txt"))
    report: dict[str, Any] = {"model": args.model, "text": text, "ctx": args.ctx}
    planned = as_gguf(args.model, out_dir)
    report["gguf"], report["gguf_bytes"], report["types"] = (
        planned,
        os.path.getsize(planned),
        gguf_types(planned),
    )
    if args.original:
        original = as_gguf(args.original, out_dir)
        base = os.path.join(out_dir, "original.kld")
        report["llama_original"] = run_perplexity(
            binary,
            original,
            text,
            args.ctx,
            args.chunks,
            args.threads,
            ["--kl-divergence-base", base],
        )
        report["llama"] = run_perplexity(
            binary,
            planned,
            text,
            args.ctx,
            args.chunks,
            args.threads,
            ["--kl-divergence-base", base, "--kl-divergence"],
        )
        if (
            not args.no_cmf_eval
            and not args.original.lower().endswith(".gguf")
            and not args.model.lower().endswith(".gguf")
        ):
            report["cmf_eval"] = cmf_eval(args.original, args.model, text, args.tokens)
    else:
        report["llama"] = run_perplexity(
            binary, planned, text, args.ctx, args.chunks, args.threads, []
        )
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    ll = report["llama"]
    print(
        f"{args.model}: GGUF {report['gguf_bytes']} bytes, tensors {report['types']}; "
        "llama.cpp loads and runs it"
    )
    print("| runner | perplexity (original) | perplexity | KL vs original | top-1 |")
    print("|---|---|---|---|---|")
    lo = report.get("llama_original", {})
    print(
        f"| llama.cpp llama-perplexity, ctx {args.ctx}, {ll.get('chunks', '?')} chunks | "
        f"{lo.get('perplexity', float('nan')):.3f} | {ll['perplexity']:.3f} | "
        f"{ll.get('kl_mean', float('nan')):.4f} | {ll.get('top1', float('nan')):.4f} |"
    )
    ce = report.get("cmf_eval")
    if ce:
        print(
            f"| cmf eval, {ce['tokens']} tokens | {ce['perplexity_original']:.3f} | "
            f"{ce['perplexity']:.3f} | {ce['kl_mean']:.4f} | {ce['top1']:.4f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
