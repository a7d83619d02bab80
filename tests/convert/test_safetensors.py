"""safetensors in and out (cmf.convert.safetensors): every cmf dtype, bf16 and fp8 included,
and the ``__metadata__`` map, kept through pack and unpack."""

from __future__ import annotations

import os

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file as st_load
from safetensors.numpy import save_file as st_save

import cmf
from cmf.codecs import ArraySpec
from cmf.convert import SafetensorsSource, open_source, write_safetensors
from cmf.dtypes import BY_NAME

ST_NAME = {
    "f64": "F64",
    "f32": "F32",
    "f16": "F16",
    "bf16": "BF16",
    "f8_e4m3": "F8_E4M3",
    "f8_e5m2": "F8_E5M2",
    "i8": "I8",
    "i16": "I16",
    "i32": "I32",
    "i64": "I64",
    "u8": "U8",
    "u16": "U16",
    "u32": "U32",
    "u64": "U64",
    "bool": "BOOL",
}
META = {"format": "pt", "note": "ünïcode ✓", "json": '{"a": [1, 2]}'}


@pytest.fixture
def all_dtypes(random_bits):
    tensors = {f"t.{name}": random_bits(name, (3, 4), seed=i) for i, name in enumerate(BY_NAME)}
    tensors["scalar.f32"] = np.array(1.25, np.float32)
    tensors["empty.bf16"] = np.zeros((0, 2), ml_dtypes.bfloat16)
    tensors["fp8.big"] = random_bits("f8_e5m2", (64, 33), seed=99)
    return tensors


@pytest.fixture
def st_file(tmp_path, all_dtypes):
    path = tmp_path / "model.safetensors"
    st_save(all_dtypes, str(path), metadata=META)
    return path


def pack(src_path, out_path):
    """What ``cmf pack`` does for a safetensors file."""
    src = open_source(src_path)
    with cmf.Writer(out_path, metadata=src.metadata) as w:
        for name, array in src.items():
            w.add_tensor(name, array)
    return src


def unpack(cmf_path, out_path):
    """What ``cmf unpack`` does."""
    with cmf.open(cmf_path) as f:
        write_safetensors(out_path, [(n, f.spec(n)) for n in f.keys()], f.get_tensor, f.metadata())


def test_source_reads_every_dtype(st_file, all_dtypes, read_safetensors):
    src = SafetensorsSource(st_file)
    assert isinstance(open_source(st_file), SafetensorsSource)
    assert len(src) == len(all_dtypes) and sorted(src.names()) == sorted(all_dtypes)
    assert src.metadata == META and src.attachments == {}
    on_disk, _ = read_safetensors(st_file)
    seen = set()
    for name, array in src.items():
        seen.add(name)
        expected = all_dtypes[name]
        assert array.dtype == expected.dtype and array.shape == expected.shape, name
        assert array.tobytes() == expected.tobytes() == on_disk[name][2], name
    assert seen == set(all_dtypes)


@pytest.mark.parametrize("name", ["f8_e4m3", "f8_e5m2", "bf16"])
def test_bf16_and_fp8_files_pack_and_unpack_bit_exact(
    tmp_path, random_bits, read_safetensors, name
):
    # every bit pattern of the dtype, NaN payloads included
    k = BY_NAME[name].itemsize
    every = np.arange(1 << (8 * k), dtype=np.uint8 if k == 1 else np.uint16).view(
        BY_NAME[name].numpy
    )
    tensors = {"every": every, "matrix": random_bits(name, (16, 8), seed=1), "tied": every.copy()}
    src = tmp_path / "in.safetensors"
    st_save(tensors, str(src), metadata={"dtype": name})
    pack(src, tmp_path / "m.cmf")
    with cmf.open(tmp_path / "m.cmf") as f:
        assert {f.spec(n).dtype.name for n in f.keys()} == {name}
        assert f.metadata() == {"dtype": name}
        assert f.entry("tied").alias == "every"
        for n, a in tensors.items():
            assert f.get_tensor(n).tobytes() == a.tobytes()
    unpack(tmp_path / "m.cmf", tmp_path / "out.safetensors")
    before, meta_before = read_safetensors(src)
    after, meta_after = read_safetensors(tmp_path / "out.safetensors")
    assert after == before and meta_after == meta_before == {"dtype": name}
    assert {v[0] for v in after.values()} == {ST_NAME[name]}


def test_pack_unpack_every_dtype_is_bit_exact(tmp_path, st_file, all_dtypes, read_safetensors):
    pack(st_file, tmp_path / "m.cmf")
    assert cmf.validate(tmp_path / "m.cmf").valid
    unpack(tmp_path / "m.cmf", tmp_path / "back.safetensors")
    before, meta_before = read_safetensors(st_file)
    after, meta_after = read_safetensors(tmp_path / "back.safetensors")
    assert after == before  # dtype string, shape and bytes of every tensor
    assert meta_after == meta_before == META
    # and the safetensors package reads what it can (it has no fp8 for numpy)
    plain = {k: v for k, v in all_dtypes.items() if not k.startswith(("t.f8", "fp8"))}
    st_save(plain, str(tmp_path / "plain.safetensors"), metadata=META)
    pack(tmp_path / "plain.safetensors", tmp_path / "p.cmf")
    unpack(tmp_path / "p.cmf", tmp_path / "p.safetensors")
    back = st_load(str(tmp_path / "p.safetensors"))
    assert back.keys() == plain.keys()
    for k, v in plain.items():
        assert (
            back[k].dtype == v.dtype
            and back[k].shape == v.shape
            and back[k].tobytes() == v.tobytes()
        )


def test_write_safetensors_header_and_layout(tmp_path, read_safetensors):
    specs = [
        ("a", ArraySpec(BY_NAME["f32"], (2, 3))),
        ("s", ArraySpec(BY_NAME["i64"], ())),
        ("e", ArraySpec(BY_NAME["bf16"], (0,))),
        ("b", ArraySpec(BY_NAME["bool"], (3,))),
    ]
    values = {
        "a": np.arange(6, dtype=">f4").reshape(2, 3),  # big-endian in, little-endian out
        "s": np.array(-7, np.int64),
        "e": np.zeros(0, ml_dtypes.bfloat16),
        "b": np.array([True, False, True]),
    }
    progress = []
    path = tmp_path / "w.safetensors"
    write_safetensors(
        path, specs, values.__getitem__, {"k": "v", "n": 3, "l": [1]}, progress.append
    )
    assert progress == ["a", "s", "e", "b"]
    data = path.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    assert header_len % 8 == 0
    tensors, meta = read_safetensors(path)
    assert meta == {"k": "v", "n": "3", "l": "[1]"}  # safetensors metadata is str -> str
    assert tensors["a"] == ("F32", [2, 3], np.arange(6, dtype="<f4").tobytes())
    assert tensors["s"] == ("I64", [], np.array(-7, "<i8").tobytes())
    assert tensors["e"] == ("BF16", [0], b"")
    assert tensors["b"] == ("BOOL", [3], b"\x01\x00\x01")
    back = st_load(str(path))
    assert back["s"].shape == () and back["s"] == -7


def test_write_safetensors_shape_mismatch_leaves_nothing(tmp_path):
    specs = [("a", ArraySpec(BY_NAME["f32"], (2, 3)))]
    with pytest.raises(cmf.CmfError, match="has shape"):
        write_safetensors(tmp_path / "x.safetensors", specs, lambda n: np.zeros(5, np.float32))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "content", [b"", b"hello world", b"\xff" * 100, (2**60).to_bytes(8, "little") + b"{}"]
)
def test_not_a_safetensors_file(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(cmf.CmfError, match="not a readable safetensors file"):
        SafetensorsSource(path)


def test_missing_source(tmp_path):
    with pytest.raises(cmf.CmfError, match="no such file"):
        open_source(tmp_path / "missing.safetensors")


def test_unsupported_safetensors_dtype(tmp_path):
    st_save(
        {"ok": np.ones(2, np.float32), "z": np.ones(2, np.complex64)},
        str(tmp_path / "c.safetensors"),
    )
    with pytest.raises(cmf.CmfError, match="complex64|C64"):
        pack(tmp_path / "c.safetensors", tmp_path / "c.cmf")
    assert sorted(os.listdir(tmp_path)) == ["c.safetensors"]
