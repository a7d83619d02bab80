"""``cmf unpack --dtype bf16|f16|f32``: float tensors (f64, f32, f16, bf16, fp8) are converted,
round to nearest even; integer and bool tensors are written exactly as stored; without
``--dtype`` every tensor keeps its own dtype. Checked with an independent safetensors parser.
"""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest

import cmf

ST_DTYPE = {"bf16": "BF16", "f16": "F16", "f32": "F32"}
NOT_FLOAT = {"ids": "I64", "i8": "I8", "u8": "U8", "mask": "BOOL"}  # name -> safetensors dtype
NUMPY = {"bf16": np.dtype(ml_dtypes.bfloat16), "f16": np.dtype("<f2"), "f32": np.dtype("<f4")}


@pytest.fixture
def tensors(random_bits):
    rng = np.random.default_rng(0)
    f32 = rng.standard_normal((16, 8)).astype(np.float32)
    f32[0, :4] = [np.inf, -np.inf, 1e30, 5.9604645e-08]  # overflow in f16 and bf16, a subnormal
    return {
        "f32": f32,
        "f64": rng.standard_normal((3, 5)) * 1e3,
        "f16": rng.standard_normal(20).astype(np.float16),
        "bf16": rng.standard_normal((4, 4)).astype(ml_dtypes.bfloat16),
        "f8": random_bits("f8_e4m3", (6,), 1),
        "scalar": np.array(0.1, np.float32),
        "empty": np.zeros((0, 3), np.float32),
        "ids": np.arange(-5, 5, dtype=np.int64),
        "i8": rng.integers(-128, 128, 7, dtype=np.int8),
        "u8": rng.integers(0, 256, 7, dtype=np.uint8),
        "mask": rng.integers(0, 2, 9).astype(bool),
    }


@pytest.fixture
def packed(tmp_path, tensors):
    path = tmp_path / "m.cmf"
    cmf.save_file(tensors, path, metadata={"format": "pt", "note": "x"})
    return path


def bf16_rne(x: np.ndarray) -> np.ndarray:
    """f32 -> bf16 bits, round to nearest even, computed on the bit patterns (NaN excluded)."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def expected(name: str, array: np.ndarray, target: str) -> np.ndarray:
    if name in NOT_FLOAT:
        return array  # ints and bools are never cast
    if target == "bf16" and array.dtype == np.float32:
        return bf16_rne(array).view(ml_dtypes.bfloat16).reshape(array.shape)
    with np.errstate(over="ignore"):
        return array.astype(NUMPY[target])


@pytest.mark.parametrize("target", ["bf16", "f16", "f32"])
def test_float_tensors_are_cast_and_the_rest_untouched(
    run, packed, tensors, tmp_path, read_safetensors, target
):
    out = tmp_path / f"out-{target}.safetensors"
    code, _, err = run("unpack", packed, "-o", out, "--dtype", target, "-q")
    assert code == 0, err
    got, metadata = read_safetensors(out)
    assert metadata == {"format": "pt", "note": "x"}
    assert set(got) == set(tensors)
    for name, array in tensors.items():
        dtype, shape, data = got[name]
        assert shape == list(array.shape), name
        assert dtype == NOT_FLOAT.get(name, ST_DTYPE[target]), (name, dtype)
        assert data == np.ascontiguousarray(expected(name, array, target)).tobytes(), name


def test_rounding_and_overflow(run, packed, tmp_path):
    from safetensors.numpy import load_file

    for target in ("bf16", "f16"):
        out = tmp_path / f"o-{target}.safetensors"
        assert run("unpack", packed, "-o", out, "--dtype", target, "-q")[0] == 0
        row = load_file(str(out))["f32"][0, :4].astype(np.float32)
        assert row[0] == np.inf and row[1] == -np.inf
        assert np.isfinite(row[2]) == (target == "bf16")  # 1e30 overflows f16 only
        assert row[3] == 2.0**-24  # a subnormal of f16, exact in both


def test_without_dtype_every_tensor_keeps_its_dtype(
    run, packed, tensors, tmp_path, read_safetensors
):
    out = tmp_path / "same.safetensors"
    assert run("unpack", packed, "-o", out, "-q")[0] == 0
    got, _ = read_safetensors(out)
    for name, array in tensors.items():
        assert got[name][2] == np.ascontiguousarray(array).tobytes(), name
    assert got["f64"][0] == "F64" and got["bf16"][0] == "BF16" and got["f8"][0] == "F8_E4M3"


def test_directory_output_with_dtype_keeps_attachments(run, tmp_path, tensors, read_safetensors):
    path = tmp_path / "m.cmf"
    with cmf.Writer(path, metadata={"format": "pt"}) as w:
        for name, array in tensors.items():
            w.add_tensor(name, array)
        w.add_attachment("config.json", b'{"model_type": "bert"}')
    out = f"{tmp_path / 'out'}/"
    code, stdout, err = run("unpack", path, "-o", out, "--dtype", "f16", "--json")
    assert code == 0, err
    assert len(json.loads(stdout)["written"]) == 2
    assert (tmp_path / "out" / "config.json").read_bytes() == b'{"model_type": "bert"}'
    got, _ = read_safetensors(tmp_path / "out" / "model.safetensors")
    assert {n: d for n, (d, _, _) in got.items()} == {n: NOT_FLOAT.get(n, "F16") for n in tensors}


def test_lossy_file_unpacks_to_the_requested_dtype(run, tmp_path, read_safetensors):
    src = tmp_path / "m.safetensors"
    from safetensors.numpy import save_file

    w = np.random.default_rng(1).standard_normal((64, 64)).astype(np.float32)
    save_file({"w": w, "n": np.arange(4, dtype=np.int32)}, str(src))
    assert run("pack", src, "-o", tmp_path / "q.cmf", "--preset", "q8", "-q")[0] == 0
    out = tmp_path / "q.safetensors"
    assert run("unpack", tmp_path / "q.cmf", "-o", out, "--dtype", "bf16", "-q")[0] == 0
    got, _ = read_safetensors(tmp_path / "q.safetensors")
    decoded = cmf.load_file(tmp_path / "q.cmf")["w"]
    assert got["w"][0] == "BF16" and got["w"][2] == decoded.astype(ml_dtypes.bfloat16).tobytes()
    assert got["n"][0] == "I32"


def test_bad_dtype_and_onnx_output_are_usage_errors(run, packed, tmp_path):
    code, _, err = run("unpack", packed, "-o", tmp_path / "x.safetensors", "--dtype", "i8")
    assert code == 2 and "--dtype" in err
    code, _, err = run("unpack", packed, "-o", tmp_path / "x.onnx", "--dtype", "f16")
    assert code == 2 and "ONNX" in err
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "x.safetensors").exists()
