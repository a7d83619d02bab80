"""BERT-family encoders in numpy: sentence embeddings as sentence-transformers computes them.

The forward pass is a handful of pure functions with the shape of every line in a comment, in the
style of picoGPT (``b`` batch, ``s`` sequence, ``d`` hidden, ``h`` heads, ``f`` FFN width):
embeddings (word + position + token type, LayerNorm), post-LayerNorm blocks of multi-head
attention with a padding mask and a GELU feed-forward network, then the pooling of the
sentence-transformers modules (``modules.json``, ``1_Pooling/config.json``: mean, CLS, max or
mean/sqrt(len) over the real tokens) and L2 normalisation when a ``Normalize`` module is listed.
Without ``modules.json`` embeddings are mean-pooled and not normalised, as sentence-transformers
does for a plain Hugging Face checkpoint.

Supported ``model_type``: ``bert`` (BERT, MiniLM, ...) and the RoBERTa family (``roberta``,
``xlm-roberta``, ``camembert``), whose position ids start after the padding id. Weights may carry
a ``bert.`` / ``roberta.`` prefix (``BertForX`` checkpoints). GELU is the exact erf form BERT uses
(``hidden_act`` ``gelu``); the tanh approximations and ReLU are there for configs that ask.
Computation is float32 (as transformers on CPU) except the GELU, evaluated in float64 to 4e-11.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.polynomial import chebyshev

from ..errors import CmfError

# model_type -> does the position id count from padding_idx + 1 (RoBERTa) rather than 0 (BERT)?
ENCODER_TYPES = {"bert": False, "roberta": True, "xlm-roberta": True, "camembert": True}


# -- activations --------------------------------------------------------------------------------
def _erfcx(u: float) -> float:
    return math.exp(u * u) * math.erfc(u)


# exp(u^2) erfc(u) on [0, 6] is smooth and slowly varying: its degree-24 Chebyshev interpolant
# (built here from libm's erfc) gives GELU to 4e-11 relative, over 1000 times finer than float32
# resolution (degree 32 would reach 1e-14 at 1.3x the cost); tests/runtime/test_bert.py checks it
# against math.erf. Clenshaw's recurrence runs in place on cache-sized chunks.
_ERFCX = chebyshev.Chebyshev.interpolate(np.vectorize(_erfcx), 24, domain=[0.0, 6.0]).coef
_CHUNK = 1 << 14


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU, x * Phi(x) = x/2 * (1 + erf(x / sqrt 2)), in float64; same dtype out.

    Phi is computed from the tail h = erfc(u)/2 = exp(-u^2) erfcx(u)/2 (u = |x|/sqrt 2, clipped
    at 6 where h < 1e-16): Phi = 1 - h for x >= 0 and h for x < 0, so nothing cancels.
    """
    out = np.empty(x.shape, x.dtype)
    flat, flat_out = x.reshape(-1), out.reshape(-1)
    for start in range(0, flat.size, _CHUNK):
        x64 = flat[start : start + _CHUNK].astype(np.float64)  # [c]
        u = np.minimum(np.abs(x64) * (1 / math.sqrt(2)), 6.0)  # [c]  |x| / sqrt 2
        t = u / 3.0 - 1.0  # [c]  [0, 6] -> [-1, 1]
        t2, b1, b2, tmp = 2 * t, np.zeros_like(t), np.zeros_like(t), np.empty_like(t)
        for c in _ERFCX[:0:-1]:  # Clenshaw: b_k = 2t b_k+1 - b_k+2 + c_k
            np.multiply(t2, b1, out=tmp)
            tmp -= b2
            tmp += c
            b2, b1, tmp = b1, tmp, b2
        erfcx = t * b1 - b2 + _ERFCX[0]  # [c]  exp(u^2) erfc(u)
        h = 0.5 * np.exp(-u * u) * erfcx  # [c]  erfc(u) / 2
        flat_out[start : start + _CHUNK] = x64 * np.where(x64 >= 0, 1.0 - h, h)  # [c]  x Phi(x)
    return out


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU's tanh approximation (``gelu_new``, ``gelu_pytorch_tanh``)."""
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "gelu": gelu,
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "gelu_fast": gelu_tanh,
    "relu": relu,
}


# -- the forward pass -----------------------------------------------------------------------------
def layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)  # [..., 1]
    var = np.square(x - mean).mean(axis=-1, keepdims=True)  # [..., 1]
    return (x - mean) / np.sqrt(var + eps) * g + b  # [..., d]


def linear(x: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    y = x.reshape(-1, x.shape[-1]) @ w["w"] + w["b"]  # [n, in] @ [in, out] -> [n, out]
    return y.reshape(*x.shape[:-1], -1)  # [..., out] (one BLAS call)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))  # [..., n]
    return e / e.sum(axis=-1, keepdims=True)  # [..., n]


def attention(x: np.ndarray, bias: np.ndarray, p: dict, n_head: int) -> np.ndarray:
    b, s, d = x.shape
    qkv = linear(x, p["qkv"]).reshape(b, s, 3, n_head, d // n_head)  # [b, s, 3, h, d/h]
    q = qkv[:, :, 0].transpose(0, 2, 1, 3)  # [b, h, s, d/h]
    k = qkv[:, :, 1].transpose(0, 2, 3, 1)  # [b, h, d/h, s]
    v = qkv[:, :, 2].transpose(0, 2, 1, 3)  # [b, h, s, d/h]
    scores = (q @ k) / np.float32(math.sqrt(d // n_head)) + bias  # [b, h, s, s]
    out = softmax(scores) @ v  # [b, h, s, d/h]
    out = out.transpose(0, 2, 1, 3).reshape(b, s, d)  # [b, s, d]
    return linear(out, p["o"])  # [b, s, d]


def block(
    x: np.ndarray, bias: np.ndarray, p: dict, n_head: int, eps: float, act: Callable
) -> np.ndarray:
    x = layer_norm(x + attention(x, bias, p, n_head), **p["ln_1"], eps=eps)  # [b, s, d]
    h = act(linear(x, p["fc"]))  # [b, s, f]
    return layer_norm(x + linear(h, p["proj"]), **p["ln_2"], eps=eps)  # [b, s, d]


def encoder(
    ids: np.ndarray,
    type_ids: np.ndarray,
    positions: np.ndarray,
    mask: np.ndarray,
    params: dict,
    n_head: int,
    eps: float,
    act: Callable,
) -> np.ndarray:
    """Token states of a BERT encoder: ``ids``, ``type_ids``, ``positions``, ``mask`` [b, s]
    -> [b, s, d]."""
    x = params["wte"][ids] + params["wpe"][positions] + params["wtt"][type_ids]  # [b, s, d]
    x = layer_norm(x, **params["ln_emb"], eps=eps)  # [b, s, d]
    bias = np.where(mask, 0, np.finfo(np.float32).min).astype(np.float32)[
        :, None, None, :
    ]  # [b, 1, 1, s]
    for p in params["blocks"]:
        x = block(x, bias, p, n_head, eps, act)  # [b, s, d]
    return x


def pool(states: np.ndarray, mask: np.ndarray, modes: Sequence[str]) -> np.ndarray:
    """sentence-transformers' Pooling: [b, s, d], mask [b, s] -> [b, len(modes) * d]."""
    m = mask[:, :, None].astype(states.dtype)  # [b, s, 1]
    count = np.maximum(m.sum(axis=1), 1e-9)  # [b, 1]
    out = []
    for mode in modes:
        if mode == "cls":
            out.append(states[:, 0])  # [b, d]
        elif mode == "max":
            out.append(np.where(m > 0, states, np.float32(-1e9)).max(axis=1))  # [b, d]
        elif mode == "mean":
            out.append((states * m).sum(axis=1) / count)  # [b, d]
        elif mode == "mean_sqrt_len":
            out.append((states * m).sum(axis=1) / np.sqrt(count))  # [b, d]
    return np.concatenate(out, axis=-1)


def normalize(e: np.ndarray) -> np.ndarray:
    return e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-12)  # [b, d]


# -- configuration: weights, pooling, tokenizer ----------------------------------------------------
POOLING_KEYS = {  # sentence-transformers' Pooling config key -> mode, in its concatenation order
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
}
_UNSUPPORTED_POOLING = ("pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")


def _prefix(names: Sequence[str]) -> str:
    for candidate in ("", "bert.", "roberta.", "model."):
        if candidate + "embeddings.word_embeddings.weight" in names:
            return candidate
    raise CmfError(
        "no BERT embeddings among the tensors (expected 'embeddings.word_embeddings.weight', "
        "possibly under 'bert.' or 'roberta.')"
    )


def load_params(
    get_tensor: Callable[[str], np.ndarray], names: Sequence[str], n_layer: int
) -> dict:
    """Fetch the encoder's weights one tensor at a time (as float32) into picoGPT-style params:
    linear weights as [in, out] (query, key and value side by side), biases, LayerNorm g and b."""
    pre = _prefix(names)

    def t(name: str) -> np.ndarray:
        if pre + name not in names:
            raise CmfError(f"BERT tensor {pre + name!r} is missing")
        return np.ascontiguousarray(get_tensor(pre + name), dtype=np.float32)

    def lin(*names: str) -> dict[str, np.ndarray]:  # [out, in] weights -> one [in, sum(out)] matrix
        return {
            "w": np.ascontiguousarray(np.concatenate([t(n + ".weight") for n in names]).T),
            "b": np.concatenate([t(n + ".bias") for n in names]),
        }

    def ln(name: str) -> dict[str, np.ndarray]:
        return {"g": t(name + ".weight"), "b": t(name + ".bias")}

    blocks = []
    for i in range(n_layer):
        L = f"encoder.layer.{i}."
        blocks.append(
            {
                "qkv": lin(
                    L + "attention.self.query", L + "attention.self.key", L + "attention.self.value"
                ),
                "o": lin(L + "attention.output.dense"),
                "ln_1": ln(L + "attention.output.LayerNorm"),
                "fc": lin(L + "intermediate.dense"),
                "proj": lin(L + "output.dense"),
                "ln_2": ln(L + "output.LayerNorm"),
            }
        )
    wtt_name = "embeddings.token_type_embeddings.weight"
    return {
        "wte": t("embeddings.word_embeddings.weight"),
        "wpe": t("embeddings.position_embeddings.weight"),
        "wtt": t(wtt_name) if pre + wtt_name in names else None,
        "ln_emb": ln("embeddings.LayerNorm"),
        "blocks": blocks,
    }


@dataclass
class Pipeline:
    """What sentence-transformers does around the transformer: pooling modes, normalisation,
    maximum sequence length, lower-casing."""

    modes: tuple[str, ...] = ("mean",)
    normalize: bool = False
    max_length: int | None = None
    lowercase: bool = False


def pipeline_from(read_json: Callable[[str], Any]) -> Pipeline:
    """Read ``modules.json`` and the module configs through ``read_json(name) -> obj or None``."""
    out = Pipeline()
    modules = read_json("modules.json")
    if modules is None:
        st = read_json("sentence_bert_config.json") or {}
    else:
        if not isinstance(modules, list):
            raise CmfError("modules.json is not a list of modules")
        st = {}
        for m in sorted((m for m in modules if isinstance(m, dict)), key=lambda m: m.get("idx", 0)):
            kind = str(m.get("type", "")).rsplit(".", 1)[-1]
            path = str(m.get("path", "")).strip("/")
            where = (path + "/") if path else ""
            if kind == "Transformer":
                st = read_json(where + "sentence_bert_config.json") or {}
            elif kind == "Pooling":
                out.modes = _pooling_modes(read_json(where + "config.json"), where + "config.json")
            elif kind == "Normalize":
                out.normalize = True
            else:
                raise CmfError(
                    f"sentence-transformers module {m.get('type')!r} is not supported "
                    "(Transformer, Pooling and Normalize are)"
                )
    if isinstance(st, dict):
        if isinstance(st.get("max_seq_length"), int) and st["max_seq_length"] > 0:
            out.max_length = st["max_seq_length"]
        out.lowercase = bool(st.get("do_lower_case", False))
    return out


def _pooling_modes(config: Any, name: str) -> tuple[str, ...]:
    if not isinstance(config, dict):
        raise CmfError(f"pooling config {name} is missing or not a JSON object")
    for key in _UNSUPPORTED_POOLING:
        if config.get(key):
            raise CmfError(f"{name}: {key} is not supported (cls, max, mean and mean_sqrt_len are)")
    modes = tuple(mode for key, mode in POOLING_KEYS.items() if config.get(key))
    if not modes:
        raise CmfError(f"{name} selects no pooling mode")
    return modes


class BertEncoder:
    """A BERT-family sentence encoder: ``embed(texts)`` -> [n, d] float32."""

    engine = "reference"  # the numpy reference engine (cmf.runtime.torch_engine: "torch")

    def __init__(
        self, params: dict, config: dict, pipeline: Pipeline, tokenizer: Any = None
    ) -> None:
        self.params, self.config, self.pipeline, self.tokenizer = (
            params,
            config,
            pipeline,
            tokenizer,
        )
        self.model_type = config.get("model_type", "bert")
        self.n_head = _int(config, "num_attention_heads")
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        act = config.get("hidden_act", "gelu")
        if act not in ACTIVATIONS:
            raise CmfError(f"hidden_act {act!r} is not supported ({', '.join(ACTIVATIONS)} are)")
        self.act = ACTIVATIONS[act]
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise CmfError(
                f"position_embedding_type {config['position_embedding_type']!r} is not supported"
            )
        d = params["wte"].shape[1]
        if d % self.n_head:
            raise CmfError(f"hidden size {d} is not a multiple of {self.n_head} heads")
        self.pad_id = int(config.get("pad_token_id") or 0)
        self.offset_positions = ENCODER_TYPES.get(self.model_type, False)
        if params["wtt"] is None:
            params["wtt"] = np.zeros((1, d), np.float32)

    @classmethod
    def from_tensors(
        cls,
        get_tensor: Callable[[str], np.ndarray],
        names: Sequence[str],
        config: dict,
        pipeline: Pipeline | None = None,
        tokenizer: Any = None,
    ) -> BertEncoder:
        params = load_params(get_tensor, names, _int(config, "num_hidden_layers"))
        return cls(params, config, pipeline or Pipeline(), tokenizer)

    @property
    def dim(self) -> int:
        return self.params["wte"].shape[1] * len(self.pipeline.modes)

    def max_length(self) -> int:
        n_pos = self.params["wpe"].shape[0] - (self.pad_id + 1 if self.offset_positions else 0)
        return min(self.pipeline.max_length or n_pos, n_pos)

    def states(
        self, ids: np.ndarray, mask: np.ndarray, type_ids: np.ndarray | None = None
    ) -> np.ndarray:
        """Token states [b, s, d] of padded ``ids`` [b, s] with ``mask`` [b, s] (1 = real token)."""
        ids, mask = np.asarray(ids, np.int64), np.asarray(mask, np.int64)
        if ids.ndim != 2 or mask.shape != ids.shape:
            raise CmfError(
                f"ids and mask must be [batch, seq] arrays of one shape, got {ids.shape} "
                f"and {mask.shape}"
            )
        vocab, n_type = self.params["wte"].shape[0], self.params["wtt"].shape[0]
        type_ids = np.zeros_like(ids) if type_ids is None else np.asarray(type_ids, np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= vocab):
            raise CmfError(f"token id out of range [0, {vocab})")
        if type_ids.size and (type_ids.min() < 0 or type_ids.max() >= n_type):
            raise CmfError(f"token type id out of range [0, {n_type})")
        if self.offset_positions:  # RoBERTa: padding_idx + 1 + index among the real tokens
            positions = np.cumsum(mask, axis=1) * mask + self.pad_id
        else:
            positions = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
        if positions.size and positions.max() >= self.params["wpe"].shape[0]:
            raise CmfError(
                f"sequence of {ids.shape[1]} tokens is longer than the model's "
                f"{self.params['wpe'].shape[0]} positions"
            )
        return encoder(
            ids,
            type_ids,
            positions,
            mask.astype(bool),
            self.params,
            self.n_head,
            self.eps,
            self.act,
        )

    def embed_ids(
        self, ids: np.ndarray, mask: np.ndarray, type_ids: np.ndarray | None = None
    ) -> np.ndarray:
        e = pool(self.states(ids, mask, type_ids), np.asarray(mask), self.pipeline.modes)  # [b, d]
        return normalize(e) if self.pipeline.normalize else e

    def tokenize(self, texts: Sequence[str]) -> list[Any]:
        if self.tokenizer is None:
            raise CmfError("this encoder has no tokenizer (tokenizer.json)")
        if self.pipeline.lowercase:
            texts = [t.lower() for t in texts]
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_length())
        return self.tokenizer.encode_batch(list(texts))

    def embed(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Sentence embeddings [len(texts), dim], batched by length as sentence-transformers
        does."""
        encodings = self.tokenize(texts)
        out = np.zeros((len(encodings), self.dim), np.float32)
        order = sorted(range(len(encodings)), key=lambda i: -len(encodings[i].ids))
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            s = max(len(encodings[i].ids) for i in chunk)
            ids = np.full((len(chunk), s), self.pad_id, np.int64)
            types = np.zeros((len(chunk), s), np.int64)
            mask = np.zeros((len(chunk), s), np.int64)
            for row, i in enumerate(chunk):
                e = encodings[i]
                ids[row, : len(e.ids)], types[row, : len(e.ids)], mask[row, : len(e.ids)] = (
                    e.ids,
                    e.type_ids,
                    1,
                )
            out[chunk] = self.embed_ids(ids, mask, types)
        return out


def _int(config: dict, key: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise CmfError(f"config.json: {key} must be a positive integer, found {value!r}")
    return value
