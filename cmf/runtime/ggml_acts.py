"""llama.cpp's activation rounding, simulated: what its CPU backend does to the input of a matrix
product before multiplying it by a weight of a given GGML type (spec/planner.md, "Planning into
GGML types").

ggml-cpu multiplies a weight of type ``t`` by activations converted to ``t``'s *vec-dot type*
(:data:`VEC_DOT_TYPE`): 8-bit blocks for the quantized types, F16 / BF16 for F16 / BF16
weights, nothing for F32. The blocks, as ggml-cpu's x86 code makes them:

- ``Q8_0`` (and ``Q8_1``, the same values plus a block sum): blocks of 32, ``amax`` the block's
  largest magnitude, codes ``rint(x * (127 / amax))`` (float32 product, ties to even), the
  scale ``amax / 127`` stored as f16: a value becomes ``code * f16(amax / 127)``;
- ``Q8_K``: blocks of 256, ``s = 127 / amax`` in float32, codes ``rint(x * s)``, the scale
  ``1 / s`` kept in float32: a value becomes ``code * (1 / s)``;
- ``F16`` / ``BF16``: rounded to that float type, to nearest, ties to even.

The integer dot products of the blocks then equal the float32 product of the rounded values up
to the order of float32 sums, so :func:`rounded_linear` (round, then multiply in float32) is
what llama.cpp computes. A fused weight of the numpy runner (q/k/v, gate/up) is split into the
row spans of its tensors, each span multiplied by its own type's rounding.

- :func:`round_activations`: ``x`` [..., n] rounded as one activation type;
- :func:`llama_cpp_rounding`: a context manager under which a cmf.runtime.llama runner's matrix
  products round their inputs by their weights' types (``type_of``: Hugging Face tensor name ->
  GGML type, None / "F32" for none).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..errors import CmfError

# weight GGML type -> the type ggml-cpu converts the activations to (type_traits_cpu.vec_dot_type)
VEC_DOT_TYPE = {
    "F32": "F32",
    "F16": "F16",
    "BF16": "BF16",
    "Q4_0": "Q8_0",
    "Q4_1": "Q8_1",
    "Q5_0": "Q8_0",
    "Q5_1": "Q8_1",
    "Q8_0": "Q8_0",
    "Q2_K": "Q8_K",
    "Q3_K": "Q8_K",
    "Q4_K": "Q8_K",
    "Q5_K": "Q8_K",
    "Q6_K": "Q8_K",
    "IQ2_XXS": "Q8_K",
    "IQ2_XS": "Q8_K",
    "IQ2_S": "Q8_K",
    "IQ3_XXS": "Q8_K",
    "IQ3_S": "Q8_K",
    "IQ1_S": "Q8_K",
    "IQ1_M": "Q8_K",
    "IQ4_NL": "Q8_0",
    "IQ4_XS": "Q8_K",
    "TQ1_0": "Q8_K",
    "TQ2_0": "Q8_K",
}
ACTIVATION_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q8_1", "Q8_K")
_BLOCK = {"Q8_0": 32, "Q8_1": 32, "Q8_K": 256}


def activation_type(weight_type: str | None) -> str:
    """The type llama.cpp rounds a matrix product's input to for a weight of ``weight_type``
    (None: F32, no rounding)."""
    if weight_type is None:
        return "F32"
    got = VEC_DOT_TYPE.get(weight_type)
    if got is None:
        raise CmfError(
            f"GGML type {weight_type!r}: no activation rounding known (known: "
            f"{', '.join(VEC_DOT_TYPE)})"
        )
    return got


def same_values(act: str) -> str:
    """Q8_1 rounds values as Q8_0 does (it adds a block sum): the type whose values ``act``
    gives."""
    return "Q8_0" if act == "Q8_1" else act


def round_activations(x: np.ndarray, act: str) -> np.ndarray:
    """float32 ``x`` [..., n] as llama.cpp's ``act`` blocks hold it (module docstring). CmfError
    if ``n`` is not a multiple of the block."""
    x = np.asarray(x, np.float32)
    if act == "F32":
        return x
    if act == "F16":
        with np.errstate(over="ignore"):
            return x.astype(np.float16).astype(np.float32)
    if act == "BF16":
        return _to_bf16(x)
    block = _BLOCK.get(act)
    if block is None:
        raise CmfError(f"activation type {act!r}: expected one of {', '.join(ACTIVATION_TYPES)}")
    n = x.shape[-1] if x.ndim else 1
    if n % block:
        raise CmfError(f"{act}: a row of {n} activations is not a multiple of {block}")
    b = x.reshape(-1, block)
    amax = np.max(np.abs(b), axis=1, keepdims=True)  # [blocks, 1] float32
    live = amax > 0
    safe = np.where(live, amax, np.float32(1))
    inv = np.where(live, np.float32(127) / safe, np.float32(0))  # 127 / amax in float32
    codes = np.rint(b * inv)  # float32 product, ties to even (as _mm256_round_ps)
    if act == "Q8_K":
        scale = np.where(live, np.float32(1) / np.where(live, inv, np.float32(1)), np.float32(0))
    else:  # Q8_0 / Q8_1: the scale amax / 127 kept as f16
        scale = (amax / np.float32(127)).astype(np.float16).astype(np.float32)
    return (codes * scale).astype(np.float32, copy=False).reshape(x.shape)


def _to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 -> float32, to nearest, ties to even (ggml's fp32_to_bf16; NaN kept)."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    out = (r & 0xFFFFFFFF).astype(np.uint32).view(np.float32)
    return np.where(np.isnan(x), x, out).astype(np.float32, copy=False)


def rounded_linear(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    spans: Sequence[tuple[int, str]],
) -> np.ndarray:
    """``x @ w.T (+ b)`` with the rows of ``w`` in ``spans`` (``(rows, activation type)`` in
    order, covering ``w``), each span's product taken with ``x`` rounded to its type."""
    rounded: dict[str, np.ndarray] = {}
    outs, start = [], 0
    for rows, act in spans:
        key = same_values(act)
        if key not in rounded:
            rounded[key] = round_activations(x, key)
        outs.append(rounded[key] @ w[start : start + rows].T)
        start += rows
    if start != w.shape[0]:
        raise CmfError(f"activation spans cover {start} rows of a weight of {w.shape[0]}")
    y = outs[0] if len(outs) == 1 else np.concatenate(outs, axis=-1)
    return y if b is None else y + b


def activation_errors(x: np.ndarray, w: np.ndarray, max_rows: int = 8192) -> dict[str, float]:
    """How much llama.cpp's rounding of the input ``x`` [tokens, n] moves ``x @ w.T`` (``w``
    [rows, n]), per activation type a row of ``n`` takes, relative to the input's mean square:
    ``n * sum |(round_a(x) - x) w^T|^2 / sum |x|^2`` (the planner's weighted-error unit before its
    damping: cmf.plan.ggml_candidates). Q8_1 gives Q8_0's values (one entry, "Q8_0"); F32 is 0.
    A ``w`` of more than ``max_rows`` rows is measured on evenly spaced rows, scaled up."""
    x = np.asarray(x, np.float32).reshape(-1, np.shape(x)[-1])
    w = np.asarray(w, np.float32)
    energy = float(np.einsum("ij,ij->", x, x, dtype=np.float64))
    if energy <= 0:
        return {}
    scale = 1.0
    if w.shape[0] > max_rows:
        idx = np.linspace(0, w.shape[0] - 1, max_rows).round().astype(np.int64)
        scale, w = w.shape[0] / len(idx), w[idx]
    out = {}
    for act in ("F16", "BF16", "Q8_0", "Q8_K"):
        if act in _BLOCK and x.shape[1] % _BLOCK[act]:
            continue
        p = (round_activations(x, act) - x) @ w.T
        out[act] = x.shape[1] * scale * float(np.einsum("ij,ij->", p, p, dtype=np.float64)) / energy
    return out


def file_ggml_types(f: Any) -> dict[str, str]:
    """name -> GGML type of each tensor of rank 2+ of the open .cmf ``f`` (a file the GGUF
    writer takes: cmf.convert.hf_gguf, or a GGUF import), as the GGUF it unpacks to holds it;
    F32 tensors and tensors no GGUF holds are left out."""
    from ..convert.gguf_blocks import stored_type
    from ..convert.gguf_export import is_gguf_origin
    from ..convert.hf_gguf import ggml_type_of

    gguf_origin = is_gguf_origin(f.metadata())
    out = {}
    for name in f.keys():
        if len(f.spec(name).shape) < 2:
            continue
        try:
            t = stored_type(f, name) if gguf_origin else ggml_type_of(f, name)
        except CmfError:
            continue
        if t is None and gguf_origin:
            t = {"f16": "F16", "bf16": "BF16"}.get(f.spec(name).dtype.name)
        if t is not None and t != "F32":
            out[name] = t
    return out


_FUSED = (  # a Layer's fused weight -> its tensors' Hugging Face name parts
    ("w_qkv", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    ("w_o", ("self_attn.o_proj",)),
    ("w_gate_up", ("mlp.gate_proj", "mlp.up_proj")),
    ("w_down", ("mlp.down_proj",)),
)


@contextmanager
def llama_cpp_rounding(runner: Any, type_of: Callable[[str], str | None]) -> Iterator[None]:
    """While inside, ``runner``'s (a cmf.runtime.llama.LlamaRunner) matrix products with its
    decoder blocks' weights and its output head round their input as llama.cpp does for each
    weight's GGML type (``type_of(hf_name)``; None or "F32": not rounded). The runner's blocks
    are wrapped to register each block's weights as it is built (a lazy runner builds them as
    the pass reaches them); the module's ``linear`` is patched, and restored after."""
    from . import llama

    cfg = runner.config
    rows = {
        "self_attn.q_proj": cfg.n_heads * cfg.head_dim,
        "self_attn.k_proj": cfg.n_kv_heads * cfg.head_dim,
        "self_attn.v_proj": cfg.n_kv_heads * cfg.head_dim,
        "self_attn.o_proj": cfg.hidden_size,
        "mlp.gate_proj": cfg.intermediate_size,
        "mlp.up_proj": cfg.intermediate_size,
        "mlp.down_proj": cfg.hidden_size,
    }
    known: dict[int, tuple[np.ndarray, list[tuple[int, str]]]] = {}
    block_ids: list[int] = []  # the registered weights of the block built last

    def note(w: np.ndarray, spans: list[tuple[int, str]]) -> bool:
        if any(act != "F32" for _, act in spans):
            known[id(w)] = (w, spans)  # the array kept: its id is not reused while registered
            return True
        return False

    head = "model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight"
    saved = (runner.lm_head, runner.embed)  # put back on the way out
    if isinstance(runner.lm_head, llama.LazyWeight):  # one array while inside, so it is known
        loaded = np.asarray(runner.lm_head)
        runner.embed = loaded if runner.embed is runner.lm_head else runner.embed
        runner.lm_head = loaded
    note(runner.lm_head, [(runner.lm_head.shape[0], activation_type(type_of(head)))])
    original_layers = runner.layers

    def layer(i: int) -> Any:
        for key in block_ids:  # one block's weights held at a time, as a lazy runner does
            known.pop(key, None)
        block_ids.clear()
        got = original_layers[i]
        for attr, parts in _FUSED:
            w = getattr(got, attr)
            spans = [
                (rows[p], activation_type(type_of(f"model.layers.{i}.{p}.weight"))) for p in parts
            ]
            if note(w, spans):
                block_ids.append(id(w))
        return got

    original_linear = llama.linear

    def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
        entry = known.get(id(w))
        if entry is None or entry[0] is not w:
            return original_linear(x, w, b)
        return rounded_linear(x, w, b, entry[1])

    runner.layers = llama.LazyLayers(layer, len(original_layers))
    llama.linear = linear
    try:
        yield
    finally:
        llama.linear = original_linear
        runner.layers = original_layers
        runner.lm_head, runner.embed = saved
        known.clear()


__all__ = [
    "ACTIVATION_TYPES",
    "VEC_DOT_TYPE",
    "activation_errors",
    "activation_type",
    "file_ggml_types",
    "llama_cpp_rounding",
    "round_activations",
    "rounded_linear",
]
