"""Llama-family decoder (Llama, SmolLM, Mistral, Qwen2) in numpy, in the style of picoGPT.

Weights arrive by Hugging Face name from a ``get_tensor`` callable, with the model's config.json
as a dict (``LlamaRunner.from_tensors``). Models imported from GGUF are mapped back to those names
and layouts: ``from_gguf_metadata`` turns the ``gguf.*`` metadata cmf keeps into a config, and
``gguf_tensor_getter`` renames tensors and undoes the row interleaving llama.cpp's converter
applies to the q/k projections of the ``llama`` architecture (``LlamaRunner.from_gguf`` does both).

Everything is computed in float32, one sequence at a time: a prompt goes through each layer as
whole-sequence matmuls; generation feeds one token at a time against a KV cache. Shapes in the
comments: n new positions, t = past + n positions attended to, d hidden size, H query heads, K
key/value heads, g = H // K queries per key head, hd head size, V vocabulary size.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CmfError, UnsupportedError
from .logit_stats import log_softmax  # noqa: F401  (the runner's API: tools and tests use it)

SUPPORTED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2"})  # SmolLM checkpoints are "llama"
ROPE_TYPES = ("default", "linear", "llama3")
GGUF_ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2"}  # general.architecture -> model_type
GGUF_PERMUTED_QK = frozenset({"llama"})  # llama.cpp interleaves q/k rows for these (rope "norm")

GetTensor = Callable[[str], np.ndarray]


# ------------------------------------------------------------------ the forward pass, as functions


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:  # [n, d], [d] -> [n, d]
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def silu(x: np.ndarray) -> np.ndarray:  # [...] -> [...]; sigmoid as tanh: no overflow warnings
    return x * (0.5 + 0.5 * np.tanh(0.5 * x))


def softmax(x: np.ndarray) -> np.ndarray:  # [..., t] -> [..., t]
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    y = x @ w.T  # [n, in] @ [in, out] -> [n, out]  (w is stored [out, in] as in torch)
    return y if b is None else y + b


def rope_inv_freq(
    head_dim: int,
    theta: float,
    scaling: Mapping[str, Any] | None = None,
    factors: np.ndarray | None = None,
) -> np.ndarray:  # -> [hd/2] float64, the angle per position of each rotated pair
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    kind = _rope_type(scaling)
    if kind == "linear":
        inv = inv / float(scaling["factor"])
    elif kind == "llama3":  # long wavelengths slowed by `factor`, short kept, a smooth ramp between
        factor = float(scaling["factor"])
        low, high = (
            float(scaling.get("low_freq_factor", 1.0)),
            float(scaling.get("high_freq_factor", 4.0)),
        )
        old_ctx = float(scaling.get("original_max_position_embeddings", 8192))
        if not 0 < low < high or old_ctx <= 0:
            raise CmfError(
                "rope scaling 'llama3': expected 0 < low_freq_factor < high_freq_factor, "
                f"found {low}, {high}"
            )
        wavelen = 2 * math.pi / inv
        smooth = np.clip((old_ctx / wavelen - low) / (high - low), 0.0, 1.0)
        inv = np.where(
            wavelen > old_ctx / low, inv / factor, (1 - smooth) * inv / factor + smooth * inv
        )
    if (
        factors is not None
    ):  # GGUF rope_freqs.weight: llama.cpp divides each frequency by its factor
        inv = inv / np.asarray(factors, dtype=np.float64)
    return inv


def rope_cos_sin(positions: np.ndarray, inv_freq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    angles = positions[:, None].astype(np.float64) * inv_freq[None, :]  # [n, hd/2]
    angles = np.concatenate([angles, angles], axis=-1)  # [n, hd] (HF layout: halves, not pairs)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def rotate_half(x: np.ndarray) -> np.ndarray:  # [..., hd] -> [..., hd]: (x1, x2) -> (-x2, x1)
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    return x * cos + rotate_half(x) * sin  # [h, n, hd] * [n, hd] -> [h, n, hd]


def causal_mask(n: int, past: int, window: int | None = None) -> np.ndarray:
    q = np.arange(past, past + n)[:, None]  # [n, 1] absolute query positions
    k = np.arange(past + n)[None, :]  # [1, t] key positions
    allowed = k <= q
    if window is not None:
        allowed &= (
            k > q - window
        )  # as HF: a query sees the `window` most recent keys, itself included
    return np.where(allowed, np.float32(0), np.float32(-np.inf))  # [n, t] additive


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray) -> np.ndarray:
    kv, g, n, hd = q.shape  # q [K, g, n, hd]; k, v [K, t, hd]; mask [n, t]
    scores = q.reshape(kv, g * n, hd) @ k.transpose(0, 2, 1)  # [K, g*n, t]
    scores = scores.reshape(kv, g, n, -1) * np.float32(1 / math.sqrt(hd)) + mask  # [K, g, n, t]
    out = softmax(scores).reshape(kv, g * n, -1) @ v  # [K, g*n, hd]
    return out.reshape(kv, g, n, hd)


@dataclass
class Layer:
    """One decoder block's weights, float32; q/k/v and gate/up are fused (fewer, larger matmuls)."""

    attn_norm: np.ndarray  # [d]
    w_qkv: np.ndarray  # [(H + 2K) * hd, d]
    b_qkv: np.ndarray | None  # [(H + 2K) * hd]
    w_o: np.ndarray  # [d, H * hd]
    b_o: np.ndarray | None  # [d]
    mlp_norm: np.ndarray  # [d]
    w_gate_up: np.ndarray  # [2 * ff, d]
    b_gate_up: np.ndarray | None  # [2 * ff]
    w_down: np.ndarray  # [d, ff]
    b_down: np.ndarray | None  # [d]
    window: int | None  # sliding-window size of this layer's attention, None: full causal


def mlp(x: np.ndarray, layer: Layer) -> np.ndarray:  # [n, d] -> [n, d]
    gate_up = linear(x, layer.w_gate_up, layer.b_gate_up)  # [n, 2 * ff]
    gate, up = np.split(gate_up, 2, axis=-1)  # [n, ff] each
    return linear(silu(gate) * up, layer.w_down, layer.b_down)  # [n, d]


def block(
    x: np.ndarray,
    layer: Layer,
    cfg: LlamaConfig,
    cos: np.ndarray,
    sin: np.ndarray,
    kv_sink: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
) -> np.ndarray:  # x [n, d] -> [n, d]
    n, H, K, hd = x.shape[0], cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    h = rms_norm(x, layer.attn_norm, cfg.rms_norm_eps)  # [n, d]
    qkv = linear(h, layer.w_qkv, layer.b_qkv)  # [n, (H + 2K) * hd]
    q = qkv[:, : H * hd].reshape(n, H, hd).transpose(1, 0, 2)  # [H, n, hd]
    k = qkv[:, H * hd : (H + K) * hd].reshape(n, K, hd).transpose(1, 0, 2)  # [K, n, hd]
    v = qkv[:, (H + K) * hd :].reshape(n, K, hd).transpose(1, 0, 2)  # [K, n, hd]
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    if kv_sink is not None:
        k, v = kv_sink(k, v)  # [K, t, hd]: the cached past followed by these n positions
    mask = causal_mask(n, k.shape[1] - n, layer.window)  # [n, t]
    a = attention(q.reshape(K, H // K, n, hd), k, v, mask)  # [K, g, n, hd]; query head = kv * g + r
    a = a.reshape(H, n, hd).transpose(1, 0, 2).reshape(n, H * hd)  # [n, H * hd]
    x = x + linear(a, layer.w_o, layer.b_o)  # [n, d]
    return x + mlp(rms_norm(x, layer.mlp_norm, cfg.rms_norm_eps), layer)  # [n, d]


# ------------------------------------------------------------------------------ configuration


def _rope_type(scaling: Mapping[str, Any] | None) -> str:
    if not scaling:
        return "default"
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise UnsupportedError(
            f"rope scaling type {kind!r} is not supported (supported: {', '.join(ROPE_TYPES)})"
        )
    if kind in ("linear", "llama3") and not _positive_number(scaling.get("factor")):
        raise CmfError(
            f"rope scaling {kind!r} needs a positive 'factor', found {scaling.get('factor')!r}"
        )
    return kind


def _positive_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _positive_int(config: Mapping[str, Any], key: str, default: Any = None) -> int:
    v = config.get(key, default)
    if v is None and default is not None:
        v = default  # config.json writes null for "derive it" (num_key_value_heads, head_dim)
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise CmfError(f"config {key!r}: expected a positive integer, found {v!r}")
    return v


@dataclass(frozen=True)
class LlamaConfig:
    """The parts of a Hugging Face config.json this runner needs, checked."""

    model_type: str
    hidden_size: int
    intermediate_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: Mapping[str, Any] | None
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    windows: tuple[int | None, ...]
    vocab_size: int | None

    @classmethod
    def from_hf(cls, config: Mapping[str, Any]) -> LlamaConfig:
        if not isinstance(config, Mapping):
            raise CmfError(f"config: expected a JSON object, found {type(config).__name__}")
        model_type = config.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedError(
                f"model_type {model_type!r} is not a Llama-family decoder this runner handles "
                f"(supported: {', '.join(sorted(SUPPORTED_MODEL_TYPES))})"
            )
        act = config.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise UnsupportedError(f"hidden_act {act!r} is not supported (expected 'silu')")
        d = _positive_int(config, "hidden_size")
        heads = _positive_int(config, "num_attention_heads")
        kv_heads = _positive_int(config, "num_key_value_heads", heads)
        head_dim = _positive_int(config, "head_dim", d // heads if d % heads == 0 else None)
        if heads % kv_heads:
            raise CmfError(
                f"config: num_attention_heads {heads} is not a multiple of "
                f"num_key_value_heads {kv_heads}"
            )
        if head_dim % 2:
            raise CmfError(f"config: head_dim must be even for rotary embeddings, found {head_dim}")
        n_layers = _positive_int(config, "num_hidden_layers")
        params = (
            config.get("rope_parameters") or {}
        )  # transformers >= 5 keeps theta and scaling here
        if not isinstance(params, Mapping):
            raise CmfError(f"config 'rope_parameters': expected an object, found {params!r}")
        theta = config.get("rope_theta", params.get("rope_theta", 10000.0))
        scaling = (
            config.get("rope_scaling")
            or {k: v for k, v in params.items() if k != "rope_theta"}
            or None
        )
        if scaling is not None and not isinstance(scaling, Mapping):
            raise CmfError(f"config 'rope_scaling': expected an object or null, found {scaling!r}")
        partial = (
            config.get("partial_rotary_factor")
            or (scaling or {}).get("partial_rotary_factor")
            or 1.0
        )
        if partial != 1.0:
            raise UnsupportedError(
                f"partial_rotary_factor {partial!r} is not supported (only full rotary)"
            )
        eps = config.get("rms_norm_eps", 1e-6)
        for key, value in (("rope_theta", theta), ("rms_norm_eps", eps)):
            if not _positive_number(value):
                raise CmfError(f"config {key!r}: expected a positive number, found {value!r}")
        rope_inv_freq(head_dim, float(theta), scaling)  # checks the scaling's parameters early
        biased = bool(config.get("attention_bias", False))
        vocab = config.get("vocab_size")
        return cls(
            model_type=model_type,
            hidden_size=d,
            intermediate_size=_positive_int(config, "intermediate_size"),
            n_layers=n_layers,
            n_heads=heads,
            n_kv_heads=kv_heads,
            head_dim=head_dim,
            rms_norm_eps=float(eps),
            rope_theta=float(theta),
            rope_scaling=scaling,
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=model_type == "qwen2" or biased,
            o_bias=model_type == "llama" and biased,
            mlp_bias=model_type == "llama" and bool(config.get("mlp_bias", False)),
            windows=_windows(config, model_type, n_layers),
            vocab_size=vocab if isinstance(vocab, int) and not isinstance(vocab, bool) else None,
        )


def _windows(config: Mapping[str, Any], model_type: str, n_layers: int) -> tuple[int | None, ...]:
    """Per-layer sliding windows, as transformers applies them (Mistral: every layer; Qwen2: only
    with use_sliding_window, on the layers its layer_types / max_window_layers name)."""
    window = config.get("sliding_window")
    if model_type == "llama" or window is None:
        return (None,) * n_layers
    if not isinstance(window, int) or isinstance(window, bool) or window <= 0:
        raise CmfError(
            f"config 'sliding_window': expected a positive integer or null, found {window!r}"
        )
    if model_type == "mistral":
        return (window,) * n_layers
    if not config.get("use_sliding_window", False):
        return (None,) * n_layers
    types = config.get("layer_types")
    if types is None:
        first = config.get("max_window_layers", 28)
        types = ["sliding_attention" if i >= first else "full_attention" for i in range(n_layers)]
    if not isinstance(types, list) or len(types) != n_layers:
        raise CmfError(f"config 'layer_types': expected {n_layers} entries, found {types!r}")
    return tuple(window if t == "sliding_attention" else None for t in types)


# ----------------------------------------------------------------------------------- KV cache


class KVCache:
    """Keys and values of the positions seen so far, per layer; grows by doubling."""

    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, capacity: int = 64) -> None:
        self.length = 0  # positions stored (and the position of the next token)
        self._shape = (n_kv_heads, head_dim)
        self._k = [np.zeros((n_kv_heads, capacity, head_dim), np.float32) for _ in range(n_layers)]
        self._v = [np.zeros((n_kv_heads, capacity, head_dim), np.float32) for _ in range(n_layers)]

    def sink(self, i: int) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """Layer ``i``'s writer: appends k, v [K, n, hd] and returns the whole [K, t, hd]."""

        def write(k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            start, end = self.length, self.length + k.shape[1]
            if end > self._k[i].shape[1]:
                cap = max(end, 2 * self._k[i].shape[1])
                for store in (self._k, self._v):
                    grown = np.zeros((self._shape[0], cap, self._shape[1]), np.float32)
                    grown[:, :start] = store[i][:, :start]
                    store[i] = grown
            self._k[i][:, start:end] = k
            self._v[i][:, start:end] = v
            return self._k[i][:, :end], self._v[i][:, :end]

        return write


# ------------------------------------------------------------------------------------- runner


def _load(get_tensor: GetTensor, name: str, shape: tuple[int | None, ...]) -> np.ndarray:
    """Tensor ``name`` as float32 of ``shape`` (None: any size); any problem is a CmfError naming
    it."""
    try:
        value = get_tensor(name)
    except CmfError:
        raise
    except KeyError:
        raise CmfError(f"the model has no tensor {name!r}") from None
    array = np.asarray(value)
    if array.dtype.kind in "biuOSUmM":
        raise CmfError(f"tensor {name!r}: expected floating-point values, found {array.dtype}")
    if len(array.shape) != len(shape) or any(
        w is not None and w != n for w, n in zip(shape, array.shape, strict=True)
    ):
        want = (
            "("
            + ", ".join("any" if w is None else str(w) for w in shape)
            + ("," if len(shape) == 1 else "")
            + ")"
        )
        raise CmfError(f"tensor {name!r}: expected shape {want}, found {array.shape}")
    try:
        return np.ascontiguousarray(array, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise CmfError(
            f"tensor {name!r}: cannot convert {array.dtype} to float32 ({exc})"
        ) from None


def check_ids(ids: Sequence[int] | np.ndarray, vocab_size: int) -> np.ndarray:
    """``ids`` as int64 (n,): a non-empty 1-D sequence of integers in ``[0, vocab_size)``;
    CmfError otherwise."""
    try:
        arr = np.asarray(ids)
    except (TypeError, ValueError):
        raise CmfError("token ids: expected a sequence of integers") from None
    if arr.ndim != 1 or arr.size == 0 or arr.dtype.kind not in "iu":
        raise CmfError(
            "token ids: expected a non-empty 1-D sequence of integers, found shape "
            f"{arr.shape} {arr.dtype}"
        )
    if arr.min() < 0 or arr.max() >= vocab_size:
        raise CmfError(
            f"token ids: expected values in [0, {vocab_size}), found "
            f"{int(arr.min())}..{int(arr.max())}"
        )
    return arr.astype(np.int64)


class LazyLayers(Sequence):
    """The decoder blocks of a runner built with ``lazy=True``: ``layers[i]`` fetches block
    ``i``'s weights (``make(i)``) on each access and keeps none, so a pass holds one block."""

    def __init__(self, make: Callable[[int], Layer], n: int) -> None:
        self._make, self._n = make, n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self._make(j) for j in range(*i.indices(self._n))]
        if not -self._n <= i < self._n:
            raise IndexError(i)
        return self._make(i % self._n)


class LazyWeight:
    """A ``[rows, d]`` float32 weight of a runner built with ``lazy=True`` (the token embedding,
    the output head): loaded on each use and not kept, so that a pass, or a planner's look at
    one block, does not hold a vocabulary-sized matrix (400 MB in a 1 B model) between uses.
    ``w[ids]`` loads it and gathers rows; ``np.asarray(w)`` loads it whole."""

    def __init__(self, load: Callable[[], np.ndarray], shape: tuple[int, int]) -> None:
        self._load, self.shape = load, shape
        self.ndim, self.dtype = len(shape), np.dtype(np.float32)

    def __getitem__(self, index: Any) -> np.ndarray:
        return self._load()[index]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        got = self._load()
        return got if dtype is None else got.astype(dtype, copy=False)


class LlamaRunner:
    """A Llama-family causal LM: ``logits``, ``next_logits`` (KV cache), ``generate``,
    ``perplexity``."""

    def __init__(
        self,
        cfg: LlamaConfig,
        embed: np.ndarray,
        layers: list[Layer],
        norm: np.ndarray,
        lm_head: np.ndarray,
        inv_freq: np.ndarray,
    ) -> None:
        self.config = cfg
        self.embed = embed  # [V, d]
        self.layers = layers
        self.norm = norm  # [d]
        self.lm_head = lm_head  # [V, d] (the embedding itself when tied)
        self.inv_freq = inv_freq  # [hd/2]
        self.vocab_size = embed.shape[0]

    @classmethod
    def from_tensors(
        cls,
        get_tensor: GetTensor,
        config: Mapping[str, Any],
        *,
        rope_freq_factors: np.ndarray | None = None,
        lazy: bool = False,
    ) -> LlamaRunner:
        """Build from Hugging Face tensor names (``model.layers.{i}.self_attn.q_proj.weight``...).

        ``get_tensor`` may raise KeyError or CmfError for a missing tensor; tensors are fetched one
        at a time and converted to float32. ``lazy``: each block's weights are fetched when a pass
        reaches it and dropped after (:class:`LazyLayers`): memory holds one block, not the model.
        """
        cfg = LlamaConfig.from_hf(config)
        d, ff, H, K, hd = (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.n_heads,
            cfg.n_kv_heads,
            cfg.head_dim,
        )
        embed: np.ndarray | LazyWeight
        if lazy and cfg.vocab_size:  # loaded (and checked) on each use
            vocab = cfg.vocab_size
            embed = LazyWeight(
                lambda: _load(get_tensor, "model.embed_tokens.weight", (vocab, d)), (vocab, d)
            )
        else:
            embed = _load(get_tensor, "model.embed_tokens.weight", (cfg.vocab_size, d))  # [V, d]
            vocab = embed.shape[0]

        def get(name: str, shape: tuple[int, ...], present: bool = True) -> np.ndarray | None:
            return _load(get_tensor, name, shape) if present else None

        def layer(i: int) -> Layer:
            p = f"model.layers.{i}."
            qkv = [
                get(p + f"self_attn.{x}_proj.weight", (rows, d))
                for x, rows in (("q", H * hd), ("k", K * hd), ("v", K * hd))
            ]
            qkv_b = [
                get(p + f"self_attn.{x}_proj.bias", (rows,), cfg.qkv_bias)
                for x, rows in (("q", H * hd), ("k", K * hd), ("v", K * hd))
            ]
            gate_up = [get(p + f"mlp.{x}_proj.weight", (ff, d)) for x in ("gate", "up")]
            gate_up_b = [get(p + f"mlp.{x}_proj.bias", (ff,), cfg.mlp_bias) for x in ("gate", "up")]
            return Layer(
                attn_norm=get(p + "input_layernorm.weight", (d,)),
                w_qkv=np.concatenate(qkv),
                b_qkv=np.concatenate(qkv_b) if cfg.qkv_bias else None,
                w_o=get(p + "self_attn.o_proj.weight", (d, H * hd)),
                b_o=get(p + "self_attn.o_proj.bias", (d,), cfg.o_bias),
                mlp_norm=get(p + "post_attention_layernorm.weight", (d,)),
                w_gate_up=np.concatenate(gate_up),
                b_gate_up=np.concatenate(gate_up_b) if cfg.mlp_bias else None,
                w_down=get(p + "mlp.down_proj.weight", (d, ff)),
                b_down=get(p + "mlp.down_proj.bias", (d,), cfg.mlp_bias),
                window=cfg.windows[i],
            )

        layers: Sequence[Layer] = (
            LazyLayers(layer, cfg.n_layers) if lazy else [layer(i) for i in range(cfg.n_layers)]
        )
        norm = get("model.norm.weight", (d,))

        def head() -> np.ndarray:
            try:
                return _load(get_tensor, "lm_head.weight", (vocab, d))
            except CmfError as exc:
                raise CmfError(f"{exc} (config.json says tie_word_embeddings is false)") from None

        lm_head: np.ndarray | LazyWeight
        if cfg.tie_word_embeddings:
            lm_head = embed
        elif isinstance(embed, LazyWeight):
            lm_head = LazyWeight(head, (vocab, d))
        else:
            lm_head = head()
        factors = None
        if rope_freq_factors is not None:
            factors = _load(
                {"rope_freqs.weight": rope_freq_factors}.__getitem__,
                "rope_freqs.weight",
                (hd // 2,),
            )
            if not np.all(np.isfinite(factors) & (factors > 0)):
                raise CmfError("rope_freqs.weight: expected positive finite factors")
        inv_freq = rope_inv_freq(hd, cfg.rope_theta, cfg.rope_scaling, factors)
        return cls(cfg, embed, layers, norm, lm_head, inv_freq)

    @classmethod
    def from_gguf(
        cls, get_tensor: GetTensor, metadata: Mapping[str, Any], *, lazy: bool = False
    ) -> LlamaRunner:
        """Build from a GGUF import: GGUF tensor names, ``gguf.*`` metadata as cmf keeps them."""
        config = from_gguf_metadata(metadata)
        factors = (
            get_tensor("rope_freqs.weight")
            if "rope_freqs.weight" in _tensor_types(metadata)
            else None
        )
        return cls.from_tensors(
            gguf_tensor_getter(get_tensor, metadata), config, rope_freq_factors=factors, lazy=lazy
        )

    # -- running

    def new_cache(self) -> KVCache:
        return KVCache(self.config.n_layers, self.config.n_kv_heads, self.config.head_dim)

    def _ids(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        return check_ids(ids, self.vocab_size)

    def forward(
        self,
        ids: Sequence[int] | np.ndarray,
        cache: KVCache | None = None,
        *,
        last_only: bool = False,
    ) -> np.ndarray:
        """Logits [n, V] of the n given tokens (after ``cache``'s positions, which it extends);
        [1, V] with ``last_only``."""
        ids = self._ids(ids)
        past = cache.length if cache is not None else 0
        cos, sin = rope_cos_sin(np.arange(past, past + len(ids)), self.inv_freq)  # [n, hd] each
        x = self.embed[ids]  # [n, d]
        for i, layer in enumerate(self.layers):
            x = block(x, layer, self.config, cos, sin, cache.sink(i) if cache is not None else None)
        if cache is not None:
            cache.length += len(ids)
        if last_only:
            x = x[-1:]  # [1, d]
        return self._head(x)  # [n, V]

    def logits(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """float32 [len(ids), V]: row i is the distribution of the token after ids[: i + 1]."""
        return self.forward(ids)

    def logits_from(
        self, start: int, x: np.ndarray, keep: Callable[[int, np.ndarray], None] | None = None
    ) -> np.ndarray:
        """float32 [n, V]: a whole-sequence pass (positions 0..n-1, no cache) entered at block
        ``start`` with hidden states ``x`` [n, d] (``embed[ids]`` for ``start`` 0). ``keep(i,
        x_i)`` sees each block's input, and the final hidden states as ``keep(n_layers, x)``."""
        cos, sin = rope_cos_sin(np.arange(len(x)), self.inv_freq)  # [n, hd] each
        for i in range(start, self.config.n_layers):
            if keep is not None:
                keep(i, x)
            x = block(x, self.layers[i], self.config, cos, sin)
        if keep is not None:
            keep(self.config.n_layers, x)
        return self._head(x)

    def _head(self, x: np.ndarray) -> np.ndarray:
        """float32 [n, V]: the logits of final hidden states ``x`` [n, d]."""
        head = np.asarray(self.lm_head)  # a LazyWeight loads here
        return linear(rms_norm(x, self.norm, self.config.rms_norm_eps), head).astype(
            np.float32, copy=False
        )

    def next_logits(
        self, ids: Sequence[int] | np.ndarray, cache: KVCache | None = None
    ) -> np.ndarray:
        """float32 [V] for the token after ``ids``. With a cache (``new_cache()``), pass only the
        tokens the cache has not seen yet: the whole prompt first, then one token at a time."""
        return self.forward(ids, cache, last_only=True)[0]

    def generate(
        self, ids: Sequence[int], n: int, *, eos_token_id: int | Iterable[int] | None = None
    ) -> list[int]:
        """Greedy decoding: the up to ``n`` new tokens after ``ids`` (stops after an eos token)."""
        if not isinstance(n, int) or n < 0:
            raise CmfError(f"n: expected a non-negative integer, found {n!r}")
        stop = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or ())
        cache, out = self.new_cache(), []
        logits = self.next_logits(ids, cache) if n else None
        while len(out) < n:
            token = int(np.argmax(logits))
            out.append(token)
            if token in stop or len(out) == n:
                break
            logits = self.next_logits([token], cache)
        return out

    def token_logprobs(self, ids: Sequence[int] | np.ndarray, chunk: int = 256) -> np.ndarray:
        """float64 [len(ids) - 1]: log p(ids[i + 1] | ids[: i + 1]), computed ``chunk`` positions
        at a time against a KV cache (bounded memory on long texts)."""
        ids = self._ids(ids)
        if len(ids) < 2:
            raise CmfError("token ids: need at least 2 tokens to score")
        cache, out = self.new_cache(), []
        for start in range(0, len(ids) - 1, chunk):
            piece = ids[start : min(start + chunk, len(ids) - 1)]
            logits = self.forward(piece, cache)  # [m, V]
            top = logits.max(axis=-1, keepdims=True)  # [m, 1]
            log_z = top[:, 0] + np.log(np.exp(logits - top).sum(axis=-1, dtype=np.float64))  # [m]
            out.append(
                logits[np.arange(len(piece)), ids[start + 1 : start + 1 + len(piece)]] - log_z
            )
        return np.concatenate(out)

    def perplexity(self, ids: Sequence[int] | np.ndarray) -> float:
        """exp of the mean negative log-likelihood of ids[1:] (each given the tokens before it)."""
        return float(np.exp(-np.mean(self.token_logprobs(ids))))


# --------------------------------------------------------------------------------- GGUF import

_GGUF_GLOBAL = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_GGUF_BLOCK = {  # blk.{i}.<gguf> -> model.layers.{i}.<hf>
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_HF_BLOCK = {v: k for k, v in _GGUF_BLOCK.items()}
_HF_GLOBAL = {v: k for k, v in _GGUF_GLOBAL.items()}
_GGUF_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
_HF_RE = re.compile(r"model\.layers\.(\d+)\.([\w.]+)\.(weight|bias)")


def gguf_to_hf_name(name: str) -> str | None:
    """``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight``; None if unknown."""
    if name in _GGUF_GLOBAL:
        return _GGUF_GLOBAL[name]
    m = _GGUF_RE.fullmatch(name)
    if m and m.group(2) in _GGUF_BLOCK:
        return f"model.layers.{m.group(1)}.{_GGUF_BLOCK[m.group(2)]}.{m.group(3)}"
    return None


def hf_to_gguf_name(name: str) -> str | None:
    """The inverse of ``gguf_to_hf_name``."""
    if name in _HF_GLOBAL:
        return _HF_GLOBAL[name]
    m = _HF_RE.fullmatch(name)
    if m and m.group(2) in _HF_BLOCK:
        return f"blk.{m.group(1)}.{_HF_BLOCK[m.group(2)]}.{m.group(3)}"
    return None


def gguf_name_map(names: Iterable[str]) -> dict[str, str]:
    """GGUF name -> HF name for each of ``names`` this runner uses (others, e.g. rope_freqs, left
    out)."""
    return {n: hf for n in names if (hf := gguf_to_hf_name(n)) is not None}


def _tensor_types(meta: Mapping[str, Any]) -> Mapping[str, Any]:
    """GGUF tensor name -> GGML type, as cmf.convert.gguf records them (older files:
    gguf.tensor_types)."""
    types = meta.get("cmf.gguf.tensor_types", meta.get("gguf.tensor_types"))
    return types if isinstance(types, Mapping) else {}


def _gguf_arch(meta: Mapping[str, Any]) -> str:
    arch = meta.get("gguf.general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise UnsupportedError(
            f"GGUF architecture {arch!r} is not supported by the Llama runner "
            f"(supported: {', '.join(sorted(GGUF_ARCHITECTURES))})"
        )
    return arch


def _uniform(meta: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """A GGUF hyperparameter that may be per-layer (a list): the runner needs one value."""
    value = meta.get(key, default)
    if isinstance(value, list):
        if not value or any(v != value[0] for v in value):
            raise UnsupportedError(f"{key}: per-layer values {value!r} are not supported")
        value = value[0]
    return value


def from_gguf_metadata(meta: Mapping[str, Any]) -> dict[str, Any]:
    """An HF-style config.json dict from the ``gguf.*`` metadata cmf keeps of a GGUF import."""
    arch = _gguf_arch(meta)
    p = f"gguf.{arch}."
    d = _uniform(meta, p + "embedding_length")
    heads = _uniform(meta, p + "attention.head_count")
    if not isinstance(d, int) or not isinstance(heads, int) or heads <= 0:
        raise CmfError(
            f"GGUF metadata: expected integer {arch}.embedding_length and "
            f"{arch}.attention.head_count, found {d!r}, {heads!r}"
        )
    head_dim = _uniform(meta, p + "attention.key_length", d // heads)
    value_dim = _uniform(meta, p + "attention.value_length", head_dim)
    rope_dim = _uniform(meta, p + "rope.dimension_count", head_dim)
    if value_dim != head_dim or rope_dim != head_dim:
        raise UnsupportedError(
            f"GGUF metadata: key/value/rope sizes {head_dim}/{value_dim}/{rope_dim} "
            "differ; only equal ones are supported"
        )
    types = _tensor_types(meta)
    tokens = meta.get("gguf.tokenizer.ggml.tokens")
    config: dict[str, Any] = {
        "model_type": GGUF_ARCHITECTURES[arch],
        "architectures": ["Qwen2ForCausalLM" if arch == "qwen2" else "LlamaForCausalLM"],
        "hidden_act": "silu",
        "hidden_size": d,
        "intermediate_size": _uniform(meta, p + "feed_forward_length"),
        "num_hidden_layers": _uniform(meta, p + "block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": _uniform(meta, p + "attention.head_count_kv", heads),
        "head_dim": head_dim,
        "rms_norm_eps": _uniform(meta, p + "attention.layer_norm_rms_epsilon", 1e-5),
        "rope_theta": _uniform(meta, p + "rope.freq_base", 10000.0),
        "rope_scaling": None,
        "max_position_embeddings": _uniform(meta, p + "context_length", 2048),
        "tie_word_embeddings": bool(types) and "output.weight" not in types,
    }
    vocab = meta.get(p + "vocab_size", len(tokens) if isinstance(tokens, list) else None)
    if vocab is not None:
        config["vocab_size"] = vocab
    if arch == "llama":
        config["attention_bias"] = "blk.0.attn_q.bias" in types
        config["mlp_bias"] = "blk.0.ffn_gate.bias" in types
    scaling = meta.get(p + "rope.scaling.type")
    if scaling not in (None, "none"):
        config["rope_scaling"] = {
            "rope_type": scaling,
            "factor": meta.get(p + "rope.scaling.factor"),
        }
    for ours, theirs in (
        ("bos_token_id", "bos_token_id"),
        ("eos_token_id", "eos_token_id"),
        ("pad_token_id", "padding_token_id"),
    ):
        if isinstance(meta.get(f"gguf.tokenizer.ggml.{theirs}"), int):
            config[ours] = meta[f"gguf.tokenizer.ggml.{theirs}"]
    return config


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row order: per head it interleaves the two rotary halves (rows
    0, hd/2, 1, hd/2 + 1, ...) for its adjacent-pair rope; HF rotates halves.
    [rows, ...] -> same."""
    rows = w.shape[0]
    if n_heads <= 0 or rows % (2 * n_heads):
        raise CmfError(f"cannot un-permute {rows} rows into {n_heads} heads of even size")
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensor_getter(get_tensor: GetTensor, meta: Mapping[str, Any]) -> GetTensor:
    """A ``get_tensor`` over HF names for a GGUF import: renamed, q/k rows back in HF order."""
    arch = _gguf_arch(meta)
    config = from_gguf_metadata(meta)
    heads = {"q_proj": config["num_attention_heads"], "k_proj": config["num_key_value_heads"]}
    permuted = arch in GGUF_PERMUTED_QK

    def get(name: str) -> np.ndarray:
        gguf_name = hf_to_gguf_name(name)
        if gguf_name is None:
            raise CmfError(f"no GGUF tensor corresponds to {name!r}")
        array = get_tensor(gguf_name)
        proj = name.rsplit(".", 2)[-2]
        if permuted and proj in heads:
            array = unpermute_qk(np.asarray(array), heads[proj])
        return array

    return get
