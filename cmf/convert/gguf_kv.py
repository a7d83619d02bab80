"""GGUF key/value bytes: encode a value of a named GGUF type, check raw value bytes.

Contract: :func:`encode_value` gives the exact bytes GGUF stores for a value (after the type
field) or raises CmfError naming what does not fit (a value out of its type's range, a string
that is not one, a list where a scalar belongs ...); :func:`check_raw` walks raw value bytes of a
type and raises CmfError unless they are exactly one well-formed value. Both are bounded: at most
``MAX_ITEMS`` array items, arrays nested at most ``MAX_DEPTH`` deep.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from ..errors import CmfError
from ..kernels import speedups as _speedups  # optional C kernels; same bytes either way

MAX_ITEMS = 1 << 22  # array items per file, as cmf.convert.gguf's reader bounds them
MAX_DEPTH = 8

# name -> (GGUF type code, numpy dtype of one scalar, or None for STRING / ARRAY)
TYPES: dict[str, tuple[int, str | None]] = {
    "UINT8": (0, "u1"),
    "INT8": (1, "i1"),
    "UINT16": (2, "u2"),
    "INT16": (3, "i2"),
    "UINT32": (4, "u4"),
    "INT32": (5, "i4"),
    "FLOAT32": (6, "f4"),
    "BOOL": (7, "u1"),
    "STRING": (8, None),
    "ARRAY": (9, None),
    "UINT64": (10, "u8"),
    "INT64": (11, "i8"),
    "FLOAT64": (12, "f8"),
}
BY_CODE = {code: name for name, (code, _) in TYPES.items()}


def _dtype(name: str, order: str) -> np.dtype:
    return np.dtype(TYPES[name][1]).newbyteorder(order)


def parse_type(text: Any, key: str) -> list[str]:
    """``"UINT32"`` / ``"ARRAY/STRING"`` as a list of type names; CmfError if malformed."""
    names = text.split("/") if isinstance(text, str) else None
    if not names or any(n not in TYPES for n in names) or any(n != "ARRAY" for n in names[:-1]):
        raise CmfError(
            f"GGUF key {key!r}: value type {text!r} is not a GGUF type "
            f"(one of {', '.join(TYPES)}, or ARRAY/<type>)"
        )
    return names


def string_bytes(text: Any, what: str, order: str) -> bytes:
    """A GGUF string: u64 length + UTF-8 bytes."""
    if not isinstance(text, str):
        raise CmfError(f"{what}: expected a string, found {type(text).__name__}")
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise CmfError(f"{what}: string is not valid Unicode (lone surrogate)") from None
    return struct.pack(order + "Q", len(data)) + data


def _strings(values: list[Any], what: str, order: str) -> bytes:
    """GGUF strings back to back (one pass: tokenizer vocabularies hold ~10^5 of them; in C
    when the kernels are built)."""
    kernel = getattr(_speedups, "gguf_strings", None)  # None: not built, or an older build
    if kernel is not None and type(values) is list:
        try:
            return kernel(values, order == ">")
        except (TypeError, UnicodeEncodeError):
            pass  # the checks below say which
    if not set(map(type, values)) <= {str}:
        for v in values:
            if not isinstance(v, str):
                raise CmfError(f"{what}: expected a string, found {type(v).__name__}")
    try:
        encoded = list(map(str.encode, values))
    except UnicodeEncodeError:
        raise CmfError(f"{what}: string is not valid Unicode (lone surrogate)") from None
    if len(encoded) < 64:
        length = struct.Struct(order + "Q").pack
        return b"".join([length(len(e)) + e for e in encoded])
    lens = np.fromiter(map(len, encoded), np.int64, len(encoded))
    ends = np.cumsum(lens + 8)  # string k ends at ends[k]; its u64 length starts 8 + len before
    out = np.empty(int(ends[-1]), np.uint8)
    heads = np.zeros(out.size, bool)
    heads[(ends - lens - 8)[:, None] + np.arange(8)] = True
    out[heads] = lens.astype(order + "u8").view(np.uint8)
    out[~heads] = np.frombuffer(b"".join(encoded), np.uint8)
    return out.tobytes()


def _scalars(name: str, values: list[Any], what: str, order: str) -> bytes:
    """Scalars of type ``name`` (numbers range-checked, floats kept bit for bit as float64 holds
    them)."""
    if name == "BOOL":
        if any(not isinstance(v, bool) for v in values):
            raise CmfError(f"{what}: expected booleans")
        return bytes(bytearray(int(v) for v in values))
    dt = _dtype(name, order)
    if dt.kind == "f":
        if not set(map(type, values)) <= {int, float} and any(
            isinstance(v, bool) or not isinstance(v, (int, float)) for v in values
        ):
            raise CmfError(f"{what}: expected {name} numbers")
        src = np.array(values, dtype=np.float64)
        with np.errstate(over="ignore"):
            out = src.astype(dt)
        back = out.astype(np.float64)
        if not np.array_equal(back, src, equal_nan=True):
            raise CmfError(f"{what}: a value does not fit {name} exactly")
        return out.tobytes()
    if not set(map(type, values)) <= {int} and any(
        isinstance(v, bool) or not isinstance(v, int) for v in values
    ):
        raise CmfError(f"{what}: expected {name} integers")
    info = np.iinfo(dt)
    try:  # a C-level pass when every value fits int64 (all but the top half of UINT64)
        wide = np.array(values, dtype=np.int64)
        low, high = (int(wide.min()), int(wide.max())) if values else (0, 0)
    except OverflowError:
        wide, low, high = None, min(values), max(values)
    if low < info.min or high > info.max:
        raise CmfError(f"{what}: a value is out of the range of {name} [{info.min}, {info.max}]")
    return (wide.astype(dt) if wide is not None else np.array(values, dtype=dt)).tobytes()


def encode_value(types: list[str], value: Any, what: str, order: str = "<") -> bytes:
    """The bytes of ``value`` stored as GGUF type ``types`` (from :func:`parse_type`)."""
    head = types[0]
    if head == "STRING":
        return string_bytes(value, what, order)
    if head != "ARRAY":
        if isinstance(value, list):
            raise CmfError(f"{what}: expected one {head} value, found a list")
        return _scalars(head, [value], what, order)
    if len(types) != 2:
        raise CmfError(f"{what}: nested arrays are kept only as raw bytes (cmf.gguf.layout raw)")
    if not isinstance(value, list):
        raise CmfError(
            f"{what}: expected a list for {'/'.join(types)}, found {type(value).__name__}"
        )
    if len(value) > MAX_ITEMS:
        raise CmfError(f"{what}: {len(value)} array items, more than {MAX_ITEMS}")
    item = types[1]
    head_bytes = struct.pack(order + "IQ", TYPES[item][0], len(value))
    if item == "STRING":
        return head_bytes + _strings(value, what, order)
    return head_bytes + _scalars(item, value, what, order)


class _Walk:
    def __init__(self, data: bytes, order: str, what: str) -> None:
        self.data, self.order, self.what, self.pos, self.items = data, order, what, 0, 0

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise CmfError(
                f"{self.what}: raw value ends early ({n} bytes needed at {self.pos}, "
                f"{len(self.data) - self.pos} left)"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "little" if self.order == "<" else "big")

    def value(self, code: int, depth: int) -> None:
        name = BY_CODE.get(code)
        if name is None:
            raise CmfError(f"{self.what}: unknown GGUF value type {code}")
        if name == "STRING":
            self.take(self.uint(8))
        elif name != "ARRAY":
            self.take(np.dtype(TYPES[name][1]).itemsize)
        else:
            if depth >= MAX_DEPTH:
                raise CmfError(f"{self.what}: arrays nested deeper than {MAX_DEPTH}")
            item, n = self.uint(4), self.uint(8)
            self.items += n
            if self.items > MAX_ITEMS:
                raise CmfError(f"{self.what}: more than {MAX_ITEMS} array items")
            size = TYPES[BY_CODE[item]][1] if item in BY_CODE else None
            if size is not None:  # scalars: one bounds check, no loop
                self.take(n * np.dtype(size).itemsize)
            else:
                for _ in range(n):
                    self.value(item, depth + 1)


def check_raw(type_name: str, data: bytes, what: str, order: str = "<") -> None:
    """CmfError unless ``data`` is exactly one value of GGUF type ``type_name``."""
    walk = _Walk(data, order, what)
    walk.value(TYPES[type_name][0], 0)
    if walk.pos != len(data):
        raise CmfError(f"{what}: {len(data) - walk.pos} bytes after the raw value")


def aligned(n: int, alignment: int) -> int:
    """``n`` rounded up to a multiple of ``alignment``."""
    return -(-n // alignment) * alignment


def tensor_info(name: str, dims: list[int], type_code: int, offset: int, order: str) -> bytes:
    """A tensor info record: name, rank, dims (fastest first), GGML type, data offset."""
    return (
        string_bytes(name, f"tensor name {name!r}", order)
        + struct.pack(order + "I", len(dims))
        + struct.pack(order + "Q" * len(dims), *dims)
        + struct.pack(order + "IQ", type_code, offset)
    )


def gguf_nbytes(ggml_type: str, dims: list[int]) -> int:
    """Bytes of a tensor of GGML type ``ggml_type`` and GGUF ``dims``; CmfError if rows are not
    whole blocks or the type is unknown."""
    import gguf

    try:
        qtype = gguf.GGMLQuantizationType[ggml_type]
        block, size = gguf.GGML_QUANT_SIZES[qtype]
    except KeyError:
        raise CmfError(f"unknown GGML type {ggml_type!r}") from None
    if dims and dims[0] % block:
        raise CmfError(f"a {ggml_type} row of {dims[0]} elements is not whole blocks of {block}")
    return math.prod(dims) // block * size
