"""The GGML type llama.cpp's quantizer gives each tensor of a Llama-family model for a fixed
recipe (``llama-quantize model Q4_K_M``): ``llama_tensor_get_type`` of ``src/llama-quant.cpp``
(llama.cpp as vendored by llama-cpp-python 0.3.36), re-written for the ftypes cmf compares
against — Q4_K_M, Q5_K_M, Q6_K, IQ4_XS, Q8_0 — and a dense (not mixture-of-experts) model.

Contract: :func:`recipe_types` maps each tensor (llama.cpp names, ``blk.N.attn_v.weight``...) to
the type llama.cpp stores it in, fallbacks for row lengths included; tensors it leaves
unquantized (1-D, norms) map to None (kept as they are: F32 from an f32 checkpoint).

The rules (non-Falcon, no experts, ``quantize_output_tensor`` on):

- ``output.weight``, and ``token_embd.weight`` when the model has no ``output.weight`` (tied
  embeddings): Q8_0 when its rows are not a multiple of the base type's block, else Q6_K
  (Q8_0 stays Q8_0);
- ``attn_v``: Q4_K_M / Q5_K_M give Q6_K to the "use_more_bits" layers (the first and last
  eighth, and every third layer between); IQ4_XS gives Q5_K where ``n_head / n_head_kv >= 4``;
- ``ffn_down``: Q4_K_M / Q5_K_M give Q6_K to the use_more_bits layers; IQ4_XS gives Q5_K to the
  first eighth of the layers when there is no imatrix;
- everything else: the base type (Q4_K, Q5_K, Q6_K, IQ4_XS, Q8_0);
- then llama.cpp's fallback where the row length is not a multiple of the block
  (cmf.ggml_encode.fallback_type: Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, IQ4_XS -> IQ4_NL,
  F16 when that does not fit either).
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import CmfError
from ..ggml_encode import TYPES, fallback_type

BASE = {"Q4_K_M": "Q4_K", "Q5_K_M": "Q5_K", "Q6_K": "Q6_K", "IQ4_XS": "IQ4_XS", "Q8_0": "Q8_0"}
COMPARED = ("Q4_K_M", "Q5_K_M", "Q6_K")  # the recipes ``cmf report`` shows beside a --gguf plan


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's choice of the layers that get more bits (C integer division: n >= 0)."""
    return (
        i_layer < n_layers // 8
        or i_layer >= 7 * n_layers // 8
        or (i_layer - n_layers // 8) % 3 == 2
    )


def _layer(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "blk" and parts[1].isdigit() else None


def recipe_types(
    shapes: Mapping[str, tuple[int, ...]],
    ftype: str,
    *,
    n_gqa: int = 1,
    n_layers: int | None = None,
    imatrix: bool = True,
) -> dict[str, str | None]:
    """llama.cpp name -> GGML type for recipe ``ftype`` (one of :data:`BASE`); ``shapes`` are
    numpy shapes (GGUF rows = the last axis), in the model's tensor order. ``n_gqa`` is
    ``n_head / n_head_kv``; ``n_layers`` the block count (default: from the names)."""
    if ftype not in BASE:
        raise CmfError(f"llama.cpp recipe: expected one of {', '.join(BASE)}, found {ftype!r}")
    base = BASE[ftype]
    layers = [i for i in (_layer(n) for n in shapes) if i is not None]
    n_layer = n_layers if n_layers is not None else (max(layers) + 1 if layers else 0)
    n_attn_v = sum(1 for n in shapes if ".attn_v." in n)
    tied = "output.weight" not in shapes
    i_attn_v = 0
    out: dict[str, str | None] = {}
    for name, shape in shapes.items():
        if len(shape) < 2 or not name.endswith("weight") or "_norm.weight" in name:
            out[name] = None
            continue
        cols = int(shape[-1])
        t = base
        if name == "output.weight" or (tied and name == "token_embd.weight"):
            if cols % TYPES[base].block:
                t = "Q8_0"
            elif base != "Q8_0":
                t = "Q6_K"
        elif name == "token_embd.weight":
            pass
        elif ".attn_v." in name:
            if ftype == "IQ4_XS" and n_gqa >= 4:
                t = "Q5_K"
            elif ftype in ("Q4_K_M", "Q5_K_M") and use_more_bits(i_attn_v, n_attn_v):
                t = "Q6_K"
            i_attn_v += 1
        elif ".ffn_down." in name:
            i = _layer(name) or 0
            if ftype in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n_layer):
                t = "Q6_K"
            elif ftype == "IQ4_XS" and not imatrix and i < n_layer // 8:
                t = "Q5_K"
        out[name] = fallback_type(t, cols)
    return out


def hf_recipe_types(
    shapes: Mapping[str, tuple[int, ...]], config: Mapping, ftype: str, imatrix: bool = True
) -> dict[str, str | None]:
    """:func:`recipe_types` for a Hugging Face model's tensors (HF names in, HF names out);
    ``config`` is its config.json. A tied ``lm_head.weight`` is left out as llama.cpp's
    converter leaves it out; tensors without a llama.cpp name map to None."""
    from ..runtime.llama import hf_to_gguf_name

    tied = bool(config.get("tie_word_embeddings", False))
    heads = int(config.get("num_attention_heads") or 1)
    kv = int(config.get("num_key_value_heads") or heads)
    names = {n: hf_to_gguf_name(n) for n in shapes if not (tied and n == "lm_head.weight")}
    by_gguf = {g: tuple(shapes[n]) for n, g in names.items() if g is not None}
    got = recipe_types(
        by_gguf,
        ftype,
        n_gqa=max(1, heads // max(kv, 1)),
        n_layers=config.get("num_hidden_layers"),
        imatrix=imatrix,
    )
    return {n: (got[g] if g is not None else None) for n, g in names.items()}


__all__ = ["BASE", "COMPARED", "hf_recipe_types", "recipe_types", "use_more_bits"]
