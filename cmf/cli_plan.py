"""``cmf pack`` with a planner (``--preset balanced|small``, ``--target-size``,
``--target-error``, ``--calibrate``) and ``cmf report``: cmf.plan.planner / cmf.plan.report.

Registered by cmf/cli.py; errors are CmfError (one ``cmf: error:`` line; UsageError: exit 2).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import click

from .cli_output import emit_json, human_bytes, printable, progress, warn
from .errors import UsageError
from .extras import install_hint

PLANNED = ("balanced", "small")


class _Stages:
    """One progress bar per planner stage on stderr (hidden off a terminal, as cmf pack's)."""

    def __init__(self, hidden: bool) -> None:
        self.hidden = hidden or not sys.stderr.isatty()
        self.stage: str | None = None
        self.bar: Any = None
        self.done = 0

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.hidden:
            return
        if stage != self.stage:
            self.close()
            self.stage, self.done = stage, 0
            self.bar = progress(total, stage, quiet=False)
            self.bar.__enter__()
        step = done - self.done
        if step > 0:
            self.bar.update(step)
            self.done = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def wants_planner(
    preset: str | None, target_size: str | None, target_error: float | None, calibrate: str | None
) -> bool:
    return (
        preset in PLANNED
        or target_size is not None
        or target_error is not None
        or calibrate is not None
    )


def pack_planned(
    source: str,
    output: str,
    *,
    preset: str | None,
    target_size: str | None,
    target_error: float | None,
    calibrate: str | None,
    level: int,
    attach: tuple[str, ...],
    quiet: bool,
    as_json: bool,
    jobs: int = 1,
    executor: str = "process",
    scheduler: str | None = None,
    shard_size: int | None = None,
    token_prior: str = "en,world",
    gguf: bool = False,
) -> None:
    """``cmf pack`` with a planner: ``jobs`` processes (or a dask cluster) measure the
    candidates; ``shard_size`` writes a sharded set as ``cmf pack --shard-size`` does."""
    from .plan.planner import PlanOptions, plan_and_write

    given = [
        n
        for n, v in (
            ("--preset", preset),
            ("--target-size", target_size),
            ("--target-error", target_error),
        )
        if v is not None
    ]
    if len(given) > 1:
        raise UsageError(
            f"give one of --preset, --target-size and --target-error, not {' and '.join(given)}"
        )
    if not given:
        raise UsageError(
            "--calibrate needs --preset balanced|small, --target-size or --target-error"
        )
    if preset is not None and preset not in PLANNED:
        raise UsageError(f"--preset {preset} is a fixed recipe: it takes no --calibrate")
    extra = {}
    for path in attach:
        with open(path, "rb") as fh:
            extra[os.path.basename(path)] = fh.read()
    stages = _Stages(quiet or as_json)
    start = time.perf_counter()
    try:
        result = plan_and_write(
            source,
            output,
            PlanOptions(
                preset=preset,
                target_error=target_error,
                target_size=target_size,
                calibrate=calibrate,
                level=level,
                progress=stages,
                jobs=jobs,
                executor=executor,
                scheduler=scheduler,
                token_prior=None if token_prior == "none" else token_prior,
                gguf=gguf,
            ),
            extra_attachments=extra,
            shard_size=shard_size,
        )
    finally:
        stages.close()
    seconds = time.perf_counter() - start
    from .plan.report import report

    output = result.path or output  # a sharded set: its shard index
    rep = report(output)
    summary = {
        "source": source,
        "output": output,
        "tensors": len(rep["tensors"]),
        "recipe": preset or ("target-size" if target_size is not None else "target-error"),
        "lossy_tensors": sum(1 for r in rep["tensors"] if r["rel_rmse"] is not None),
        "raw_bytes": sum(r["parameters"] * _itemsize(r["dtype"]) for r in rep["tensors"]),
        "stored_bytes": rep["file_bytes"],
        "seconds": round(seconds, 3),
        "parameters": rep["parameters"],
        "bits_per_parameter": rep["bits_per_parameter"],
        "weights_bits_per_parameter": rep["weights_bits_per_parameter"],
        "predicted_error": result.predicted_error,
        "measured_error": result.measured_error,
        "verified_error": result.file_error,
        "target_met": result.target_met,
        "plan": result.summary(),
    }
    if shard_size is not None:
        summary["files"] = list(result.files)
    summary["ratio"] = (
        round(summary["raw_bytes"] / rep["file_bytes"], 4) if rep["file_bytes"] else None
    )
    for message in result.warnings:  # fallbacks: what the plan could not use
        warn(message)
    if not result.target_met:
        warn("; ".join(result.notes) or "the target was not met")
    if gguf:
        summary["gguf_bytes"] = getattr(result, "gguf_bytes", None)
        summary["gguf_bits_per_parameter"] = (
            summary["gguf_bytes"] * 8 / rep["parameters"]
            if summary["gguf_bytes"] and rep["parameters"]
            else None
        )
    if as_json:
        emit_json(summary)
        return
    if quiet:
        return
    shards = f" in {len(rep['shards'])} shards" if rep.get("shards") else ""
    click.echo(
        f"{output}: {summary['tensors']} tensors{shards}, {human_bytes(summary['raw_bytes'])} -> "
        f"{human_bytes(rep['file_bytes'])} ({summary['ratio']}x) in {seconds:.1f} s"
    )
    line = f"plan: {rep['bits_per_parameter']:.3f} bits/parameter, {result.metric}"
    if result.measured_error is not None:
        line += (
            f" predicted {result.predicted_error:.3g}, measured {result.measured_error:.3g} "
            f"(cosine mean {result.cosine_mean:.5f}, min {result.cosine_min:.5f}) "
            f"on {result.calibration.get('samples')} calibration samples"
        )
    else:
        line += f" predicted {result.predicted_error:.3g} (data-free)"
    click.echo(line)
    if summary.get("gguf_bytes"):
        click.echo(
            f"GGUF (cmf unpack -o x.gguf): {summary['gguf_bytes']} bytes, "
            f"{summary['gguf_bits_per_parameter']:.3f} bits/parameter"
        )


def _itemsize(dtype: str) -> int:
    from .dtypes import BY_NAME

    return BY_NAME[dtype].itemsize


@click.command("report")
@click.argument("path", type=click.Path(path_type=str))
@click.option(
    "--png",
    "png",
    type=click.Path(dir_okay=False, path_type=str),
    help="Also draw the report to this PNG (needs matplotlib: " + install_hint("report") + ").",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def report_command(path: str, png: str | None, as_json: bool) -> None:
    """Per-tensor bits per weight, recorded error and (for a planned file) sensitivity and share
    of the output error."""
    from .plan.report import render_png, render_text, report

    rep = report(path)
    if png is not None:
        render_png(rep, png)
    if as_json:
        emit_json(rep)
        return
    for line in render_text(rep, printable):
        click.echo(line)
    if png is not None:
        click.echo(f"wrote {png}")


def check_planner_flags(
    preset: str | None,
    target_size: str | None,
    target_error: float | None,
    calibrate: str | None,
    recipe: str | None,
    *,
    gguf: bool = False,
    shard_size: str | None = None,
) -> None:
    """Flags that do not go with the planner: UsageError (exit 2). --jobs, --executor and
    --shard-size do (pack_planned), except --shard-size with --gguf (one GGUF)."""
    if gguf:
        if recipe is not None:
            raise UsageError("--gguf plans GGML types itself: it does not go with --recipe")
        if preset is not None and preset not in PLANNED:
            raise UsageError(
                f"--gguf does not go with --preset {preset}: use --preset balanced|small, "
                "--target-size or --target-error"
            )
        if preset is None and target_size is None and target_error is None:
            raise UsageError(
                "--gguf needs --preset balanced|small, --target-size or --target-error"
            )
        if shard_size is not None:
            raise UsageError("--gguf writes one .cmf (one GGUF): it does not go with --shard-size")
    if recipe is not None:
        raise UsageError(
            "--recipe does not go with --preset balanced|small, --target-size, "
            "--target-error or --calibrate"
        )


__all__ = ["PLANNED", "check_planner_flags", "pack_planned", "report_command", "wants_planner"]
