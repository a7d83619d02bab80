"""GGUF import (cmf.convert.gguf): files written here with gguf-py's GGUFWriter, packed through
the CLI and through ``open_source``.

Every block type gguf-py dequantizes is kept as a ``ggml`` tree that decodes bit for bit to
``gguf.quants.dequantize`` (older files' ``quantize`` trees are still read); plain floats and ints
bit for bit; shapes in numpy order; GGUF metadata kept as ``gguf.<key>``; bad files give one
``cmf: error:`` line and leave no output.
"""

from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

import cmf  # noqa: E402
import cmf.convert.gguf  # noqa: E402
from cmf.convert import Encoded, GGUFSource, open_source  # noqa: E402
from cmf.convert.gguf_blocks import block_bytes  # noqa: E402

Q = gguf.GGMLQuantizationType
KEPT = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")
TOKENS = ["<unk>", "<s>", "</s>", "▁the", "▁héllo", "\n", "🙂", ""]


# ------------------------------------------------------------------------- helpers


def _weights(rng, shape):
    """Weight-like values: normal, a per-row magnitude, a few zeros."""
    x = rng.standard_normal(shape) * 10.0 ** rng.uniform(-3, 1, shape[:-1] + (1,))
    x[..., :2] = 0.0
    return x.astype(np.float32)


def _kquant_blocks(kind, rows, rng):
    """Random Q6_K / Q4_K blocks (gguf-py cannot quantize K-quants) with finite f16 scales."""
    block, size = gguf.GGML_QUANT_SIZES[kind]
    raw = rng.integers(0, 256, (rows, 2, size), dtype=np.uint8)
    d = (rng.standard_normal((rows, 2, 2)) * 1e-2).astype("<f2").view(np.uint8)  # (rows, 2, 4)
    if kind == Q.Q6_K:  # ql[128] qh[64] scales[16] d
        raw[..., 208:210] = d[..., :2]
    else:  # Q4_K: d dmin scales[12] qs[128]
        raw[..., 0:4] = d
    return raw.reshape(rows, 2 * size)


def write_gguf(path, tensors, kv=True, endian=None):
    """Write a GGUF file: ``tensors`` maps name -> (array, GGML type or None). Quantized arrays
    are uint8 block bytes of shape (rows, row bytes)."""
    kw = {"endianess": endian} if endian is not None else {}
    w = gguf.GGUFWriter(str(path), "llama", **kw)
    if kv:
        w.add_name("tiny test model")
        w.add_block_count(2)
        w.add_context_length(128)
        w.add_embedding_length(64)
        w.add_head_count(4)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_rope_freq_base(10000.0)
        w.add_float64("test.f64", 0.1)
        w.add_int64("test.i64", -(2**40))
        w.add_uint64("test.u64", 2**63 + 5)
        w.add_int8("test.i8", -7)
        w.add_bool("test.flag", True)
        w.add_string("test.text", "héllo\nwörld")
        w.add_array("test.ints", [3, -1, 4])
        w.add_array("test.floats", [0.5, -2.25])
        w.add_tokenizer_model("llama")
        w.add_token_list(TOKENS)
        w.add_token_scores([0.0, -1.0, -1.5, -2.0, -3.25, -4.0, -5.0, -6.0])
        w.add_token_types([2, 3, 3, 1, 1, 6, 1, 1])
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
    return finish_gguf(w, tensors, path)


def finish_gguf(w, tensors, path):
    """Add ``tensors`` (name -> (array, GGML type or None)) to the gguf-py writer ``w``, write the
    file and return its path."""
    for name, (array, kind) in tensors.items():
        if kind is None:
            w.add_tensor(name, array)
        else:
            w.add_tensor(name, array, raw_shape=array.shape, raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def model_tensors(seed=0):
    """name -> (array written, GGML type or None): every kind the importer handles."""
    rng = np.random.default_rng(seed)
    t = {
        "f32": (_weights(rng, (5, 7)), None),
        "f32.scalar_like": (np.array([3.5], np.float32), None),
        "f32.4d": (_weights(rng, (2, 3, 4, 5)), None),
        "f16": (rng.standard_normal((3, 33)).astype(np.float16), None),
        "bf16": (rng.standard_normal((4, 6)).astype(ml_dtypes.bfloat16).view(np.uint16), Q.BF16),
        "f64": (rng.standard_normal(9), None),
        "i8": (rng.integers(-128, 128, (2, 8), dtype=np.int8), None),
        "i16": (rng.integers(-(2**15), 2**15, (8,), dtype=np.int16), None),
        "i32": (rng.integers(-(2**31), 2**31, (3, 4), dtype=np.int32), None),
        "i64": (rng.integers(-(2**62), 2**62, (2, 2), dtype=np.int64), None),
    }
    for i, name in enumerate(KEPT):
        shape = ((6, 64), (2, 3, 96))[i % 2]
        t[f"blk.{name}"] = (gguf.quants.quantize(_weights(rng, shape), Q[name]), Q[name])
    t["blk.Q8_0.1d"] = (gguf.quants.quantize(_weights(rng, (96,)), Q.Q8_0), Q.Q8_0)
    for name, shape in (("MXFP4", (4, 64)), ("TQ2_0", (2, 256))):  # newer gguf-py types
        if hasattr(Q, name):
            t[f"blk.{name}"] = (gguf.quants.quantize(_weights(rng, shape), Q[name]), Q[name])
    t["blk.Q6_K"] = (_kquant_blocks(Q.Q6_K, 3, rng), Q.Q6_K)
    t["blk.Q4_K"] = (_kquant_blocks(Q.Q4_K, 2, rng), Q.Q4_K)
    return t


def expected(array, kind):
    """What cmf must decode for a tensor written as (array, kind): numpy order, exact bits."""
    if kind is None:
        return array
    if kind == Q.BF16:
        return array.view(ml_dtypes.bfloat16)
    return gguf.quants.dequantize(array, kind)


def assert_bits(got, want, name):
    assert got.dtype == want.dtype, (name, got.dtype, want.dtype)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    assert got.tobytes() == np.ascontiguousarray(want).tobytes(), name


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    tensors = model_tensors()
    path = write_gguf(tmp_path_factory.mktemp("gguf") / "model.gguf", tensors)
    return path, tensors


# ------------------------------------------------------------------------- packing


def test_cli_pack_decodes_like_gguf_py(model, run, tmp_path):
    path, tensors = model
    out = tmp_path / "model.cmf"
    code, stdout, err = run("pack", path, "-o", out, "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["tensors"] == len(tensors) and summary["lossy_tensors"] == 0
    with cmf.open(out) as f:
        assert f.keys() == list(tensors)
        for name, (array, kind) in tensors.items():
            assert_bits(f.get_tensor(name), expected(array, kind), name)
    loaded = cmf.load_file(out)  # the threaded path agrees
    for name, (array, kind) in tensors.items():
        assert_bits(loaded[name], expected(array, kind), name)

    code, stdout, err = run("validate", out)
    assert code == 0 and "valid" in stdout, stdout + err
    code, stdout, _ = run("info", out, "--json")
    rows = {r["name"]: r for r in json.loads(stdout)["tensor_list"]}
    for name in KEPT + ("MXFP4", "TQ2_0", "Q6_K", "Q4_K"):  # every block type: its fields
        if f"blk.{name}" in rows:
            enc = rows[f"blk.{name}"]["encoding"]
            assert enc.startswith("ggml(") and "q=" in enc, enc
            if name in KEPT:
                assert (",m=" in enc) == name.endswith("_1"), enc
    assert not rows["f32"]["encoding"].startswith("ggml"), rows["f32"]
    code, stdout, _ = run("info", out)
    assert code == 0 and "ggml(" in stdout


def test_shapes_are_numpy_order(model, tmp_path):
    path, tensors = model
    out = tmp_path / "m.cmf"
    src = open_source(path)  # packed through the library this time
    with cmf.Writer(out) as w:
        for name, value in src.items():
            if isinstance(value, Encoded):
                w.add_encoded(name, value.spec, value.pending)
            else:
                w.add_tensor(name, value)
    with cmf.open(out) as f:
        assert f.spec("f32.4d").shape == (2, 3, 4, 5)
        assert f.spec("blk.Q5_0").shape == (2, 3, 96)
        assert f.spec("blk.Q8_0").shape == (6, 64) and f.spec("blk.Q8_0.1d").shape == (96,)
        assert f.spec("blk.Q6_K").shape == (3, 512)
        assert f.spec("bf16").dtype.name == "bf16" and f.spec("bf16").shape == (4, 6)


def test_open_source_yields_kept_blocks_encoded(model):
    path, tensors = model
    src = open_source(path)
    assert isinstance(src, GGUFSource) and len(src) == len(tensors) and src.attachments == {}
    assert src.names() == list(tensors)
    for name, value in src.items():
        kind = tensors[name][1]
        if kind is not None and kind.name in KEPT:
            assert isinstance(value, Encoded), name
            assert value.spec.dtype.name == "f32" and value.pending.codec.name == "ggml"
            assert value.pending.codec.to_config() == {"type": kind.name}
        elif kind is not None and kind.name in cmf.convert.gguf.KEPT_BLOCKS:
            assert isinstance(value, Encoded) and value.pending.codec.name == "ggml", name
        else:
            assert isinstance(value, np.ndarray), name
            assert_bits(value, expected(*tensors[name]), name)


def test_metadata_keeps_architecture_hyperparameters_tokenizer(model, tmp_path, run):
    path, tensors = model
    out = tmp_path / "m.cmf"
    assert run("pack", path, "-o", out, "-q")[0] == 0
    with cmf.open(out) as f:
        md = f.metadata()
    assert md["cmf.source_format"] == "gguf" and md["cmf.gguf.version"] == 3
    assert md["gguf.general.architecture"] == "llama"
    assert md["gguf.general.name"] == "tiny test model"
    assert md["gguf.llama.block_count"] == 2 and md["gguf.llama.embedding_length"] == 64
    assert md["gguf.llama.attention.head_count"] == 4
    assert md["gguf.llama.attention.layer_norm_rms_epsilon"] == float(np.float32(1e-5))
    assert md["gguf.llama.rope.freq_base"] == 10000.0
    assert md["gguf.test.f64"] == 0.1 and md["gguf.test.i64"] == -(2**40)
    assert md["gguf.test.u64"] == 2**63 + 5 and md["gguf.test.i8"] == -7
    assert md["gguf.test.flag"] is True and md["gguf.test.text"] == "héllo\nwörld"
    assert md["gguf.test.ints"] == [3, -1, 4] and md["gguf.test.floats"] == [0.5, -2.25]
    assert md["gguf.tokenizer.ggml.model"] == "llama"
    assert md["gguf.tokenizer.ggml.tokens"] == TOKENS
    assert md["gguf.tokenizer.ggml.scores"] == [0.0, -1.0, -1.5, -2.0, -3.25, -4.0, -5.0, -6.0]
    assert md["gguf.tokenizer.ggml.token_type"] == [2, 3, 3, 1, 1, 6, 1, 1]
    assert md["gguf.tokenizer.ggml.bos_token_id"] == 1
    types = md["cmf.gguf.value_types"]
    assert types["llama.block_count"] == "UINT32" and types["test.u64"] == "UINT64"
    assert types["tokenizer.ggml.tokens"] == "ARRAY/STRING" and types["test.f64"] == "FLOAT64"
    assert types["llama.rope.freq_base"] == "FLOAT32"
    assert set(types) == {k[len("gguf.") :] for k in md if k.startswith("gguf.")}
    plain = {
        "float32": "F32",
        "float16": "F16",
        "float64": "F64",
        "int8": "I8",
        "int16": "I16",
        "int32": "I32",
        "int64": "I64",
    }
    assert md["cmf.gguf.tensor_types"] == {
        n: k.name if k is not None else plain[a.dtype.name] for n, (a, k) in tensors.items()
    }


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # gguf-py: inf * 0
def test_non_finite_block_scale_is_stored_as_gguf_py_decodes_it(tmp_path, run):
    """Non-finite scales are kept in the blocks (ggml codec): decoded as gguf-py does, NaNs and
    all, and the blocks come back byte for byte."""
    rng = np.random.default_rng(1)
    blocks = gguf.quants.quantize(_weights(rng, (4, 64)), Q.Q8_0)
    blocks[1, 0:2] = np.array([np.inf], "<f2").view(np.uint8)
    blocks[2, 34:36] = np.array([0x7E01], "<u2").view(np.uint8)  # a NaN with a payload
    path = write_gguf(tmp_path / "nan.gguf", {"w": (blocks, Q.Q8_0)}, kv=False)
    out = tmp_path / "nan.cmf"
    assert run("pack", path, "-o", out, "-q")[0] == 0
    with cmf.open(out) as f:
        assert_bits(f.get_tensor("w"), gguf.quants.dequantize(blocks, Q.Q8_0), "w")
        assert f.entry("w").encoding.codec.name == "ggml"
        assert block_bytes(f, "w").tobytes() == blocks.tobytes()
    assert run("validate", out, "-q")[0] == 0


def test_big_endian_file(tmp_path, run):
    rng = np.random.default_rng(2)
    tensors = {
        "f32": (_weights(rng, (3, 5)), None),
        "i32": (np.arange(-6, 6, dtype=np.int32).reshape(3, 4), None),
        "f16": (rng.standard_normal(7).astype(np.float16), None),
        "bf16": (rng.standard_normal((2, 3)).astype(ml_dtypes.bfloat16).view(np.uint16), Q.BF16),
    }
    path = write_gguf(
        tmp_path / "be.gguf",
        {k: (a.copy(), t) for k, (a, t) in tensors.items()},
        endian=gguf.GGUFEndian.BIG,
    )
    out = tmp_path / "be.cmf"
    assert run("pack", path, "-o", out, "-q")[0] == 0
    with cmf.open(out) as f:
        for name, (array, kind) in tensors.items():
            assert_bits(f.get_tensor(name), expected(array, kind), name)
        assert f.metadata()["gguf.llama.block_count"] == 2
        assert f.metadata()["gguf.tokenizer.ggml.tokens"] == TOKENS


def test_kept_blocks_are_entropy_coded_smaller_than_the_gguf(tmp_path, run):
    rng = np.random.default_rng(3)
    for name in ("Q8_0", "Q4_0"):
        x = _weights(rng, (256, 512))
        blocks = gguf.quants.quantize(x, Q[name])
        path = write_gguf(tmp_path / f"{name}.gguf", {"w": (blocks, Q[name])}, kv=False)
        out = tmp_path / f"{name}.cmf"
        code, stdout, _ = run("pack", path, "-o", out, "--json")
        assert code == 0
        size_gguf, size_cmf = os.path.getsize(path), os.path.getsize(out)
        assert size_cmf < 0.98 * size_gguf, (name, size_gguf, size_cmf)  # measured: 0.964, 0.957
        code, stdout, _ = run("info", out, "--json")
        (row,) = json.loads(stdout)["tensor_list"]
        enc = row["encoding"]  # codes entropy-coded (bit-packed codes only under a byte coder)
        assert "q=bitpack" not in enc or "q=bitpack>zstd" in enc, enc


def test_lossy_preset_leaves_kept_blocks_alone(model, tmp_path, run):
    path, tensors = model
    out = tmp_path / "q8.cmf"
    code, stdout, err = run("pack", path, "-o", out, "--preset", "q8", "--json")
    assert code == 0, err
    with cmf.open(out) as f:
        for name in KEPT:
            array, kind = tensors[f"blk.{name}"]
            assert_bits(f.get_tensor(f"blk.{name}"), expected(array, kind), name)
        for name in ("i32", "i64"):
            assert_bits(f.get_tensor(name), tensors[name][0], name)
    assert run("validate", out, "-q")[0] == 0


def test_unpack_to_safetensors_keeps_metadata_as_json(model, tmp_path, run):
    path, tensors = model
    c, st = tmp_path / "m.cmf", tmp_path / "m.safetensors"
    assert run("pack", path, "-o", c, "-q")[0] == 0
    assert run("unpack", c, "-o", st, "-q")[0] == 0
    from safetensors import safe_open

    with safe_open(str(st), "numpy") as f:
        md = f.metadata()
        assert json.loads(md["gguf.tokenizer.ggml.tokens"]) == TOKENS
        assert md["gguf.general.architecture"] == "llama"
        assert_bits(f.get_tensor("blk.Q4_1"), expected(*tensors["blk.Q4_1"]), "Q4_1")


# ------------------------------------------------------------------------- bad inputs


def _assert_refused(run, path, out, *needles):
    code, stdout, err = run("pack", path, "-o", out)
    assert code == 1, (code, stdout, err)
    assert err.startswith("cmf: error:") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    assert not os.path.exists(out)
    assert os.listdir(os.path.dirname(out)) == [os.path.basename(path)], "temporary file left"


def test_truncated_gguf_files_are_refused(model, tmp_path, run):
    path, tensors = model
    with open(path, "rb") as fh:
        data = fh.read()
    reader = gguf.GGUFReader(path)
    end = max(t.data_offset + t.n_bytes for t in reader.tensors)
    cuts = sorted({4, 8, 16, 30, 200, reader.data_offset - 1, reader.data_offset + 1, end - 1})
    for i, cut in enumerate(cuts):
        d = tmp_path / f"cut{i}"
        d.mkdir()
        (d / "t.gguf").write_bytes(data[:cut])
        _assert_refused(run, str(d / "t.gguf"), str(d / "t.cmf"), "t.gguf")


def test_every_truncation_of_a_small_gguf_is_refused_by_open_source(tmp_path):
    rng = np.random.default_rng(4)
    tensors = {
        "a": (gguf.quants.quantize(_weights(rng, (1, 32)), Q.Q4_1), Q.Q4_1),
        "b": (np.arange(3, dtype=np.float32), None),
    }
    path = write_gguf(tmp_path / "s.gguf", tensors, kv=False)
    data = open(path, "rb").read()
    reader = gguf.GGUFReader(path)
    end = max(t.data_offset + t.n_bytes for t in reader.tensors)
    cut_path = tmp_path / "cut.gguf"
    for cut in range(4, end):
        cut_path.write_bytes(data[:cut])
        with pytest.raises(cmf.CmfError, match="cut.gguf"):
            src = open_source(cut_path)
            list(src.items())


def test_garbage_named_gguf_is_refused(tmp_path, run):
    rng = np.random.default_rng(5)
    for i, blob in enumerate(
        [rng.bytes(1000), b"GGUF" + rng.bytes(1000), b"GGUF\x03\x00\x00\x00" + b"\xff" * 16, b""]
    ):
        d = tmp_path / f"g{i}"
        d.mkdir()
        (d / "g.gguf").write_bytes(blob)
        _assert_refused(run, str(d / "g.gguf"), str(d / "g.cmf"))


def test_unsupported_quant_type_is_refused(tmp_path, run):
    """Q8_1 has sizes in gguf-py but no dequantizer: one clear line before any output."""
    block, size = gguf.GGML_QUANT_SIZES[Q.Q8_1]
    raw = np.zeros((2, size * 2), np.uint8)
    tensors = {"w": (raw, Q.Q8_1), "f": (np.ones(3, np.float32), None)}
    path = write_gguf(tmp_path / "q81.gguf", tensors)
    _assert_refused(run, path, str(tmp_path / "q81.cmf"), "Q8_1", "'w'")


def test_quantized_blocks_in_a_big_endian_file_are_refused(tmp_path, run):
    blocks = gguf.quants.quantize(_weights(np.random.default_rng(6), (2, 32)), Q.Q4_0)
    path = write_gguf(
        tmp_path / "beq.gguf", {"w": (blocks, Q.Q4_0)}, kv=False, endian=gguf.GGUFEndian.BIG
    )
    _assert_refused(run, path, str(tmp_path / "beq.cmf"), "big-endian")
