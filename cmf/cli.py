"""Command line: ``cmf pack | unpack | info | validate``.

Bad input gives one line on stderr and a non-zero exit code (1: bad input or invalid file,
2: usage), never a traceback.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Callable

import click

from . import __version__
from .atomic import AtomicFile
from .convert import Encoded, open_source, write_safetensors
from .errors import CmfError
from .index import iter_leaves
from .pipeline import describe
from .plan.recipe import encoder_for, prepare, resolve_recipe
from .shards import ShardedFile, is_sharded, open_model, set_paths
from .validate import validate as validate_file
from .writer import Writer


def _json_safe(obj: Any) -> Any:
    """``obj`` with non-finite floats as the strings "inf", "-inf", "nan" (strict JSON has none)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _emit_json(obj: Any) -> None:
    click.echo(json.dumps(_json_safe(obj), indent=2, sort_keys=False, allow_nan=False))


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def _printable(text: str) -> str:
    """``text`` with control and other non-printable characters escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _progress(items: list[str], label: str, quiet: bool) -> Any:
    # Off a terminal click prints only the label, which would make an error two lines on stderr.
    hidden = quiet or not sys.stderr.isatty()
    return click.progressbar(
        length=len(items), label=label, file=sys.stderr, hidden=hidden, show_pos=True
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cmf")
def main() -> None:
    """cmf: compressed model container. Pack, inspect, validate and unpack .cmf files."""


@main.command()
@click.argument("source", type=click.Path(dir_okay=True, path_type=str))
@click.option("-o", "--output", type=click.Path(path_type=str), help="Output .cmf (default: SOURCE with .cmf).")
@click.option("--preset", type=click.Choice(["lossless", "q8", "q4", "balanced", "small"]), help="Named recipe (default: lossless); balanced and small are planned per tensor from measured sensitivity (cmf.plan.planner).")
@click.option("--recipe", "recipe_path", type=click.Path(exists=True, dir_okay=False, path_type=str), help="JSON recipe: tensor-name globs -> codec trees, first match wins.")
@click.option("--level", type=click.IntRange(-7, 22), default=3, show_default=True, help="zstd level for the lossless candidates.")
@click.option("--attach", "attach", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=str), help="Carry this file inside the .cmf (repeatable).")
@click.option("--jobs", type=click.IntRange(1, 1024), default=1, show_default=True, help="Encode tensors in this many worker processes (the same bytes as --jobs 1); with a planner, measure the candidates in them.")
@click.option("--executor", type=click.Choice(["process", "dask"]), default="process", show_default=True, help="Where tensors are encoded (with a planner: where the candidates are measured): local processes, or a dask.distributed cluster (needs --scheduler; workers read SOURCE from shared storage).")
@click.option("--scheduler", help="dask scheduler address (tcp://host:8786) for --executor dask.")
@click.option("--shard-size", "shard_size", help="Write a sharded set (OUTPUT-00001-of-0000N.cmf + OUTPUT.cmf.index.json), shards of about this size (e.g. 2GB, 500MiB).")
@click.option("--target-size", "target_size", help="Planner: the best output error within this size, as bits per parameter (4.0bpp) or bytes (12MB, 500KiB).")
@click.option("--target-error", "target_error", type=float, help="Planner: the smallest file whose output error (1 - mean cosine on the calibration inputs) is at most this.")
@click.option("--calibrate", type=click.Path(exists=True, dir_okay=False, path_type=str), help="Planner: calibration inputs, a .txt (one text per line) or .npz/.npy (ONNX inputs); default: built-in.")
@click.option("--token-prior", "token_prior", default="en", show_default=True, metavar="LANG|none", help="Planner: language whose word frequencies weigh the token-embedding rows (needs wordfreq: pip install 'cmf[plan]'); 'none' weighs every row alike.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def pack(source: str, output: str | None, preset: str | None, recipe_path: str | None, level: int, attach: tuple[str, ...], jobs: int, executor: str, scheduler: str | None, shard_size: str | None, target_size: str | None, target_error: float | None, calibrate: str | None, token_prior: str, quiet: bool, as_json: bool) -> None:
    """Pack a model (.safetensors, .gguf or .onnx file, or Hugging Face model directory) into one .cmf file."""
    from .cli_plan import check_planner_flags, pack_planned, wants_planner

    if wants_planner(preset, target_size, target_error, calibrate):  # cmf.plan.planner
        check_planner_flags(preset, target_size, target_error, calibrate, recipe_path)
        if executor == "dask" and not scheduler:
            raise click.UsageError("--executor dask needs --scheduler ADDRESS")
        if output is None:
            base = source.rstrip("/" + os.sep)
            output = (base if os.path.isdir(source) else os.path.splitext(base)[0]) + ".cmf"
        pack_planned(source, output, preset=preset, target_size=target_size, target_error=target_error,
                     calibrate=calibrate, level=level, attach=attach, quiet=quiet, as_json=as_json,
                     jobs=jobs, executor=executor, scheduler=scheduler, shard_size=shard_size,
                     token_prior=token_prior)
        return
    recipe, fallback = resolve_recipe(preset, recipe_path)
    src = open_source(source)
    recipe = prepare(recipe, src.items(), level)  # a first pass only for shared groups
    if output is None:
        base = source.rstrip("/" + os.sep)
        output = (base if os.path.isdir(source) else os.path.splitext(base)[0]) + ".cmf"
    start = time.perf_counter()
    aliases = lossy = 0
    if jobs > 1 or executor != "process" or shard_size is not None:  # cmf.parallel, cmf.shards
        from .parallel import Plan, pack_source
        from .shards import parse_size

        if executor == "dask" and not scheduler:
            raise click.UsageError("--executor dask needs --scheduler ADDRESS")
        size = parse_size(shard_size) if shard_size is not None else None
        extra = []
        for path in attach:
            with open(path, "rb") as fh:
                extra.append((os.path.basename(path), fh.read()))
        with _progress(src.names(), "packing", quiet or as_json) as bar:
            def counted(entry: Any) -> None:
                nonlocal aliases, lossy
                aliases += entry.alias is not None
                lossy += entry.error is not None
                bar.update(1)

            packed = pack_source(src, output, Plan(recipe, level, fallback), jobs=jobs, executor=executor,
                                 scheduler=scheduler, shard_size=size, attachments=extra, on_entry=counted)
        _pack_summary(source, packed.files[-1], len(src), aliases, recipe.name, lossy,
                      len(src.attachments) + len(attach), packed.raw_bytes, packed.stored_bytes,
                      time.perf_counter() - start, quiet, as_json, files=packed.files)
        return
    with Writer(output, metadata=src.metadata, level=level) as w:
        with _progress(src.names(), "packing", quiet or as_json) as bar:
            for name, value in src.items():
                if isinstance(value, Encoded):  # arrives encoded (GGUF blocks kept as they are)
                    entry = w.add_encoded(name, value.spec, value.pending)
                else:
                    entry = w.add_tensor(name, value, encoder_for(recipe, name, level, fallback))
                aliases += entry.alias is not None
                lossy += entry.error is not None
                bar.update(1)
        for name, data in src.attachments.items():
            w.add_attachment(name, data)
        for path in attach:
            with open(path, "rb") as fh:
                w.add_attachment(os.path.basename(path), fh.read())
    _pack_summary(source, output, len(src), aliases, recipe.name, lossy, len(src.attachments) + len(attach),
                  w.raw_bytes, os.path.getsize(output), time.perf_counter() - start, quiet, as_json)


def _pack_summary(source: str, output: str, tensors: int, aliases: int, recipe: str, lossy: int, attachments: int,
                  raw: int, stored: int, seconds: float, quiet: bool, as_json: bool, files: list[str] | None = None) -> None:
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
        _emit_json(summary)
    elif not quiet:
        shards = f" in {len(files) - 1} shards" if files is not None and len(files) > 1 else ""
        click.echo(
            f"{output}: {tensors} tensors{shards}, {_human_bytes(raw)} -> "
            f"{_human_bytes(stored)} ({summary['ratio']}x) in {seconds:.1f} s"
        )


@main.command()
@click.argument("path", type=click.Path(path_type=str))
@click.option("-o", "--output", type=click.Path(path_type=str), help="Output .safetensors, .onnx (a model packed from ONNX), or a directory (ends with /) for model.safetensors + attachments.")
@click.option("--dtype", "cast", type=click.Choice(["bf16", "f16", "f32"]), help="Cast float tensors to this dtype (ints and bools untouched; default: each tensor's own dtype).")
@click.option("-q", "--quiet", is_flag=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def unpack(path: str, output: str | None, cast: str | None, quiet: bool, as_json: bool) -> None:
    """Unpack a .cmf file back to safetensors, or to ONNX if packed from ONNX (bit-exact for lossless files).

    With --dtype, float tensors (f64, f32, f16, bf16, fp8) are converted to that dtype
    (round to nearest even; overflow to infinity); integer and bool tensors are written as stored.
    """
    with open_model(path) as f:
        if output is None and is_sharded(path):  # model.cmf.index.json -> model.safetensors
            directory, stem = set_paths(f.path)
            output = os.path.join(directory, stem + ".safetensors")
        output = output or os.path.splitext(path)[0] + ".safetensors"
        if output.lower().endswith(".onnx") and not os.path.isdir(output):
            if cast is not None:  # the skeleton's markers pin each weight's data type
                raise click.UsageError("--dtype applies to safetensors output, not ONNX")
            from .convert.onnx import write_onnx  # graph from the attachment, weights from tensors

            written = write_onnx(f, output)
            if as_json:
                _emit_json({"source": path, "written": written})
            elif not quiet:
                click.echo(f"wrote {', '.join(written)}")
            return
        to_dir = output.endswith(("/", os.sep)) or os.path.isdir(output)
        target = os.path.join(output, "model.safetensors") if to_dir else output
        if to_dir:
            clash = [a for a in f.attachments() if a.casefold() == "model.safetensors"]
            if clash:  # it would silently replace the tensors written below
                raise CmfError(f"refusing to write attachment {clash[0]!r} over {target}")
            os.makedirs(output, exist_ok=True)
        specs = [(name, f.spec(name)) for name in f.keys()]
        get: Callable[[str], Any] = f.get_tensor
        if cast is not None:
            import numpy as np

            from .codecs import ArraySpec
            from .dtypes import BY_NAME

            to = BY_NAME[cast]
            specs = [(n, ArraySpec(to, s.shape) if s.dtype.is_float else s) for n, s in specs]
            wanted = {n: s.dtype.numpy for n, s in specs}

            def get_cast(name: str) -> Any:  # one tensor at a time, as write_safetensors asks
                with np.errstate(over="ignore"):  # overflow to infinity is the contract
                    return f.get_tensor(name).astype(wanted[name], copy=False)

            get = get_cast
        with _progress(f.keys(), "unpacking", quiet or as_json) as bar:
            write_safetensors(target, specs, get, f.metadata(), lambda _: bar.update(1))
        written = [target]
        if to_dir:
            for name in f.attachments():
                written.append(_write_attachment(output, name, f.get_attachment(name)))
    if as_json:
        _emit_json({"source": path, "written": written})
    elif not quiet:
        click.echo(f"wrote {', '.join(written)}")


def _error_cell(error: dict | None) -> str:
    """A lossy tensor's recorded relative RMSE ('-' for lossless; the map may hold anything)."""
    value = (error or {}).get("rel_rmse")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    return f"{value:.2e}"


def _write_attachment(directory: str, name: str, data: bytes) -> str:
    """Write attachment ``name`` under ``directory``, never through a symlink or outside it."""
    root = os.path.realpath(directory)
    target = os.path.join(root, *name.split("/"))
    parent = root
    for part in name.split("/")[:-1]:
        parent = os.path.join(parent, part)
        if os.path.islink(parent):
            raise CmfError(f"refusing to write attachment {name!r}: {parent} is a symlink")
        os.makedirs(parent, exist_ok=True)
    if os.path.islink(target) or os.path.commonpath([root, os.path.realpath(target)]) != root:
        raise CmfError(f"refusing to write attachment {name!r} outside {root}")
    with AtomicFile(target) as out:
        out.file.write(data)
    return target


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
                    stored = sum(shard.index.segments[leaf.segment].length for leaf in iter_leaves(entry.encoding))
                    encoding = describe(entry.encoding)
                raw = entry.spec.nbytes
                rows.append({
                    "name": entry.name,
                    "dtype": entry.spec.dtype.name,
                    "shape": list(entry.spec.shape),
                    "encoding": encoding,
                    "raw_bytes": raw,
                    "stored_bytes": stored,
                    "ratio": round(raw / stored, 4) if stored else None,
                    "error": dict(entry.error) if entry.error is not None else None,
                })
                if isinstance(f, ShardedFile):
                    rows[-1]["shard"] = os.path.basename(shard.path)
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
                {"dtype": e.spec.dtype.name, "shape": list(e.spec.shape), "encoding": describe(e.encoding),
                 "raw_bytes": e.spec.nbytes,
                 "stored_bytes": sum(shard.index.segments[leaf.segment].length for leaf in iter_leaves(e.encoding))}
                for shard in files for e in shard.index.shared if e is not None
            ],
            "metadata": f.metadata(),
        }
        if isinstance(f, ShardedFile):
            summary["shards"] = list(f.shard_names)
    if as_json:
        _emit_json({**summary, "tensor_list": rows})
        return
    for r in rows:  # names come from the file: never let them print control characters
        r["shown"] = _printable(r["name"])
    width = min(max((len(r["shown"]) for r in rows), default=4), 60)
    click.echo(f"{'name':<{width}}  {'dtype':<7} {'shape':<18} {'stored':>10} {'ratio':>7} {'rel_rmse':>9}  encoding")
    for r in rows:
        shape = "x".join(map(str, r["shape"])) or "scalar"
        ratio = f"{r['ratio']:.2f}" if r["ratio"] else "-"
        click.echo(
            f"{r['shown'][:width]:<{width}}  {r['dtype']:<7} {shape:<18} "
            f"{_human_bytes(r['stored_bytes']):>10} {ratio:>7} {_error_cell(r['error']):>9}  {r['encoding']}"
        )
    click.echo(
        f"{summary['tensors']} tensors, {_human_bytes(raw_total)} raw -> "
        f"{_human_bytes(f.size)} {'in ' + str(len(summary['shards'])) + ' shards' if 'shards' in summary else 'file'} "
        f"({summary['ratio']}x), cmf {summary['version']}"
    )
    for i, v in enumerate(summary["shared"]):
        shape = "x".join(map(str, v["shape"])) or "scalar"
        click.echo(f"shared value {i}: {v['dtype']} {shape}, {_human_bytes(v['stored_bytes'])}, {v['encoding']}")
    for a in summary["attachments"]:
        click.echo(f"attachment {_printable(a['name'])} ({_human_bytes(a['size'])})")
    if summary["metadata"]:
        click.echo(f"metadata: {len(summary['metadata'])} keys")


@main.command()
@click.argument("path", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing; the exit code tells.")
def validate(path: str, as_json: bool, quiet: bool) -> None:
    """Check a .cmf file (or a sharded set: its .cmf.index.json or directory) against the spec; exit 0 only if it is valid."""
    report = validate_file(path)
    if as_json:
        _emit_json(report.to_json())
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


from .cli_runtime import eval_command, run_command  # noqa: E402  (cmf run, cmf eval: cmf.runtime)

main.add_command(run_command)
main.add_command(eval_command)

from .cli_plan import report_command  # noqa: E402  (cmf report: cmf.plan.report)

main.add_command(report_command)


def run(argv: list[str] | None = None) -> None:
    """Console entry point: one clear line and exit code 1 for any bad input."""
    try:
        main.main(args=argv, prog_name="cmf", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("cmf: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except CmfError as exc:
        click.echo(f"cmf: error: {exc}", err=True)
        sys.exit(1)
    except OSError as exc:
        click.echo(f"cmf: error: {exc.filename or ''}: {exc.strerror or exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("cmf: interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    run()
