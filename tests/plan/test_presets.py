"""Presets (cmf.plan.presets): lossless, q8 and q4 end to end — what they quantize, what they
leave alone, the error and size they reach, and the CLI flag."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file as st_save

import cmf
from cmf import cli
from cmf.plan.presets import PRESETS, preset


@pytest.fixture(scope="module")
def tensors():
    rng = np.random.default_rng(0)
    return {
        "layer.weight": rng.standard_normal((256, 512)).astype(np.float32),
        "layer.bias": rng.standard_normal(256).astype(np.float32),
        "small.weight": rng.standard_normal((16, 16)).astype(np.float32),  # under the size floor
        "embed.weight": rng.standard_normal((128, 256)).astype(ml_dtypes.bfloat16),
        "ids": np.arange(4096, dtype=np.int64).reshape(64, 64),
        "bad.weight": np.full((64, 128), np.inf, np.float32),  # refused by quantize: kept exact
    }


def test_every_preset_is_a_valid_recipe():
    for name in PRESETS:
        assert preset(name).name == name


@pytest.mark.parametrize("name, bits, max_rel", [("q8", 8, 0.01), ("q4", 4, 0.11)])
def test_quantizing_presets(tmp_path, tensors, name, bits, max_rel):
    path = tmp_path / f"{name}.cmf"
    cmf.save_file(tensors, path, preset=name)
    with cmf.open(path) as f:
        entries = {e.name: e for e in f.index.tensors}
        for lossy in ("layer.weight", "embed.weight"):
            e = entries[lossy]
            assert e.encoding.codec.name == "quantize" and e.encoding.codec.bits == bits
            assert 0 < e.error["rel_rmse"] < max_rel, (lossy, e.error)
            out = f.get_tensor(lossy)
            assert out.dtype == tensors[lossy].dtype and out.shape == tensors[lossy].shape
        for exact in ("layer.bias", "small.weight", "ids", "bad.weight"):
            assert entries[exact].error is None
            assert f.get_tensor(exact).tobytes() == tensors[exact].tobytes()
    raw = sum(a.nbytes for a in tensors.values())
    q_bytes = 4 * (256 * 512 + 128 * 256) * bits / 32
    assert path.stat().st_size < raw - q_bytes * (32 / bits - 1.15)  # codes near `bits` per weight


def test_bits_per_weight_of_q4_on_a_large_matrix(tmp_path):
    w = np.random.default_rng(3).standard_normal((512, 1024)).astype(np.float32)
    path = tmp_path / "w.cmf"
    cmf.save_file({"w": w}, path, preset="q4")
    bpp = path.stat().st_size * 8 / w.size
    assert 4.0 < bpp < 4.6  # 4-bit codes (entropy coded) + one f16 scale per 32


def cli_out(capsys, *args) -> str:
    """Run the console entry point in-process; its stdout (exit code must be 0)."""
    capsys.readouterr()
    try:
        cli.run([str(a) for a in args])
    except SystemExit as exc:  # validate exits with its verdict
        assert exc.code == 0
    return capsys.readouterr().out


def test_cli_pack_with_preset_and_info_shows_error(tmp_path, tensors, capsys):
    src = tmp_path / "m.safetensors"
    st_save(dict(tensors), str(src))
    out = tmp_path / "m.cmf"
    summary = json.loads(cli_out(capsys, "pack", src, "-o", out, "--preset", "q4", "--json"))
    assert summary["recipe"] == "q4" and summary["lossy_tensors"] == 2
    info = json.loads(cli_out(capsys, "info", out, "--json"))
    rows = {r["name"]: r for r in info["tensor_list"]}
    assert rows["layer.weight"]["error"]["rel_rmse"] > 0
    assert rows["layer.bias"]["error"] is None
    text = cli_out(capsys, "info", out)
    assert "rel_rmse" in text.splitlines()[0]
    line = next(row for row in text.splitlines() if row.startswith("layer.weight"))
    assert "e-0" in line and "quantize(" in line
    assert "valid" in cli_out(capsys, "validate", out)
