"""The torch engine of ``cmf run`` / ``cmf eval``: text models run by transformers on PyTorch.

* ``TorchEncoder``: a BERT-family sentence encoder. Tokenising, batching, pooling and
  normalisation are the numpy reference's own (cmf.runtime.bert: it subclasses ``BertEncoder``
  and replaces only ``states``, the token states of the transformer), so both engines read the
  sentence-transformers module configs the same way and pool identically.
* ``TorchCausalLM``: a Llama-family decoder (``generate``: greedy, with a KV cache; ``logits``),
  wrapped by cmf.runtime.rebuild's ``Decoder`` as the numpy ``LlamaRunner`` is.

Models are built in float32 on the CPU: from a ``.cmf`` (or a sharded set) with its own
``config.json``, or packed from a ``.gguf``, through ``cmf.transformers.from_pretrained``; from
anything else (a Hugging Face directory, a .safetensors file with a borrowed config, an original
``.gguf``) from the config, then the weights loaded through cmf.runtime.rebuild's
``ModelSource``. A GGUF model (no ``config.json``) is built as transformers builds the ``.gguf``:
config from its metadata, Hugging Face names, q/k rows un-permuted (cmf.transformers_gguf).
torch and transformers are imported only when a model is built.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..errors import CmfError
from ..extras import install_hint
from .bert import BertEncoder, Pipeline, _int
from .llama import check_ids

ENGINES = ("torch", "reference", "onnxruntime")  # every engine name load_runner takes


def available() -> bool:
    """True when torch and transformers are importable (without importing them)."""
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))


def _modules() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError:
        raise CmfError(
            "the torch engine needs PyTorch and transformers: "
            f"{install_hint('transformers')} (or use --engine reference)"
        ) from None
    return torch, transformers


def build_model(src: Any, config: dict, auto_class: str, **kwargs: Any) -> Any:
    """The transformers model (``transformers.<auto_class>``, float32, eval mode) of ``src``, a
    cmf.runtime.rebuild ``ModelSource`` whose ``config.json`` is ``config`` (for a GGUF model
    without one, the config comes from its metadata)."""
    from ..transformers_gguf import config_dict, hf_tensors, is_gguf_import

    torch, transformers = _modules()
    cls = getattr(transformers, auto_class)
    gguf = is_gguf_import(src.metadata)  # GGUF tensor names and q/k row order
    has_config = src.json("config.json") is not None
    own_config = not is_gguf_import(src.metadata, ["config.json"] if has_config else [])
    if getattr(src, "origin", None) == "cmf" and (gguf or "config.json" in src._own_attachments()):
        from .. import transformers as cmf_transformers

        return cmf_transformers.from_pretrained(src.path, cls, dtype=torch.float32, **kwargs)
    names, get = (
        hf_tensors(src.metadata, src.keys(), src.get_tensor)
        if gguf
        else (src.keys(), src.get_tensor)
    )
    try:
        cfg = transformers.AutoConfig.for_model(
            **(config if own_config else config_dict(src.metadata))
        )
        dtype_kw = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
        model = cls.from_config(cfg, **{dtype_kw: torch.float32}, **kwargs)
    except (ValueError, KeyError, TypeError) as exc:
        raise CmfError(
            f"transformers cannot build a model from {src.path}'s config: {exc}"
        ) from None
    state = model.state_dict()
    prefix = getattr(model, "base_model_prefix", "")
    dot = f"{prefix}." if prefix else ""
    loaded = {}
    for name in names:
        key = name
        if key not in state and dot and key.startswith(dot) and key[len(dot) :] in state:
            key = key[len(dot) :]
        elif key not in state and dot + key in state:
            key = dot + key
        if key not in state:
            continue
        t = torch.from_numpy(np.array(get(name), copy=True))
        if tuple(t.shape) != tuple(state[key].shape):
            raise CmfError(
                f"{src.path}: tensor {name!r} has shape {list(t.shape)}, "
                f"{type(model).__name__} expects {list(state[key].shape)}"
            )
        loaded[key] = t.to(state[key].dtype) if t.is_floating_point() else t
    result = model.load_state_dict(loaded, strict=False)
    model.tie_weights()
    params = dict(model.named_parameters(remove_duplicate=False))
    filled = {params[k].data_ptr() for k in loaded if k in params}
    missing = [k for k in result.missing_keys if k in params and params[k].data_ptr() not in filled]
    if missing:
        raise CmfError(
            f"{src.path}: tensors the model needs are missing: {', '.join(missing[:5])}"
            + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        )
    return model.eval()


class TorchEncoder(BertEncoder):
    """A BERT-family sentence encoder on transformers' ``AutoModel``: ``embed(texts)`` ->
    [n, dim] float32, tokenised, batched and pooled exactly as the reference ``BertEncoder``."""

    engine = "torch"

    def __init__(self, model: Any, config: dict, pipeline: Pipeline, tokenizer: Any = None) -> None:
        from .bert import ENCODER_TYPES

        self.model, self.config, self.pipeline, self.tokenizer = model, config, pipeline, tokenizer
        self.model_type = config.get("model_type", "bert")
        self.pad_id = int(config.get("pad_token_id") or 0)
        self.offset_positions = ENCODER_TYPES.get(self.model_type, False)
        self.hidden = _int(config, "hidden_size")
        self.n_positions = _int(config, "max_position_embeddings")
        self.n_types = int(config.get("type_vocab_size") or 1)
        self.vocab = _int(config, "vocab_size")

    @classmethod
    def from_source(
        cls, src: Any, config: dict, pipeline: Pipeline, tokenizer: Any = None
    ) -> TorchEncoder:
        """The encoder of a cmf.runtime.rebuild ``ModelSource`` (no pooler: it is not used)."""
        model = build_model(src, config, "AutoModel", add_pooling_layer=False)
        return cls(model, config, pipeline, tokenizer)

    @property
    def dim(self) -> int:
        return self.hidden * len(self.pipeline.modes)

    def max_length(self) -> int:
        n_pos = self.n_positions - (self.pad_id + 1 if self.offset_positions else 0)
        return min(self.pipeline.max_length or n_pos, n_pos)

    def states(
        self, ids: np.ndarray, mask: np.ndarray, type_ids: np.ndarray | None = None
    ) -> np.ndarray:
        """Token states [b, s, d] (float32) of padded ``ids`` [b, s] with ``mask`` [b, s]."""
        import torch

        ids, mask = np.asarray(ids, np.int64), np.asarray(mask, np.int64)
        if ids.ndim != 2 or mask.shape != ids.shape:
            raise CmfError(
                "ids and mask must be [batch, seq] arrays of one shape, "
                f"got {ids.shape} and {mask.shape}"
            )
        type_ids = np.zeros_like(ids) if type_ids is None else np.asarray(type_ids, np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab):
            raise CmfError(f"token id out of range [0, {self.vocab})")
        if type_ids.size and (type_ids.min() < 0 or type_ids.max() >= self.n_types):
            raise CmfError(f"token type id out of range [0, {self.n_types})")
        if ids.shape[1] > self.n_positions - (self.pad_id + 1 if self.offset_positions else 0):
            raise CmfError(
                f"sequence of {ids.shape[1]} tokens is longer than the model's "
                f"{self.n_positions} positions"
            )
        extra = {}
        if self.offset_positions:  # RoBERTa: as the reference counts them, from the mask (not
            # from ids equal to the pad id, which a real token may share in a foreign vocabulary)
            extra["position_ids"] = torch.from_numpy(np.cumsum(mask, axis=1) * mask + self.pad_id)
        with torch.inference_mode():
            out = self.model(
                input_ids=torch.from_numpy(ids),
                attention_mask=torch.from_numpy(mask),
                token_type_ids=torch.from_numpy(type_ids),
                **extra,
            )
        return out.last_hidden_state.numpy().astype(np.float32, copy=False)


class TorchCausalLM:
    """A Llama-family causal LM on transformers' ``AutoModelForCausalLM``, with the interface of
    the numpy ``LlamaRunner`` that cmf.runtime.rebuild's ``Decoder`` uses."""

    engine = "torch"

    def __init__(self, model: Any) -> None:
        self.model = model
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        # the KV cache's name in forward() and its output: "cache" from transformers 5.2x on
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    @classmethod
    def from_source(cls, src: Any, config: dict) -> TorchCausalLM:
        return cls(build_model(src, config, "AutoModelForCausalLM"))

    def _ids(self, ids: Sequence[int] | np.ndarray) -> Any:
        import torch

        return torch.from_numpy(check_ids(ids, self.vocab_size))[None]

    def logits(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """float32 [len(ids), V]: row i is the distribution of the token after ids[: i + 1]."""
        import torch

        with torch.inference_mode():
            out = self.model(input_ids=self._ids(ids), use_cache=False)
        return out.logits[0].float().numpy()

    def generate(
        self, ids: Sequence[int], n: int, *, eos_token_id: int | Iterable[int] | None = None
    ) -> list[int]:
        """Greedy decoding: the up to ``n`` new tokens after ``ids`` (stops after an eos token)."""
        import torch

        if not isinstance(n, int) or n < 0:
            raise CmfError(f"n: expected a non-negative integer, found {n!r}")
        stop = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or ())
        x, past, out = self._ids(ids), None, []
        with torch.inference_mode():
            while len(out) < n:
                step = self.model(input_ids=x, use_cache=True, **{self._cache_kw: past})
                past = getattr(step, self._cache_kw)
                token = int(torch.argmax(step.logits[0, -1]))
                out.append(token)
                if token in stop:
                    break
                x = torch.tensor([[token]], dtype=torch.int64)
        return out
