"""Sizes and refusals of a ``--gguf`` plan (spec/planner.md, "Planning into GGML types").

- :func:`check_gguf_source` refuses, before any work, a model the GGUF writer cannot write
  (cmf.convert.hf_gguf: Llama / Mistral / Qwen2 Hugging Face directories);
- :func:`gguf_fixed_bytes` estimates the bytes of the GGUF the plan does not choose: header
  (key/values with the tokenizer, tensor infos) and the unplanned tensors (F32 / F16 / BF16
  as stored), with the 32-byte alignment of every tensor;
- :func:`gguf_min_bytes` is the smallest GGUF the choices can make;
- :func:`gguf_file_bytes` is the exact size of the GGUF ``cmf unpack -o x.gguf`` writes from a
  .cmf (its header built as the writer builds it; no tensor decoded).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..errors import CmfError
from .ggml_candidates import ggml_choices, gguf_tensor_bytes

ALIGNMENT = 32


def _aligned(n: int, a: int = ALIGNMENT) -> int:
    return (n + a - 1) // a * a


def _config(attachments: Mapping[str, bytes]) -> dict[str, Any]:
    raw = attachments.get("config.json")
    if raw is None:
        raise CmfError(
            "GGUF planning needs a Hugging Face model directory (its config.json): the GGUF "
            "writer names tensors and keys from it"
        )
    try:
        config = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise CmfError("GGUF planning: config.json is not JSON") from None
    if not isinstance(config, dict):
        raise CmfError("GGUF planning: config.json is not a JSON object")
    return config


def check_gguf_source(
    tensors: Mapping[str, Any], attachments: Mapping[str, bytes]
) -> dict[str, Any]:
    """config.json of a model the GGUF writer takes; CmfError naming why not otherwise (an
    architecture without a GGUF mapping, no tokenizer.json, a tensor llama.cpp has no name
    for, rope scaling or sliding windows the writer does not write)."""
    from ..convert.hf_gguf import ARCHITECTURES, SKIPPED, _arch_keys, _rope_theta
    from ..runtime.llama import hf_to_gguf_name

    config = _config(attachments)
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in ARCHITECTURES:
        raise CmfError(
            f"GGUF planning: model_type {str(model_type)[:40]!r} has no GGUF mapping in cmf "
            f"({', '.join(ARCHITECTURES)} do)"
        )
    if "tokenizer.json" not in attachments:
        raise CmfError(
            "GGUF planning: the model directory has no tokenizer.json "
            "(a GGUF carries the tokenizer)"
        )
    try:
        _rope_theta(config)
        _arch_keys(ARCHITECTURES[model_type], config)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise CmfError(
            f"GGUF planning: config.json holds an unexpected value ({type(exc).__name__})"
        ) from None
    tied = bool(config.get("tie_word_embeddings", False))
    for name in tensors:
        if name.endswith(SKIPPED) or tied and name == "lm_head.weight":
            continue
        if hf_to_gguf_name(name) is None:
            raise CmfError(f"GGUF planning: tensor {name!r} has no llama.cpp name")
    return config


def _header_estimate(
    tensors: Mapping[str, Any], attachments: Mapping[str, bytes], config: dict[str, Any]
) -> int:
    from ..convert.gguf_kv import encode_value, parse_type, string_bytes, tensor_info
    from ..convert.hf_gguf import ARCHITECTURES, SKIPPED, _arch_keys
    from ..convert.hf_gguf_vocab import vocab_keys
    from ..runtime.llama import hf_to_gguf_name

    arch = ARCHITECTURES[config["model_type"]]
    tok_config = {}
    if "tokenizer_config.json" in attachments:
        try:
            got = json.loads(attachments["tokenizer_config.json"])
            tok_config = got if isinstance(got, dict) else {}
        except (ValueError, UnicodeDecodeError):
            tok_config = {}
    template = attachments.get("chat_template.jinja")
    vocab = vocab_keys(
        attachments["tokenizer.json"],
        config,
        tok_config,
        template.decode("utf-8", "replace") if template is not None else None,
    )
    keys = [
        ("general.architecture", "STRING", arch),
        ("general.name", "STRING", str(config.get("_name_or_path", ""))),
        ("general.file_type", "UINT32", 0),
        (f"{arch}.vocab_size", "UINT32", 0),
    ]
    keys += _arch_keys(arch, config) + vocab
    size = 4 + 4 + 8 + 8
    for k, t, v in keys:
        size += len(string_bytes(k, k, "<")) + 4 + len(encode_value(parse_type(t, k), v, k))
    tied = bool(config.get("tie_word_embeddings", False))
    for name, x in tensors.items():
        if (
            name.endswith(SKIPPED)
            or tied
            and name == "lm_head.weight"
            or not isinstance(x, np.ndarray)
        ):
            continue
        dims = [int(d) for d in reversed(x.shape)] or [1]
        size += len(tensor_info(hf_to_gguf_name(name) or name, dims, 0, 0, "<"))
    return _aligned(size)


def _stored(name: str, x: Any, config: dict[str, Any]) -> bool:
    from ..convert.hf_gguf import SKIPPED

    tied = bool(config.get("tie_word_embeddings", False))
    return isinstance(x, np.ndarray) and not (
        name.endswith(SKIPPED) or tied and name == "lm_head.weight"
    )


def gguf_fixed_bytes(
    tensors: Mapping[str, Any],
    planned: Iterable[str],
    attachments: Mapping[str, bytes],
    config: dict[str, Any],
) -> int:
    """Header plus the unplanned tensors' bytes (module docstring)."""
    planned = set(planned)
    size = _header_estimate(tensors, attachments, config)
    for name, x in tensors.items():
        if name in planned or not _stored(name, x, config):
            continue
        size += _aligned(int(x.size) * int(x.dtype.itemsize))
    return size


def gguf_min_bytes(tensors: Mapping[str, Any], planned: Iterable[str]) -> int:
    """The planned tensors' bytes in their smallest GGML choice (F32 where none applies),
    each aligned."""
    total = 0
    for name in planned:
        shape = tuple(int(d) for d in np.shape(tensors[name]))
        sizes = [gguf_tensor_bytes(c.params["type"], shape) for c in ggml_choices(shape[-1])]
        total += _aligned(min(sizes) if sizes else gguf_tensor_bytes("F32", shape))
    return total


def gguf_out_bytes(out: Any) -> int:
    """The size of the GGUF cmf.convert.gguf_write writes for ``out`` (a GGUFOut)."""
    from ..convert.gguf_kv import aligned
    from ..convert.gguf_write import check_out, header_bytes

    offsets = check_out(out)
    head = aligned(len(header_bytes(out, offsets)), out.alignment)
    if not out.tensors:
        return head
    return head + aligned(offsets[-1] + out.tensors[-1].nbytes, out.alignment)


def gguf_file_bytes(path: str | os.PathLike) -> int:
    """The exact size of the GGUF written from the .cmf at ``path`` (cmf.convert.hf_gguf)."""
    from .. import open as cmf_open
    from ..convert.hf_gguf import hf_out

    with cmf_open(path) as f:
        return gguf_out_bytes(hf_out(f, f.metadata()))


__all__ = [
    "check_gguf_source",
    "gguf_file_bytes",
    "gguf_out_bytes",
    "gguf_fixed_bytes",
    "gguf_min_bytes",
]
