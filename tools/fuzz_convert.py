"""Fuzz targets for the converters' readers: ``safetensors``, ``onnx``, ``gguf``.

Each writes the input as a file and runs ``cmf.convert.open_source(path)`` and ``items()``
(every tensor read). The converters turn every reader problem into ``CmfError`` (their documented
clear error), so the harness's rule is the same as for .cmf files (tools/fuzz_common.py). More
checks:

- ``safetensors`` / ``gguf``: every array has the dtype and shape the source reports; a GGUF
  tensor kept as GGML blocks (an ``Encoded`` quantize tree) decodes to its spec; metadata passes
  cmf's metadata rules or is refused with a CmfError (what ``cmf pack`` does with it).
- ``onnx``: the model sits in ``model/`` next to ``w.bin`` (a valid external data file), a
  ``sub/`` directory, a symlink ``link.bin -> ../secret.bin`` and a symlinked directory
  ``linkdir -> ..``; ``secret.bin`` sits outside. No extracted tensor and no byte of the
  skeleton attachment may come from ``secret.bin`` (a read outside the model's directory).

Mutators: safetensors edits the JSON header (dtypes, shapes, offsets, metadata) and re-frames
it; onnx edits the ModelProto (dims, data types, raw data, external data location/offset/length,
data location); gguf uses byte mutations with interesting integers (counts, lengths, types).

    python tools/fuzz_convert.py onnx --engine atheris --seconds 300
"""

from __future__ import annotations

import json
import os
import random
import struct
import sys
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ml_dtypes
import numpy as np

from cmf.convert import Encoded, open_source
from cmf.errors import CmfError
from cmf.index import check_metadata
from cmf.pipeline import decode_pending
from tools.fuzz_common import (
    INTERESTING,
    Finding,
    Target,
    byte_mutate,
    main,
    plain_functions,
    scratch_dir,
    scratch_file,
)

SECRET = b"\xde\xad\xbe\xefSECRET-OUTSIDE!" * 256  # 5120 bytes nothing inside may contain
MARK = b"SECRET-OUTSIDE"


def _check_array(name: str, a: Any) -> None:
    if isinstance(a, Encoded):
        v = decode_pending(a.pending)
        if (
            not isinstance(v, np.ndarray)
            or v.shape != a.spec.shape
            or v.dtype != a.spec.dtype.numpy
        ):
            raise Finding(
                f"{name}: Encoded decodes to {getattr(v, 'dtype', '?')}"
                f"{getattr(v, 'shape', '?')}, spec {a.spec.describe()}"
            )
        return
    if not isinstance(a, np.ndarray):
        raise Finding(f"{name}: items() gave {type(a).__name__}")
    if a.dtype.byteorder == ">":
        raise Finding(f"{name}: a big-endian array")


def _items(path: str) -> Any:
    src = open_source(path)
    names = src.names()
    got = []
    for name, value in src.items():
        _check_array(name, value)
        got.append(name)
    if got != names:
        raise Finding(f"items() gave {got[:5]}..., names() {names[:5]}...")
    try:
        check_metadata(dict(src.metadata))
    except CmfError:
        pass
    return src


# ----------------------------------------------------------------------------- safetensors


def run_safetensors(data: bytes) -> None:
    _items(scratch_file(data, "input.safetensors"))


def safetensors_seeds() -> list[bytes]:
    from safetensors.numpy import save

    rng = np.random.default_rng(0)
    seeds = [
        save(
            {
                "w": rng.standard_normal((4, 5)).astype(np.float32),
                "b": np.arange(3, dtype=np.int64),
            },
            metadata={"format": "pt"},
        ),
        save(
            {
                "h": rng.standard_normal(7).astype(ml_dtypes.bfloat16),
                "f": np.array([1.5, -0.0], np.float16),
                "m": np.array([True, False]),
                "e": np.zeros((0, 3), np.float32),
                "s": np.array(2.5, np.float64),
                "q": np.array([-3, 4], np.int8),
                "u": np.array([7, 8], np.uint16),
            }
        ),
        save(
            {
                "f8": np.array([1, 2, 3], np.uint8).view(ml_dtypes.float8_e4m3fn),
                "f5": np.array([1, 2], np.uint8).view(ml_dtypes.float8_e5m2),
            }
        ),
    ]
    return seeds


def mutate_safetensors(data: bytes, rng: random.Random) -> bytes:
    try:
        (n,) = struct.unpack_from("<Q", data)
        header = json.loads(data[8 : 8 + n])
        body = data[8 + n :]
        if not isinstance(header, dict):
            raise ValueError
    except Exception:  # noqa: BLE001
        return byte_mutate(data, rng)
    names = [k for k in header if k != "__metadata__"]
    r = rng.random()
    if r < 0.7 and names:
        info = header[rng.choice(names)]
        if isinstance(info, dict):
            key = rng.choice(["dtype", "shape", "data_offsets", "extra"])
            if key == "dtype":
                info["dtype"] = rng.choice(
                    [
                        "F32",
                        "F16",
                        "BF16",
                        "F64",
                        "I8",
                        "U8",
                        "BOOL",
                        "I64",
                        "F8_E4M3",
                        "F8_E5M2",
                        "U64",
                        "C64",
                        "F4",
                        "",
                        5,
                    ]
                )
            elif key == "shape":
                shape = list(info.get("shape") or [])
                op = rng.randrange(4)
                if op == 0 and shape:
                    i = rng.randrange(len(shape))
                    shape[i] = rng.choice([0, 1, -1, 2**32, 2**63, shape[i] + 1, 1.5, "2"])
                elif op == 1:
                    shape.append(rng.choice([1, 2, 0]))
                elif op == 2 and shape:
                    shape.pop()
                else:
                    shape = rng.choice([[], [2**31] * 3, None])
                info["shape"] = shape
            elif key == "data_offsets":
                offs = info.get("data_offsets")
                if isinstance(offs, list) and len(offs) == 2 and rng.random() < 0.6:
                    i = rng.randrange(2)
                    offs[i] = rng.choice(
                        [
                            0,
                            offs[i] + rng.choice((-1, 1, 8)),
                            2**64 - 1,
                            -1,
                            len(body),
                            len(body) + 1,
                        ]
                    )
                else:
                    info["data_offsets"] = rng.choice([[0], [1, 0], [0, 2**40], None])
            else:
                info[rng.choice(["extra", "dtype2"])] = 1
    elif r < 0.85:
        header["__metadata__"] = rng.choice([{"a": "b"}, {"a": 1}, [], "x", {"k": {"n": 1}}, None])
    else:
        body = byte_mutate(body, rng)
    blob = json.dumps(header).encode()
    if rng.random() < 0.1:
        n = rng.choice(INTERESTING)
    else:
        n = len(blob)
    return struct.pack("<Q", n & ((1 << 64) - 1)) + blob + body


# ----------------------------------------------------------------------------- onnx

_ONNX_DIR: str | None = None


def _onnx_dir() -> str:
    global _ONNX_DIR
    if _ONNX_DIR is None:
        root = os.path.join(scratch_dir(), "onnx")
        model = os.path.join(root, "model")
        os.makedirs(os.path.join(model, "sub"), exist_ok=True)
        with open(os.path.join(root, "secret.bin"), "wb") as fh:
            fh.write(SECRET)
        with open(os.path.join(model, "w.bin"), "wb") as fh:
            fh.write(np.random.default_rng(1).integers(0, 255, 8192, dtype=np.uint8).tobytes())
        os.symlink(os.path.join("..", "secret.bin"), os.path.join(model, "link.bin"))
        os.symlink("..", os.path.join(model, "linkdir"))
        _ONNX_DIR = model
    return _ONNX_DIR


def run_onnx(data: bytes) -> None:
    path = scratch_file(data, "m.onnx", _onnx_dir())
    src = open_source(path)
    for blob in src.attachments.values():
        if MARK in blob:
            raise Finding("the skeleton holds bytes of a file outside the model's directory")
    for name, value in src.items():
        _check_array(name, value)
        if MARK in np.ascontiguousarray(value).tobytes():
            raise Finding(f"tensor {name!r} holds bytes of a file outside the model's directory")


_ONNX_SLOTS: Any = None  # cmf.convert.onnx.model_slots, uninstrumented (for the mutator)


def _model_slots() -> Any:
    """The reader's own walk over a model's tensors, copied so that atheris does not instrument
    the mutator's calls (see fuzz_common.plain_functions); onnx_seeds() makes it before the
    instrumentation."""
    global _ONNX_SLOTS
    if _ONNX_SLOTS is None:
        from cmf.convert import onnx as reader

        _ONNX_SLOTS = plain_functions(
            reader, ("model_slots", "_graph_slots", "_node_slots", "_sparse", "_node_ids")
        )["model_slots"]
    return _ONNX_SLOTS


def onnx_seeds() -> list[bytes]:
    _model_slots()  # before instrument(): the mutator's copy stays plain
    from onnx import TensorProto as TP
    from onnx import helper as oh

    seeds: list[bytes] = []
    try:  # the rich models of the ONNX tests (every dtype, subgraphs, functions, sparse)
        from tests.convert import test_onnx as t

        for make in (
            t.zoo_model,
            t.constants_model,
            t.sparse_model,
            t.if_model,
            t.loop_model,
            t.scan_model,
            t.mlp_model,
        ):
            seeds.append(make().SerializeToString())
    except Exception:  # noqa: BLE001 - tests not importable: the small models below still work
        pass
    rng = np.random.default_rng(2)
    w = rng.standard_normal((4, 8)).astype(np.float32)
    x = oh.make_tensor_value_info("X", TP.FLOAT, [1, 4])
    y = oh.make_tensor_value_info("Y", TP.FLOAT, [1, 8])
    for location, offset, length in (
        ("w.bin", "0", "128"),
        ("sub/../w.bin", "64", None),
        ("link.bin", None, None),
        ("./w.bin", "4096", "128"),
    ):
        init = TP(name="W", data_type=TP.FLOAT, dims=[4, 8], data_location=TP.EXTERNAL)
        for k, v in (("location", location), ("offset", offset), ("length", length)):
            if v is not None:
                e = init.external_data.add()
                e.key, e.value = k, v
        g = oh.make_graph([oh.make_node("MatMul", ["X", "W"], ["Y"])], "g", [x], [y], [init])
        seeds.append(oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)]).SerializeToString())
    init = oh.make_tensor("W", TP.FLOAT, [4, 8], w.reshape(-1).tolist())
    c = oh.make_node("Constant", [], ["C"], value_floats=[float(v) for v in range(20)])
    g = oh.make_graph([c, oh.make_node("MatMul", ["X", "W"], ["Y"])], "g", [x], [y], [init])
    seeds.append(oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)]).SerializeToString())
    return [s for s in seeds if len(s) <= 1 << 16]


def mutate_onnx(data: bytes, rng: random.Random) -> bytes:
    from onnx import ModelProto, TensorProto

    model_slots = _model_slots()
    m = ModelProto()
    try:
        m.ParseFromString(data)
        slots = [s for s in model_slots(m) if s.tensor is not None]
    except Exception:  # noqa: BLE001
        return byte_mutate(data, rng)
    if not slots:
        return byte_mutate(data, rng)
    t = rng.choice(slots).tensor
    op = rng.randrange(8)
    try:
        if op == 0:
            dims = list(t.dims)
            if dims and rng.random() < 0.7:
                i = rng.randrange(len(dims))
                dims[i] = rng.choice([0, 1, -1, dims[i] + 1, dims[i] * 2, 2**31, 2**62, -(2**63)])
            else:
                dims = rng.choice([[], [0], [2**40, 2**40], dims + [1]])
            del t.dims[:]
            t.dims.extend(dims)
        elif op == 1:
            t.data_type = rng.choice(list(range(0, 26)) + [1000])
        elif op == 2:
            raw = t.raw_data
            t.raw_data = (
                raw[: rng.randrange(len(raw) + 1)]
                if raw and rng.random() < 0.5
                else raw + b"\x01" * rng.randint(1, 9)
            )
        elif op in (3, 4):
            t.data_location = TensorProto.EXTERNAL
            del t.external_data[:]
            loc = rng.choice(
                [
                    "w.bin",
                    "../secret.bin",
                    "link.bin",
                    "linkdir/secret.bin",
                    "/etc/passwd",
                    "sub",
                    "sub/../w.bin",
                    "sub/../../secret.bin",
                    "w.bin\x00x",
                    "..\\secret.bin",
                    "C:/x",
                    "",
                    ".",
                    "nothere",
                    "model/../w.bin",
                    "w.bin/",
                    "./link.bin",
                ]
            )
            for k, v in (
                ("location", loc),
                (
                    "offset",
                    rng.choice([None, "0", "64", "-1", "1e3", "99999999999999999999", " 1"]),
                ),
                ("length", rng.choice([None, "0", "128", "4096", "8192", "-5", "0x10"])),
                (rng.choice(["checksum", "basepath", "location", "cmf.tensor"]), "x"),
            ):
                if v is not None and rng.random() < 0.9:
                    e = t.external_data.add()
                    e.key, e.value = k, v
        elif op == 5:
            t.data_location = rng.choice([0, 1, 7])
        elif op == 6:
            t.ClearField("raw_data")
            t.float_data.extend([1.0, float("nan")][: rng.randint(0, 2)])
            t.int64_data.extend([2**40][: rng.randint(0, 1)])
            t.int32_data.extend([300, -1][: rng.randint(0, 2)])
        else:
            t.name = rng.choice(["", "x" * 2000, "a\x00b", "dup", t.name + "#2"])
        out = m.SerializeToString()
    except Exception:  # noqa: BLE001 - protobuf refused the edit
        return byte_mutate(data, rng)
    return out


# ----------------------------------------------------------------------------- gguf


def run_gguf(data: bytes) -> None:
    _items(scratch_file(data, "input.gguf"))


def _blocks(name: str, rng: np.random.Generator) -> np.ndarray:
    """One row of two random blocks of GGML type ``name`` whose f16 scales are small and finite."""
    from cmf.codecs import ArraySpec
    from cmf.codecs.ggml_codec import Blocks, Ggml
    from cmf.dtypes import BY_NAME

    codec = Ggml(type=name)
    lay = codec.layout
    spec = ArraySpec(BY_NAME["f32"], (1, 2 * lay.block))
    parts = codec.encode(Blocks(rng.integers(0, 256, 2 * lay.nbytes, dtype=np.uint8)), spec)
    for f in lay.fields:
        if f.kind == "f16":
            parts[f.name] = (rng.standard_normal((2, 1)) * 0.01).astype(np.float16)
    return codec.blocks_of(parts, spec).reshape(1, -1)


def gguf_seeds() -> list[bytes]:
    import tempfile

    import gguf

    Q = gguf.GGMLQuantizationType
    rng = np.random.default_rng(3)
    seeds = []
    sets = [
        {
            "f32": (rng.standard_normal((3, 4)).astype(np.float32), None),
            "q8": (
                gguf.quants.quantize(rng.standard_normal((2, 32)).astype(np.float32), Q.Q8_0),
                Q.Q8_0,
            ),
        },
        {
            "q4": (
                gguf.quants.quantize(rng.standard_normal((1, 64)).astype(np.float32), Q.Q4_0),
                Q.Q4_0,
            ),
            "q41": (
                gguf.quants.quantize(rng.standard_normal((1, 32)).astype(np.float32), Q.Q4_1),
                Q.Q4_1,
            ),
            "q5": (
                gguf.quants.quantize(rng.standard_normal((1, 32)).astype(np.float32), Q.Q5_0),
                Q.Q5_0,
            ),
            "q51": (
                gguf.quants.quantize(rng.standard_normal((1, 32)).astype(np.float32), Q.Q5_1),
                Q.Q5_1,
            ),
            "f16": (rng.standard_normal(5).astype(np.float16), None),
            "i32": (np.arange(4, dtype=np.int32), None),
        },
        {
            f"k.{name}": (_blocks(name, rng), Q[name])  # K-/I-quants: the ggml codec's fields
            for name in ("Q4_K", "Q6_K", "IQ4_XS", "IQ2_XS", "IQ1_M", "TQ1_0", "MXFP4")
        },
    ]
    with tempfile.TemporaryDirectory() as d:
        for i, tensors in enumerate(sets):
            path = os.path.join(d, f"{i}.gguf")
            w = gguf.GGUFWriter(path, "llama")
            w.add_name("fuzz")
            w.add_uint32("test.u32", 7)
            w.add_float32("test.f32", 0.5)
            w.add_string("test.s", "héllo")
            w.add_array("test.a", [1, 2, 3])
            w.add_array("test.sa", ["x", "yz"])
            w.add_bool("test.b", True)
            for name, (array, kind) in tensors.items():
                if kind is None:
                    w.add_tensor(name, array)
                else:
                    w.add_tensor(name, array, raw_shape=array.shape, raw_dtype=kind)
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
            w.close()
            with open(path, "rb") as fh:
                seeds.append(fh.read())
    return seeds


TARGETS = {
    "safetensors": Target(
        "safetensors",
        run_safetensors,
        safetensors_seeds,
        mutate=mutate_safetensors,
        instrument=("cmf.convert",),
    ),
    "onnx": Target(
        "onnx", run_onnx, onnx_seeds, mutate=mutate_onnx, instrument=("cmf.convert", "cmf.errors")
    ),
    "gguf": Target(
        "gguf",
        run_gguf,
        gguf_seeds,
        instrument=(
            "cmf.convert",
            "cmf.convert.gguf_legacy",
            "gguf.gguf_reader",
            "gguf.quants",
            "cmf.codecs.ggml_codec",
            "cmf.codecs.ggml_layout",
            "cmf.codecs.ggml_dequant",
        ),
    ),
}
from tools.fuzz_gguf_write import TARGETS as _GGUF_WRITE  # noqa: E402  (the GGUF writer)

TARGETS.update(_GGUF_WRITE)

if __name__ == "__main__":
    sys.exit(main(TARGETS))
