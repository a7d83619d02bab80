"""Attachments (spec/format.md §3.3): path names that could escape a directory, sizes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import cmf

from . import craft as c
from .common import CONFIG, base_parts, expect_error, expect_ok, write

_KEEP = object()


def with_attachment(name=_KEEP, size=_KEEP, edit=None) -> bytes:
    segments, index = base_parts()
    a = index["attachments"][0]
    if name is not _KEEP:
        a["name"] = name
    if size is not _KEEP:
        a["size"] = size
    if edit is not None:
        edit(index, segments)
    return c.assemble(segments, index)


@pytest.mark.parametrize(
    "name, match",
    [
        ("..", "has an empty, '.' or '..' component"),
        ("../config.json", "'..' component"),
        ("a/../../etc/passwd", "'..' component"),
        ("a/..", "'..' component"),
        ("./config.json", "'.' or '..' component"),
        ("a/./b", "'.' or '..' component"),
        (".", "'.' or '..' component"),
        ("a//b", "empty"),
        ("a/", "empty"),
        ("/etc/passwd", "is not a relative POSIX path"),
        ("/", "is not a relative POSIX path"),
        ("//server/share", "is not a relative POSIX path"),
        ("a\\..\\..\\b", "is not a relative POSIX path"),
        ("..\\evil.dll", "is not a relative POSIX path"),
        ("C:evil", "is not a relative POSIX path"),
        ("C:/Windows/evil", "is not a relative POSIX path"),
        ("c:\\x", "is not a relative POSIX path"),
        ("", "must be 1 to 4096 bytes, found 0"),
        ("a" * 4097, "must be 1 to 4096 bytes, found 4097"),
        ("a\x00b", "contains a NUL"),
        (5, "must be a string, found int"),
        (b"config.json", "must be a string, found bytes"),
        (None, "must be a string"),
    ],
    ids=lambda v: repr(v)[:30] if isinstance(v, (str, bytes)) else None,
)
def test_bad_attachment_names(tmp_path, name, match):
    expect_error(tmp_path, with_attachment(name=name), match, error=cmf.FormatError)


@pytest.mark.parametrize(
    "name", ["config.json", "a/b/c.txt", "..a", "a..", "a/.hidden", "é/ü.json", "a" * 4096]
)
def test_good_attachment_names(tmp_path, name):
    snap = expect_ok(tmp_path, with_attachment(name=name))
    assert snap["attachments"] == {name: CONFIG}


def test_duplicate_attachment_names(tmp_path):
    def edit(index, segments):
        segments.append(b"{}")
        index["attachments"].append(c.attachment("config.json", 2, c.leaf(6)))

    expect_error(tmp_path, with_attachment(edit=edit), "duplicate attachment name 'config.json'")


@pytest.mark.parametrize(
    "size, match, error",
    [
        ((1 << 30) + 1, f"is {(1 << 30) + 1} bytes, limit {1 << 30}", cmf.LimitError),
        (1 << 40, "limit", cmf.LimitError),
        ((1 << 64) - 1, "limit", cmf.LimitError),
        (-1, "size must be an integer", cmf.FormatError),
        (1 << 64, "size must be an integer", cmf.FormatError),
        ("34", "size must be an integer", cmf.FormatError),
        (34.0, "size must be an integer", cmf.FormatError),
        (None, "size must be an integer", cmf.FormatError),
        (33, "frame declares 34 bytes, 33 expected", cmf.FormatError),
        (35, "frame declares 34 bytes, 35 expected", cmf.FormatError),
    ],
)
def test_attachment_size(tmp_path, size, match, error):
    if size == 1 << 64:  # not representable as a msgpack uint: use the largest negative int
        size = -(1 << 63)
    expect_error(tmp_path, with_attachment(size=size), match, error=error)


def test_attachment_size_over_a_configured_limit(tmp_path):
    expect_error(
        tmp_path,
        with_attachment(),
        "is 34 bytes, limit 33",
        limits=cmf.Limits(max_attachment_bytes=33),
        error=cmf.LimitError,
    )


@pytest.mark.parametrize("key", ["name", "size", "encoding"])
def test_attachment_missing_key(tmp_path, key):
    def edit(index, segments):
        del index["attachments"][0][key]

    expect_error(tmp_path, with_attachment(edit=edit), f"lacks required key '{key}'")


def test_attachment_unknown_key(tmp_path):
    def edit(index, segments):
        index["attachments"][0]["mode"] = 0o4755

    expect_error(tmp_path, with_attachment(edit=edit), "has unknown key 'mode'")


def test_attachment_not_a_map(tmp_path):
    def edit(index, segments):
        index["attachments"][0] = ["config.json", 34, c.zstd(c.leaf(5))]

    expect_error(tmp_path, with_attachment(edit=edit), "attachment 0 must be a map")


def test_unpack_never_writes_outside_the_target(tmp_path):
    # Names that are safe by themselves but collide on disk ("a" is a file, then "a/b").
    def edit(index, segments):
        segments.append(b"x")
        index["attachments"].append(c.attachment("config.json/inner", 1, c.leaf(6)))

    path = write(tmp_path, with_attachment(edit=edit), "collide.cmf")
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "cmf.cli", "unpack", path, "-o", f"{out}/"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "cmf: error" in r.stderr
    written = {
        os.path.relpath(os.path.join(d, f), tmp_path) for d, _, fs in os.walk(tmp_path) for f in fs
    }
    assert all(w.startswith("out/") or w == "collide.cmf" for w in written), written


def test_unpack_refuses_symlinked_directory(tmp_path):
    def edit(index, segments):
        index["attachments"][0]["name"] = "sub/config.json"

    path = write(tmp_path, with_attachment(edit=edit), "link.cmf")
    out = tmp_path / "out"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, out / "sub")
    r = subprocess.run(
        [sys.executable, "-m", "cmf.cli", "unpack", path, "-o", f"{out}/"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "symlink" in r.stderr and "Traceback" not in r.stderr
    assert not os.listdir(elsewhere)


@pytest.mark.parametrize("name", ["model.safetensors", "Model.SafeTensors"])
def test_unpack_refuses_attachment_over_the_tensors_file(tmp_path, name):
    path = write(tmp_path, with_attachment(name=name), "clobber.cmf")
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "cmf.cli", "unpack", path, "-o", f"{out}/"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "refusing to write attachment" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() or not any(out.iterdir())
