"""Fuzz targets for .cmf files: ``container`` (raw bytes) and ``index`` (structure-aware).

Both feed a file to ``cmf.open`` + ``get_tensor`` of every tensor + ``get_attachment`` of every
attachment, then to ``cmf.validate``, and check, besides the harness's rules (only CmfError,
< 1 s, < 2 GiB; tools/fuzz_common.py):

- every decoded tensor has its index dtype and shape, every attachment its size;
- the reader and the validator agree: a file the reader rejects is never reported valid;
- ``validate`` never raises.

``index`` mutates files with :func:`mutate_file`: it decodes the msgpack index and edits fields
(numbers at boundaries, types, codec names and configs, segment and shared references, shapes,
aliases, whole subtrees copied elsewhere), or edits a segment's bytes (inside zstd frames too:
decompressed, edited, recompressed), then re-frames the file: segments re-tiled, offsets,
lengths and CRC-32Cs of the segment table and the index recomputed (unless the edit was to the
segment table itself), so that the mutations get past the checksums.

    python tools/fuzz_container.py index --engine atheris --seconds 600
    python tools/fuzz_container.py container --engine python --runs 20000
"""

from __future__ import annotations

import os
import random
import struct
import sys
from typing import Any

if __package__ in (None, ""):  # run as a script: make `tools` and `cmf` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import msgpack
import numpy as np
import zstandard

import cmf
from cmf.checksum import crc32c
from cmf.codecs import registered
from cmf.dtypes import BY_NAME
from cmf.errors import CmfError
from cmf.pipeline import describe
from tools.fuzz_common import (
    FUZZ_LIMITS,
    INTERESTING,
    Finding,
    Target,
    byte_mutate,
    main,
    scratch_file,
)

MAGIC = b"\x89CMF\r\n\x1a\n"
TRAILER_MAGIC = b"CMFINDX\x00"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


# ----------------------------------------------------------------------------- the target


def check_file(path: str) -> None:
    """Read everything in ``path``, then validate it; raise the reader's CmfError (if any)
    after the checks, Finding on a broken invariant."""
    rejected: CmfError | None = None
    try:
        with cmf.open(path, limits=FUZZ_LIMITS) as f:
            for entry in f.index.tensors:
                if entry.encoding is not None:
                    describe(entry.encoding)
            for name in f.keys():
                spec = f.spec(name)
                a = f.get_tensor(name)
                if (
                    not isinstance(a, np.ndarray)
                    or a.dtype != spec.dtype.numpy
                    or a.shape != spec.shape
                ):
                    raise Finding(
                        f"tensor {name!r}: decoded {type(a).__name__} "
                        f"{getattr(a, 'dtype', '?')}{getattr(a, 'shape', '?')}, "
                        f"index says {spec.describe()}"
                    )
                if not a.flags.writeable:
                    raise Finding(f"tensor {name!r}: get_tensor returned a read-only array")
            for att in f.index.attachments:
                data = f.get_attachment(att.name)
                if len(data) != att.size:
                    raise Finding(
                        f"attachment {att.name!r}: {len(data)} bytes, index says {att.size}"
                    )
            f.metadata()
    except CmfError as exc:
        rejected = exc
    report = cmf.validate(path, limits=FUZZ_LIMITS)
    if rejected is not None and report.valid:
        raise Finding(f"the reader rejects ({rejected}) but validate reports the file valid")
    if not report.valid and not report.errors:
        raise Finding("validate reports the file invalid without an error")
    if rejected is not None:
        raise rejected


def run_file(data: bytes) -> None:
    check_file(scratch_file(data))


# ----------------------------------------------------------------------------- seeds


def seed_files() -> list[bytes]:
    from tools.fuzz_seeds import codec_files, vector_files

    out = [data for data, _ in codec_files().values()]
    out += [v for k, v in vector_files().items() if len(v) <= 16384]
    return out


# ----------------------------------------------------------------------------- the mutator

CODECS = sorted(registered())
DTYPES = sorted(BY_NAME)
PARTS = [
    "data",
    "p0",
    "p1",
    "p2",
    "p3",
    "p7",
    "q",
    "scale",
    "min",
    "zero",
    "indices",
    "codebook",
    "values",
    "mask",
    "index",
    "dense",
    "u",
    "v",
]
KEYS = [
    "segment",
    "shared",
    "codec",
    "config",
    "parts",
    "name",
    "dtype",
    "shape",
    "encoding",
    "alias",
    "error",
    "size",
    "level",
    "literals_only",
    "rotate",
    "chunk",
    "max_length",
    "bits",
    "block",
    "axis",
    "scheme",
    "scale_dtype",
    "search",
    "k",
    "layout",
    "nnz",
    "entries",
    "count",
    "rank",
    "split",
    "factor_dtype",
    "segments",
    "tensors",
    "attachments",
    "metadata",
]
WORDS = (
    CODECS
    + DTYPES
    + PARTS
    + KEYS
    + [
        "symmetric",
        "asymmetric",
        "zero_point",
        "bitmask",
        "delta",
        "",
        "a" * 1025,
        "\x00",
        "../x",
        "a/../../b",
        "/etc/passwd",
        "config.json",
        "é",
        "\ud800x",
    ]
)
FLOATS = [
    float("nan"),
    float("inf"),
    float("-inf"),
    -0.0,
    0.0,
    1e308,
    5e-324,
    65504.0,
    3.4e38,
    1.0,
    -1.0,
    0.5,
    2.0**480,
]


class _Parsed:
    def __init__(self, minor: int, segments: list[bytes], index: Any) -> None:
        self.minor = minor
        self.segments = segments
        self.index = index


def parse_file(data: bytes) -> _Parsed | None:
    """Split a well-framed file into (minor, segment bytes, decoded index); None otherwise."""
    if len(data) < 96 or data[:8] != MAGIC or data[-8:] != TRAILER_MAGIC:
        return None
    off, length = struct.unpack_from("<QQ", data, len(data) - 32)
    if off + length + 32 != len(data) or off < 64:
        return None
    try:
        index = msgpack.unpackb(
            data[off : off + length], raw=False, strict_map_key=False, max_ext_len=0
        )
    except Exception:  # noqa: BLE001
        return None
    if not isinstance(index, dict) or not isinstance(index.get("segments"), list):
        return None
    segments = []
    for s in index["segments"]:
        if not (isinstance(s, list) and len(s) == 3 and all(isinstance(x, int) for x in s)):
            return None
        o, n, _ = s
        if o < 0 or n < 0 or o + n > off:
            return None
        segments.append(data[o : o + n])
    minor = struct.unpack_from("<H", data, 10)[0]
    return _Parsed(minor, segments, index)


def frame(
    p: _Parsed, keep_table: bool = False, fix_crcs: bool = True, head: bytes | None = None
) -> bytes:
    """Lay ``p.segments`` out 64-aligned after the preamble, fix the segment table (unless
    ``keep_table``) and write index + trailer with the right CRC."""
    out = bytearray(MAGIC + struct.pack("<HHI", 1, p.minor & 0xFFFF, 0) + bytes(48))
    table = []
    for s in p.segments:
        out += bytes(-len(out) % 64)
        table.append([len(out), len(s), crc32c(s)])
        out += s
    out += bytes(-len(out) % 64)
    if head is not None:  # keep the original data area byte for byte
        out = bytearray(head)
    if not keep_table:
        old = p.index.get("segments") if isinstance(p.index, dict) else None
        if fix_crcs or not isinstance(old, list) or len(old) != len(table):
            p.index["segments"] = table
        else:
            for i, t in enumerate(table):
                old[i][:2] = t[:2]
    blob = msgpack.packb(p.index, use_bin_type=True)
    off = len(out)
    out += blob
    out += struct.pack("<QQII", off, len(blob), crc32c(blob), 0) + TRAILER_MAGIC
    return bytes(out)


def _slots(obj: Any) -> list[tuple[Any, Any, tuple]]:
    """Every (container, key, path) in the tree, containers first."""
    out: list[tuple[Any, Any, tuple]] = []
    stack: list[tuple[Any, tuple]] = [(obj, ())]
    while stack:
        node, path = stack.pop()
        items = (
            node.items()
            if isinstance(node, dict)
            else enumerate(node)
            if isinstance(node, list)
            else ()
        )
        for k, v in list(items):
            out.append((node, k, path + (k,)))
            if isinstance(v, (dict, list)):
                stack.append((v, path + (k,)))
    return out


def _top_slots(obj: Any) -> list[tuple[Any, Any, Any]]:
    """``_slots`` with only the first key of each path (all that mutate_file looks at: is the
    slot under "segments"?), same slots in the same order: no path tuple built per node (that
    was half of the mutator's time)."""
    out: list[tuple[Any, Any, Any]] = []
    if isinstance(obj, dict):
        items: Any = obj.items()
    elif isinstance(obj, list):
        items = enumerate(obj)
    else:
        return out
    append, stack, containers = out.append, [], (dict, list)
    for k, v in items:  # the root's children: each is the top of its subtree
        append((obj, k, k))
        if isinstance(v, containers):
            stack.append((v, k))
    while stack:
        node, top = stack.pop()
        for k, v in node.items() if isinstance(node, dict) else enumerate(node):
            append((node, k, top))
            if isinstance(v, containers):
                stack.append((v, top))
    return out


def _ints(slots: list) -> list[int]:
    """The integers the tree holds, from its slots (``_slots`` or ``_top_slots`` of the tree,
    taken just before the edit: the same integers as walking the tree again)."""
    values = (c[k] for c, k, _ in slots)
    return [v for v in values if isinstance(v, int) and not isinstance(v, bool)]


def _new_value(old: Any, rng: random.Random, tree: Any, slots: list) -> Any:
    r = rng.random()
    if r < 0.12 and slots:  # a subtree copied from elsewhere (encodings, refs, shapes ...)
        c, k, _ = rng.choice(slots)
        return _copy(c[k])
    if isinstance(old, bool) or r < 0.18:
        return rng.choice([True, False, None, 0, 1, -1, 1.0, "", [], {}, b"x"])
    if isinstance(old, int):
        choice = rng.randrange(7)
        if choice == 0:
            return old + rng.choice((-1, 1))
        if choice == 1:
            return rng.choice(INTERESTING)
        if choice == 2:
            return -rng.choice(INTERESTING[:-2])
        if choice == 3:
            ints = _ints(slots)
            return (rng.choice(ints) + rng.randint(-2, 2)) if ints else 0
        if choice == 4:
            return old ^ (1 << rng.randrange(max(1, old.bit_length() + 2)))
        if choice == 5:
            return old * rng.choice((2, 8, 64, 1 << 20))
        return float(old)
    if isinstance(old, float):
        return rng.choice(FLOATS + [int(old) if old == old and abs(old) < 1e18 else 0])
    if isinstance(old, str):
        if rng.random() < 0.7:
            return rng.choice(WORDS)
        s = list(old) or ["a"]
        s[rng.randrange(len(s))] = chr(rng.choice((0, 0x2E, 0x2F, 0x41, 0xE9, 0x10FFFF)))
        return "".join(s)
    if isinstance(old, list):
        new = _copy(old)
        op = rng.randrange(5)
        if op == 0 and new:
            new.pop(rng.randrange(len(new)))
        elif op == 1 and new:
            new.insert(rng.randrange(len(new) + 1), _copy(rng.choice(new)))
        elif op == 2:
            new.append(rng.choice([0, 1, 1 << 32, -1, "x", None, [], {}]))
        elif op == 3:
            rng.shuffle(new)
        else:
            new = [] if rng.random() < 0.5 else {}
        return new
    if isinstance(old, dict):
        new = _copy(old)
        op = rng.randrange(4)
        if op == 0 and new:
            del new[rng.choice(list(new))]
        elif op == 1:
            new[rng.choice(KEYS + PARTS)] = rng.choice(
                [0, 1, "raw", {"segment": 0}, {"shared": 0}, None, []]
            )
        elif op == 2 and new:
            k = rng.choice(list(new))
            new[rng.choice(KEYS + PARTS)] = new.pop(k)
        else:
            new = list(new.values())
        return new
    return rng.choice([0, "", None, [], {}])


def _copy(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _copy(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_copy(x) for x in v]
    return v


_FLOAT_BITS = [np.float32(x).tobytes() for x in FLOATS[:5] + FLOATS[6:8]] + [
    b"\x01\x00\xc0\x7f",
    b"\x00\x00\x80\x7f",
    b"\xff\xff\x7f\x7f",
    b"\x00\x7c",
    b"\x00\xfc",
    b"\x01\x7e",
    b"\xff\x7b",
    b"\x80\x7f",
    b"\x00\x80",
    b"\xff\xff\xff\xff",
    b"\x00\x00\x00\x00",
]


def _mutate_bytes(seg: bytes, rng: random.Random) -> bytes:
    if seg[:4] == ZSTD_MAGIC and rng.random() < 0.6:  # edit the content, keep a valid frame
        try:
            plain = zstandard.ZstdDecompressor().decompress(seg, max_output_size=1 << 22)
            edited = _mutate_bytes(plain, rng)
            level = rng.choice((1, 3, -1))
            return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(edited)
        except zstandard.ZstdError:
            pass
    buf = bytearray(seg)
    r = rng.random()
    if r < 0.35 and buf:  # an interesting float/int bit pattern at an aligned place
        pat = rng.choice(_FLOAT_BITS)
        at = rng.randrange(max(1, len(buf) // len(pat))) * len(pat)
        buf[at : at + len(pat)] = pat
        return bytes(buf[: len(seg)]) if rng.random() < 0.8 else bytes(buf)
    if r < 0.45:
        return bytes(buf[: rng.randrange(len(buf) + 1)])
    if r < 0.5:
        return bytes(buf) + bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    return byte_mutate(bytes(buf), rng, 1 << 20)


def mutate_file(data: bytes, rng: random.Random) -> bytes:
    """The structure-aware mutator (see module docstring); byte mutations for an input that is
    not a well-framed file."""
    p = parse_file(data)
    if p is None:
        return byte_mutate(data, rng)
    head = data[: struct.unpack_from("<Q", data, len(data) - 32)[0]]
    keep_table = False
    same_data = True
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        r = rng.random()
        if r < 0.3 and p.segments:  # segment bytes (CRC fixed when re-framed)
            i = rng.randrange(len(p.segments))
            p.segments[i] = _mutate_bytes(p.segments[i], rng)
            same_data = False
        elif r < 0.33:
            p.minor = rng.choice((0, 1, 2, 0xFFFF))
        else:
            slots = _top_slots(p.index)
            if not slots:
                p.index = {"segments": [], "tensors": []}
                continue
            weights = [1 if top == "segments" else 4 for _, _, top in slots]
            c, k, top = rng.choices(slots, weights)[0]
            c[k] = _new_value(c[k], rng, p.index, slots)
            if top == "segments":
                keep_table = True
    try:
        if keep_table and same_data:
            return frame(p, keep_table=True, head=head)
        return frame(p, keep_table=keep_table and rng.random() < 0.5, fix_crcs=rng.random() < 0.97)
    except (OverflowError, TypeError, ValueError):
        return byte_mutate(data, rng)


TARGETS = {
    "container": Target("container", run_file, seed_files),
    "index": Target("index", run_file, seed_files, mutate=mutate_file),
}

if __name__ == "__main__":
    sys.exit(main(TARGETS))
