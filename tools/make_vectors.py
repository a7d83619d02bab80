"""Write the golden vectors in spec/vectors/ and their manifest.

    # write the vectors that are missing, refresh manifest.json
    python tools/make_vectors.py
    # rebuild every writer vector in a temp dir and compare
    python tools/make_vectors.py --check
    # overwrite NAME: only when the spec deliberately changes it
    python tools/make_vectors.py --force NAME

A committed vector is never overwritten without ``--force``: its bytes are what
tests/test_vectors.py decodes forever. Each builder makes its file from deterministic inputs and
returns what a reader must get back (the *inputs*, not what cmf reads: the manifest is checked
against cmf's decoding here before it is written, so a writer/reader pair that agree on a wrong
answer is caught). A tensor whose tree is a ``lowrank`` node decodes only up to that page's
tolerance: its expected values are the exactly rounded product, and cmf's decoding is checked
against them with ``cmf.codecs.lowrank.same_decoding`` (the manifest says ``"compare"``).

Two kinds of vector:

* ``cmf.save_file`` vectors come from cmf's writer (future_minor.cmf too: the writer's file with
  its minor and index edited). tests/test_vectors.py checks that today's writer still writes them
  byte for byte (see spec/vectors/README.md for how libzstd versions are handled).
* ``crafted`` vectors are assembled here byte by byte, without cmf's writer: valid files that
  another writer may produce (non-shortest msgpack forms, other key orders, zero-length
  segments, segments referenced out of order, zstd frames with raw/RLE blocks and every
  Frame_Content_Size width, a frame checksum).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import struct
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import ml_dtypes
import msgpack
import numpy as np
import zstandard

import cmf
from cmf import format as fmt
from cmf.checksum import crc32c
from cmf.codecs.lowrank import same_decoding
from cmf.index import node_obj, unpack
from cmf.limits import DEFAULT_LIMITS
from cmf.pipeline import describe

HERE = os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "spec", "vectors")
)
TINY = 64  # tensors and attachments of at most this many bytes are also recorded as hex
KNOWN_MINOR = 3  # format 1.3: a file of minor <= 3 validates without warnings
LOWRANK_COMPARE = "lowrank tolerance"  # manifest: compared with lowrank.same_decoding


class Expect(dict):
    """What a reader must get: tensors (name -> array, or name -> alias target name),
    attachments (name -> bytes), metadata, minor, errors (name -> error map)."""


def _expect(tensors, metadata=None, attachments=None, minor=0, aliases=None, errors=None) -> Expect:
    return Expect(
        tensors=dict(tensors),
        aliases=dict(aliases or {}),
        metadata=dict(metadata or {}),
        attachments=dict(attachments or {}),
        minor=minor,
        errors=dict(errors or {}),
    )


# ----------------------------------------------------------------------------- writer vectors
# The bytes of the first five are committed: changing what a builder writes breaks
# tests/test_vectors.py (that is the point). Only add builders.


def _bits(dtype: Any, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, n).astype(bool)
    return rng.integers(0, 256, n * dtype.itemsize, dtype=np.uint8).view(dtype)


def dtypes_vector(path: str) -> Expect:
    """One tensor per dtype (every bit pattern), plus rank 0 and empty tensors."""
    tensors = {
        d.name: _bits(d.numpy, 37, i).reshape(37) for i, d in enumerate(cmf.dtypes.BY_NAME.values())
    }
    tensors["scalar_f32"] = np.array(-2.5, np.float32)
    tensors["scalar_bool"] = np.array(True)
    tensors["empty_f16"] = np.zeros((3, 0, 2), np.float16)
    tensors["empty_i64"] = np.zeros((0,), np.int64)
    cmf.save_file(tensors, path)
    return _expect(tensors)


def lossless_paths_vector(path: str) -> Expect:
    """Every lossless path: rotated planes (f32/bf16/f16/f64), unrotated int planes, raw>zstd,
    raw leaf, an alias, attachments and metadata of every JSON-like type."""
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((64, 48)) * 0.05).astype(np.float32)
    tensors = {
        "w_f32": w,
        "w_bf16": w.astype(ml_dtypes.bfloat16),
        "w_f16": w.astype(np.float16),
        "w_f64": w.astype(np.float64)[:16],
        "ids_i32": rng.integers(-1000, 1000, 3000).astype(np.int32),
        "zeros": np.zeros(4096, np.float32),
        "tiny": np.array([1, 2, 3], np.uint8),
        "tied": w.copy(),
    }
    metadata = {
        "s": "text",
        "i": -7,
        "u": 2**64 - 1,
        "f": 0.25,
        "b": False,
        "n": None,
        "l": [1, "x", [2.5]],
        "m": {"k": {"v": True}},
    }
    attachments = {"config.json": b'{"model_type": "golden"}' * 20, "sub/vocab.txt": b"a\nb\nc\n"}
    cmf.save_file(tensors, path, metadata, attachments=attachments)
    tensors.pop("tied")
    return _expect(tensors, metadata, attachments, aliases={"tied": "w_f32"})


def nan_payloads_vector(path: str) -> Expect:
    """Distinct NaN payloads, infinities, signed zeros and subnormals in f32, f16 and bf16."""
    f32 = np.array(
        [
            0x7FC00000,
            0x7FC00001,
            0xFFBFFFFF,
            0x7F800001,
            0x7F800000,
            0xFF800000,
            0x00000001,
            0x80000000,
        ],
        np.uint32,
    )
    f16 = np.array([0x7E01, 0xFC01, 0x7C00, 0xFC00, 0x0001, 0x8000], np.uint16)
    bf = np.array([0x7FC1, 0xFF81, 0x7F80, 0x0001], np.uint16)
    tensors = {
        "f32": np.tile(f32, 512).view(np.float32),
        "f16": f16.view(np.float16),
        "bf16": bf.view(ml_dtypes.bfloat16),
    }
    cmf.save_file(tensors, path)
    return _expect(tensors)


def huffman_vector(path: str) -> Expect:
    """4-bit codes (u8) and a u16 alphabet through the huffman codec."""
    rng = np.random.default_rng(11)
    codes = np.clip(np.round(rng.standard_normal(5000) * 2.5 + 8), 0, 15).astype(np.uint8)
    wide = (rng.zipf(1.3, 3000) % 40000).astype(np.uint16)
    recipe = {
        "rules": [
            {
                "match": "*",
                "encoding": {"codec": "huffman", "config": {"chunk": 256, "max_length": 12}},
            }
        ]
    }
    tensors = {"codes_u8": codes.reshape(50, 100), "wide_u16": wide}
    cmf.save_file(tensors, path, recipe=recipe)
    return _expect(tensors)


def future_minor_vector(path: str) -> Expect:
    """Minor version 7 with an unknown top-level index key: a 1.0 reader must still read it."""
    tensors = {"x": np.arange(12, dtype=np.int16).reshape(3, 4)}
    cmf.save_file(tensors, path)
    data = bytearray(open(path, "rb").read())
    off, length, _, _, _ = fmt.TRAILER.unpack(data[-fmt.TRAILER_SIZE :])
    index = unpack(bytes(data[off : off + length]), DEFAULT_LIMITS)
    index["x-future"] = {"note": "ignored by 1.0 readers"}
    blob = msgpack.packb(index, use_bin_type=True)
    struct.pack_into("<H", data, 10, 7)  # minor
    out = bytes(data[:off]) + blob + fmt.pack_trailer(off, len(blob), crc32c(blob))
    with open(path, "wb") as fh:
        fh.write(out)
    return _expect(tensors, minor=7)


def empty_vector(path: str) -> Expect:
    """No tensors, segments, attachments or metadata: the index starts at 64 (116 bytes)."""
    cmf.save_file({}, path)
    return _expect({})


def specials_vector(path: str) -> Expect:
    """f64 NaN payloads through rotated byte planes, stored (zstd-free); fp8 NaNs, infinities,
    signed zeros and subnormals; u64/i64 extremes; bool all false and all true."""
    f64 = np.array(
        [
            0x7FF8000000000000,
            0x7FF8000000000001,
            0xFFF0000000000001,
            0x7FF7FFFFFFFFFFFF,
            0x7FF0000000000000,
            0xFFF0000000000000,
            0x8000000000000000,
            0x0000000000000001,
            0x3FF0000000000000,
            0xBFF0000000000000,
        ],
        np.uint64,
    ).view(np.float64)
    e4m3 = np.array([0x7F, 0xFF, 0x7E, 0x80, 0x00, 0x01, 0x81, 0x08], np.uint8).view(
        ml_dtypes.float8_e4m3fn
    )
    e5m2 = np.array([0x7D, 0x7E, 0x7F, 0xFD, 0x7C, 0xFC, 0x80, 0x01], np.uint8).view(
        ml_dtypes.float8_e5m2
    )
    tensors = {
        "f64_planes": f64.reshape(2, 5),
        "f8_e4m3": e4m3,
        "f8_e5m2": e5m2,
        "u64_extremes": np.array([0, 1, 2**63, 2**64 - 1], np.uint64),
        "i64_extremes": np.array([-(2**63), -1, 0, 2**63 - 1], np.int64),
        "bool_false": np.zeros((2, 2), bool),
        "bool_true": np.ones(3, bool),
    }
    stored = {
        "codec": "byteplanes",
        "config": {"rotate": True},
        "parts": {f"p{j}": "stored" for j in range(8)},
    }
    recipe = {"rules": [{"match": "f64_planes", "encoding": stored}], "default": "stored"}
    cmf.save_file(tensors, path, recipe=recipe)
    return _expect(tensors)


# ----------------------------------------------------------------------------- crafted vectors


class F32(float):
    """A float to be written as msgpack float 32."""


class Fmt:
    """A value written with an explicit msgpack format byte (e.g. a positive int as int 64)."""

    def __init__(self, value: Any, code: int) -> None:
        self.value, self.code = value, code


def mp(obj: Any) -> bytes:
    """msgpack, deliberately NOT in shortest form: ints as 64-bit, strings as str 8/16, arrays
    and maps with 16-bit headers, unless ``Fmt`` says otherwise. Dicts keep their order."""
    if isinstance(obj, Fmt):
        v, c = obj.value, obj.code
        if c in (0xCC, 0xCD, 0xCE, 0xCF, 0xD0, 0xD1, 0xD2, 0xD3):
            spec = {
                0xCC: ">B",
                0xCD: ">H",
                0xCE: ">I",
                0xCF: ">Q",
                0xD0: ">b",
                0xD1: ">h",
                0xD2: ">i",
                0xD3: ">q",
            }[c]
            return bytes([c]) + struct.pack(spec, v)
        if c == 0xDB:  # str 32
            b = v.encode()
            return b"\xdb" + struct.pack(">I", len(b)) + b
        if c == 0xDD:  # array 32
            return b"\xdd" + struct.pack(">I", len(v)) + b"".join(mp(x) for x in v)
        if c == 0xDF:  # map 32
            return (
                b"\xdf" + struct.pack(">I", len(v)) + b"".join(mp(k) + mp(x) for k, x in v.items())
            )
        if c == 0xA0:  # fixstr
            b = v.encode()
            return bytes([0xA0 | len(b)]) + b
        if c == 0x90:  # fixarray
            return bytes([0x90 | len(v)]) + b"".join(mp(x) for x in v)
        if c == 0x80:  # fixmap
            return bytes([0x80 | len(v)]) + b"".join(mp(k) + mp(x) for k, x in v.items())
        raise ValueError(hex(c))
    if obj is None or isinstance(obj, bool):
        return msgpack.packb(obj)
    if isinstance(obj, int):
        return (
            (b"\xcf" + struct.pack(">Q", obj)) if obj >= 0 else (b"\xd3" + struct.pack(">q", obj))
        )
    if isinstance(obj, F32):
        return b"\xca" + struct.pack(">f", obj)
    if isinstance(obj, float):
        return b"\xcb" + struct.pack(">d", obj)
    if isinstance(obj, str):
        b = obj.encode("utf-8")
        return (
            b"\xd9" + struct.pack(">B", len(b))
            if len(b) < 256
            else b"\xda" + struct.pack(">H", len(b))
        ) + b
    if isinstance(obj, (list, tuple)):
        return b"\xdc" + struct.pack(">H", len(obj)) + b"".join(mp(x) for x in obj)
    if isinstance(obj, dict):
        return (
            b"\xde" + struct.pack(">H", len(obj)) + b"".join(mp(k) + mp(v) for k, v in obj.items())
        )
    raise TypeError(type(obj))


def zstd_frame(
    content: bytes,
    blocks: list[tuple[str, bytes]],
    *,
    fcs_bytes: int,
    single_segment: bool,
    window: int = 0,
) -> bytes:
    """A Zstandard frame (RFC 8878) built by hand: ``blocks`` are ("raw", bytes) or
    ("rle", bytes of one repeated value); no checksum, no dictionary. ``window`` is the
    Window_Descriptor byte (only when not single-segment)."""
    assert b"".join(b for _, b in blocks) == content
    assert fcs_bytes != 1 or single_segment  # flag 0 means 1 byte only in a single-segment frame
    flag = {1: 0, 2: 1, 4: 2, 8: 3}[fcs_bytes]
    fhd = flag << 6 | (0x20 if single_segment else 0)
    head = b"\x28\xb5\x2f\xfd" + bytes([fhd]) + (b"" if single_segment else bytes([window]))
    size = len(content)
    if fcs_bytes == 2:
        head += struct.pack("<H", size - 256)  # the 2-byte field stores size - 256
    else:
        head += struct.pack({1: "<B", 4: "<I", 8: "<Q"}[fcs_bytes], size)
    out = head
    for i, (kind, data) in enumerate(blocks):
        last = i == len(blocks) - 1
        if kind == "raw":
            out += ((len(data) << 3) | last).to_bytes(3, "little") + data
        else:
            assert len(set(data)) == 1
            out += ((len(data) << 3) | (1 << 1) | last).to_bytes(3, "little") + data[:1]
    return out


def _planes(words: list[int], k: int, rotate: bool) -> list[bytes]:
    """spec/codecs/byteplanes.md, straight from the text (Python ints, no cmf)."""
    bits = 8 * k
    planes = [bytearray() for _ in range(k)]
    for u in words:
        if rotate:
            u = ((u << 1) | (u >> (bits - 1))) % (1 << bits)
        for j in range(k):
            planes[j].append((u >> (8 * j)) & 0xFF)
    return [bytes(p) for p in planes]


def foreign_writer_vector(path: str) -> Expect:
    """A valid file as another writer might lay it out (assembled here, not by cmf's writer):
    every msgpack value in a non-shortest form (64-bit ints, also signed int 64 for sizes; str 8,
    str 16 and str 32; array 16/32; map 16/32; float 32), keys in other orders, an attachment
    before the tensors in the data area, two zero-length segments at the same offset, segments
    referenced out of order (p1 before p0), zstd frames with raw and RLE blocks, 1/2/8-byte
    Frame_Content_Size fields, single-segment and windowed frames, a frame checksum, a tensor
    with an 'error' map and an alias whose keys come first."""
    wide = np.array([[0, 1, 256], [65535, 0x1234, 0xABCD]], np.uint16)
    f32 = np.array([0x3F800000, 0x80000000, 0x7F800000, 0x7FA00001], np.uint32).view(np.float32)
    rle = np.concatenate([np.zeros(200, np.uint8), np.arange(100, dtype=np.uint8)])
    bf = [0x3F80, 0xBF80, 0x7FC1]
    bf16 = np.array(bf, np.uint16).view(ml_dtypes.bfloat16)
    small = np.array([-128, -1, 0, 1, 127], np.int8)
    license_text = b"Golden vector text, stored as one segment.\n"
    readme = (
        b"# readme\n\nThis attachment is a zstd frame with a content checksum, "
        b"written by libzstd at level 19.\n"
    ) * 4

    p0, p1 = _planes(bf, 2, rotate=True)
    frame_a = zstd_frame(f32.tobytes(), [("raw", f32.tobytes())], fcs_bytes=1, single_segment=True)
    frame_b = zstd_frame(
        rle.tobytes(),
        [("rle", rle[:200].tobytes()), ("raw", rle[200:].tobytes())],
        fcs_bytes=2,
        single_segment=False,
        window=0x00,
    )  # 1 KiB window
    frame_c = zstd_frame(p1, [("raw", p1)], fcs_bytes=8, single_segment=True)
    frame_d = zstandard.ZstdCompressor(
        level=19, write_checksum=True, write_content_size=True
    ).compress(readme)
    assert zstandard.get_frame_parameters(frame_d).has_checksum

    payloads = [
        license_text,  # 0: attachment LICENSE, a bare segment
        b"",  # 1: attachment empty.txt
        b"",  # 2: tensor empty (f32 [0, 5])
        wide.tobytes(),  # 3: tensor wide_ints
        frame_a,  # 4: tensor zstd_raw_block
        frame_b,  # 5: tensor zstd_rle
        frame_c,  # 6: planes_bf16 p1
        p0,  # 7: planes_bf16 p0
        small.tobytes(),  # 8: tensor with_error
        frame_d,  # 9: attachment notes/readme.md
    ]
    data = bytearray(fmt.pack_preamble())
    segments = []
    for payload in payloads:
        data += bytes(fmt.align(len(data)) - len(data))
        segments.append([Fmt(len(data), 0xCE), len(payload), Fmt(crc32c(payload), 0xCE)])
        data += payload
    data += bytes(fmt.align(len(data)) - len(data))
    index_offset = len(data)

    def raw(seg: Any) -> dict:
        return {"parts": {"data": seg}, "config": {}, "codec": "raw"}

    def zstd(seg: Any, level: int = 19) -> dict:
        return {
            "codec": "zstd",
            "parts": {"data": seg},
            "config": {"literals_only": False, "level": level},
        }

    tensors = [
        {
            "name": "wide_ints",
            "dtype": "u16",
            "shape": [Fmt(2, 0xD3), Fmt(3, 0xCC)],
            "encoding": raw({"segment": Fmt(3, 0xD0)}),
        },
        {
            "shape": [0, 5],
            "name": Fmt("empty", 0xDB),
            "dtype": "f32",
            "encoding": raw({"segment": 2}),
        },
        {
            "name": "zstd_raw_block",
            "dtype": "f32",
            "shape": [4],
            "encoding": {
                "codec": "raw",
                "config": {},
                "parts": {"data": zstd({"segment": 4}, level=-5)},
            },
        },
        {
            "encoding": {
                "codec": "raw",
                "config": Fmt({}, 0xDF),
                "parts": {"data": zstd({"segment": 5}, level=22)},
            },
            "dtype": Fmt("u8", 0xA0),
            "shape": Fmt([300], 0xDD),
            "name": "zstd_rle",
        },
        {
            "name": "planes_bf16",
            "dtype": "bf16",
            "shape": [3],
            "encoding": {
                "config": {"rotate": True},
                "codec": "byteplanes",
                "parts": {"p1": zstd({"segment": 6}, level=1), "p0": {"segment": 7}},
            },
        },
        {"alias": "wide_ints", "shape": [2, 3], "dtype": "u16", "name": "alias_of_wide"},
        {
            "name": "with_error",
            "dtype": "i8",
            "shape": Fmt([5], 0x90),
            "error": {"rel_rmse": F32(0.0), "max_abs": 0, "sqnr_db": float("inf")},
            "encoding": raw({"segment": 8}),
        },
    ]
    deep = "leaf"
    for _ in range(6):  # metadata map = depth 1, "deep" value = 2, ... the string at depth 8
        deep = [deep]
    metadata = {
        "": "",
        "unicode \u2713": "\u00fcn\u00efc\u00f8d\u00e9 \u20ac \U0001f600",
        "f32": F32(0.1),
        "f64_integral": 1.0,
        "big_float": 1e300,
        "i64_min": -(2**63),
        "neg_small": Fmt(-3, 0xD0),
        "u32": Fmt(4000000000, 0xCE),
        "empty_list": [],
        "empty_map": {},
        "nested": Fmt({"z": Fmt([True, None, Fmt("s", 0xA0)], 0x90), "a": {}}, 0xDF),
        "deep": deep,
        "long": "x" * 300,  # str 16
    }
    index = {
        "attachments": [
            {"size": len(license_text), "encoding": {"segment": 0}, "name": "LICENSE"},
            {"name": "empty.txt", "size": 0, "encoding": {"segment": Fmt(1, 0xCC)}},
            {
                "name": "notes/readme.md",
                "size": Fmt(len(readme), 0xD3),
                "encoding": zstd({"segment": 9}),
            },
        ],
        "metadata": metadata,
        "tensors": tensors,
        "segments": segments,
    }
    blob = mp(index)
    data += blob
    data += fmt.pack_trailer(index_offset, len(blob), crc32c(blob))
    with open(path, "wb") as fh:
        fh.write(bytes(data))

    def plain(v: Any) -> Any:
        if isinstance(v, Fmt):
            return plain(v.value)
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list):
            return [plain(x) for x in v]
        if isinstance(v, F32):
            return float(np.float32(v))
        return v

    return _expect(
        {
            "wide_ints": wide,
            "empty": np.zeros((0, 5), np.float32),
            "zstd_raw_block": f32,
            "zstd_rle": rle,
            "planes_bf16": bf16,
            "with_error": small,
        },
        plain(metadata),
        {"LICENSE": license_text, "empty.txt": b"", "notes/readme.md": readme},
        aliases={"alias_of_wide": "wide_ints"},
        errors={"with_error": {"rel_rmse": 0.0, "max_abs": 0, "sqnr_db": float("inf")}},
    )


def _f32(x: Any) -> np.ndarray:
    return np.asarray(x).astype(np.float32)


def quantize_vector(path: str) -> Expect:
    """The ``quantize`` codec with ``bitpack`` code leaves (no zstd): every scheme, scale dtype,
    axis form, a partial last block, 1-, 3-, 4-, 8- and 12-bit codes and a double-quantized scale.
    The codes and scales are made here; the expected values come from spec/codecs/quantize.md's
    formulas computed with numpy float32 (one rounding per operation), not from cmf's decoder."""
    from cmf.codecs import ArraySpec as A
    from cmf.codecs.bitpack import BitPack
    from cmf.codecs.quantize import Quantize
    from cmf.dtypes import BY_NAME
    from cmf.pipeline import PendingLeaf, PendingNode, apply
    from cmf.writer import Writer

    rng = np.random.default_rng(17)
    stored = lambda v, s: PendingLeaf(v, s)  # noqa: E731

    def leaf_raw(array: np.ndarray, name: str) -> Any:
        from cmf.codecs.raw import Raw

        return apply(Raw(), array, A(BY_NAME[name], array.shape), stored)

    def codes(bits: int, shape: tuple[int, ...]) -> tuple[np.ndarray, Any]:
        u = rng.integers(0, 2**bits, shape).astype(np.uint8 if bits <= 8 else np.uint16)
        return u, apply(
            BitPack(bits=bits), u, A(BY_NAME["u8" if bits <= 8 else "u16"], shape), stored
        )

    def cast(v32: np.ndarray, dtype: str) -> np.ndarray:
        return v32.astype(
            {"f32": np.float32, "f64": np.float64, "f16": np.float16, "bf16": ml_dtypes.bfloat16}[
                dtype
            ]
        )

    tensors: dict[str, np.ndarray] = {}
    pendings: dict[str, tuple[A, Any]] = {}

    # symmetric, 8 bits, one f16 scale per row (axis -1, block 0), f32 tensor; negative scales too
    u, q = codes(8, (6, 40))
    s = (rng.standard_normal((6, 1)) * 0.02).astype(np.float16)
    v = _f32(s) * _f32(u.astype(np.int32) - 128)
    spec = A(BY_NAME["f32"], (6, 40))
    pendings["sym8_rows_f32"] = (
        spec,
        PendingNode(
            Quantize(bits=8, block=0, axis=-1, scheme="symmetric", scale_dtype="f16", search=False),
            {"q": q, "scale": leaf_raw(s, "f16")},
            spec,
        ),
    )
    tensors["sym8_rows_f32"] = cast(v, "f32")

    # asymmetric, 4 bits, bf16 scale and min, groups of 16 along rows of 50 (last group: 2), bf16
    # tensor
    u, q = codes(4, (3, 50))
    s = np.abs(rng.standard_normal((3, 4)) * 0.1).astype(ml_dtypes.bfloat16)
    m = (rng.standard_normal((3, 4)) * 0.5).astype(ml_dtypes.bfloat16)
    per = lambda p: np.repeat(_f32(p), 16, axis=1)[:, :50]  # noqa: E731  block j covers 16j..16j+15
    v = (per(s) * _f32(u)).astype(np.float32) + per(m)
    spec = A(BY_NAME["bf16"], (3, 50))
    pendings["asym4_g16_bf16"] = (
        spec,
        PendingNode(
            Quantize(
                bits=4, block=16, axis=-1, scheme="asymmetric", scale_dtype="bf16", search=False
            ),
            {"q": q, "scale": leaf_raw(s, "bf16"), "min": leaf_raw(m, "bf16")},
            spec,
        ),
    )
    tensors["asym4_g16_bf16"] = cast(v, "bf16")

    # zero point, 3 bits, blocks of 4 down the columns (axis 0) of a (10, 7) f16 tensor, f32 scales
    u, q = codes(3, (10, 7))
    z = rng.integers(0, 8, (3, 7)).astype(np.uint8)
    s = (rng.standard_normal((3, 7)) * 3).astype(np.float32)
    down = lambda p: np.repeat(p, 4, axis=0)[:10]  # noqa: E731
    v = _f32(s)[np.arange(10) // 4] * _f32(u.astype(np.int32) - down(z).astype(np.int32))
    spec = A(BY_NAME["f16"], (10, 7))
    zleaf = apply(BitPack(bits=8), z, A(BY_NAME["u8"], z.shape), stored)
    pendings["zp3_cols_f16"] = (
        spec,
        PendingNode(
            Quantize(bits=3, block=4, axis=0, scheme="zero_point", scale_dtype="f32", search=False),
            {"q": q, "scale": leaf_raw(s, "f32"), "zero": zleaf},
            spec,
        ),
    )
    tensors["zp3_cols_f16"] = cast(v, "f16")

    # symmetric, 12 bits (u16 codes), whole tensor flattened (axis nil), f64 tensor
    u, q = codes(12, (2, 3, 5))
    s = np.array([1.5e-3], np.float32)
    v = _f32(s) * _f32(u.astype(np.int32) - 2048)
    spec = A(BY_NAME["f64"], (2, 3, 5))
    pendings["sym12_flat_f64"] = (
        spec,
        PendingNode(
            Quantize(
                bits=12, block=0, axis=None, scheme="symmetric", scale_dtype="f32", search=False
            ),
            {"q": q, "scale": leaf_raw(s, "f32")},
            spec,
        ),
    )
    tensors["sym12_flat_f64"] = cast(v, "f64")

    # 1-bit symmetric in groups of 8; the f16 scales are themselves quantized (8 bits, per tensor)
    u, q = codes(1, (4, 24))
    su, sq = codes(8, (4, 3))
    ss = np.array([2.0**-9], np.float32)
    s16 = (_f32(ss) * _f32(su.astype(np.int32) - 128)).astype(np.float16)  # the inner decode
    v = np.repeat(_f32(s16), 8, axis=1) * _f32(u.astype(np.int32) - 1)
    sspec = A(BY_NAME["f16"], (4, 3))
    inner = PendingNode(
        Quantize(bits=8, block=0, axis=None, scheme="symmetric", scale_dtype="f32", search=False),
        {"q": sq, "scale": leaf_raw(ss, "f32")},
        sspec,
    )
    spec = A(BY_NAME["f32"], (4, 24))
    pendings["sym1_doubleq_f32"] = (
        spec,
        PendingNode(
            Quantize(bits=1, block=8, axis=-1, scheme="symmetric", scale_dtype="f16", search=False),
            {"q": q, "scale": inner},
            spec,
        ),
    )
    tensors["sym1_doubleq_f32"] = cast(v, "f32")

    with Writer(path) as w:
        for name, (spec, pending) in pendings.items():
            w.add_encoded(name, spec, pending)
    return _expect(tensors)


# ----------------------------------------------------------------------------- 1.1 codec vectors
# codebook, sparse, outlier, lowrank (format 1.1): trees assembled from parts made here (no
# zstd anywhere, so the bytes do not depend on libzstd), written with Writer.add_encoded; the
# expected values come from each codec page's decoding rule, computed here with numpy (or
# exact rationals), never by cmf's decoder.

_NP = {"f32": np.float32, "f64": np.float64, "f16": np.float16, "bf16": ml_dtypes.bfloat16}


def _stored(value: Any, spec: Any) -> Any:
    from cmf.pipeline import PendingLeaf

    return PendingLeaf(value, spec)


def _raw(array: np.ndarray, dtype: str) -> Any:
    """A ``raw`` node over one stored segment."""
    from cmf.codecs import ArraySpec
    from cmf.codecs.raw import Raw
    from cmf.dtypes import BY_NAME
    from cmf.pipeline import apply

    return apply(Raw(), np.asarray(array), ArraySpec(BY_NAME[dtype], np.shape(array)), _stored)


def _bitpack(codes: np.ndarray, bits: int) -> Any:
    """A ``bitpack`` node (u8 codes up to 8 bits, else u16) over one stored segment."""
    from cmf.codecs import ArraySpec
    from cmf.codecs.bitpack import BitPack
    from cmf.dtypes import BY_NAME
    from cmf.pipeline import apply

    dtype = "u8" if codes.dtype == np.uint8 else "u16"
    return apply(BitPack(bits=bits), codes, ArraySpec(BY_NAME[dtype], codes.shape), _stored)


def _huffman(codes: np.ndarray) -> Any:
    """A ``huffman`` node (u8 or u16 codes) over one stored segment."""
    from cmf.codecs import ArraySpec
    from cmf.codecs.huffman import Huffman
    from cmf.dtypes import BY_NAME
    from cmf.pipeline import apply

    dtype = "u8" if codes.dtype == np.uint8 else "u16"
    return apply(
        Huffman(chunk=64, max_length=12), codes, ArraySpec(BY_NAME[dtype], codes.shape), _stored
    )


def _node(codec: Any, parts: dict[str, Any], dtype: str, shape: tuple[int, ...]) -> tuple[Any, Any]:
    from cmf.codecs import ArraySpec
    from cmf.dtypes import BY_NAME
    from cmf.pipeline import PendingNode

    spec = ArraySpec(BY_NAME[dtype], tuple(shape))
    return spec, PendingNode(codec, parts, spec)


def _write(path: str, pendings: dict[str, tuple[Any, Any]]) -> None:
    from cmf.writer import Writer

    with Writer(path) as w:
        for name, (spec, pending) in pendings.items():
            w.add_encoded(name, spec, pending)


def _u32f(*words: int) -> np.ndarray:
    return np.array(words, np.uint32).view(np.float32)


def _per_block(p: np.ndarray, shape: tuple[int, ...], block: int, axis: int | None) -> np.ndarray:
    """Block parameters ``p`` (blocks shape K) spread to every element (quantize.md "Blocks"):
    the element at position i of its run takes the parameter of block floor(i / B)."""
    if axis is None:
        n = int(np.prod(shape))
        b = block or max(n, 1)
        return np.asarray(p).reshape(-1)[np.arange(n) // b].reshape(shape)
    a = axis % len(shape)
    b = block or max(shape[a], 1)
    return np.take(p, np.arange(shape[a]) // b, axis=a)


def _delta_codes(positions: list[int], bits: int) -> np.ndarray:
    """sparse.md's canonical delta coding, from the text: floor(g / M) fillers, then g mod M."""
    m = (1 << bits) - 1
    codes: list[int] = []
    prev = -1
    for p in positions:
        g = p - prev - 1
        codes += [m] * (g // m) + [g % m]
        prev = p
    return np.array(codes, np.uint8 if bits <= 8 else np.uint16)


def _scatter(n: int, positions: list[int], values: np.ndarray) -> np.ndarray:
    """sparse.md / outlier.md: all-zero bytes, element p_k holding the bytes of values[k]."""
    item = values.dtype.itemsize
    out = np.zeros((n, item), np.uint8)
    out[positions] = np.ascontiguousarray(values).reshape(-1).view(np.uint8).reshape(-1, item)
    return out.reshape(-1).view(values.dtype)


def codebook_vector(path: str) -> Expect:
    """``codebook``: a learned table without scales (u8 indices, f32; unsorted, a duplicate,
    -0.0, a subnormal), NF4 (from the page's hex) with f16 absmax-style scales in blocks of 64
    along rows of 160 (partial last block, a zero, a negative and a subnormal scale; bf16), k =
    300 with u16 indices and bf16 scales down the columns (f16 tensor, overflow to ±inf and
    subnormals), an empty tensor, and one shared f32 codebook referenced by an f32, a rank-0 f64
    and a bf16 tensor (minor 1). Expected values: codebook.md's decoding, in numpy float32."""
    from cmf.codecs.codebook import Codebook
    from cmf.pipeline import SharedValue, shared_ref

    rng = np.random.default_rng(29)
    tensors: dict[str, np.ndarray] = {}
    pendings: dict[str, tuple[Any, Any]] = {}

    def decode(
        table: np.ndarray,
        idx: np.ndarray,
        dtype: str,
        scale: np.ndarray | None = None,
        block: int = 0,
        axis: int | None = None,
    ) -> np.ndarray:
        v = table.astype(np.float32)[idx.astype(np.int64)]  # 1. v = c_u (exact)
        if scale is not None:  # 2. v = round_f32(v * s), one binary32 operation
            v = v * _per_block(scale.astype(np.float32), idx.shape, block, axis)
        with np.errstate(over="ignore"):
            return v.astype(_NP[dtype])  # 3. to the tensor dtype, nearest-even, overflow to inf

    # learned, no scale: k = 13, u8 indices bit-packed at 4 bits, f32
    table = np.array(
        [0.75, -1.5, 0.0, -0.0, 2.0**-140, 3.25, -0.03125, 0.75, 1e30, -7.0, 0.1, -2.5e-3, 12.0],
        np.float32,
    )
    idx = rng.integers(0, 13, (5, 9)).astype(np.uint8)
    idx.reshape(-1)[:13] = np.arange(13)
    codec = Codebook(k=13, block=0, axis=None, scale_dtype=None)
    pendings["plain_k13_f32"] = _node(
        codec, {"indices": _bitpack(idx, 4), "codebook": _raw(table, "f32")}, "f32", idx.shape
    )
    tensors["plain_k13_f32"] = decode(table, idx, "f32")

    # NF4 from the page's binary32 patterns, f16 scales, blocks of 64 along rows of 160, bf16
    nf4 = _u32f(
        0xBF800000,
        0xBF3239B1,
        0xBF066B30,
        0xBECA32A0,
        0xBE91A24D,
        0xBE3D353F,
        0xBDBA7871,
        0x00000000,
        0x3DA2FAFF,
        0x3E24CAE3,
        0x3E7C04DD,
        0x3EAD033A,
        0x3EE1A4B8,
        0x3F1007AB,
        0x3F3913B3,
        0x3F800000,
    )
    idx = rng.integers(0, 16, (3, 160)).astype(np.uint8)
    scale = np.abs(rng.standard_normal((3, 3)) * 0.05).astype(np.float16)
    scale[0, 1] = 0.0  # an all-zero block: ±0 by the sign of each entry
    scale[1, 2] = -0.75  # a negative scale (finite: allowed)
    scale[2, 0] = np.float16(2.0**-20)  # a subnormal f16 scale
    codec = Codebook(k=16, block=64, axis=-1, scale_dtype="f16")
    pendings["nf4_g64_bf16"] = _node(
        codec,
        {"indices": _bitpack(idx, 4), "codebook": _raw(nf4, "f32"), "scale": _raw(scale, "f16")},
        "bf16",
        idx.shape,
    )
    tensors["nf4_g64_bf16"] = decode(nf4, idx, "bf16", scale, 64, -1)

    # k = 300: u16 indices (9-bit bitpack), bf16 scales in blocks of 4 down the columns, f16
    table = (rng.standard_normal(300) * 3).astype(np.float32)
    table[298], table[299] = -1.0e5, 1.0e5  # beyond f16 once scaled: ±inf
    table[297], table[296] = 3.0e-6, -1.0e-8  # an f16 subnormal, and an underflow to -0
    idx = rng.integers(0, 300, (10, 6)).astype(np.uint16)
    idx[0, :6] = [299, 298, 297, 296, 256, 255]
    scale = rng.uniform(0.75, 2.0, (3, 6)).astype(ml_dtypes.bfloat16)
    codec = Codebook(k=300, block=4, axis=0, scale_dtype="bf16")
    pendings["k300_u16_cols_f16"] = _node(
        codec,
        {"indices": _bitpack(idx, 9), "codebook": _raw(table, "f32"), "scale": _raw(scale, "bf16")},
        "f16",
        idx.shape,
    )
    tensors["k300_u16_cols_f16"] = decode(table, idx, "f16", scale, 4, 0)

    # an empty tensor: (0, 3), scales of shape (0, 2)
    table = np.array([-0.5, 0.5], np.float32)
    idx = np.zeros((0, 3), np.uint8)
    scale = np.zeros((0, 2), np.float32)
    codec = Codebook(k=2, block=2, axis=-1, scale_dtype="f32")
    pendings["empty_f16"] = _node(
        codec,
        {"indices": _bitpack(idx, 1), "codebook": _raw(table, "f32"), "scale": _raw(scale, "f32")},
        "f16",
        idx.shape,
    )
    tensors["empty_f16"] = decode(table, idx, "f16", scale, 2, -1)

    # one shared codebook (shared value 0, f32[16]) for three tensors of different dtypes
    table = np.sort(rng.standard_normal(16)).astype(np.float32)
    sv = SharedValue(table, _raw(table, "f32"))
    idx = rng.integers(0, 16, (6, 5)).astype(np.uint8)
    codec = Codebook(k=16, block=0, axis=None, scale_dtype=None)
    pendings["shared_f32"] = _node(
        codec, {"indices": _huffman(idx), "codebook": shared_ref(sv)}, "f32", idx.shape
    )
    tensors["shared_f32"] = decode(table, idx, "f32")

    idx = np.array(11, np.uint8)  # rank 0: one element, one scale (axis nil: K = (1,))
    scale = np.array([-3.0e-3], np.float32)
    codec = Codebook(k=16, block=0, axis=None, scale_dtype="f32")
    pendings["shared_scalar_f64"] = _node(
        codec,
        {"indices": _raw(idx, "u8"), "codebook": shared_ref(sv), "scale": _raw(scale, "f32")},
        "f64",
        (),
    )
    tensors["shared_scalar_f64"] = decode(table, idx, "f64", scale, 0, None)

    idx = rng.integers(0, 16, (4, 6)).astype(np.uint8)
    scale = rng.uniform(0.01, 4.0, (4, 2)).astype(np.float16)  # blocks of 4 along rows of 6
    codec = Codebook(k=16, block=4, axis=-1, scale_dtype="f16")
    pendings["shared_g4_bf16"] = _node(
        codec,
        {"indices": _bitpack(idx, 4), "codebook": shared_ref(sv), "scale": _raw(scale, "f16")},
        "bf16",
        idx.shape,
    )
    tensors["shared_g4_bf16"] = decode(table, idx, "bf16", scale, 4, -1)

    _write(path, pendings)
    return _expect(tensors, minor=1)


def sparse_vector(path: str) -> Expect:
    """``sparse``: bitmask (padding bits, rank 0, f8, bool) and delta layouts (3-bit codes with
    fillers from gaps of exactly M and above, 9-bit u16 codes, a quantized values sub-tree, a
    huffman index), -0.0, NaN payloads, infinities and subnormals kept as values, explicit zeros
    in values (stored, and made by a lossy sub-tree), an empty tensor and nnz = 0. Masks and
    delta codes are made here from the positions by the page's rules; the expected tensors
    scatter the values' bytes into zeros."""
    from cmf.codecs import ArraySpec
    from cmf.codecs.base import BytesSpec
    from cmf.codecs.quantize import Quantize
    from cmf.codecs.sparse import Sparse
    from cmf.dtypes import BY_NAME

    tensors: dict[str, np.ndarray] = {}
    pendings: dict[str, tuple[Any, Any]] = {}

    def add(
        name: str,
        dtype: str,
        shape: tuple[int, ...],
        positions: list[int],
        values: np.ndarray,
        layout: str,
        bits: int = 0,
        values_node: Any = None,
        index: Callable | None = None,
    ) -> None:
        n = int(np.prod(shape))
        vnode = values_node if values_node is not None else _raw(values, dtype)
        if layout == "bitmask":
            flags = np.zeros(n, bool)
            flags[positions] = True
            mask = np.packbits(flags, bitorder="little").tobytes()  # LSB first, zero padding
            codec = Sparse(layout="bitmask", nnz=len(positions))
            parts = {"values": vnode, "mask": _stored(mask, BytesSpec(len(mask)))}
        else:
            codes = _delta_codes(positions, bits)
            codec = Sparse(layout="delta", nnz=len(positions), bits=bits, entries=len(codes))
            parts = {"values": vnode, "index": (index or (lambda c: _bitpack(c, bits)))(codes)}
        pendings[name] = _node(codec, parts, dtype, shape)
        tensors[name] = _scatter(n, positions, values).reshape(shape)

    f32 = _u32f(
        0x3FC00000,
        0x80000000,
        0x7FC00123,
        0xFF800001,
        0x7F800000,
        0xFF800000,
        0x00000001,
        0xC0500000,
        0x3A83126F,
    )  # 1.5 -0 qNaN sNaN inf -inf 2^-149 -3.25 1e-3
    add("bitmask_f32", "f32", (5, 7), [0, 3, 8, 9, 10, 17, 22, 30, 34], f32, "bitmask")

    f16 = np.array([0x3C00, 0x8000, 0x7E01, 0x0001, 0xFC00, 0xC500], np.uint16).view(np.float16)
    # gaps 0, 0, 7 (= M: one filler, then 0), 15 (two fillers, 1), 1, 19 (two fillers, 5)
    add("delta3_f16", "f16", (4, 12), [0, 1, 9, 25, 27, 47], f16, "delta", bits=3)

    i32 = np.array([-1, 2**31 - 1, 0, -(2**31)], np.int32)  # 0: an explicit zero in values
    add("delta9_u16_i32", "i32", (1200,), [5, 6, 600, 1199], i32, "delta", bits=9)

    add("bitmask_bool", "bool", (20,), [2, 3, 11, 19], np.ones(4, bool), "bitmask")

    e5m2 = np.array([0x7E, 0x80, 0x01], np.uint8).view(ml_dtypes.float8_e5m2)  # NaN, -0, subnormal
    add("bitmask_f8_e5m2", "f8_e5m2", (2, 4), [1, 2, 7], e5m2, "bitmask")

    add("scalar_f64", "f64", (), [0], np.array([-0.0]), "bitmask")
    add("empty_f32", "f32", (0, 4), [], np.zeros(0, np.float32), "bitmask")
    add(
        "nnz0_u8",
        "u8",
        (3, 5),
        [],
        np.zeros(0, np.uint8),
        "delta",
        bits=8,
        index=lambda c: _raw(c, "u8"),
    )

    # values quantized (symmetric 6 bits, one f32 scale) and the index huffman-coded: code 32
    # decodes to +0 (a zero in values that a reader must not reject)
    rng = np.random.default_rng(31)
    positions = [1, 2, 5, 9, 10, 14, 33, 35, 41, 50, 58, 59]  # 14 -> 33: a filler
    u = rng.integers(0, 64, len(positions)).astype(np.uint8)
    u[1] = 32
    s = np.array([0.0371], np.float32)
    vspec = ArraySpec(BY_NAME["bf16"], (len(positions),))
    from cmf.pipeline import PendingNode

    vnode = PendingNode(
        Quantize(bits=6, block=0, axis=None, scheme="symmetric", scale_dtype="f32", search=False),
        {"q": _bitpack(u, 6), "scale": _raw(s, "f32")},
        vspec,
    )
    vals = (s[0] * (u.astype(np.float32) - np.float32(32))).astype(ml_dtypes.bfloat16)
    add(
        "delta4_quantized_bf16",
        "bf16",
        (6, 10),
        positions,
        vals,
        "delta",
        bits=4,
        values_node=vnode,
        index=_huffman,
    )

    _write(path, pendings)
    return _expect(tensors, minor=1)


def outlier_vector(path: str) -> Expect:
    """``outlier``: dense parts quantized (symmetric 4-bit in groups of 8 with f16 scales, f32;
    asymmetric 3-bit with bf16 scale and min, f16), exact outliers (NaN payloads, -0.0,
    infinities, the f16 maximum) replacing whatever the dense part decodes to at their
    positions, delta indices with filler codes (4-bit bit-packed, 2-bit raw), count = 0, and an
    f8_e4m3 tensor with a raw dense part. Expected: quantize.md's formulas in numpy float32 for
    the dense part, then the outliers' bytes at their positions (outlier.md)."""
    from cmf.codecs import ArraySpec
    from cmf.codecs.outlier import Outlier
    from cmf.codecs.quantize import Quantize
    from cmf.dtypes import BY_NAME
    from cmf.pipeline import PendingNode

    rng = np.random.default_rng(37)
    tensors: dict[str, np.ndarray] = {}
    pendings: dict[str, tuple[Any, Any]] = {}

    def add(
        name: str,
        dtype: str,
        shape: tuple[int, ...],
        dense_node: Any,
        dense: np.ndarray,
        positions: list[int],
        values: np.ndarray,
        bits: int,
        index: Callable,
    ) -> None:
        codes = _delta_codes(positions, bits)
        codec = Outlier(count=len(positions), bits=bits, entries=len(codes))
        parts = {"dense": dense_node, "index": index(codes), "values": _raw(values, dtype)}
        pendings[name] = _node(codec, parts, dtype, shape)
        out = np.ascontiguousarray(dense).reshape(-1).copy()
        item = out.dtype.itemsize
        if positions:
            out.view(np.uint8).reshape(-1, item)[positions] = values.view(np.uint8).reshape(
                -1, item
            )
        tensors[name] = out.reshape(shape)

    # f32, dense: symmetric 4 bits, groups of 8 along rows of 16, f16 scales
    shape = (6, 16)
    u = rng.integers(0, 16, shape).astype(np.uint8)
    u.reshape(-1)[[3, 20, 21, 50, 95]] = [15, 0, 9, 3, 8]  # dense values the outliers replace
    s = (rng.standard_normal((6, 2)) * 0.1).astype(np.float16)
    spec = ArraySpec(BY_NAME["f32"], shape)
    dense_node = PendingNode(
        Quantize(bits=4, block=8, axis=-1, scheme="symmetric", scale_dtype="f16", search=False),
        {"q": _bitpack(u, 4), "scale": _raw(s, "f16")},
        spec,
    )
    dense = _per_block(s.astype(np.float32), shape, 8, -1) * (u.astype(np.float32) - np.float32(8))
    values = _u32f(
        0xC2200000, 0x49742400, 0x7FA00001, 0x80000000, 0x40600000
    )  # -40 1e6 sNaN -0 3.5
    # gaps 3, 16 (a filler, then 1), 0, 28 (a filler, 13), 44 (two fillers, 14)
    add(
        "sym4_g8_f32",
        "f32",
        shape,
        dense_node,
        dense,
        [3, 20, 21, 50, 95],
        values,
        4,
        lambda c: _bitpack(c, 4),
    )

    # f16, dense: asymmetric 3 bits, blocks of 16 (last: 8), bf16 scale and min
    shape = (40,)
    u = rng.integers(0, 8, shape).astype(np.uint8)
    s = np.abs(rng.standard_normal(3) * 0.3).astype(ml_dtypes.bfloat16)
    m = (rng.standard_normal(3) * 0.5).astype(ml_dtypes.bfloat16)
    spec = ArraySpec(BY_NAME["f16"], shape)
    dense_node = PendingNode(
        Quantize(bits=3, block=16, axis=-1, scheme="asymmetric", scale_dtype="bf16", search=False),
        {"q": _bitpack(u, 3), "scale": _raw(s, "bf16"), "min": _raw(m, "bf16")},
        spec,
    )
    p = _per_block(s.astype(np.float32), shape, 16, -1) * u.astype(np.float32)  # round(s * u)
    dense = (p + _per_block(m.astype(np.float32), shape, 16, -1)).astype(np.float16)  # round(p + m)
    values = np.array([0x7BFF, 0xFC00, 0x7E01], np.uint16).view(np.float16)  # 65504 -inf NaN
    # gaps 0, 6 (two fillers, 0), 31 (ten fillers, 1)
    add(
        "asym3_g16_f16",
        "f16",
        shape,
        dense_node,
        dense,
        [0, 7, 39],
        values,
        2,
        lambda c: _raw(c, "u8"),
    )

    # no outliers (count = entries = 0), dense stored raw, bf16
    dense = (rng.standard_normal((2, 3))).astype(ml_dtypes.bfloat16)
    add(
        "none_bf16",
        "bf16",
        (2, 3),
        _raw(dense, "bf16"),
        dense,
        [],
        np.zeros(0, ml_dtypes.bfloat16),
        8,
        lambda c: _raw(c, "u8"),
    )

    # f8_e4m3, dense stored raw (any bits), outliers NaN (S.1111.111) and -0
    dense = rng.integers(0, 256, 12).astype(np.uint8).view(ml_dtypes.float8_e4m3fn)
    values = np.array([0x7F, 0x80], np.uint8).view(ml_dtypes.float8_e4m3fn)
    add(
        "raw_f8_e4m3",
        "f8_e4m3",
        (12,),
        _raw(dense, "f8_e4m3"),
        dense,
        [4, 11],
        values,
        8,
        lambda c: _bitpack(c, 8),
    )

    _write(path, pendings)
    return _expect(tensors, minor=1)


def _round_exact(q: Any, dtype: str) -> float:
    """The rational ``q`` rounded to ``dtype`` (nearest, ties to even, subnormals, IEEE overflow
    to ±inf), as a Python float (exact: every result fits binary64). +0 for 0."""
    from fractions import Fraction

    p, emin, emax = {
        "f32": (24, -126, 127),
        "f16": (11, -14, 15),
        "bf16": (8, -126, 127),
        "f64": (53, -1022, 1023),
    }[dtype]
    if q == 0:
        return 0.0
    sign, a = (-1 if q < 0 else 1), abs(Fraction(q))
    e = a.numerator.bit_length() - a.denominator.bit_length()  # floor(log2 a) or one more
    if Fraction(2) ** e > a:
        e -= 1
    quantum = Fraction(2) ** (max(e, emin) - p + 1)
    n, r = divmod(a, quantum)
    n = int(n)
    if r * 2 > quantum or (r * 2 == quantum and n % 2):
        n += 1
    value = n * quantum
    if value >= Fraction(2) ** (emax + 1):
        return sign * float("inf")
    return sign * float(value)


def _exact_lowrank(u: np.ndarray, v: np.ndarray, dtype: str) -> np.ndarray:
    """lowrank.md: E_ij = sum_k u[i,k] v[k,j] exactly (rationals), rounded once to ``dtype``."""
    from fractions import Fraction

    uf = [[Fraction(float(x)) for x in row] for row in u.astype(np.float64)]
    vf = [[Fraction(float(x)) for x in row] for row in v.astype(np.float64)]
    r = u.shape[1]
    out = [
        [_round_exact(sum(uf[i][k] * vf[k][j] for k in range(r)), dtype) for j in range(v.shape[1])]
        for i in range(u.shape[0])
    ]
    with np.errstate(over="ignore"):
        return np.array(out, np.float64).astype(_NP[dtype])  # exact: each value is in dtype


def lowrank_vector(path: str) -> Expect:
    """``lowrank``: f32 factors for an f32 tensor (with a cancellation a binary32 sum loses),
    f64 factors for an f64 rank-3 tensor viewed with split 1, f64 factors for a bf16 tensor with
    an element whose rounding through binary32 differs from the direct one (a double-rounding
    tie), and quantized bf16 factors for an f16 tensor with elements beyond f16 (±inf).
    Expected: the exact sum of products, rounded once to the tensor dtype; lowrank decodes up
    to the page's tolerance, so these tensors are compared with same_decoding, not bytes."""
    from cmf.codecs import ArraySpec
    from cmf.codecs.lowrank import LowRank
    from cmf.codecs.quantize import Quantize
    from cmf.dtypes import BY_NAME
    from cmf.pipeline import PendingNode

    rng = np.random.default_rng(41)
    tensors: dict[str, np.ndarray] = {}
    pendings: dict[str, tuple[Any, Any]] = {}

    def add(
        name: str,
        dtype: str,
        shape: tuple[int, ...],
        split: int,
        fdt: str,
        u: np.ndarray,
        v: np.ndarray,
        u_node: Any = None,
    ) -> None:
        codec = LowRank(rank=u.shape[1], split=split, factor_dtype=fdt)
        parts = {"u": u_node if u_node is not None else _raw(u, fdt), "v": _raw(v, fdt)}
        pendings[name] = _node(codec, parts, dtype, shape)
        tensors[name] = _exact_lowrank(u, v, dtype).reshape(shape)

    # f32 tensor (8, 6), rank 3, f32 factors; element (0, 0) = 2^20 + 3e-3 - 2^20
    u = rng.standard_normal((8, 3)).astype(np.float32)
    v = rng.standard_normal((3, 6)).astype(np.float32)
    u[0] = [2.0**20, 1.0, 2.0**20]
    v[:, 0] = [1.0, np.float32(3e-3), -1.0]
    add("f32_by_f32", "f32", (8, 6), -1, "f32", u, v)

    # f64 tensor (3, 4, 5) viewed with split 1 as 3 x 20, rank 2, f64 factors
    u = rng.standard_normal((3, 2))
    v = rng.standard_normal((2, 20)) * 1e-3
    add("f64_split1", "f64", (3, 4, 5), 1, "f64", u, v)

    # bf16 tensor (4, 8), rank 3, f64 factors; element (0, 0) = 1 + 2^-8 + 2^-30: rounded once
    # to bf16 it is 1 + 2^-7, through binary32 it is the tie 1 + 2^-8, rounded to even: 1
    u = rng.standard_normal((4, 3))
    v = rng.standard_normal((3, 8))
    u[0] = [1.0, 1.0, 1.0]
    v[:, 0] = [1.0, 2.0**-8, 2.0**-30]
    add("bf16_by_f64", "bf16", (4, 8), -1, "f64", u, v)

    # f16 tensor (6, 10), rank 2, bf16 factors; u quantized (8 bits, one f32 scale per column);
    # row 0 of u times column 0 and 1 of v is beyond f16: +inf and -inf
    codes = rng.integers(100, 157, (6, 2)).astype(np.uint8)
    codes[0] = [255, 255]
    s = np.array([[0.37, 0.29]], np.float32)
    uspec = ArraySpec(BY_NAME["bf16"], (6, 2))
    u_node = PendingNode(
        Quantize(bits=8, block=0, axis=0, scheme="symmetric", scale_dtype="f32", search=False),
        {"q": _bitpack(codes, 8), "scale": _raw(s, "f32")},
        uspec,
    )
    u = (np.repeat(s, 6, axis=0) * (codes.astype(np.float32) - np.float32(128))).astype(
        ml_dtypes.bfloat16
    )
    v = (rng.standard_normal((2, 10)) * 4).astype(ml_dtypes.bfloat16)
    v[:, 0] = [3000.0, 3000.0]
    v[:, 1] = [-3000.0, -1500.0]
    add("f16_by_quantized_bf16", "f16", (6, 10), -1, "bf16", u, v, u_node)

    _write(path, pendings)
    return _expect(tensors, minor=1)


# ----------------------------------------------------------------------------- 1.2 codec vectors


def _rows_by_class(
    classes: list[int], parts: list[np.ndarray], rest: tuple[int, ...]
) -> np.ndarray:
    """partition.md "Decoding", step 3, row by row: row i is row j of part p{c}, c = class[i],
    j = the number of earlier rows of class c; bytes copied as they are."""
    dtype = parts[0].dtype
    item = dtype.itemsize * int(np.prod(rest, dtype=np.int64))
    out = bytearray()
    seen = [0] * len(parts)
    for c in classes:
        raw = np.ascontiguousarray(parts[c]).tobytes()
        out += raw[seen[c] * item : (seen[c] + 1) * item]
        seen[c] += 1
    return np.frombuffer(bytes(out), dtype).reshape((len(classes), *rest)).copy()


def partition_vector(path: str) -> Expect:
    """``partition`` (minor 2): an f32 ``(6, 4)`` tensor in 3 classes (class 0 stored raw with a
    signalling-NaN payload, ``-0.0`` and a subnormal; class 1 a ``quantize`` node, symmetric
    4-bit with one f32 scale and ``bitpack`` codes; class 2 ``raw``; no zstd, so the writer
    test runs with any libzstd), a bf16 ``(4, 3, 2)``
    tensor in 2 classes (NaN payloads, ±inf), an i16 ``(3, 0)`` tensor of empty rows whose
    middle class is empty, an f8_e5m2 tensor whose rows alternate between 2 classes, and an
    empty ``(0, 3)`` f32 tensor with K = 1. Expected: quantize.md's formula in numpy float32
    for the quantized class, then the rows put back one by one by partition.md's rule."""
    from cmf.codecs import ArraySpec
    from cmf.codecs.partition import Partition
    from cmf.codecs.quantize import Quantize
    from cmf.dtypes import BY_NAME
    from cmf.pipeline import PendingNode

    rng = np.random.default_rng(43)
    tensors: dict[str, np.ndarray] = {}
    pendings: dict[str, tuple[Any, Any]] = {}

    def add(
        name: str,
        dtype: str,
        classes: list[int],
        rest: tuple[int, ...],
        parts: list[tuple[np.ndarray, Any]],
    ) -> None:
        codec = Partition(counts=tuple(int(v.shape[0]) for v, _ in parts))
        nodes = {"class": _raw(np.array(classes, np.uint8), "u8")}
        nodes.update({f"p{k}": node for k, (_, node) in enumerate(parts)})
        pendings[name] = _node(codec, nodes, dtype, (len(classes), *rest))
        tensors[name] = _rows_by_class(classes, [v for v, _ in parts], rest)

    # f32 (6, 4): classes [2, 0, 1, 2, 0, 1]
    p0 = _u32f(
        0x7FA00001,
        0x80000000,
        0x00000001,
        0x3F800000,  # sNaN payload, -0, min subnormal, 1
        0xC2C80000,
        0x7F800000,
        0x7FC12345,
        0x00000000,
    )  # -100, inf, qNaN payload, +0
    p0 = p0.reshape(2, 4)
    u = rng.integers(0, 16, (2, 4)).astype(np.uint8)
    u[0, 0], u[1, 3] = 0, 15  # the extreme codes: -8 and +7 steps
    scale = np.array([0.0625], np.float32)
    p1 = scale[0] * (u.astype(np.float32) - np.float32(8))  # symmetric: s * (u - 2^(bits-1))
    spec1 = ArraySpec(BY_NAME["f32"], (2, 4))
    q = Quantize(bits=4, block=0, axis=None, scheme="symmetric", scale_dtype="f32", search=False)
    node1 = PendingNode(q, {"q": _bitpack(u, 4), "scale": _raw(scale, "f32")}, spec1)
    p2 = np.array([[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, -0.75]], np.float32)
    add(
        "f32_3_classes",
        "f32",
        [2, 0, 1, 2, 0, 1],
        (4,),
        [(p0, _raw(p0, "f32")), (p1, node1), (p2, _raw(p2, "f32"))],
    )

    # bf16 (4, 3, 2): classes [1, 1, 0, 1]; NaN payloads (quiet, signalling, negative), ±inf
    words = np.array([0x7FC1, 0x7F81, 0xFFAA, 0x7F80, 0xFF80, 0x8000], np.uint16)
    b0 = words.view(ml_dtypes.bfloat16).reshape(1, 3, 2)
    b1 = rng.standard_normal((3, 3, 2)).astype(ml_dtypes.bfloat16)
    add(
        "bf16_rank3_2_classes",
        "bf16",
        [1, 1, 0, 1],
        (3, 2),
        [(b0, _raw(b0, "bf16")), (b1, _raw(b1, "bf16"))],
    )

    # i16 (3, 0): rows of no elements still have a class each; class 1 is empty
    e0, e1, e2 = (np.zeros((n, 0), np.int16) for n in (2, 0, 1))
    add(
        "i16_empty_rows",
        "i16",
        [2, 0, 0],
        (0,),
        [(e0, _raw(e0, "i16")), (e1, _raw(e1, "i16")), (e2, _raw(e2, "i16"))],
    )

    # f8_e5m2 (5, 2): classes alternate; NaNs (0x7D, 0xFE), ±inf, -0, a subnormal
    f0 = np.array([[0x7D, 0xFC], [0x01, 0x3C], [0x80, 0x7C]], np.uint8).view(ml_dtypes.float8_e5m2)
    f1 = np.array([[0xFE, 0x00], [0x42, 0xC0]], np.uint8).view(ml_dtypes.float8_e5m2)
    add(
        "f8_e5m2_alternating",
        "f8_e5m2",
        [0, 1, 0, 1, 0],
        (2,),
        [(f0, _raw(f0, "f8_e5m2")), (f1, _raw(f1, "f8_e5m2"))],
    )

    # f32 (0, 3), K = 1: every part empty
    z = np.zeros((0, 3), np.float32)
    add("empty_k1", "f32", [], (3,), [(z, _raw(z, "f32"))])

    _write(path, pendings)
    return _expect(tensors, minor=2)


def ggml_vector(path: str) -> Expect:
    """``ggml`` (minor 3): one tensor of every GGML type the codec holds (two blocks, or one
    super-block of 256 elements; block
    bytes drawn at random with chosen f16 scales: small normal, negative, ``-0.0``, a
    subnormal, ``+inf`` where no code gives ``inf * 0``, and the largest f16), each field a
    ``raw`` (f16 scales), ``bitpack`` (codes at their bits) or ``huffman`` (the ``q`` field of
    Q4_K and IQ4_XS) leaf; the IQ types' grid indices include the largest and 0. Expected:
    gguf-py's ``gguf.quants.dequantize`` of the block bytes (an independent implementation)."""
    import gguf

    from cmf.codecs.ggml_codec import Blocks, Ggml
    from cmf.codecs.ggml_types import LAYOUTS

    rng = np.random.default_rng(47)
    scales = np.array([0.0123, -0.5, -0.0, 2.0**-20, 65504.0, 3.0e-3], np.float16)
    tensors: dict[str, np.ndarray] = {}
    pendings: dict[str, tuple[Any, Any]] = {}
    for t, (name, lay) in enumerate(LAYOUTS.items()):
        codec = Ggml(type=name)
        from cmf.codecs import ArraySpec
        from cmf.dtypes import BY_NAME

        n = 2 if lay.block < 256 else 1  # (super-blocks: one, to keep the file small)
        spec = ArraySpec(BY_NAME["f32"], (n, lay.block))
        parts = codec.encode(Blocks(rng.integers(0, 256, (n, lay.nbytes), dtype=np.uint8)), spec)
        for f in lay.fields:
            if f.kind == "f16":
                parts[f.name] = scales[[t % 6, (t + 1) % 6][:n]].reshape(n, 1).copy()
            elif f.name == "grid":
                parts[f.name][0, 0], parts[f.name][0, -1] = (1 << f.bits) - 1, 0
        if name == "Q4_0":  # +inf scale; codes never 8, so no inf * 0
            parts["d"][1, 0] = np.inf
            parts["q"][1] = np.where(parts["q"][1] == 8, 9, parts["q"][1])
        blocks = codec.blocks_of(parts, spec)
        with np.errstate(all="ignore"):
            want = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType[name])
        tensors[f"{name}"] = np.asarray(want, np.float32).reshape(spec.shape)
        nodes = {}
        for f in lay.fields:
            v = parts[f.name]
            if f.kind == "f16":
                nodes[f.name] = _raw(v, "f16")
            elif f.name == "q" and name in ("Q4_K", "IQ4_XS"):
                nodes[f.name] = _huffman(v)
            else:
                nodes[f.name] = _bitpack(v, f.bits)
        pendings[name] = _node(codec, nodes, "f32", spec.shape)
    _write(path, pendings)
    return _expect(tensors, minor=3)


# ----------------------------------------------------------------------------- the list

VECTORS: dict[str, Callable[[str], Expect]] = {
    "dtypes.cmf": dtypes_vector,
    "lossless_paths.cmf": lossless_paths_vector,
    "nan_payloads.cmf": nan_payloads_vector,
    "huffman.cmf": huffman_vector,
    "future_minor.cmf": future_minor_vector,
    "empty.cmf": empty_vector,
    "specials.cmf": specials_vector,
    "foreign_writer.cmf": foreign_writer_vector,
    "quantize.cmf": quantize_vector,
    "codebook.cmf": codebook_vector,
    "sparse.cmf": sparse_vector,
    "outlier.cmf": outlier_vector,
    "lowrank.cmf": lowrank_vector,
    "partition.cmf": partition_vector,
    "ggml.cmf": ggml_vector,
}
CRAFTED = {"foreign_writer.cmf"}


# ----------------------------------------------------------------------------- manifest


def _le(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array).tobytes()  # all inputs here are little-endian


def _json_float(x: Any) -> Any:
    """Non-finite floats as strings (JSON has none); everything else as is."""
    if isinstance(x, float) and not np.isfinite(x):
        return "nan" if np.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


def manifest_entry(name: str, path: str, expect: Expect, zstd_version: list[int]) -> dict[str, Any]:
    """The manifest entry of ``path``, from the builder's inputs; checked against cmf's decoding."""
    blob = open(path, "rb").read()
    entry: dict[str, Any] = {
        "writer": "crafted" if name in CRAFTED else "cmf.save_file",
        "zstd_version": zstd_version,
        "uses_zstd": False,
        "minor": expect["minor"],
        "bytes": len(blob),
        "sha256_file": hashlib.sha256(blob).hexdigest(),
        "tensors": {},
        "attachments": {},
        "metadata": expect["metadata"],
    }
    with cmf.open(path) as f:
        assert f.minor == expect["minor"], name
        assert f.metadata() == expect["metadata"], name
        names = list(expect["tensors"]) + list(expect["aliases"])
        assert sorted(f.keys()) == sorted(names), (name, f.keys())
        for entry_t in f.index.tensors:
            t: dict[str, Any] = {
                "dtype": entry_t.spec.dtype.name,
                "shape": list(entry_t.spec.shape),
            }
            if entry_t.alias is not None:
                assert expect["aliases"][entry_t.name] == entry_t.alias
                target = expect["tensors"][entry_t.alias]
                t["alias"] = entry_t.alias
                want = _le(target)
            else:
                array = expect["tensors"][entry_t.name]
                assert (
                    cmf.dtypes.of_array(array).name == t["dtype"]
                    and list(array.shape) == t["shape"]
                )
                want = _le(array)
                tree = node_obj(entry_t.encoding)
                t["encoding"] = describe(entry_t.encoding)
                t["tree"] = tree
                if '"zstd"' in json.dumps(tree):
                    entry["uses_zstd"] = True
            got = f.get_tensor(entry_t.name)
            tolerance = entry_t.alias is None and '"lowrank"' in json.dumps(t["tree"])
            if tolerance:  # lowrank decodes up to its page's tolerance, not bit for bit
                assert t["tree"]["codec"] == "lowrank", (
                    name,
                    entry_t.name,
                    "lowrank below the root",
                )
                u, v = (f.decode_node(entry_t.encoding.parts[p]) for p in ("u", "v"))
                want_array = np.frombuffer(want, array.dtype).reshape(array.shape)
                assert same_decoding(got, want_array, u, v, t["dtype"]), (name, entry_t.name)
                t["compare"] = LOWRANK_COMPARE
            else:
                assert got.tobytes() == want, (name, entry_t.name)
            t["sha256"] = hashlib.sha256(want).hexdigest()
            if len(want) <= TINY or tolerance:  # a tolerance compare needs the values themselves
                t["hex"] = want.hex()
            if entry_t.name in expect["errors"]:
                assert entry_t.error == expect["errors"][entry_t.name]
                t["error"] = {k: _json_float(v) for k, v in entry_t.error.items()}
            entry["tensors"][entry_t.name] = t
        assert sorted(f.attachments()) == sorted(expect["attachments"]), name
        for att in f.index.attachments:
            want = expect["attachments"][att.name]
            assert f.get_attachment(att.name) == want
            a: dict[str, Any] = {"size": len(want), "sha256": hashlib.sha256(want).hexdigest()}
            a["tree"] = node_obj(att.encoding)
            if '"zstd"' in json.dumps(a["tree"]):
                entry["uses_zstd"] = True
            if len(want) <= TINY:
                a["hex"] = want.hex()
            entry["attachments"][att.name] = a
    report = cmf.validate(path)
    assert report.valid and (report.warnings == []) == (expect["minor"] <= KNOWN_MINOR), (
        report.to_json()
    )
    return entry


def build_manifest(out_dir: str, old: dict[str, Any], rebuilt: set[str]) -> dict[str, Any]:
    manifest: dict[str, Any] = {"format": "cmf golden vectors manifest 2", "vectors": {}}
    for name, build in VECTORS.items():
        path = os.path.join(out_dir, name)
        with tempfile.TemporaryDirectory() as tmp:  # the inputs, without touching the vector
            expect = build(os.path.join(tmp, name))
        version = list(zstandard.ZSTD_VERSION)
        if name not in rebuilt and name in old.get("vectors", {}):
            version = old["vectors"][name].get("zstd_version", old.get("zstd_version", version))
        manifest["vectors"][name] = manifest_entry(name, path, expect, version)
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=HERE)
    ap.add_argument(
        "--force",
        action="append",
        default=[],
        metavar="NAME",
        help="overwrite this committed vector (the spec changed it on purpose)",
    )
    ap.add_argument(
        "--check",
        action="store_true",
        help="rebuild every vector in a temporary directory and report which differ",
    )
    args = ap.parse_args(argv)
    if args.check:
        differ = []
        with tempfile.TemporaryDirectory() as tmp:
            for name, build in VECTORS.items():
                build(os.path.join(tmp, name))
                same = (
                    open(os.path.join(tmp, name), "rb").read()
                    == open(os.path.join(args.out, name), "rb").read()
                )
                print(f"{'same   ' if same else 'DIFFERS'} {name}")
                differ += [] if same else [name]
        return 1 if differ else 0
    os.makedirs(args.out, exist_ok=True)
    manifest_path = os.path.join(args.out, "manifest.json")
    old = json.load(open(manifest_path)) if os.path.exists(manifest_path) else {}
    rebuilt = set()
    for name, build in VECTORS.items():
        path = os.path.join(args.out, name)
        if os.path.exists(path) and name not in args.force:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            build(os.path.join(tmp, name))
            shutil.copyfile(os.path.join(tmp, name), path)
        rebuilt.add(name)
        print(f"wrote {name} ({os.path.getsize(path)} bytes)")
    manifest = build_manifest(args.out, old, rebuilt)
    with open(manifest_path, "w") as fh:
        json.dump(manifest, fh, indent=1, ensure_ascii=False)  # key order = file order
        fh.write("\n")
    print(f"manifest: {len(manifest['vectors'])} vectors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
