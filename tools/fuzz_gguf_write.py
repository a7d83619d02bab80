"""Fuzz target ``gguf-write``: the GGUF writer (cmf.convert.gguf_write) on hostile metadata.

The input is the JSON metadata of a GGUF-origin .cmf (``cmf.gguf.layout``, value and tensor
types, ``gguf.<key>`` values); it replaces the metadata of a real .cmf packed from a small GGUF
(plain and legacy block tensors), and the file is written back as GGUF. Checks beyond "only
CmfError" (tools/fuzz_common.py):

- a refused write leaves nothing: no output file, no temporary file beside it;
- a written file is read by gguf-py, with the tensors the layout names.

The mutator edits the JSON structurally (values swapped for other types or interesting integers,
keys dropped, list items duplicated, types renamed, layout offsets/fill/size/raw changed) and
falls back to byte mutations. Registered with the converter targets (tools/fuzz_convert.py).

    python tools/fuzz_convert.py gguf-write --engine python --runs 3000
"""

from __future__ import annotations

import base64
import json
import os
import random
import sys
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from cmf.errors import CmfError
from cmf.index import check_metadata
from tools.fuzz_common import INTERESTING, Finding, Target, byte_mutate, scratch_dir

_BASE: Any = None  # (path of the packed .cmf, its metadata)


def _base() -> tuple[str, dict[str, Any]]:
    global _BASE
    if _BASE is None:
        import gguf

        from cmf.cli import run

        Q = gguf.GGMLQuantizationType
        rng = np.random.default_rng(9)
        d = os.path.join(scratch_dir(), "gguf-write")
        os.makedirs(d, exist_ok=True)
        src, packed = os.path.join(d, "src.gguf"), os.path.join(d, "src.cmf")
        w = gguf.GGUFWriter(src, "llama")
        w.add_custom_alignment(64)
        w.add_uint32("test.u32", 7)
        w.add_float32("test.f32", 0.5)
        w.add_string("test.s", "héllo")
        w.add_array("test.a", [1, 2, 3])
        w.add_array("test.sa", ["x", "yz"])
        w.add_array("test.nested", [[1, 2], [3]])
        w.add_bool("test.b", True)
        w.add_tensor("f32", rng.standard_normal((3, 4)).astype(np.float32))
        w.add_tensor("q8", gguf.quants.quantize(rng.standard_normal((2, 32)).astype(np.float32), Q.Q8_0),
                     raw_dtype=Q.Q8_0)
        w.add_tensor("q41", gguf.quants.quantize(rng.standard_normal((1, 64)).astype(np.float32), Q.Q4_1),
                     raw_dtype=Q.Q4_1)
        w.add_tensor("i16", np.arange(6, dtype=np.int16))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        try:
            run(["pack", src, "-o", packed, "-q", "--force"])
        except SystemExit as exc:
            if exc.code:
                raise RuntimeError(f"packing the gguf-write seed failed ({exc.code})") from None
        import cmf

        f = cmf.CmfFile(packed)
        _BASE = (f, f.metadata())
    return _BASE


class _View:
    """A .cmf file seen with other metadata."""

    def __init__(self, f: Any, meta: dict[str, Any]) -> None:
        self._f, self._meta = f, meta

    def metadata(self) -> dict[str, Any]:
        return self._meta

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __contains__(self, name: object) -> bool:
        return name in self._f


def run_gguf_write(data: bytes) -> None:
    from cmf.convert.gguf_export import write_gguf

    try:
        meta = json.loads(data)
        check_metadata(meta)  # only what a .cmf index can hold
    except (ValueError, UnicodeDecodeError, RecursionError, CmfError):
        return
    f, _ = _base()
    d = os.path.join(scratch_dir(), "gguf-out")
    os.makedirs(d, exist_ok=True)
    out = os.path.join(d, "out.gguf")
    if os.path.exists(out):
        os.unlink(out)
    try:
        write_gguf(_View(f, meta), out)
    except CmfError:
        if os.listdir(d):
            raise Finding(f"a refused GGUF write left {os.listdir(d)}") from None
        raise
    import gguf

    try:
        r = gguf.GGUFReader(out)
        names = [t.name for t in r.tensors]
    except Exception as exc:  # noqa: BLE001 - any failure of gguf-py on our output is the finding
        raise Finding(f"gguf-py cannot read the GGUF written ({type(exc).__name__}: {exc})") from None
    layout = meta.get("cmf.gguf.layout")
    if isinstance(layout, dict) and names != layout.get("tensors"):
        raise Finding(f"the GGUF written holds tensors {names[:4]}, the layout names {layout.get('tensors')}")


def gguf_write_seeds() -> list[bytes]:
    _, meta = _base()
    seeds = [json.dumps(meta).encode()]
    layout = dict(meta["cmf.gguf.layout"])
    odd = dict(meta, **{"cmf.gguf.layout": dict(layout, offsets=[0, 64, 192, 256],
                                                fill=[[10**4, "AQI="]], size=10**4 + 64)})
    seeds.append(json.dumps(odd).encode())
    return seeds


def _leaves(value: Any, path: tuple = ()) -> list[tuple]:
    if isinstance(value, dict):
        return [path] + [p for k, v in value.items() for p in _leaves(v, path + (k,))]
    if isinstance(value, list):
        return [path] + [p for i, v in enumerate(value[:50]) for p in _leaves(v, path + (i,))]
    return [path]


_REPLACEMENTS = [None, True, -1, 0.5, "", "UINT8", "ARRAY/ARRAY/INT8", "ARRAY", "Q4_0", "F16", "big",
                 [], {}, [[0, "AA=="]], base64.b64encode(b"\x00" * 12).decode(), "!!", [1, "x"]]


def mutate_gguf_write(data: bytes, rng: random.Random) -> bytes:
    try:
        meta = json.loads(data)
        if not isinstance(meta, dict):
            raise ValueError
    except (ValueError, UnicodeDecodeError, RecursionError):
        return byte_mutate(data, rng)
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(_leaves(meta)[1:] or [()])
        if not path:
            break
        parent = meta
        for step in path[:-1]:
            parent = parent[step]
        key = path[-1]
        r = rng.random()
        if r < 0.35:
            parent[key] = rng.choice(INTERESTING) * rng.choice((1, -1))
        elif r < 0.7:
            parent[key] = rng.choice(_REPLACEMENTS)
        elif r < 0.85 and isinstance(parent, dict):
            del parent[key]
        elif isinstance(parent, list):
            parent.insert(rng.randrange(len(parent) + 1), parent[key])
        else:
            parent[key] = [parent[key]] * rng.randint(0, 3)
    return json.dumps(meta).encode()


TARGETS = {
    "gguf-write": Target("gguf-write", run_gguf_write, gguf_write_seeds, mutate=mutate_gguf_write,
                         instrument=("cmf.convert.gguf_export", "cmf.convert.gguf_write", "cmf.convert.gguf_restore",
                                     "cmf.convert.gguf_kv", "cmf.convert.gguf_tensor_out")),
}
