"""The GGUF a GGUF-origin .cmf was packed from, described from its metadata (spec/converters.md
§ GGUF out): ``cmf.gguf.layout``, ``cmf.gguf.version``, ``cmf.gguf.value_types``,
``cmf.gguf.tensor_types`` and the ``gguf.<key>`` values.

Contract of :func:`restore_out`: a checked :class:`~cmf.convert.gguf_write.GGUFOut` whose bytes
are the source file's when the tensors were stored losslessly; every missing or malformed piece
of metadata (the file may be hostile) is a CmfError naming it. Tensor bytes are produced lazily
by :func:`~cmf.convert.gguf_tensor_out.gguf_tensor_bytes`, and the key/value bytes too (checked
and encoded when the writer asks for them, before it writes anything).
"""

from __future__ import annotations

import base64
import binascii
import warnings
from typing import Any

from ..errors import CmfError
from .gguf_kv import check_raw, encode_value, parse_type
from .gguf_tensor_out import gguf_tensor_bytes, kept_exactly
from .gguf_write import GGUFOut, TensorOut

LAYOUT = "cmf.gguf.layout"


def _b64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise CmfError(f"{what}: expected base64 text, found {type(text).__name__}")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise CmfError(f"{what}: not valid base64") from None


def _get(meta: dict[str, Any], key: str, kind: type, what: str | None = None) -> Any:
    value = meta.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise CmfError(
            f"{what or key}: expected {kind.__name__}, found "
            f"{'nothing' if value is None else type(value).__name__} (metadata of a GGUF import)"
        )
    return value


def _names(layout: dict[str, Any], key: str) -> list[str]:
    names = _get(layout, key, list, f"{LAYOUT}.{key}")
    if any(not isinstance(n, str) for n in names):
        raise CmfError(f"{LAYOUT}.{key}: expected a list of strings")
    if len(set(names)) != len(names):
        raise CmfError(f"{LAYOUT}.{key}: a name appears twice")
    return names


def _kvs(
    meta: dict[str, Any], layout: dict[str, Any], order: str, only: str | None = None
) -> list[tuple[str, str, bytes]]:
    """The key/values of the layout (``only``: that key's alone, if the layout has it)."""
    types = _get(meta, "cmf.gguf.value_types", dict)
    raw = layout.get("raw", {})
    if not isinstance(raw, dict):
        raise CmfError(f"{LAYOUT}.raw: expected a map")
    kvs = []
    for key in _names(layout, "keys"):
        if only is not None and key != only:
            continue
        what = f"GGUF key {key!r}"
        type_names = parse_type(types.get(key), key)
        if key in raw:
            value = _b64(raw[key], f"{LAYOUT}.raw[{key!r}]")
            check_raw(type_names[0], value, what, order)
        else:
            if f"gguf.{key}" not in meta:
                raise CmfError(f"{what}: no gguf.{key} value in the metadata")
            value = encode_value(type_names, meta[f"gguf.{key}"], what, order)
        kvs.append((key, type_names[0], value))
    return kvs


def _alignment(kvs: list[tuple[str, str, bytes]], order: str) -> int:
    for key, type_name, value in kvs:
        if key == "general.alignment":
            if type_name != "UINT32":
                raise CmfError(f"general.alignment: expected UINT32, found {type_name}")
            return int.from_bytes(value, "little" if order == "<" else "big")
    return 32


def _fill(layout: dict[str, Any]) -> list[tuple[int, bytes]]:
    items = layout.get("fill", [])
    if not isinstance(items, list):
        raise CmfError(f"{LAYOUT}.fill: expected a list")
    out = []
    for i, item in enumerate(items):
        if not (
            isinstance(item, list)
            and len(item) == 2
            and isinstance(item[0], int)
            and not isinstance(item[0], bool)
            and item[0] >= 0
        ):
            raise CmfError(f"{LAYOUT}.fill[{i}]: expected [offset, base64]")
        out.append((item[0], _b64(item[1], f"{LAYOUT}.fill[{i}]")))
    return out


def restore_out(f: Any, meta: dict[str, Any], *, blocks_as_f32: bool = False) -> GGUFOut:
    """The GGUF file ``f`` (a GGUF-origin .cmf) was packed from (see the module docstring)."""
    layout = meta.get(LAYOUT)
    if not isinstance(layout, dict):
        raise CmfError(
            f"this file was packed from GGUF without {LAYOUT} (by an older cmf): "
            "pack the GGUF again to write it back as GGUF"
        )
    if "inexact" in layout:
        raise CmfError(f"the source GGUF cannot be rebuilt byte for byte: {layout['inexact']}")
    byte_order = layout.get("byte_order")
    order = {"little": "<", "big": ">"}.get(byte_order) if isinstance(byte_order, str) else None
    if order is None:
        raise CmfError(
            f"{LAYOUT}.byte_order: expected 'little' or 'big', found {layout.get('byte_order')!r}"
        )
    version = _get(meta, "cmf.gguf.version", int)
    alignment = _alignment(_kvs(meta, layout, order, only="general.alignment"), order)
    ggml_types = _get(meta, "cmf.gguf.tensor_types", dict)
    tensors, changed = [], False
    for name in _names(layout, "tensors"):
        ggml_type = ggml_types.get(name)
        if not isinstance(ggml_type, str):
            raise CmfError(f"tensor {name!r}: no GGML type in cmf.gguf.tensor_types")
        if name not in f:
            raise CmfError(f"tensor {name!r} of the GGUF layout is not in the file")
        dims = [int(d) for d in reversed(f.spec(name).shape)]
        if blocks_as_f32 and not kept_exactly(f, name, ggml_type):
            warnings.warn(
                f"tensor {name!r}: its {ggml_type} blocks are not kept exactly; written as F32",
                stacklevel=2,
            )
            changed = True
            tensors.append(TensorOut(name, dims, "F32", _f32(f, name, order)))
            continue
        tensors.append(TensorOut(name, dims, ggml_type, _lazy(f, name, ggml_type, order)))
    if set(ggml_types) - {t.name for t in tensors}:
        extra = sorted(set(ggml_types) - {t.name for t in tensors})[:3]
        raise CmfError(
            f"cmf.gguf.tensor_types names tensors missing from {LAYOUT}.tensors: {extra}"
        )
    # the key/values (a tokenizer's vocabulary: ~10^5 strings) are encoded by write_gguf_file
    # while the first tensors decode
    out = GGUFOut(version, order, lambda: _kvs(meta, layout, order), tensors, alignment=alignment)
    if not changed:  # a type changed: the source's offsets and size no longer apply
        offsets = layout.get("offsets")
        if offsets is not None and not isinstance(offsets, list):
            raise CmfError(f"{LAYOUT}.offsets: expected a list of integers")
        out.offsets = offsets
        out.fill = _fill(layout)
        size = layout.get("size")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool)):
            raise CmfError(f"{LAYOUT}.size: expected an integer")
        out.size = size
    return out


def _lazy(f: Any, name: str, ggml_type: str, order: str):
    return lambda: gguf_tensor_bytes(f, name, ggml_type, order)


def _f32(f: Any, name: str, order: str):
    import numpy as np

    def data() -> Any:
        return (
            np.ascontiguousarray(f.get_tensor(name), dtype=order + "f4").reshape(-1).view(np.uint8)
        )

    return data
