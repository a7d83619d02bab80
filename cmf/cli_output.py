"""What every cmf command prints: strict JSON, sizes, names from files made printable,
progress bars on stderr, paths shown as the user gave them, warnings. Imported by the
commands (cli, cli_plan, cli_runtime); imports none of them."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from .jsonable import json_safe


def emit_json(obj: Any) -> None:
    """Print ``obj`` as strict JSON on stdout (non-finite numbers as null: cmf.jsonable)."""
    click.echo(json.dumps(json_safe(obj), indent=2, sort_keys=False, allow_nan=False))


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def printable(text: str) -> str:
    """``text`` with control and other non-printable characters escaped."""
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


def progress(length: int, label: str, quiet: bool) -> Any:
    """A click progress bar on stderr, hidden when ``quiet`` or off a terminal (there click
    prints only the label, which would make an error two lines on stderr)."""
    hidden = quiet or not sys.stderr.isatty()
    return click.progressbar(
        length=length, label=label, file=sys.stderr, hidden=hidden, show_pos=True
    )


def warn(message: str) -> None:
    """One ``cmf: warning:`` line on stderr."""
    click.echo(f"cmf: warning: {printable(message)}", err=True)


__all__ = ["emit_json", "human_bytes", "json_safe", "printable", "progress", "warn"]
