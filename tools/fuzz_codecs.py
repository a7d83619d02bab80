"""Fuzz targets for each codec's decoder: ``codec-<name>`` for every registered codec.

An input is a *codec case*: ``u16 header length | msgpack header | payload`` with the header
``{"config": map, "spec": [dtype, shape] or ["bytes", length]}``. The target builds the codec
with ``from_config`` (the codec's name is the target's), resolves the spec, cuts the payload into
the parts in sorted name order (a byte part of known length takes that many bytes, one of
unknown length a ``u32`` length first; an array part takes its resolved ``nbytes`` as its dtype
and shape; short payloads are padded with zeros) and calls ``decode``. Parts arrive read-only, as
they do from a memory-mapped segment, and as the pipeline guarantees: of exactly the resolved
spec (bool array parts hold only 0/1, as ``raw`` ensures), and the spec and part specs pass
``cmf.pipeline.check_decodable`` (memory budget, numpy's shape limit).

Checks besides the harness's (tools/fuzz_common.py): the result has the spec's dtype and shape
(or length); a ``bool`` result holds only 0/1; and for lossless codecs, re-encoding the result
and decoding again gives the same bytes (when the codec accepts the value: ``sparse`` and
``outlier`` refuse values that do not fit their config with a CmfError, which is fine;
``partition`` re-encodes the result with the ``class`` part it was decoded from, and must
accept it); for ``ggml``, the parts turned into blocks and split again are the same parts.

Seeds are the codec nodes of tools/fuzz_seeds.py's files and spec/vectors/, with the values
their parts decode to. The structure-aware mutator edits the header (config values at
boundaries, other dtypes, shapes) or the payload (bytes, float bit patterns).

    python tools/fuzz_codecs.py codec-huffman --engine atheris --seconds 300
"""

from __future__ import annotations

import os
import random
import struct
import sys
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import msgpack
import numpy as np

import cmf
from cmf.codecs import ArraySpec, BytesSpec, Spec, codec_class, registered
from cmf.codecs.ggml_codec import Blocks
from cmf.codecs.partition import Partitioned
from cmf.dtypes import BY_NAME
from cmf.errors import CmfError
from cmf.index import CodecNode, _shape
from cmf.pipeline import check_decodable
from tools.fuzz_common import Finding, Target, byte_mutate, main, scratch_file

MAX_PART = 4 << 20  # harness bound on any spec's decoded size
LIMITS = cmf.Limits(max_tensor_bytes=MAX_PART)
LOSSLESS_CHECKED = {
    "raw",
    "byteplanes",
    "zstd",
    "huffman",
    "bitpack",
    "sparse",
    "outlier",
    "partition",
}
# codecs whose encode takes more than the decoded value: what to encode, from it and its parts
ENCODE_INPUT = {"partition": lambda value, parts: Partitioned(value, parts["class"])}


class BadCase(CmfError):
    """An input the harness cannot turn into a codec case (not a finding)."""


# ----------------------------------------------------------------------------- cases


def spec_obj(spec: Spec) -> list:
    if isinstance(spec, BytesSpec):
        return ["bytes", spec.length]
    return [spec.dtype.name, list(spec.shape)]


def encode_case(
    config: Any, spec: Spec, parts: dict[str, Any], part_specs: dict[str, Spec]
) -> bytes:
    head = msgpack.packb({"config": config, "spec": spec_obj(spec)}, use_bin_type=True)
    payload = bytearray()
    for name in sorted(part_specs):
        ps, value = part_specs[name], parts[name]
        if isinstance(ps, BytesSpec):
            raw = bytes(memoryview(value).cast("B"))
            if ps.length is None:
                payload += struct.pack("<I", len(raw))
            payload += raw
        else:
            payload += np.ascontiguousarray(value).tobytes()
    return struct.pack("<H", len(head)) + head + bytes(payload)


def decode_case(data: bytes) -> tuple[Any, Spec, bytes]:
    if len(data) < 2:
        raise BadCase("too short")
    (n,) = struct.unpack_from("<H", data)
    try:
        head = msgpack.unpackb(data[2 : 2 + n], raw=False, strict_map_key=False, max_ext_len=0)
    except Exception:  # noqa: BLE001
        raise BadCase("header is not msgpack") from None
    if (
        not isinstance(head, dict)
        or not isinstance(head.get("spec"), list)
        or len(head["spec"]) != 2
    ):
        raise BadCase("header has no spec")
    kind, shape = head["spec"]
    if kind == "bytes":
        if shape is not None and (
            isinstance(shape, bool) or not isinstance(shape, int) or not 0 <= shape <= MAX_PART
        ):
            raise BadCase("bad byte length")
        spec: Spec = BytesSpec(shape)
    else:
        if not isinstance(kind, str) or kind not in BY_NAME:
            raise BadCase("bad dtype")
        spec = ArraySpec(BY_NAME[kind], _shape(shape, cmf.Limits()))
    return head.get("config"), spec, data[2 + n :]


def _cut(payload: memoryview, at: int, n: int) -> tuple[memoryview, int]:
    piece = payload[at : at + n]
    if len(piece) < n:
        piece = memoryview(bytes(piece) + bytes(n - len(piece)))
    return piece, at + n


def build_parts(part_specs: dict[str, Spec], payload: bytes) -> dict[str, Any]:
    view = memoryview(payload)
    at = 0
    parts: dict[str, Any] = {}
    for name in sorted(part_specs):
        ps = part_specs[name]
        if isinstance(ps, BytesSpec):
            if ps.length is None:
                if at + 4 <= len(view):
                    (n,) = struct.unpack_from("<I", view, at)
                    at += 4
                else:
                    n, at = 0, len(view)
                n = min(n, len(view) - at)
            else:
                n = ps.length
            if n > MAX_PART:
                raise BadCase("part too large for the harness")
            parts[name], at = _cut(view, at, n)
        else:
            if ps.nbytes > MAX_PART:
                raise BadCase("part too large for the harness")
            raw, at = _cut(view, at, ps.nbytes)
            if ps.dtype.name == "bool":  # a valid bool byte is 0 or 1; read-only like the rest
                bools = (np.frombuffer(raw, dtype=np.uint8) & 1).view(np.bool_)
                bools.flags.writeable = False
                parts[name] = bools.reshape(ps.shape)
            else:
                parts[name] = np.frombuffer(raw, dtype=ps.dtype.numpy).reshape(ps.shape)
    return parts


def _check(value: Any, spec: Spec, codec: str) -> None:
    if isinstance(spec, ArraySpec):
        if (
            not isinstance(value, np.ndarray)
            or value.dtype != spec.dtype.numpy
            or value.shape != spec.shape
        ):
            raise Finding(
                f"{codec}: decoded {type(value).__name__} {getattr(value, 'dtype', '')}"
                f"{getattr(value, 'shape', '')}, expected {spec.describe()}"
            )
        if spec.dtype.name == "bool" and value.size and int(value.view(np.uint8).max()) > 1:
            raise Finding(f"{codec}: decoded a bool byte other than 0 or 1")
    else:
        if isinstance(value, np.ndarray) or not isinstance(value, (bytes, bytearray, memoryview)):
            raise Finding(f"{codec}: decoded {type(value).__name__}, expected bytes")
        if spec.length is not None and len(value) != spec.length:
            raise Finding(f"{codec}: decoded {len(value)} bytes, expected {spec.length}")


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, np.ndarray):
        return np.ascontiguousarray(value).tobytes()
    return bytes(memoryview(value).cast("B"))


def _check_blocks(codec: Any, parts: dict[str, Any], spec: Spec, value: np.ndarray) -> None:
    """``ggml``: the parts a decoder accepted make blocks, and those blocks give the same parts
    (and so the same values) back."""
    blocks = codec.blocks_of(parts, spec)
    again = codec.encode(Blocks(blocks), spec)
    for pname, part in parts.items():
        if _as_bytes(again[pname]) != _as_bytes(part):
            raise Finding(
                f"ggml {codec.type}: part {pname!r} differs after parts -> blocks -> parts"
            )
    if _as_bytes(codec.decode(again, spec)) != _as_bytes(value):
        raise Finding(f"ggml {codec.type}: decoding the re-split blocks differs")


def run_case(name: str, data: bytes) -> None:
    config, spec, payload = decode_case(data)
    codec = codec_class(name).from_config(config)
    check_decodable(spec, LIMITS)  # what cmf.pipeline.decode checks before calling a codec
    part_specs = codec.resolve(spec)
    if set(part_specs) != set(codec.resolve(spec)):
        raise Finding(f"{name}: resolve is not deterministic")
    for ps in part_specs.values():
        check_decodable(ps, LIMITS)
    parts = build_parts(part_specs, payload)
    value = codec.decode(parts, spec)
    _check(value, spec, name)
    if name == "ggml":
        _check_blocks(codec, parts, spec, value)
    if name not in LOSSLESS_CHECKED or not codec.lossless:
        return
    make = ENCODE_INPUT.get(name)
    try:
        again = codec.encode(make(value, parts) if make else value, spec)
    except CmfError as exc:
        if make:  # the decoder checked the classes: its encoder must take them back
            raise Finding(
                f"{name}: encode rejects a decoded value with its own parts: {exc}"
            ) from None
        return  # the value does not fit this config (sparse nnz, outlier entries ...)
    if set(again) != set(part_specs):
        raise Finding(f"{name}: encode gave parts {sorted(again)}, resolve {sorted(part_specs)}")
    for pname, ps in part_specs.items():  # as the writer would store them
        if isinstance(ps, ArraySpec):
            again[pname] = np.ascontiguousarray(again[pname], dtype=ps.dtype.numpy).reshape(
                ps.shape
            )
        else:
            again[pname] = _as_bytes(again[pname])
    try:
        value2 = codec.decode(again, spec)
    except CmfError as exc:
        raise Finding(
            f"{name}: decode rejects what encode made of a decoded value: {exc}"
        ) from None
    if _as_bytes(value2) != _as_bytes(value):
        raise Finding(f"{name}: decode(encode(x)) != x for a decoded x")


# ----------------------------------------------------------------------------- seeds


def _node_cases(f: cmf.CmfFile) -> list[tuple[str, bytes]]:
    out = []
    stack: list[Any] = [t.encoding for t in f.index.tensors if t.encoding is not None]
    stack += [a.encoding for a in f.index.attachments]
    stack += [s.encoding for s in f.index.shared if s is not None]
    while stack:
        node = stack.pop()
        if not isinstance(node, CodecNode):
            continue
        stack.extend(node.parts.values())
        try:
            parts = {n: f.decode_node(child) for n, child in node.parts.items()}
        except CmfError:
            continue
        specs = {n: child.spec for n, child in node.parts.items()}
        out.append((node.codec.name, encode_case(node.codec.to_config(), node.spec, parts, specs)))
    return out


_SEEDS: dict[str, list[bytes]] | None = None


def all_seeds() -> dict[str, list[bytes]]:
    global _SEEDS
    if _SEEDS is None:
        from tools.fuzz_seeds import codec_files, vector_files

        files = [d for d, _ in codec_files().values()] + list(vector_files().values())
        seeds: dict[str, list[bytes]] = {n: [] for n in registered()}
        for data in files:
            path = scratch_file(data, "seed.cmf")
            with cmf.open(path) as f:
                for codec, case in _node_cases(f):
                    if len(case) <= 1 << 16:
                        seeds[codec].append(case)
        _SEEDS = {k: list(dict.fromkeys(v))[:64] for k, v in seeds.items()}
    return _SEEDS


# ----------------------------------------------------------------------------- mutator


def mutate_case(data: bytes, rng: random.Random) -> bytes:
    from tools.fuzz_container import _FLOAT_BITS, _new_value, _slots

    try:
        (n,) = struct.unpack_from("<H", data)
        head = msgpack.unpackb(data[2 : 2 + n], raw=False, strict_map_key=False, max_ext_len=0)
        payload = data[2 + n :]
    except Exception:  # noqa: BLE001
        return byte_mutate(data, rng)
    r = rng.random()
    if r < 0.45 and isinstance(head, dict):
        slots = _slots(head)
        if slots:
            c, k, path = rng.choice(slots)
            if path[0] == "spec" and len(path) >= 2 and path[1] == 0 and rng.random() < 0.7:
                c[k] = rng.choice(sorted(BY_NAME) + ["bytes"])
            else:
                c[k] = _new_value(c[k], rng, head, slots)
    elif r < 0.6 and payload:
        buf = bytearray(payload)
        pat = rng.choice(_FLOAT_BITS)
        at = rng.randrange(max(1, len(buf) // len(pat))) * len(pat)
        buf[at : at + len(pat)] = pat
        payload = bytes(buf)
    else:
        payload = byte_mutate(payload, rng, 1 << 16)
    try:
        blob = msgpack.packb(head, use_bin_type=True)
    except Exception:  # noqa: BLE001
        return byte_mutate(data, rng)
    if len(blob) > 0xFFFF:
        return data
    return struct.pack("<H", len(blob)) + blob + payload


def _target(name: str) -> Target:
    return Target(
        f"codec-{name}",
        lambda data: run_case(name, data),
        lambda: all_seeds()[name],
        mutate=mutate_case,
        dataflow=False,
    )


TARGETS = {f"codec-{n}": _target(n) for n in sorted(registered())}

if __name__ == "__main__":
    sys.exit(main(TARGETS))
