"""A Llama / Mistral / Qwen2 model packed from a Hugging Face directory, as the GGUF llama.cpp's
converter writes (spec/converters.md § GGUF out, models from Hugging Face directories).

Contract:

- :func:`hf_refusal` says in a sentence why a file cannot be written this way (no config.json or
  tokenizer.json attachment, another architecture, rope scaling, a tensor llama.cpp has no name
  for, a dtype GGUF does not hold), or None;
- :func:`hf_out` gives the :class:`~cmf.convert.gguf_write.GGUFOut`: ``general.*`` and
  architecture keys, the tokenizer keys (cmf.convert.hf_gguf_vocab), llama.cpp's tensor names
  in the model's order, q/k rows of the ``llama`` architecture interleaved per head
  (:func:`permute_qk`), each tensor as F32 / F16 / BF16 from its cmf dtype, or as the legacy GGML
  block type whose blocks decode to exactly its ``quantize`` tree's values (``--preset q8``:
  Q8_0); tensors are decoded one at a time when written.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from ..errors import CmfError
from .gguf_kv import encode_value, parse_type
from .gguf_write import GGUFOut, TensorOut

ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}  # model_type -> GGUF
PERMUTED = frozenset({"llama"})  # llama.cpp's rope for these pairs adjacent rows
DTYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16"}
FILE_TYPES = {"F32": 0, "F16": 1, "BF16": 32}  # general.file_type of an all-<type> model
SKIPPED = ("rotary_emb.inv_freq",)  # buffers HF saves that llama.cpp recomputes


def permute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows of a q/k projection (or bias) from HF's rotate-halves order to llama.cpp's adjacent
    pairs: in each head of ``h`` rows, row ``j`` of the first half and row ``j`` of the second
    half become rows ``2j`` and ``2j + 1``. [rows, ...] -> same shape."""
    rows = w.shape[0]
    if n_heads <= 0 or rows % (2 * n_heads):
        raise CmfError(f"cannot split {rows} rows into {n_heads} heads of an even size")
    half = rows // n_heads // 2
    return np.ascontiguousarray(w.reshape(n_heads, 2, half, *w.shape[1:]).swapaxes(1, 2)).reshape(
        w.shape
    )


def _json(f: Any, name: str) -> dict[str, Any] | None:
    if name not in f.attachments():
        return None
    try:
        value = json.loads(f.get_attachment(name))
    except (ValueError, UnicodeDecodeError):
        raise CmfError(f"attachment {name} is not JSON") from None
    return value if isinstance(value, dict) else None


def _rope_theta(config: dict[str, Any]) -> float:
    params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or {}
    if not isinstance(params, dict) or not isinstance(scaling, dict):
        raise CmfError("config.json: rope_parameters / rope_scaling is not a map")
    kind = params.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if kind not in (None, "default"):
        raise CmfError(f"rope scaling {kind!r} is not written to GGUF by cmf")
    theta = params.get("rope_theta", config.get("rope_theta", 10000.0))
    if not isinstance(theta, (int, float)):
        raise CmfError(f"config.json: rope_theta {theta!r} is not a number")
    return float(theta)


def _names(f: Any, config: dict[str, Any]) -> list[tuple[str, str]]:
    """(cmf name, GGUF name) for each tensor written, in file order."""
    from ..runtime.llama import hf_to_gguf_name

    tied = bool(config.get("tie_word_embeddings", False))
    out = []
    for name in f.keys():
        if name.endswith(SKIPPED) or tied and name == "lm_head.weight":
            continue
        gguf_name = hf_to_gguf_name(name)
        if gguf_name is None:
            raise CmfError(f"tensor {name!r} has no llama.cpp name")
        out.append((name, gguf_name))
    return out


def _check(f: Any, meta: dict[str, Any]) -> tuple[dict[str, Any], str]:
    if meta.get("cmf.source_format") is not None:
        raise CmfError(f"it was packed from {meta.get('cmf.source_format')}, not a model directory")
    config = _json(f, "config.json")
    if config is None:
        raise CmfError("it has no config.json attachment (pack a Hugging Face model directory)")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in ARCHITECTURES:
        raise CmfError(
            f"model_type {model_type!r} is not one cmf writes as GGUF "
            f"({', '.join(ARCHITECTURES)} are)"
        )
    if "tokenizer.json" not in f.attachments():
        raise CmfError("it has no tokenizer.json attachment")
    _rope_theta(config)
    window, context = config.get("sliding_window"), config.get("max_position_embeddings", 2048)
    if (
        isinstance(window, int)
        and window < context
        and config.get("use_sliding_window", model_type == "mistral")
    ):
        raise CmfError(
            f"sliding-window attention ({window} of {context} positions) is not "
            "written to GGUF by cmf"
        )
    return config, ARCHITECTURES[model_type]


def hf_refusal(f: Any, meta: dict[str, Any]) -> str | None:
    """None if :func:`hf_out` can write ``f``, else why not."""
    try:
        config, arch = _check(f, meta)
        _arch_keys(arch, config)
        for name, _ in _names(f, config):
            if f.spec(name).dtype.name not in DTYPES:
                raise CmfError(
                    f"tensor {name!r} is {f.spec(name).dtype.name}; GGUF models hold f32/f16/bf16"
                )
    except CmfError as exc:
        return str(exc)
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, RecursionError) as exc:
        return f"config.json holds an unexpected value ({type(exc).__name__})"
    return None


def _positive(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 1 << 32:
        raise CmfError(f"config.json: {what} {str(value)[:40]} is not a positive 32-bit integer")
    return value


def _arch_keys(arch: str, config: dict[str, Any]) -> list[tuple[str, str, Any]]:
    d, heads = config.get("hidden_size"), config.get("num_attention_heads")
    values = {
        "block_count": config.get("num_hidden_layers"),
        "embedding_length": d,
        "feed_forward_length": config.get("intermediate_size"),
        "attention.head_count": heads,
        "attention.head_count_kv": config.get("num_key_value_heads", heads),
    }
    for key, value in values.items():
        _positive(value, key)
    head_dim = _positive(config.get("head_dim") or d // heads, "head_dim")
    eps = config.get("rms_norm_eps", 1e-6)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool):
        raise CmfError(f"config.json: rms_norm_eps {str(eps)[:40]} is not a number")
    eps = float(np.float32(eps))
    context = _positive(config.get("max_position_embeddings", 2048), "max_position_embeddings")
    keys = [(f"{arch}.context_length", "UINT32", context)]
    keys += [(f"{arch}.{k}", "UINT32", v) for k, v in values.items()]
    keys += [
        (f"{arch}.rope.freq_base", "FLOAT32", float(np.float32(_rope_theta(config)))),
        (f"{arch}.attention.layer_norm_rms_epsilon", "FLOAT32", eps),
        (f"{arch}.rope.dimension_count", "UINT32", int(head_dim)),
    ]
    if head_dim * heads != d:
        keys += [
            (f"{arch}.attention.key_length", "UINT32", int(head_dim)),
            (f"{arch}.attention.value_length", "UINT32", int(head_dim)),
        ]
    return keys


_AS_BLOCKS = {
    (8, "symmetric"): "Q8_0",
    (4, "symmetric"): "Q4_0",
    (4, "asymmetric"): "Q4_1",
    (5, "symmetric"): "Q5_0",
    (5, "asymmetric"): "Q5_1",
}


def _blocks_held(f: Any, name: str) -> str | None:
    """The legacy GGML type whose blocks decode to exactly the values a tensor's ``quantize``
    tree decodes to (f16 scales along the last axis, blocks of a multiple of 32 elements or
    the whole row: each 32-element block takes its block's scale and min), else None."""
    from .gguf_blocks import stored_type

    kind = stored_type(f, name)
    if kind is not None:
        return kind
    entry = f.entry(f.entry(name).alias or name)
    node, shape = entry.encoding, entry.spec.shape
    codec = getattr(node, "codec", None)
    if (
        getattr(codec, "name", None) != "quantize"
        or entry.spec.dtype.name != "f32"
        or not shape
        or shape[-1] % 32
        or codec.scale_dtype != "f16"
        or codec.axis not in (-1, len(shape) - 1)
        or codec.block % 32
    ):
        return None
    return _AS_BLOCKS.get((codec.bits, codec.scheme))


def _requantized(f: Any, name: str, ggml_type: str) -> np.ndarray:
    """Blocks of ``ggml_type`` from a ``quantize`` tree :func:`_blocks_held` accepted."""
    from .gguf_blocks import stored_type
    from .gguf_legacy import parts_to_gguf_blocks
    from .gguf_tensor_out import _entry_and_decoder, gguf_tensor_bytes

    if stored_type(f, name) == ggml_type:
        return gguf_tensor_bytes(f, name, ggml_type)
    entry, decode = _entry_and_decoder(f, name)
    n, block = entry.spec.shape[-1], entry.encoding.codec.block or entry.spec.shape[-1]
    which = np.arange(n // 32) * 32 // block  # the quantize block of each 32-element block
    parts = {k: decode(c) for k, c in entry.encoding.parts.items()}
    return parts_to_gguf_blocks(
        {k: v if k == "q" else np.ascontiguousarray(v[..., which]) for k, v in parts.items()},
        ggml_type,
    )


def ggml_type_of(f: Any, name: str) -> str:
    """The GGML type tensor ``name`` of the open file ``f`` has in the GGUF :func:`hf_out`
    writes (CmfError for a dtype a GGUF model does not hold)."""
    return _ggml_type(f, name)


def _ggml_type(f: Any, name: str) -> str:
    """The legacy block type a tensor's tree holds, else its plain type."""
    dtype = f.spec(name).dtype.name
    held = _blocks_held(f, name)
    if held is not None:
        return held
    if dtype not in DTYPES:
        raise CmfError(f"tensor {name!r} is {dtype}; GGUF models hold f32/f16/bf16")
    return DTYPES[dtype]


def _producer(f: Any, name: str, ggml_type: str, heads: int | None):
    from .gguf_tensor_out import gguf_tensor_bytes

    def data() -> Any:
        plain = ggml_type in DTYPES.values()
        if heads is None:
            return (
                gguf_tensor_bytes(f, name, ggml_type) if plain else _requantized(f, name, ggml_type)
            )
        if plain:
            array = f.get_tensor(name)
            return permute_qk(np.ascontiguousarray(array), heads).reshape(-1).view(np.uint8)
        row_bytes = _requantized(f, name, ggml_type).reshape(f.spec(name).shape[0], -1)
        return permute_qk(row_bytes, heads).reshape(
            -1
        )  # blocks never cross rows: permute rows of blocks

    return data


def hf_out(f: Any, meta: dict[str, Any]) -> GGUFOut:
    """The GGUF of a Llama-family model packed from a Hugging Face directory (module docstring)."""
    try:
        return _hf_out(f, meta)
    except RecursionError:
        raise CmfError("config.json or tokenizer.json nests too deeply") from None
    except (
        TypeError,
        ValueError,
        KeyError,
        AttributeError,
        IndexError,
    ) as exc:  # a value of an unexpected kind
        raise CmfError(
            f"config.json or tokenizer.json holds an unexpected value "
            f"({type(exc).__name__}: {str(exc)[:80]})"
        ) from None


def _hf_out(f: Any, meta: dict[str, Any]) -> GGUFOut:
    from .hf_gguf_vocab import vocab_keys

    config, arch = _check(f, meta)
    tok_config = _json(f, "tokenizer_config.json") or {}
    template = (
        f.get_attachment("chat_template.jinja").decode("utf-8", "replace")
        if "chat_template.jinja" in f.attachments()
        else None
    )
    vocab = vocab_keys(f.get_attachment("tokenizer.json"), config, tok_config, template)
    names = _names(f, config)
    arch_keys = _arch_keys(arch, config)  # checks the sizes used below
    heads = {
        "attn_q": config["num_attention_heads"],
        "attn_k": config.get("num_key_value_heads", config["num_attention_heads"]),
    }
    tensors, counts = [], {}
    for name, gguf_name in names:
        ggml_type = _ggml_type(f, name)
        counts[ggml_type] = counts.get(ggml_type, 0) + 1
        part = gguf_name.split(".")[2] if gguf_name.startswith("blk.") else ""
        n_heads = heads.get(part) if arch in PERMUTED else None
        dims = [int(d) for d in reversed(f.spec(name).shape)]
        tensors.append(
            TensorOut(gguf_name, dims, ggml_type, _producer(f, name, ggml_type, n_heads))
        )
    main = max(counts, key=counts.get) if counts else "F32"
    keys: list[tuple[str, str, Any]] = [("general.architecture", "STRING", arch)]
    name = config.get("_name_or_path") or config.get("_model_name_or_path")
    if isinstance(name, str) and name:
        keys.append(("general.name", "STRING", name))
    keys += arch_keys
    if main in FILE_TYPES:
        keys.append(("general.file_type", "UINT32", FILE_TYPES[main]))
    tokens = next(v for k, _, v in vocab if k == "tokenizer.ggml.tokens")
    keys.append((f"{arch}.vocab_size", "UINT32", len(tokens)))
    keys += vocab
    kvs = [
        (k, parse_type(t, k)[0], encode_value(parse_type(t, k), v, f"GGUF key {k!r}"))
        for k, t, v in keys
    ]
    return GGUFOut(3, "<", kvs, tensors)
