"""Fuzz targets ``gguf-write`` and ``gguf-write-hf``: the GGUF writer on hostile metadata.

The input is the JSON metadata of a GGUF-origin .cmf (``cmf.gguf.layout``, value and tensor
types, ``gguf.<key>`` values); it replaces the metadata of a real .cmf packed from a small GGUF
(plain and legacy block tensors), and the file is written back as GGUF. Checks beyond "only
CmfError" (tools/fuzz_common.py):

- a refused write leaves nothing: no output file, no temporary file beside it;
- a written file is read by gguf-py, with the tensors the layout names.

``gguf-write-hf``: the input is ``{"config": ..., "tokenizer": ..., "tokenizer_config": ...}``,
the attachments of a tiny Llama directory's .cmf (a value that is a string is the file's text),
written back as llama.cpp's GGUF (cmf.convert.hf_gguf); the same checks.

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
        w.add_tensor(
            "q8",
            gguf.quants.quantize(rng.standard_normal((2, 32)).astype(np.float32), Q.Q8_0),
            raw_dtype=Q.Q8_0,
        )
        w.add_tensor(
            "q41",
            gguf.quants.quantize(rng.standard_normal((1, 64)).astype(np.float32), Q.Q4_1),
            raw_dtype=Q.Q4_1,
        )
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
    try:
        meta = json.loads(data)
        check_metadata(meta)  # only what a .cmf index can hold
    except (ValueError, UnicodeDecodeError, RecursionError, CmfError):
        return
    f, _ = _base()
    layout = meta.get("cmf.gguf.layout")
    _write_checked(_View(f, meta), layout.get("tensors") if isinstance(layout, dict) else None)


def _write_checked(f: Any, tensors: Any) -> None:
    """Write ``f`` as GGUF: CmfError with nothing left behind, or a file gguf-py reads."""
    from cmf.convert.gguf_export import write_gguf

    d = os.path.join(scratch_dir(), "gguf-out")
    os.makedirs(d, exist_ok=True)
    out = os.path.join(d, "out.gguf")
    if os.path.exists(out):
        os.unlink(out)
    try:
        write_gguf(f, out)
    except CmfError:
        if os.listdir(d):
            raise Finding(f"a refused GGUF write left {os.listdir(d)}") from None
        raise
    import gguf

    try:
        r = gguf.GGUFReader(out)
        names = [t.name for t in r.tensors]
    except Exception as exc:  # noqa: BLE001 - any failure of gguf-py on our output is the finding
        raise Finding(
            f"gguf-py cannot read the GGUF written ({type(exc).__name__}: {exc})"
        ) from None
    if tensors is not None and names != tensors:
        raise Finding(
            f"the GGUF written holds tensors {names[:4]}, the layout names {str(tensors)[:80]}"
        )


def gguf_write_seeds() -> list[bytes]:
    _, meta = _base()
    seeds = [json.dumps(meta).encode()]
    layout = dict(meta["cmf.gguf.layout"])
    odd = dict(
        meta,
        **{
            "cmf.gguf.layout": dict(
                layout, offsets=[0, 64, 192, 256], fill=[[10**4, "AQI="]], size=10**4 + 64
            )
        },
    )
    seeds.append(json.dumps(odd).encode())
    return seeds


def _leaves(value: Any, path: tuple = ()) -> list[tuple]:
    if isinstance(value, dict):
        return [path] + [p for k, v in value.items() for p in _leaves(v, path + (k,))]
    if isinstance(value, list):
        return [path] + [p for i, v in enumerate(value[:50]) for p in _leaves(v, path + (i,))]
    return [path]


_REPLACEMENTS = [
    None,
    True,
    -1,
    0.5,
    "",
    "UINT8",
    "ARRAY/ARRAY/INT8",
    "ARRAY",
    "Q4_0",
    "F16",
    "big",
    [],
    {},
    [[0, "AA=="]],
    base64.b64encode(b"\x00" * 12).decode(),
    "!!",
    [1, "x"],
]


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


# ----------------------------------------------------------------------------- HF models

_HF: Any = None  # the .cmf of a tiny Llama directory, and its attachments as JSON values


def _hf_base() -> tuple[Any, dict[str, Any]]:
    global _HF
    if _HF is None:
        from safetensors.numpy import save_file
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers

        import cmf
        from cmf.cli import run

        d = os.path.join(scratch_dir(), "gguf-write-hf", "model")
        os.makedirs(d, exist_ok=True)
        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.train_from_iterator(
            ["hello world, 123 spaces  here"] * 10,
            trainers.BpeTrainer(
                vocab_size=270,
                special_tokens=["<|endoftext|>"],
                show_progress=False,
                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            ),
        )
        tokenizer = json.loads(tk.to_str())
        vocab, dim, ff = tk.get_vocab_size(), 32, 48
        config = {
            "model_type": "llama",
            "hidden_size": dim,
            "intermediate_size": ff,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "vocab_size": vocab,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "max_position_embeddings": 64,
            "tie_word_embeddings": False,
            "bos_token_id": 0,
            "eos_token_id": 0,
        }
        rng = np.random.default_rng(4)
        shapes = {
            "model.embed_tokens.weight": (vocab, dim),
            "lm_head.weight": (vocab, dim),
            "model.norm.weight": (dim,),
            "model.layers.0.input_layernorm.weight": (dim,),
            "model.layers.0.post_attention_layernorm.weight": (dim,),
            "model.layers.0.self_attn.q_proj.weight": (dim, dim),
            "model.layers.0.self_attn.k_proj.weight": (dim // 2, dim),
            "model.layers.0.self_attn.v_proj.weight": (dim // 2, dim),
            "model.layers.0.self_attn.o_proj.weight": (dim, dim),
            "model.layers.0.mlp.gate_proj.weight": (ff, dim),
            "model.layers.0.mlp.up_proj.weight": (ff, dim),
            "model.layers.0.mlp.down_proj.weight": (dim, ff),
        }
        save_file(
            {k: rng.standard_normal(v).astype(np.float32) for k, v in shapes.items()},
            os.path.join(d, "model.safetensors"),
        )
        for name, value in (("config.json", config), ("tokenizer.json", tokenizer)):
            with open(os.path.join(d, name), "w") as fh:
                json.dump(value, fh)
        packed = os.path.join(d, "..", "model.cmf")
        try:
            run(["pack", d, "-o", packed, "-q", "--force"])
        except SystemExit as exc:
            if exc.code:
                raise RuntimeError("packing the gguf-write-hf seed failed") from None
        _HF = (
            cmf.CmfFile(packed),
            {"config": config, "tokenizer": tokenizer, "tokenizer_config": {}},
        )
    return _HF


class _HFView(_View):
    """A .cmf file seen with other attachments (JSON values, or text kept as it is)."""

    def __init__(self, f: Any, files: dict[str, Any]) -> None:
        super().__init__(f, f.metadata())
        self._files = {
            f"{k}.json": (v if isinstance(v, str) else json.dumps(v)).encode("utf-8", "replace")
            for k, v in files.items()
        }

    def attachments(self) -> list[str]:
        return list(self._files)

    def get_attachment(self, name: str) -> bytes:
        return self._files[name]


def run_gguf_write_hf(data: bytes) -> None:
    try:
        files = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return
    if not isinstance(files, dict):
        return
    f, _ = _hf_base()
    _write_checked(_HFView(f, {k: v for k, v in files.items() if isinstance(k, str)}), None)


def gguf_write_hf_seeds() -> list[bytes]:
    _, files = _hf_base()
    spm = json.loads(json.dumps(files))
    spm["tokenizer"]["model"]["byte_fallback"] = True
    spm["tokenizer"]["pre_tokenizer"] = {
        "type": "Metaspace",
        "replacement": "\u2581",
        "prepend_scheme": "first",
    }
    return [json.dumps(files).encode(), json.dumps(spm).encode()]


TARGETS = {
    "gguf-write": Target(
        "gguf-write",
        run_gguf_write,
        gguf_write_seeds,
        mutate=mutate_gguf_write,
        instrument=(
            "cmf.convert.gguf_export",
            "cmf.convert.gguf_write",
            "cmf.convert.gguf_restore",
            "cmf.convert.gguf_kv",
            "cmf.convert.gguf_tensor_out",
        ),
    ),
    "gguf-write-hf": Target(
        "gguf-write-hf",
        run_gguf_write_hf,
        gguf_write_hf_seeds,
        mutate=mutate_gguf_write,
        # the oracle, gguf-py's reader, takes 1.1-1.5 s on a GGUF of a 32k-token vocabulary (a
        # config's vocab_size pads it) that cmf writes in 33 ms: measured, not cmf's time
        time_limit=3.0,
        instrument=(
            "cmf.convert.hf_gguf",
            "cmf.convert.hf_gguf_vocab",
            "cmf.convert.gguf_write",
            "cmf.convert.gguf_kv",
        ),
    ),
}
