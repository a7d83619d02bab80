"""Command line: ``cmf pack | unpack | info | validate``.

Bad input gives one line on stderr and a non-zero exit code (1: bad input or invalid file,
2: usage), never a traceback.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from . import __version__
from .cli_output import emit_json, human_bytes, printable, progress, warn
from .cli_plan import check_planner_flags, pack_planned, report_command, wants_planner
from .cli_runtime import eval_command, run_command
from .convert import open_source, write_safetensors
from .errors import CmfError, UsageError
from .extras import install_hint
from .index import iter_leaves
from .outputs import (
    DIRECTORY,
    SHARD_INDEX_SUFFIX,
    UNPACK_KINDS,
    check_outputs,
    make_directory,
    output_kind,
    pack_output,
    shard_set_files,
    write_attachment,
)
from .parallel import EncodeSettings, auto_jobs, pack_source
from .pipeline import describe
from .plan.contracts import AUTO_JOBS
from .plan.presets import resolve_recipe
from .plan.recipe import prepare
from .shards import ShardedFile, is_sharded, open_model, set_paths
from .sizes import parse_size
from .validate import validate as validate_file


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cmf")
def main() -> None:
    """cmf: compressed model container. Pack, inspect, validate and unpack .cmf files.

    Output names follow one rule for every command: a name ending in .cmf (pack) or
    .safetensors / .onnx / .gguf (unpack) writes that format; a name ending in /, an existing
    directory or a name without a suffix is a directory (created). An existing output is
    replaced only with --force; an input never is.
    """


AUTO_PACK_BYTES = 512 << 20  # --jobs auto: a pack without a planner uses workers from this size


class _Jobs(click.ParamType):
    """``--jobs``: a count of worker processes (1 to 1024) or ``auto`` (AUTO_JOBS, 0)."""

    name = "N|auto"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif str(value).strip().lower() == "auto":
            return AUTO_JOBS
        else:
            try:
                number = int(str(value))
            except ValueError:
                self.fail(f"{value!r} is not a number of processes or 'auto'", param, ctx)
        if not 1 <= number <= 1024:
            self.fail(f"{number} is not in the range 1 to 1024 (or 'auto')", param, ctx)
        return number


JOBS = _Jobs()


def _source_bytes(source: str) -> int:
    """Bytes of the model at ``source`` on disk (a file, or the files of a directory)."""
    if not os.path.isdir(source):
        return os.path.getsize(source)
    total = 0
    for root, _, files in os.walk(source):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                continue
    return total


def _size(text: str | None, flag: str) -> int | None:
    return None if text is None else parse_size(text, flag)  # a UsageError naming the flag


def _read_attachments(paths: tuple[str, ...]) -> list[tuple[str, bytes]]:
    out = []
    for path in paths:
        with open(path, "rb") as fh:
            out.append((os.path.basename(path), fh.read()))
    return out


@main.command()
@click.argument("source", type=click.Path(dir_okay=True, path_type=str))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=str),
    help="Output .cmf file, or a directory (ends with /, exists, or has no suffix: "
    "OUTPUT/<source name>.cmf). Default: SOURCE with .cmf.",
)
@click.option(
    "-f",
    "--force",
    is_flag=True,
    help="Replace an existing output (an input of the command is never replaced).",
)
@click.option(
    "--preset",
    type=click.Choice(["lossless", "q8", "q4", "balanced", "small"]),
    help="Named recipe (default: lossless); balanced and small are planned per tensor from "
    "measured sensitivity (cmf.plan.planner).",
)
@click.option(
    "--recipe",
    "recipe_path",
    type=click.Path(exists=True, dir_okay=False, path_type=str),
    help="JSON recipe: tensor-name globs -> codec trees, first match wins.",
)
@click.option(
    "--level",
    type=click.IntRange(-7, 22),
    default=3,
    show_default=True,
    help="zstd level for the lossless candidates.",
)
@click.option(
    "--attach",
    "attach",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=str),
    help="Carry this file inside the .cmf (repeatable).",
)
@click.option(
    "--jobs",
    type=JOBS,
    default="auto",
    show_default=True,
    help="Encode tensors in this many worker processes (the same bytes as --jobs 1); with a "
    "planner, measure the candidates in them. auto: one per CPU for a planned pack of 4M+ "
    "parameters or any pack of 512 MiB+ of tensors, else 1.",
)
@click.option(
    "--executor",
    type=click.Choice(["process", "dask"]),
    default="process",
    show_default=True,
    help="Where tensors are encoded (with a planner: where the candidates are measured): "
    "local processes, or a dask.distributed cluster (needs --scheduler; workers read "
    "SOURCE from shared storage).",
)
@click.option("--scheduler", help="dask scheduler address (tcp://host:8786) for --executor dask.")
@click.option(
    "--shard-size",
    "shard_size",
    help="Write a sharded set (OUTPUT-00001-of-0000N.cmf + OUTPUT.cmf.index.json), shards "
    "of about this size (e.g. 2GB, 500MiB).",
)
@click.option(
    "--target-size",
    "target_size",
    help="Planner: the best output error within this size, as bits per parameter (4.0bpp) "
    "or bytes (12MB, 500KiB).",
)
@click.option(
    "--target-error",
    "target_error",
    type=float,
    help="Planner: the smallest file whose output error (1 - mean cosine on the calibration "
    "inputs) is at most this.",
)
@click.option(
    "--calibrate",
    type=click.Path(exists=True, dir_okay=False, path_type=str),
    help="Planner: calibration inputs, a .txt (one text per line) or .npz/.npy (ONNX "
    "inputs); default: built-in.",
)
@click.option(
    "--token-prior",
    "token_prior",
    default="en,world",
    show_default=True,
    metavar="LANG[,LANG...]|none",
    help="Planner: languages whose word frequencies weigh the token-embedding rows, the "
    "first with 3/4 of the weight ('world': 20 major languages; needs wordfreq: "
    + install_hint("plan")
    + "); every row keeps a floor; 'none' weighs every row alike.",
)
@click.option(
    "--gguf",
    is_flag=True,
    help="Planner: choose each tensor's GGML type (F16, BF16, Q8_0 ... Q2_K, IQ4_XS, IQ4_NL; "
    "llama.cpp's fallbacks) for a GGUF (cmf unpack -o x.gguf); --target-size counts the GGUF.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def pack(
    source: str,
    output: str | None,
    force: bool,
    preset: str | None,
    recipe_path: str | None,
    level: int,
    attach: tuple[str, ...],
    jobs: int,
    executor: str,
    scheduler: str | None,
    shard_size: str | None,
    target_size: str | None,
    target_error: float | None,
    calibrate: str | None,
    token_prior: str,
    gguf: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Pack a model (.safetensors, .gguf, .onnx, a PyTorch .bin/.pt checkpoint, or a Hugging Face
    model directory) into one .cmf file."""
    planned = wants_planner(preset, target_size, target_error, calibrate) or gguf
    if planned:
        check_planner_flags(
            preset,
            target_size,
            target_error,
            calibrate,
            recipe_path,
            gguf=gguf,
            shard_size=shard_size,
        )
    if executor == "dask" and not scheduler:
        raise UsageError("--executor dask needs --scheduler ADDRESS")
    size = _size(shard_size, "--shard-size")
    inputs = [source, *attach, *(p for p in (calibrate, recipe_path) if p is not None)]
    if output is not None:  # an input named as the output: say so before anything else
        check_outputs([output], inputs, force=True)
    target = pack_output(source, output)
    if size is None and target.lower().endswith(SHARD_INDEX_SUFFIX):
        raise UsageError(
            f"{target} names a sharded set's index: add --shard-size, or name a .cmf file"
        )
    check_outputs(shard_set_files(target) if size is not None else [target], inputs, force)
    if not os.path.exists(source):
        raise CmfError(f"{source}: no such file or directory")
    if planned:  # cmf.plan.planner
        make_directory(os.path.dirname(os.path.abspath(target)))
        pack_planned(
            source,
            target,
            preset=preset,
            target_size=target_size,
            target_error=target_error,
            calibrate=calibrate,
            level=level,
            attach=attach,
            quiet=quiet,
            as_json=as_json,
            jobs=jobs,
            executor=executor,
            scheduler=scheduler,
            shard_size=size,
            token_prior=token_prior,
            gguf=gguf,
        )
        return
    if jobs == AUTO_JOBS:
        jobs = auto_jobs(_source_bytes(source), AUTO_PACK_BYTES)
    recipe, fallback = resolve_recipe(preset, recipe_path)
    src = open_source(source)
    recipe = prepare(recipe, src.items(), level)  # a first pass only for shared groups
    extra = _read_attachments(attach)
    make_directory(os.path.dirname(os.path.abspath(target)))
    start = time.perf_counter()
    aliases = lossy = 0
    with progress(len(src), "packing", quiet or as_json) as bar:

        def counted(entry: Any) -> None:
            nonlocal aliases, lossy
            aliases += entry.alias is not None
            lossy += entry.error is not None
            bar.update(1)

        packed = pack_source(
            src,
            target,
            EncodeSettings(recipe, level, fallback),
            jobs=jobs,
            executor=executor,
            scheduler=scheduler,
            shard_size=size,
            attachments=extra,
            on_entry=counted,
        )
    files = [os.path.join(os.path.dirname(target), os.path.basename(f)) for f in packed.files]
    _pack_summary(
        source,
        files[-1] if size is not None else target,
        len(src),
        aliases,
        recipe.name,
        lossy,
        len(src.attachments) + len(attach),
        packed.raw_bytes,
        packed.stored_bytes,
        time.perf_counter() - start,
        quiet,
        as_json,
        files=files if size is not None else None,
    )


def _pack_summary(
    source: str,
    output: str,
    tensors: int,
    aliases: int,
    recipe: str,
    lossy: int,
    attachments: int,
    raw: int,
    stored: int,
    seconds: float,
    quiet: bool,
    as_json: bool,
    files: list[str] | None = None,
) -> None:
    summary = {
        "source": source,
        "output": output,
        "tensors": tensors,
        "aliases": aliases,
        "recipe": recipe,
        "lossy_tensors": lossy,
        "attachments": attachments,
        "raw_bytes": raw,
        "stored_bytes": stored,
        "ratio": round(raw / stored, 4) if stored else None,
        "seconds": round(seconds, 3),
    }
    if files is not None and len(files) > 1:
        summary["files"] = files
    if as_json:
        emit_json(summary)
    elif not quiet:
        shards = f" in {len(files) - 1} shards" if files is not None and len(files) > 1 else ""
        click.echo(
            f"{output}: {tensors} tensors{shards}, {human_bytes(raw)} -> "
            f"{human_bytes(stored)} ({summary['ratio']}x) in {seconds:.1f} s"
        )


def _unpack_default(path: str, f: Any) -> str:
    """``model.cmf`` -> ``model.safetensors``; a sharded set -> ``<stem>.safetensors`` beside it."""
    if is_sharded(path):
        directory, stem = set_paths(f.path)
        return os.path.join(directory, stem + ".safetensors")
    return os.path.splitext(path)[0] + ".safetensors"


def _model_files(path: str, f: Any) -> list[str]:
    """The files a .cmf model consists of: the file, or a set's index and shards."""
    if isinstance(f, ShardedFile):
        return [f.path, *(s.path for s in f.shards)]
    return [path]


def _apply_cast(
    f: Any, specs: list[tuple[str, Any]], cast: str
) -> tuple[list[tuple[str, Any]], Callable[[str], Any]]:
    """Specs and a tensor getter with float tensors converted to ``cast`` (ints and bools kept)."""
    import numpy as np

    from .codecs import ArraySpec
    from .dtypes import BY_NAME

    to = BY_NAME[cast]
    specs = [(n, ArraySpec(to, s.shape) if s.dtype.is_float else s) for n, s in specs]
    wanted = {n: s.dtype.numpy for n, s in specs}

    def get_cast(name: str) -> Any:  # one tensor at a time, as write_safetensors asks
        with np.errstate(over="ignore"):  # overflow to infinity is the contract
            return f.get_tensor(name).astype(wanted[name], copy=False)

    return specs, get_cast


@main.command()
@click.argument("path", type=click.Path(path_type=str))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=str),
    help="Output .safetensors file, .onnx (a model packed from ONNX), or a directory (ends "
    "with /, exists, or has no suffix) for model.safetensors + attachments. Default: "
    "PATH with .safetensors.",
)
@click.option(
    "-f",
    "--force",
    is_flag=True,
    help="Replace existing outputs (the .cmf being read is never replaced).",
)
@click.option(
    "--dtype",
    "cast",
    type=click.Choice(["bf16", "f16", "f32"]),
    help="Cast float tensors to this dtype (ints and bools untouched; default: each "
    "tensor's own dtype).",
)
@click.option("-q", "--quiet", is_flag=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def unpack(
    path: str, output: str | None, force: bool, cast: str | None, quiet: bool, as_json: bool
) -> None:
    """Unpack a .cmf file back to safetensors, to ONNX if packed from ONNX, or to GGUF (-o x.gguf)
    if packed from GGUF (the same bytes for lossless files) or from a Llama/Mistral/Qwen2
    directory.

    With --dtype, float tensors (f64, f32, f16, bf16, fp8) are converted to that dtype
    (round to nearest even; overflow to infinity); integer and bool tensors are written as stored.
    A single .safetensors file holds no attachments: those left out are named on stderr.
    """
    from .runtime.rebuild import ONNX_SKELETON  # the graph attachment of an ONNX-origin file

    kind = output_kind(output, UNPACK_KINDS) if output is not None else None
    with open_model(path) as f:
        output = output if output is not None else _unpack_default(path, f)
        kind = kind or output_kind(output, UNPACK_KINDS)
        attachments = f.attachments()
        inputs = _model_files(path, f)
        choices = ".safetensors file or a directory" + (
            ", or an .onnx file" if ONNX_SKELETON in attachments else ""
        )
        if kind == "gguf":
            _unpack_gguf(path, f, output, inputs, force, cast, quiet, as_json)
            return
        if kind == "onnx":
            if ONNX_SKELETON not in attachments:
                raise UsageError(
                    f"cannot write {output}: {path} was not packed from an ONNX model "
                    f"(no {ONNX_SKELETON!r} attachment); write a {choices}"
                )
            if cast is not None:  # the skeleton's markers pin each weight's data type
                raise UsageError("--dtype applies to safetensors output, not ONNX")
            check_outputs([output, output + ".data"], inputs, force)
            make_directory(os.path.dirname(os.path.abspath(output)))
            from .convert.onnx import write_onnx  # graph from the attachment, weights from tensors

            written = [
                os.path.join(os.path.dirname(output), os.path.basename(w))
                for w in write_onnx(f, output)
            ]
            _unpack_summary(path, written, [], quiet, as_json)
            return
        to_dir = kind == DIRECTORY
        target = os.path.join(output, "model.safetensors") if to_dir else output
        if to_dir:
            clash = [a for a in attachments if a.casefold() == "model.safetensors"]
            if clash:  # it would silently replace the tensors written below
                raise CmfError(f"refusing to write attachment {clash[0]!r} over {target}")
            check_outputs(
                [target, *(os.path.join(output, *a.split("/")) for a in attachments)], inputs, force
            )
        else:
            check_outputs([target], inputs, force)
        make_directory(output if to_dir else os.path.dirname(os.path.abspath(output)))
        specs = [(name, f.spec(name)) for name in f.keys()]
        get: Callable[[str], Any] = f.get_tensor
        if cast is not None:
            specs, get = _apply_cast(f, specs, cast)
        with progress(len(specs), "unpacking", quiet or as_json) as bar:
            write_safetensors(target, specs, get, f.metadata(), lambda _: bar.update(1))
        written = [target]
        left_out: list[str] = []
        if to_dir:
            for name in attachments:
                written.append(write_attachment(output, name, f.get_attachment(name)))
        else:
            left_out = list(attachments)
    _unpack_summary(path, written, left_out, quiet, as_json)


def _unpack_gguf(
    path: str,
    f: Any,
    output: str,
    inputs: list[str],
    force: bool,
    cast: str | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """``cmf unpack -o x.gguf`` (spec/converters.md § GGUF out); UsageError when it cannot apply."""
    from .convert.gguf_export import gguf_writable, write_gguf

    why = gguf_writable(f)
    if why is not None:
        raise UsageError(f"cannot write {output}: {why}; write a .safetensors file or a directory")
    if cast is not None:  # the GGML types are the file's
        raise UsageError("--dtype applies to safetensors output, not GGUF")
    check_outputs([output], inputs, force)
    make_directory(os.path.dirname(os.path.abspath(output)))
    with progress(len(f.keys()), "unpacking", quiet or as_json) as bar:
        write_gguf(f, output, progress=lambda _: bar.update(1))
    _unpack_summary(path, [output], [], quiet, as_json)


def _unpack_summary(
    path: str, written: list[str], left_out: list[str], quiet: bool, as_json: bool
) -> None:
    if left_out:
        shown = ", ".join(printable(a) for a in left_out[:8]) + (
            " ..." if len(left_out) > 8 else ""
        )
        warn(
            f"{len(left_out)} attachment{'s' if len(left_out) != 1 else ''} not written to a "
            f"single file: {shown} (unpack to a directory, -o DIR/, to keep them)"
        )
    if as_json:
        emit_json({"source": path, "written": written, "attachments_not_written": left_out})
    elif not quiet:
        click.echo(f"wrote {', '.join(written)}")


def _error_cell(error: dict | None) -> str:
    """A lossy tensor's recorded relative RMSE ('-' for lossless; the map may hold anything)."""
    value = (error or {}).get("rel_rmse")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    return f"{value:.2e}"


@main.command()
@click.argument("path", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(path: str, as_json: bool) -> None:
    """List tensors, dtypes, shapes, encodings, sizes and ratios."""
    with open_model(path) as f:
        files = f.shards if isinstance(f, ShardedFile) else [f]
        rows = []
        for shard in files:
            for entry in shard.index.tensors:
                if entry.alias is not None:
                    stored, encoding = 0, f"alias of {entry.alias}"
                else:
                    stored = sum(
                        shard.index.segments[leaf.segment].length
                        for leaf in iter_leaves(entry.encoding)
                    )
                    encoding = describe(entry.encoding)
                raw = entry.spec.nbytes
                rows.append(
                    {
                        "name": entry.name,
                        "dtype": entry.spec.dtype.name,
                        "shape": list(entry.spec.shape),
                        "encoding": encoding,
                        "raw_bytes": raw,
                        "stored_bytes": stored,
                        "ratio": round(raw / stored, 4) if stored else None,
                        "error": dict(entry.error) if entry.error is not None else None,
                    }
                )
                if isinstance(f, ShardedFile):
                    rows[-1]["shard"] = os.path.basename(shard.path)
        ggml = (
            f.metadata().get("cmf.gguf.tensor_types")
            if f.metadata().get("cmf.source_format") == "gguf"
            else None
        )
        if isinstance(ggml, dict):  # a GGUF import: each tensor's GGML type in the source file
            for r in rows:
                r["ggml_type"] = ggml[r["name"]] if isinstance(ggml.get(r["name"]), str) else None
        raw_total = sum(r["raw_bytes"] for r in rows)
        summary = {
            "path": path,
            "version": f"1.{f.minor}",
            "file_bytes": f.size,
            "tensors": len(rows),
            "raw_bytes": raw_total,
            "ratio": round(raw_total / f.size, 4) if f.size else None,
            "attachments": [{"name": a.name, "size": a.size} for a in files[-1].index.attachments],
            "shared": [  # values stored once and referenced from trees (e.g. group codebooks)
                {
                    "dtype": e.spec.dtype.name,
                    "shape": list(e.spec.shape),
                    "encoding": describe(e.encoding),
                    "raw_bytes": e.spec.nbytes,
                    "stored_bytes": sum(
                        shard.index.segments[leaf.segment].length
                        for leaf in iter_leaves(e.encoding)
                    ),
                }
                for shard in files
                for e in shard.index.shared
                if e is not None
            ],
            "metadata": f.metadata(),
        }
        if isinstance(f, ShardedFile):
            summary["shards"] = list(f.shard_names)
    if as_json:
        emit_json({**summary, "tensor_list": rows})
        return
    for r in rows:  # names come from the file: never let them print control characters
        r["shown"] = printable(r["name"])
    width = min(max((len(r["shown"]) for r in rows), default=4), 60)
    has_ggml = any("ggml_type" in r for r in rows)
    ggml_head = f"{'ggml':<8} " if has_ggml else ""
    click.echo(
        f"{'name':<{width}}  {'dtype':<7} {ggml_head}{'shape':<18} {'stored':>10} "
        f"{'ratio':>7} {'rel_rmse':>9}  encoding"
    )
    for r in rows:
        shape = "x".join(map(str, r["shape"])) or "scalar"
        ratio = f"{r['ratio']:.2f}" if r["ratio"] else "-"
        ggml_cell = f"{printable(r.get('ggml_type') or '-')[:8]:<8} " if has_ggml else ""
        click.echo(
            f"{r['shown'][:width]:<{width}}  {r['dtype']:<7} {ggml_cell}{shape:<18} "
            f"{human_bytes(r['stored_bytes']):>10} {ratio:>7} {_error_cell(r['error']):>9}  "
            f"{r['encoding']}"
        )
    click.echo(
        f"{summary['tensors']} tensors, {human_bytes(raw_total)} raw -> "
        f"{human_bytes(f.size)} "
        f"{'in ' + str(len(summary['shards'])) + ' shards' if 'shards' in summary else 'file'} "
        f"({summary['ratio']}x), cmf {summary['version']}"
    )
    for i, v in enumerate(summary["shared"]):
        shape = "x".join(map(str, v["shape"])) or "scalar"
        click.echo(
            f"shared value {i}: {v['dtype']} {shape}, {human_bytes(v['stored_bytes'])}, "
            f"{v['encoding']}"
        )
    for a in summary["attachments"]:
        click.echo(f"attachment {printable(a['name'])} ({human_bytes(a['size'])})")
    if summary["metadata"]:
        click.echo(f"metadata: {len(summary['metadata'])} keys")


@main.command()
@click.argument("path", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing; the exit code tells.")
def validate(path: str, as_json: bool, quiet: bool) -> None:
    """Check a .cmf file (or a sharded set: its .cmf.index.json or directory) against the spec;
    exit 0 only if it is valid."""
    report = validate_file(path)
    if as_json:
        emit_json(report.to_json())
    elif not quiet:
        for e in report.errors:
            click.echo(f"error: {e}")
        for w in report.warnings:
            click.echo(f"warning: {w}")
        state = "valid" if report.valid else f"INVALID ({len(report.errors)} problems)"
        click.echo(
            f"{path}: {state}; {report.segments_checked} segments, "
            f"{report.tensors_checked} tensors, {report.attachments_checked} attachments checked"
        )
    sys.exit(0 if report.valid else 1)


main.add_command(run_command)  # cmf run, cmf eval: cmf.runtime
main.add_command(eval_command)
main.add_command(report_command)  # cmf report: cmf.plan.report


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that writers discard their temporary files and
    worker processes are stopped, as on Ctrl-C."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated()


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    try:
        old = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run(argv: list[str] | None = None) -> None:
    """Console entry point: one clear line on stderr for any problem, and the exit code 1 for
    bad input, 2 for a usage error, 130 for Ctrl-C (143 for SIGTERM)."""
    try:
        with _sigterm_interrupts():
            main.main(args=argv, prog_name="cmf", standalone_mode=False)
    except click.exceptions.Abort as exc:  # click's form of Ctrl-C (and of SIGTERM, see above)
        interrupted = isinstance(exc.__cause__, KeyboardInterrupt)
        click.echo("cmf: interrupted" if interrupted else "cmf: aborted", err=True)
        sys.exit(143 if isinstance(exc.__cause__, _Terminated) else 130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except UsageError as exc:
        click.echo(f"cmf: error: {exc}", err=True)
        sys.exit(2)
    except CmfError as exc:
        click.echo(f"cmf: error: {exc}", err=True)
        sys.exit(1)
    except OSError as exc:
        click.echo(f"cmf: error: {exc.filename or ''}: {exc.strerror or exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt as exc:
        click.echo("cmf: interrupted", err=True)
        sys.exit(143 if isinstance(exc, _Terminated) else 130)


if __name__ == "__main__":  # pragma: no cover
    run()
