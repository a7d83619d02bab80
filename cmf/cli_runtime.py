"""``cmf run`` and ``cmf eval``: run a model rebuilt from a .cmf file or a sharded set (its
``*.cmf.index.json`` or its directory), or from its original, and measure how far a compressed
model's outputs moved from the original's (cmf.runtime).

Registered on the main group by cmf/cli.py; errors are CmfError (one ``cmf: error:`` line).
"""

from __future__ import annotations

import os
import time
from typing import Any

import click
import numpy as np

from .atomic import AtomicFile
from .cli_output import emit_json
from .errors import CmfError

_SHOWN = 6  # values printed per output / embedding
ENGINES = ["torch", "reference", "onnxruntime"]  # cmf.runtime.torch_engine.ENGINES (not imported)
ENGINE_HELP = (
    "Text models: torch (transformers) or reference (numpy); default torch when torch "
    "and transformers are installed and the model has a config.json. ONNX graphs: "
    "onnxruntime (default when installed) or reference."
)


def _first(array: np.ndarray) -> list[Any]:
    flat = np.asarray(array).reshape(-1)[:_SHOWN]
    return [v.item() if flat.dtype.kind in "biu" else float(v) for v in flat]


def _fmt(values: list[Any]) -> str:
    return " ".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in values)


def _save(path: str, arrays: dict[str, np.ndarray]) -> None:
    with AtomicFile(path) as out:
        if path.lower().endswith(".npy"):
            if len(arrays) != 1:
                raise CmfError(f"{len(arrays)} arrays do not fit in one .npy; write a .npz")
            np.save(out.file, next(iter(arrays.values())), allow_pickle=False)
        else:
            np.savez(out.file, **arrays)


def _feeds(runner: Any, items: tuple[str, ...]) -> dict[str, np.ndarray]:
    """ONNX inputs from --input values: x.npz, x.npy (one-input model) or NAME=x.npy."""
    from .runtime.evaluate import onnx_feeds, read_arrays

    feeds: dict[str, np.ndarray] = {}
    for item in items:
        name, path = None, item
        if "=" in item and not os.path.exists(item):
            name, path = item.split("=", 1)
        data = read_arrays(path)
        if name is not None:
            if isinstance(data, dict):
                raise CmfError(f"--input {item}: NAME=FILE takes a .npy file")
            new = {name: data}
        else:
            new = onnx_feeds(runner, data)
        for key in new:
            if key in feeds:
                raise CmfError(f"input {key!r} is given twice")
        feeds.update(new)
    return feeds


@click.command("run")
@click.argument("model", type=click.Path(path_type=str))
@click.option(
    "-i",
    "--input",
    "inputs",
    multiple=True,
    metavar="FILE|NAME=FILE",
    help="ONNX model inputs: x.npz (named arrays), x.npy (a model with one input) or "
    "NAME=x.npy; repeatable. Without it, generated inputs that fit the graph.",
)
@click.option(
    "-t",
    "--text",
    "texts",
    multiple=True,
    help="A text to embed (BERT-family encoder); repeatable.",
)
@click.option("-p", "--prompt", help="A prompt to continue greedily (Llama-family decoder).")
@click.option(
    "-n",
    "--max-new-tokens",
    "n",
    type=click.IntRange(0, 1 << 20),
    default=32,
    show_default=True,
    help="Tokens to generate after --prompt.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=str),
    help="Save the outputs: .npz (ONNX outputs by name, 'embeddings', or "
    "'prompt_ids'/'ids'), or .npy for one array.",
)
@click.option("--engine", type=click.Choice(ENGINES), help=ENGINE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def run_command(
    model: str,
    inputs: tuple[str, ...],
    texts: tuple[str, ...],
    prompt: str | None,
    n: int,
    output: str | None,
    engine: str | None,
    as_json: bool,
) -> None:
    """Run a model: an ONNX-origin .cmf on --input arrays, a BERT-family encoder on --text, a
    Llama-family decoder on --prompt. MODEL may be a sharded set (its .cmf.index.json or the
    directory holding it) or the original (.onnx, .safetensors, model directory, .gguf)."""
    from .runtime.evaluate import KIND_NAMES
    from .runtime.rebuild import kind_of, load_runner

    start = time.perf_counter()
    runner = load_runner(model, engine=engine or "auto")
    loaded = time.perf_counter() - start
    kind = kind_of(runner)
    given = [
        flag
        for flag, value in (("--input", inputs), ("--text", texts), ("--prompt", prompt))
        if value
    ]
    wants = {"onnx": "--input", "encoder": "--text", "decoder": "--prompt"}[kind]
    if any(flag != wants for flag in given):
        raise CmfError(
            f"{model} is {KIND_NAMES[kind]}: it takes {wants}, "
            f"not {', '.join(f for f in given if f != wants)}"
        )
    head = {"model": model, "kind": kind, "engine": runner.engine, "load_seconds": round(loaded, 3)}
    if kind == "onnx":
        _run_onnx(runner, inputs, output, as_json, head)
    elif kind == "encoder":
        _run_encoder(runner, texts, output, as_json, head)
    else:
        _run_decoder(runner, prompt, n, output, as_json, head)


def _run_onnx(
    runner: Any, inputs: tuple[str, ...], output: str | None, as_json: bool, head: dict
) -> None:
    feeds = _feeds(runner, inputs) if inputs else runner.sample_inputs(0)
    start = time.perf_counter()
    outputs = runner.run(feeds)
    seconds = time.perf_counter() - start
    if output:
        _save(output, outputs)
    rows = [
        {"name": k, "dtype": str(v.dtype), "shape": list(v.shape), "first": _first(v)}
        for k, v in outputs.items()
    ]
    if as_json:
        emit_json(
            {
                **head,
                "generated_inputs": not inputs,
                "inputs": {
                    k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in feeds.items()
                },
                "outputs": rows,
                "seconds": round(seconds, 4),
                "saved": output,
            }
        )
        return
    if not inputs:
        click.echo(
            "no --input: ran on generated inputs "
            + ", ".join(f"{k} {v.dtype} {list(v.shape)}" for k, v in feeds.items())
        )
    for r in rows:
        click.echo(
            f"{r['name']}: {r['dtype']} {r['shape']}  {_fmt(r['first'])}"
            f"{' ...' if np.prod(r['shape']) > _SHOWN else ''}"
        )
    click.echo(
        f"{runner.engine}, {seconds * 1000:.1f} ms" + (f"; saved {output}" if output else "")
    )


def _run_encoder(
    runner: Any, texts: tuple[str, ...], output: str | None, as_json: bool, head: dict
) -> None:
    if not texts:
        raise CmfError("give the sentences to embed with --text")
    start = time.perf_counter()
    emb = runner.embed(list(texts))
    seconds = time.perf_counter() - start
    if output:
        _save(output, {"embeddings": emb})
    if as_json:
        emit_json(
            {
                **head,
                "shape": list(emb.shape),
                "normalized": runner.pipeline.normalize,
                "pooling": list(runner.pipeline.modes),
                "embeddings": emb.tolist(),
                "seconds": round(seconds, 4),
                "saved": output,
            }
        )
        return
    norm = "L2-normalised" if runner.pipeline.normalize else "not normalised"
    click.echo(
        f"embeddings: {emb.shape[0]} x {emb.shape[1]} "
        f"({'+'.join(runner.pipeline.modes)} pooling, {norm}), "
        f"{runner.engine}, {seconds * 1000:.1f} ms" + (f"; saved {output}" if output else "")
    )
    for text, row in zip(texts, emb, strict=True):
        shown = text if len(text) <= 40 else text[:37] + "..."
        click.echo(f"{_fmt(_first(row))} ...  {shown!r}")


def _run_decoder(
    runner: Any, prompt: str | None, n: int, output: str | None, as_json: bool, head: dict
) -> None:
    if prompt is None:
        raise CmfError("give the text to continue with --prompt")
    ids = runner.encode(prompt)
    if not ids:
        raise CmfError("the prompt tokenizes to no tokens")
    start = time.perf_counter()
    new = runner.generate(ids, n)
    seconds = time.perf_counter() - start
    text = runner.decode(new)
    if output:
        _save(output, {"prompt_ids": np.asarray(ids, np.int64), "ids": np.asarray(new, np.int64)})
    rate = len(new) / seconds if seconds > 0 and new else None
    if as_json:
        emit_json(
            {
                **head,
                "prompt": prompt,
                "prompt_ids": ids,
                "ids": new,
                "text": text,
                "seconds": round(seconds, 4),
                "tokens_per_second": rate and round(rate, 2),
                "saved": output,
            }
        )
        return
    click.echo(prompt + text)
    click.echo(
        f"({len(ids)} prompt tokens, {len(new)} generated in {seconds:.2f} s "
        f"on {runner.engine}" + (f", {rate:.1f} tokens/s" if rate else "") + ")",
        err=True,
    )


@click.command("eval")
@click.argument("original", type=click.Path(path_type=str))
@click.argument("compressed", type=click.Path(path_type=str))
@click.option(
    "--data",
    type=click.Path(dir_okay=False, path_type=str),
    help="Inputs: .npz/.npy for ONNX models, a .txt (one text per line) for text models. "
    "Default: built-in samples.",
)
@click.option(
    "--max-tokens",
    type=click.IntRange(2, 1 << 20),
    default=256,
    show_default=True,
    help="Decoders: tokens of text scored.",
)
@click.option("--engine", type=click.Choice(ENGINES), help=ENGINE_HELP + " Both models run on it.")
@click.option(
    "--ggml-activations",
    is_flag=True,
    help="Decoders: round each matrix product's input as llama.cpp's CPU backend does for the "
    "weight's GGML type in the GGUF a .cmf unpacks to (8-bit blocks, F16, BF16): the KL "
    "llama.cpp will see. Runs on the numpy engine.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def eval_command(
    original: str,
    compressed: str,
    data: str | None,
    max_tokens: int,
    engine: str | None,
    ggml_activations: bool,
    as_json: bool,
) -> None:
    """Run ORIGINAL and COMPRESSED side by side and report how far the outputs moved: cosine
    similarity, max abs error, top-1 agreement; perplexity and KL divergence for decoders.
    Either may be a sharded set (its .cmf.index.json or the directory holding it)."""
    from .runtime.evaluate import KIND_NAMES, evaluate

    report = evaluate(
        original,
        compressed,
        data,
        max_tokens=max_tokens,
        engine=engine or ("reference" if ggml_activations else "auto"),
        ggml_activations=ggml_activations,
    )
    if as_json:
        emit_json(report)
        return
    kind, sec = report["kind"], report["seconds"]
    count = f"{report['tokens']} tokens" if kind == "decoder" else f"{report['samples']} samples"
    eng = report["engines"]
    on = (
        eng["original"]
        if eng["original"] == eng["compressed"]
        else f"{eng['original']} / {eng['compressed']}"
    )
    click.echo(
        f"{KIND_NAMES[kind]}, {count} ({'given' if data else 'built-in'}), {on}; "
        f"original {sec['original']:.2f} s, compressed {sec['compressed']:.2f} s"
    )
    if kind == "onnx":
        for name, row in report["outputs"].items():
            click.echo(f"  {name} {row['dtype']} {row['shape']}: " + _metrics(row))
    if kind == "decoder":
        click.echo(
            f"perplexity {report['perplexity_original']:.4f} -> "
            f"{report['perplexity_compressed']:.4f}; "
            f"KL mean {report['kl_mean']:.3g}, max {report['kl_max']:.3g}; "
            f"top-1 agreement {report['top1_agreement']:.2%}"
        )
    click.echo(("bit-identical outputs; " if report["identical"] else "") + _metrics(report))


def _metrics(row: dict) -> str:
    parts = []
    if row.get("cosine_mean") is not None:
        parts.append(f"cosine mean {row['cosine_mean']:.6f} min {row['cosine_min']:.6f}")
    parts.append(f"max abs error {row['max_abs_error']:.3g}")
    if "top1_agreement" in row and "outputs" not in row and "kl_mean" not in row:
        parts.append(f"top-1 agreement {row['top1_agreement']:.2%}")
    if "equal_fraction" in row:
        parts.append(f"equal {row['equal_fraction']:.2%}")
    return ", ".join(parts)
