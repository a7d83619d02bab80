"""A GGUF import (a ``.cmf`` packed from a ``.gguf``) as transformers builds it from the ``.gguf``.

A GGUF file carries no ``config.json`` and no tokenizer files: its metadata (kept by
cmf.convert.gguf as ``gguf.<key>``) is both. This module gives what
``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)`` and
``AutoTokenizer.from_pretrained(dir, gguf_file=...)`` build from the same metadata:

* :func:`config_dict`: the Hugging Face ``config.json`` of the model (Llama-family architectures
  cmf.runtime.llama reads: llama, qwen2), float32 as transformers loads GGUF files;
* :func:`hf_tensors`: the Hugging Face tensor names and a getter that renames and puts llama.cpp's
  interleaved q/k rows back in Hugging Face order (cmf.runtime.llama's ``gguf_tensor_getter``);
* :func:`tokenizer`: a ``transformers.PreTrainedTokenizerFast`` over cmf.runtime.gguf_tokenizer's
  tokenizer, with the bos / eos / unk / pad tokens, BOS/EOS flags and chat template of the file.

Nothing here reads weights; cmf.transformers fills the model tensor by tensor. Needs transformers
only for :func:`tokenizer`; bad metadata is a CmfError.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .errors import CmfError

P = "gguf.tokenizer."
_SPECIAL = {
    "bos_token": "bos_token_id",
    "eos_token": "eos_token_id",
    "unk_token": "unknown_token_id",
    "pad_token": "padding_token_id",
}


def is_gguf_import(metadata: Mapping[str, Any], attachments: Any = ()) -> bool:
    """True for a model packed from a ``.gguf`` (or a ``.gguf`` read as cmf reads it) that has no
    ``config.json`` of its own: its config and tokenizer come from the GGUF metadata."""
    return metadata.get("cmf.source_format") == "gguf" and "config.json" not in attachments


def config_dict(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The ``config.json`` (a dict) of a GGUF import: cmf.runtime.llama's ``from_gguf_metadata``
    plus the unknown-token id and float32 as the model's dtype, as transformers' GGUF loader
    sets them. UnsupportedError for an architecture the Llama-family code does not know."""
    from .runtime.llama import from_gguf_metadata

    config = dict(from_gguf_metadata(metadata))
    unk = metadata.get(P + "ggml.unknown_token_id")
    if isinstance(unk, int) and not isinstance(unk, bool):
        config["unk_token_id"] = unk
    if (
        config["model_type"] != "llama"
        and config.get("head_dim") == config["hidden_size"] // config["num_attention_heads"]
    ):
        config.pop("head_dim")  # transformers reads rope.dimension_count for llama only
    if config.get("rope_scaling") is None:
        config.pop("rope_scaling", None)  # transformers' own default ("default" rope)
    config["dtype"] = "float32"  # the GGUF loader's dtype, whatever the blocks held
    return config


GetTensor = Callable[[str], np.ndarray]


def hf_tensors(
    metadata: Mapping[str, Any], names: list[str], get_tensor: GetTensor
) -> tuple[list[str], GetTensor]:
    """``(hf_names, get)``: the Hugging Face names of the GGUF tensors ``names`` (in file order;
    tensors the model has no place for, e.g. ``rope_freqs.weight``, left out) and ``get(hf_name)``
    returning the tensor renamed, q/k rows un-permuted for llama."""
    from .runtime.llama import gguf_name_map, gguf_tensor_getter

    return list(gguf_name_map(names).values()), gguf_tensor_getter(get_tensor, metadata)


def _token(metadata: Mapping[str, Any], key: str, tokens: list) -> str | None:
    i = metadata.get(P + "ggml." + key)
    if isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(tokens):
        return tokens[i]
    return None


def tokenizer(metadata: Mapping[str, Any], **overrides: Any) -> Any:
    """The ``transformers.PreTrainedTokenizerFast`` of a GGUF import's ``tokenizer.*`` metadata:
    the same ids, special tokens and chat template as transformers' GGUF tokenizer.
    ``overrides``: keyword arguments of the tokenizer's constructor (e.g. ``padding_side``)."""
    import transformers

    from .runtime.gguf_tokenizer import tokenizer_from_gguf

    backend = tokenizer_from_gguf(metadata)  # CmfError for a bad or unsupported vocabulary
    tokens = metadata.get(P + "ggml.tokens")
    kind = metadata.get(P + "ggml.model")
    special = {name: _token(metadata, key, tokens) for name, key in _SPECIAL.items()}
    kwargs: dict[str, Any] = {name: t for name, t in special.items() if t is not None}
    template = metadata.get(P + "chat_template")
    if isinstance(template, str):
        kwargs["chat_template"] = template
    elif template is not None:
        raise CmfError("GGUF metadata: tokenizer.chat_template must be a string")
    for flag, name in (("add_bos_token", "bos_token"), ("add_eos_token", "eos_token")):
        value = metadata.get(P + "ggml." + flag, kind == "llama" and flag == "add_bos_token")
        kwargs[flag] = value is True and name in kwargs  # as cmf's tokenizer: no token, not added
    try:
        return transformers.PreTrainedTokenizerFast(
            tokenizer_object=backend, **{**kwargs, **overrides}
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise CmfError(f"GGUF tokenizer cannot be built by transformers ({exc})") from None


__all__ = ["config_dict", "hf_tensors", "is_gguf_import", "tokenizer"]
