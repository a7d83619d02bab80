"""The command line (cmf.cli): pack / info / validate / unpack, --json outputs, exit codes, and one
clean line on stderr (never a traceback) for bad input.

Most tests call the console entry point ``cmf.cli.run`` in-process (fast); a few run the real
``cmf`` script and ``python -m cmf.cli`` in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import ml_dtypes  # noqa: F401  (bf16 for safetensors.numpy)
import numpy as np
import pytest
from safetensors.numpy import load_file as st_load
from safetensors.numpy import save_file as st_save

import cmf

from .conftest import CliResult

PACK_FIELDS = {
    "source",
    "output",
    "tensors",
    "aliases",
    "recipe",
    "lossy_tensors",
    "attachments",
    "raw_bytes",
    "stored_bytes",
    "ratio",
    "seconds",
}
INFO_FIELDS = {
    "path",
    "version",
    "file_bytes",
    "tensors",
    "raw_bytes",
    "ratio",
    "attachments",
    "shared",
    "metadata",
    "tensor_list",
}
ROW_FIELDS = {"name", "dtype", "shape", "encoding", "raw_bytes", "stored_bytes", "ratio", "error"}
VALIDATE_FIELDS = {
    "path",
    "valid",
    "errors",
    "warnings",
    "tensors_checked",
    "damaged",
    "attachments_checked",
    "segments_checked",
}


Result = CliResult  # the shared `run` fixture (tests/conftest.py) returns these


def assert_one_error_line(r: Result) -> None:
    assert r.code == 1, (r.code, r.out, r.err)
    assert r.err.startswith("cmf: error:"), r.err
    assert r.err.count("\n") == 1 and r.err.endswith("\n"), r.err
    assert "Traceback" not in r.err + r.out


@pytest.fixture
def model(tmp_path, random_bits):
    """A safetensors model with bf16, fp8, f32 (tied), i64, bool, rank 0 and empty tensors."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((128, 64)).astype(np.float32)
    tensors = {
        "embed.weight": w,
        "lm_head.weight": w.copy(),
        "mlp.weight": rng.standard_normal((64, 64)).astype(ml_dtypes.bfloat16),
        "mlp.f8": random_bits("f8_e4m3", (32, 8), 3),
        "mlp.f8b": random_bits("f8_e5m2", (7,), 4),
        "ids": np.arange(50, dtype=np.int64),
        "mask": rng.integers(0, 2, 10).astype(bool),
        "scale": np.array(0.5, np.float16),
        "empty": np.zeros((0, 8), np.float32),
    }
    path = tmp_path / "model.safetensors"
    st_save(tensors, str(path), metadata={"format": "pt", "origin": "unit test"})
    return path, tensors


@pytest.fixture
def packed(tmp_path, model, run):
    src, tensors = model
    out = tmp_path / "model.cmf"
    r = run("pack", src, "-o", out, "-q")
    assert r.code == 0 and r.out == "" and r.err == "", (r.out, r.err)
    return out, tensors


def test_pack_json(tmp_path, model, run, read_safetensors):
    src, tensors = model
    cfg = tmp_path / "config.json"
    cfg.write_text('{"hidden": 64}')
    out = tmp_path / "m.cmf"
    r = run("pack", src, "-o", out, "--json", "--attach", cfg)
    assert r.code == 0, r.err
    summary = r.json()
    assert set(summary) == PACK_FIELDS
    assert summary["source"] == str(src) and summary["output"] == str(out)
    assert summary["tensors"] == len(tensors) and summary["aliases"] == 1
    assert summary["recipe"] == "lossless" and summary["lossy_tensors"] == 0
    assert summary["attachments"] == 1
    assert summary["raw_bytes"] == sum(a.nbytes for a in tensors.values())
    assert summary["stored_bytes"] == os.path.getsize(out)
    assert summary["ratio"] == pytest.approx(
        summary["raw_bytes"] / summary["stored_bytes"], rel=1e-3
    )
    assert summary["ratio"] > 1.3  # the tied copy is free, the floats compress
    with cmf.open(out) as f:
        assert f.attachments() == ["config.json"]
        assert f.get_attachment("config.json") == cfg.read_bytes()
        assert f.metadata() == {"format": "pt", "origin": "unit test"}
    assert r.err == ""  # no progress bar off a terminal


def test_pack_default_output_name_and_text_summary(tmp_path, model, run):
    src, tensors = model
    r = run("pack", src)
    assert r.code == 0
    assert (tmp_path / "model.cmf").is_file()
    assert r.out.startswith(f"{tmp_path / 'model.cmf'}: {len(tensors)} tensors")


def test_info_json(packed, run):
    path, tensors = packed
    r = run("info", path, "--json")
    assert r.code == 0
    info = r.json()
    assert set(info) == INFO_FIELDS
    assert info["version"] == "1.0" and info["file_bytes"] == os.path.getsize(path)
    assert info["tensors"] == len(tensors) and info["metadata"] == {
        "format": "pt",
        "origin": "unit test",
    }
    rows = {row["name"]: row for row in info["tensor_list"]}
    assert set(rows) == set(tensors)
    for name, row in rows.items():
        assert set(row) == ROW_FIELDS
        assert row["shape"] == list(tensors[name].shape)
        assert row["raw_bytes"] == tensors[name].nbytes
    assert rows["mlp.weight"]["dtype"] == "bf16" and rows["mlp.f8"]["dtype"] == "f8_e4m3"
    assert rows["mlp.f8b"]["dtype"] == "f8_e5m2" and rows["mask"]["dtype"] == "bool"
    tied = [r for r in rows.values() if r["encoding"].startswith("alias of ")]
    assert len(tied) == 1 and tied[0]["stored_bytes"] == 0
    assert rows["embed.weight"]["encoding"].startswith("byteplanes(")
    assert info["raw_bytes"] == sum(a.nbytes for a in tensors.values())


def test_info_text(packed, run):
    path, tensors = packed
    r = run("info", path)
    assert r.code == 0
    lines = r.out.splitlines()
    assert lines[0].split()[:2] == ["name", "dtype"]
    assert any(line.startswith("scale") and "scalar" in line for line in lines)
    assert f"{len(tensors)} tensors" in r.out and "metadata: 2 keys" in r.out


def test_validate_valid_and_json(packed, run):
    path, tensors = packed
    r = run("validate", path)
    assert r.code == 0 and "valid" in r.out and "INVALID" not in r.out
    r = run("validate", path, "--json")
    report = r.json()
    assert r.code == 0 and set(report) == VALIDATE_FIELDS
    assert report["valid"] is True and report["errors"] == []
    assert report["tensors_checked"] == len(tensors) - 1  # the alias is not decoded
    r = run("validate", path, "-q")
    assert r.code == 0 and r.out == ""


def test_validate_invalid_exit_1(packed, run):
    path, _ = packed
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF  # inside the first segment
    path.write_bytes(bytes(data))
    r = run("validate", path)
    assert r.code == 1 and "INVALID" in r.out and "CRC-32C" in r.out
    r = run("validate", path, "--json")
    assert r.code == 1 and r.json()["valid"] is False and r.json()["errors"]
    r = run("validate", path, "-q")
    assert r.code == 1 and r.out == ""


def test_unpack_is_bit_exact(tmp_path, packed, model, run, read_safetensors):
    path, tensors = packed
    src, _ = model
    out = tmp_path / "back.safetensors"
    r = run("unpack", path, "-o", out, "--json")
    assert r.code == 0
    assert r.json() == {"source": str(path), "written": [str(out)], "attachments_not_written": []}
    before, meta_before = read_safetensors(src)
    after, meta_after = read_safetensors(out)
    assert after == before and meta_after == meta_before  # every dtype, fp8 included
    # safetensors itself reads the result (it cannot make fp8 numpy arrays)
    plain = {k: v for k, v in tensors.items() if not k.startswith("mlp.f8")}
    os.makedirs(tmp_path / "plain")
    st_save(plain, str(tmp_path / "plain" / "in.safetensors"))
    assert run("pack", tmp_path / "plain" / "in.safetensors", "-q").code == 0
    assert run("unpack", tmp_path / "plain" / "in.cmf", "-q").code == 2  # in.safetensors exists
    os.remove(tmp_path / "plain" / "in.safetensors")
    assert run("unpack", tmp_path / "plain" / "in.cmf", "-q").code == 0  # default: in.safetensors
    a = st_load(str(tmp_path / "plain" / "in.safetensors"))
    assert a.keys() == plain.keys()
    for k, v in plain.items():
        assert a[k].dtype == v.dtype and a[k].shape == v.shape and a[k].tobytes() == v.tobytes()


def test_unpack_to_directory_writes_attachments(tmp_path, model, run, read_safetensors):
    src, tensors = model
    (tmp_path / "config.json").write_text('{"a": 1}')
    (tmp_path / "tokenizer.json").write_bytes(b"\x00binary\xff")
    out = tmp_path / "m.cmf"
    r = run(
        "pack",
        src,
        "-o",
        out,
        "-q",
        "--attach",
        tmp_path / "config.json",
        "--attach",
        tmp_path / "tokenizer.json",
    )
    assert r.code == 0
    dest = tmp_path / "restored"
    r = run("unpack", out, "-o", f"{dest}/", "--json")
    assert r.code == 0
    written = r.json()["written"]
    assert sorted(os.path.basename(p) for p in written) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    assert sorted(os.listdir(dest)) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert (dest / "config.json").read_text() == '{"a": 1}'
    assert (dest / "tokenizer.json").read_bytes() == b"\x00binary\xff"
    assert read_safetensors(dest / "model.safetensors")[0] == read_safetensors(src)[0]
    # an existing directory without the trailing slash works the same (its files replaced on
    # --force)
    r = run("unpack", out, "-o", dest, "-q")
    assert r.code == 2 and "already exist; use --force" in r.err
    r = run("unpack", out, "-o", dest, "-q", "--force")
    assert r.code == 0 and sorted(os.listdir(dest)) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]


def test_pack_a_model_directory(tmp_path, model, run):
    src, tensors = model
    d = tmp_path / "hf"
    d.mkdir()
    shutil.copy(src, d / "model.safetensors")
    (d / "config.json").write_text("{}")
    r = run("pack", d, "-o", tmp_path / "hf.cmf", "--json")
    assert r.code == 0 and r.json()["attachments"] == 1 and r.json()["tensors"] == len(tensors)


# -- bad input: exit 1, one line on stderr ----------------------------------------------------


def test_missing_files(tmp_path, run):
    missing = tmp_path / "missing.cmf"
    for args in (
        ["info", missing],
        ["unpack", missing],
        ["pack", tmp_path / "missing.safetensors"],
    ):
        assert_one_error_line(run(*args))
    r = run("validate", missing)
    assert r.code == 1 and "INVALID" in r.out and "cannot open" in r.out and r.err == ""
    assert os.listdir(tmp_path) == []


def test_not_a_cmf_file(tmp_path, run):
    text = tmp_path / "notes.txt"
    text.write_text("just some text\n" * 20)
    for cmd in ("info", "unpack"):
        r = run(cmd, text)
        assert_one_error_line(r)
        assert "magic" in r.err
    r = run("validate", text, "--json")
    assert r.code == 1 and r.json()["valid"] is False
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


@pytest.mark.parametrize("content", [b"hello, not a model", b"", b"\x00" * 200])
def test_pack_rejects_non_safetensors(tmp_path, run, content):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(content)
    r = run("pack", bad, "-o", tmp_path / "bad.cmf")
    assert_one_error_line(r)
    assert "safetensors" in r.err
    assert sorted(os.listdir(tmp_path)) == ["bad.safetensors"]  # no output, no temp file


@pytest.mark.parametrize("keep", [10, 95, 0.5, -1])
def test_truncated_cmf(packed, run, keep):
    path, _ = packed
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    for cmd in ("info", "unpack"):
        assert_one_error_line(run(cmd, path))
    r = run("validate", path)
    assert r.code == 1 and "INVALID" in r.out


def test_corrupt_segment_on_unpack_is_one_line(tmp_path, packed, run):
    path, _ = packed
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    r = run("unpack", path, "-o", tmp_path / "x.safetensors")
    assert_one_error_line(r)
    assert "CRC-32C" in r.err
    assert not (tmp_path / "x.safetensors").exists()
    assert not any(p.endswith(".tmp") for p in os.listdir(tmp_path))


def test_bad_output_locations(tmp_path, model, packed, run):
    src, _ = model
    path, _ = packed
    (tmp_path / "afile").write_text("x")
    r = run("pack", src, "-o", tmp_path / "afile" / "x.cmf")  # a file where a directory must be
    assert r.code == 2 and "a file of that name exists" in r.err
    assert_one_error_line(run("info", tmp_path))


def test_usage_errors_exit_2(tmp_path, run):
    assert run("pack").code == 2
    assert run("nonsense").code == 2
    assert run("pack", "x", "--attach", tmp_path / "missing.json").code == 2
    assert run("pack", "x", "--level", "99").code == 2
    r = run("--help")
    assert r.code == 0 and "pack" in r.out and "validate" in r.out
    assert run("--version").out.startswith("cmf")


# -- the real entry points ------------------------------------------------------------------


def _script() -> list[str]:
    exe = shutil.which("cmf")
    return [exe] if exe else [sys.executable, "-m", "cmf.cli"]


def test_console_script_round_trip(tmp_path, model, read_safetensors):
    src, tensors = model
    out = tmp_path / "s.cmf"

    script = _script()

    def call(*args, base=script):
        return subprocess.run([*base, *map(str, args)], capture_output=True, text=True, timeout=120)

    r = call("pack", src, "-o", out, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["stored_bytes"] == os.path.getsize(out)
    r = call("validate", out, "--json", base=[sys.executable, "-m", "cmf.cli"])
    assert r.returncode == 0 and json.loads(r.stdout)["valid"] is True
    r = call("unpack", out, "-o", tmp_path / "back.safetensors", "-q")
    assert r.returncode == 0 and r.stdout == "" and r.stderr == ""
    assert read_safetensors(tmp_path / "back.safetensors") == read_safetensors(src)
    r = call("info", tmp_path / "missing.cmf", base=[sys.executable, "-m", "cmf.cli"])
    assert r.returncode == 1 and r.stdout == ""
    assert (
        r.stderr.startswith("cmf: error:")
        and r.stderr.count("\n") == 1
        and "Traceback" not in r.stderr
    )
