"""The README's CLI flow on the bundled example, as a user runs it (subprocess, console script)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import ml_dtypes  # noqa: F401  (bf16 for safetensors.numpy)
from safetensors.numpy import load_file as st_load

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "tiny.safetensors")


def cmf(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cmf.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_pack_info_validate_unpack(tmp_path):
    out = tmp_path / "tiny.cmf"
    r = cmf("pack", EXAMPLE, "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["tensors"] == 10 and summary["aliases"] == 1 and summary["ratio"] > 1.5
    assert summary["stored_bytes"] == os.path.getsize(out)

    r = cmf("info", str(out), "--json")
    info = json.loads(r.stdout)
    names = {t["name"]: t for t in info["tensor_list"]}
    assert names["lm_head.weight"]["encoding"] == "alias of embeddings.word_embeddings.weight"
    assert names["encoder.layer.0.intermediate.dense.weight"]["dtype"] == "bf16"
    assert "encoding" in cmf("info", str(out)).stdout

    r = cmf("validate", str(out), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["valid"] is True

    back = tmp_path / "back.safetensors"
    assert cmf("unpack", str(out), "-o", str(back), "-q").returncode == 0
    a, b = st_load(EXAMPLE), st_load(str(back))
    assert a.keys() == b.keys()
    for k in a:
        assert (
            a[k].dtype == b[k].dtype
            and a[k].shape == b[k].shape
            and a[k].tobytes() == b[k].tobytes()
        )


def test_bad_inputs_give_one_line_and_exit_1(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    for args in (
        ["pack", str(text)],
        ["info", str(text)],
        ["unpack", str(text)],
        ["info", str(tmp_path / "missing.cmf")],
    ):
        r = cmf(*args)
        assert r.returncode == 1, args
        assert "Traceback" not in r.stderr
        assert r.stderr.startswith("cmf: error:") and r.stderr.count("\n") == 1, r.stderr
    assert not any(p.name.endswith(".cmf") for p in tmp_path.iterdir())  # no partial output
    r = cmf("validate", str(text))
    assert r.returncode == 1 and "INVALID" in r.stdout
    assert cmf("pack").returncode == 2  # usage error
