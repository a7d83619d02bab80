"""What a GGUF file's bytes need beyond its key/values and tensors: ``cmf.gguf.layout``
(spec/converters.md § GGUF out, layout record), computed when the file is packed.

Contract of :func:`record_layout`: a metadata map (key order, tensor order, byte order, raw
bytes of the values the ``gguf.<key>`` metadata cannot give back, non-canonical data offsets,
non-zero padding, file size) such that the header cmf.convert.gguf_write serializes from it
equals the file's; if that cannot be (more than ``MAX_FILL`` non-zero padding bytes,
overlapping tensors, a header that still differs), the map says why under ``inexact``.
Never raises for a file gguf-py opened; reads only the header and the padding.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from ..errors import CmfError
from .gguf_kv import aligned, encode_value, parse_type
from .gguf_write import MAX_FILL, GGUFOut, TensorOut, canonical_offsets, header_bytes

_READER_FIELDS = ("GGUF.version", "GGUF.tensor_count", "GGUF.kv_count")
_SCAN = 16 << 20


def _b64(data: bytes) -> str:
    return base64.b64encode(bytes(data)).decode("ascii")


def _value_span(field: Any) -> tuple[int, int]:
    """File offsets of a key/value field's value (after key and type)."""
    start = field.offset + sum(int(p.nbytes) for p in field.parts[:3])
    return start, start + sum(int(p.nbytes) for p in field.parts[3:])


def _nonzero_runs(data: np.ndarray, base: int, out: list[list[Any]], budget: list[int]) -> None:
    """Append ``[offset, base64]`` for each run of non-zero bytes of ``data`` (at ``base``)."""
    for lo in range(0, data.size, _SCAN):
        chunk = np.asarray(data[lo : lo + _SCAN])
        nz = np.flatnonzero(chunk)
        if not nz.size:
            continue
        budget[0] += int(nz.size)
        if budget[0] > MAX_FILL:
            return
        breaks = np.flatnonzero(np.diff(nz) > 1)
        starts = np.concatenate([[nz[0]], nz[breaks + 1]])
        ends = np.concatenate([nz[breaks], [nz[-1]]]) + 1
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            out.append([base + lo + s, _b64(chunk[s:e].tobytes())])


def record_layout(reader: Any, metadata: dict[str, Any]) -> dict[str, Any]:
    """``cmf.gguf.layout`` of the GGUF ``reader`` (gguf-py) whose metadata cmf.convert.gguf made."""
    try:
        return _record(reader, metadata)
    except CmfError as exc:
        return {"inexact": str(exc)}


def _record(reader: Any, metadata: dict[str, Any]) -> dict[str, Any]:
    order = ">" if reader.byte_order == "S" else "<"
    data = reader.data
    keys = [k for k in reader.fields if k not in _READER_FIELDS]
    types = metadata["cmf.gguf.value_types"]
    raw: dict[str, str] = {}
    kvs = []
    for key in keys:
        start, end = _value_span(reader.fields[key])
        theirs = data[start:end].tobytes()
        try:
            type_names = parse_type(types[key], key)
            ours = encode_value(type_names, metadata[f"gguf.{key}"], key, order)
        except CmfError:
            ours = None
        if ours != theirs:
            raw[key] = _b64(theirs)
        kvs.append((key, types[key].split("/")[0], theirs))
    tensors = reader.tensors
    rel = [int(t.data_offset) - int(reader.data_offset) for t in tensors]
    sizes = [int(t.n_bytes) for t in tensors]
    alignment = int(reader.alignment)
    version = int(reader.fields["GGUF.version"].contents())
    out = GGUFOut(
        version,
        order,
        kvs,
        [
            TensorOut(t.name, [int(d) for d in t.shape], t.tensor_type.name, lambda: b"", n)
            for t, n in zip(tensors, sizes, strict=True)
        ],
        alignment,
    )
    header = header_bytes(out, rel)
    if header != data[: len(header)].tobytes():
        raise CmfError("its header does not serialize back to the same bytes")
    layout: dict[str, Any] = {
        "byte_order": "big" if order == ">" else "little",
        "keys": keys,
        "tensors": [t.name for t in tensors],
        "size": int(data.size),
    }
    if raw:
        layout["raw"] = raw
    if rel != canonical_offsets(sizes, alignment):
        layout["offsets"] = rel
    data_start = int(reader.data_offset)
    if data_start != aligned(len(header), alignment):
        raise CmfError("its data does not start at the header's end rounded up to the alignment")
    gaps, at = [], len(header)
    for off, n in zip(rel, sizes, strict=True):
        if data_start + off < at:
            raise CmfError("its tensors overlap, or are not in file order")
        gaps.append((at, data_start + off))
        at = data_start + off + n
    if int(data.size) < at:
        raise CmfError("its last tensor runs past the end of the file")
    gaps.append((at, int(data.size)))
    fill: list[list[Any]] = []
    budget = [0]
    for lo, hi in gaps:
        if hi > lo:
            _nonzero_runs(data[lo:hi], lo, fill, budget)
        if budget[0] > MAX_FILL:
            raise CmfError(f"more than {MAX_FILL} bytes of its padding are not zero")
    if fill:
        layout["fill"] = fill
    return layout
