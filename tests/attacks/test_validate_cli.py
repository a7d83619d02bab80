"""``cmf validate`` lists every independent problem and never raises; the CLI on hostile files
exits 1 with one clear line and no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import cmf

from . import craft as c
from .common import base_file, base_parts, write

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def many_problems() -> tuple[bytes, list[str]]:
    """A file with independent problems: some found when parsing the index, some only when
    reading segments and decoding."""
    segments, index = base_parts()
    t = index["tensors"]
    t[0]["dtype"] = "f128"  # unknown dtype
    t[1]["encoding"]["parts"]["data"]["codec"] = "lz4"  # unknown codec
    t.append(c.tensor("", "u8", [1], alias="w"))  # empty name
    t.append(c.tensor("h", "u8", [1], alias="w"))  # duplicate name
    index["attachments"].append(c.attachment("../evil", 1, c.leaf(0)))  # path escape
    index["metadata"] = {"blob": b"\x00"}  # binary metadata value
    segments[4] = bytes([1, 7, 0])  # bool byte 7 (decode-time)
    table = c.segment_table(segments)
    table[2][2] ^= 1  # CRC mismatch of a byteplanes plane (read-time)
    data = c.assemble(segments, {"segments": table, **index}, pad_byte=0x55)  # padding (validate)
    expected = [
        "unknown dtype 'f128'",
        "unknown codec 'lz4'",
        "must be 1 to 1024 bytes, found 0",
        "duplicate tensor name 'h'",
        "'..' component",
        "metadata values must not be binary",
        "bool byte is neither 0 nor 1",
        "segment 2 CRC-32C",
        "padding bytes",
    ]
    return data, expected


def test_validate_lists_each_problem(tmp_path):
    data, expected = many_problems()
    report = cmf.validate(write(tmp_path, data))
    assert not report.valid
    for e in expected:
        assert sum(e in err for err in report.errors) >= 1, (e, report.errors)
    assert len(report.errors) >= len(expected)
    # A bad tensor's own segments are not also reported as unreferenced (noise).
    assert not any("not referenced" in err for err in report.errors), report.errors


def test_validate_report_json(tmp_path):
    data, expected = many_problems()
    r = subprocess.run(
        [sys.executable, "-m", "cmf.cli", "validate", "--json", write(tmp_path, data)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    out = json.loads(r.stdout)
    assert out["valid"] is False and len(out["errors"]) >= len(expected)


def test_validate_two_structural_problems(tmp_path):
    # Problems in separate entries are all listed, even when the first is fatal to its entry.
    segments, index = base_parts()
    index["tensors"][0]["shape"] = [-1, 3]
    index["tensors"][4]["shape"] = [1] * 40
    index["attachments"][0]["name"] = "/etc/passwd"
    report = cmf.validate(write(tmp_path, c.assemble(segments, index)))
    errors = "\n".join(report.errors)
    assert "tensor 'w': shape dimension must be an integer" in errors  # says which tensor
    assert "tensor 'flags': rank 40 exceeds the limit 32" in errors
    assert "attachment name '/etc/passwd' is not a relative POSIX path" in errors
    assert "tensor 'w_tied': alias must name an earlier" in errors  # knock-on of 'w', named
    assert len(report.errors) == 4, report.errors


HOSTILE = {
    # name: (bytes, fails at open?)
    "bad-magic": (base_file(magic=bytes(8)), True),
    "major-9": (base_file(major=9), True),
    "trailer-wraps": (base_file(index_offset=(1 << 64) - 64), True),
    "nest-bomb": (c.assemble([], b"\x91" * 100_000), True),
    "dup-key": (
        c.assemble([], c.mp(c.Pairs((("segments", []), ("tensors", []), ("tensors", []))))),
        True,
    ),
    "escape": (None, True),
    "zstd-1tib": (None, False),
    "crc": (None, False),
}


def _fill() -> None:
    segments, index = base_parts()
    index["attachments"][0]["name"] = "../../.bashrc"
    HOSTILE["escape"] = (c.assemble(segments, index), True)
    segments, index = base_parts()
    segments[1] = c.zstd_frame(rle=(0, 100), declared=1 << 40)
    HOSTILE["zstd-1tib"] = (c.assemble(segments, index), False)
    segments, index = base_parts()
    table = c.segment_table(segments)
    table[0][2] ^= 0x80
    HOSTILE["crc"] = (c.assemble(segments, {"segments": table, **index}), False)


_fill()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cmf.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_cli_on_hostile_files(tmp_path, name):
    data, at_open = HOSTILE[name]
    path = write(tmp_path, data, f"{name}.cmf")
    out_dir = tmp_path / "out"

    r = run_cli("validate", path)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    assert "INVALID" in r.stdout and "error:" in r.stdout

    r = run_cli("unpack", path, "-o", f"{out_dir}/", "-q")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "cmf: error:" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    leftovers = [f for _, _, fs in os.walk(tmp_path) for f in fs if f != f"{name}.cmf"]
    assert not leftovers, leftovers  # atomic: nothing half-written is left behind

    r = run_cli("info", path)
    if at_open:
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert "Traceback" not in r.stderr and "cmf: error:" in r.stderr
    else:  # info is lazy: it lists without decoding, so decode-time damage does not show
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr


def test_cli_on_missing_file_and_directory(tmp_path):
    for target in (str(tmp_path / "nope.cmf"), str(tmp_path)):
        for cmd in ("validate", "info", "unpack"):
            r = run_cli(cmd, target)
            assert r.returncode == 1, (cmd, target, r.stdout, r.stderr)
            assert "Traceback" not in r.stderr, r.stderr
