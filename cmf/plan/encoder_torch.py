"""The encoder harness's forward pass in PyTorch (float32): cmf.runtime.bert's encoder, op for op.

cmf.plan.harness's ``EncoderHarness`` runs the model here when torch is importable (its module
docstring says how to force the numpy reference instead). What differs from the reference, none
of it in what a run returns beyond float32 rounding:

* **Real tokens only.** Embeddings, linears, LayerNorms and the activation are per token: they
  run on the calibration's real tokens packed into one ``[n, d]`` matrix per chunk of batches
  (padding is a third of MiniLM's padded rows). Attention alone runs per batch on padded
  ``[b, h, s, hd]`` tensors with the padded keys masked, as the reference masks them.
* **Restarts.** The reference pass (the first run, with no tensor replaced) keeps, for every
  layer, the three activations its linears read that are not recomputed cheaply: the layer input
  (query, key, value), the attention context (attention output) and the attention block's output
  (intermediate). A run whose replaced tensors all sit in layer ``i`` restarts at the first of
  those its tensors touch — a run that changes only ``encoder.layer.5.output.dense`` costs one
  intermediate and one output projection, not the model. The kept activations are bounded by
  ``MAX_CACHE_BYTES`` (the last layers are kept first; a run before them starts from the
  embeddings).
* **Pooling** is the reference's own (cmf.runtime.bert.pool and normalize, numpy) on the final
  token states.

torch is imported by the functions that run, never at import (``import cmf`` stays torch-free).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..runtime import bert

MAX_CACHE_BYTES = 256 << 20  # activations kept from the reference pass for restarts
CHUNK_TOKENS = 8192  # real tokens run together through the per-token operations
# stages of a layer, in the order the pass reaches them: the input each one restarts from
STAGE_QKV, STAGE_O, STAGE_FC = 0, 1, 2
# tensor name (after "<prefix>encoder.layer.<i>.") -> the first stage it changes
_STAGES = (
    ("attention.self.", STAGE_QKV),
    ("attention.output.", STAGE_O),  # dense and the LayerNorm after it
    ("intermediate.", STAGE_FC),
    ("output.", STAGE_FC),  # dense and LayerNorm: the intermediate activation is not kept
)
LINEARS = (  # key of a linear -> its tensors (the harness's moments owners)
    ("qkv", ("attention.self.query", "attention.self.key", "attention.self.value")),
    ("o", ("attention.output.dense",)),
    ("fc", ("intermediate.dense",)),
    ("proj", ("output.dense",)),
)


def _activation(torch: Any, name: str) -> Callable:
    f = torch.nn.functional
    return {
        "gelu": f.gelu,
        "gelu_new": lambda x: f.gelu(x, approximate="tanh"),
        "gelu_pytorch_tanh": lambda x: f.gelu(x, approximate="tanh"),
        "gelu_fast": lambda x: f.gelu(x, approximate="tanh"),
        "relu": torch.relu,
    }[name]


def _tensor(torch: Any, a: np.ndarray) -> Any:
    """A float32 torch view of ``a`` (a copy only where it is not contiguous float32)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.flags.writeable:
        return torch.from_numpy(a)
    with warnings.catch_warnings():  # a read-only (mapped, decoded) array: only ever read here
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a)


class Chunk:
    """Consecutive batches of the calibration inputs, packed: ``ids``, ``types``, ``positions``
    and ``fold`` (the sentence's parity) per real token, and per batch its shape, its real rows'
    places in the padded ``[b * s]`` layout and its key mask."""

    def __init__(
        self,
        batches: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
        sentence0: int,
        pad_id: int,
        offset_positions: bool,
    ) -> None:
        ids, types, positions, fold = [], [], [], []
        self.batches = []  # (ids, mask) padded, as the harness made them
        self.places = []  # (b, s, [n_real] indices into b * s)
        for b_ids, mask, b_types in batches:
            b, s = b_ids.shape
            keep = mask.reshape(-1).astype(bool)
            if offset_positions:  # RoBERTa: padding_idx + 1 + index among the real tokens
                pos = np.cumsum(mask, axis=1) * mask + pad_id
            else:
                pos = np.broadcast_to(np.arange(s), (b, s))
            ids.append(b_ids.reshape(-1)[keep])
            types.append(b_types.reshape(-1)[keep])
            positions.append(np.asarray(pos).reshape(-1)[keep])
            fold.append(((sentence0 + np.arange(b * s) // s) % 2)[keep])
            self.batches.append((b_ids, mask))
            self.places.append((b, s, np.flatnonzero(keep)))
            sentence0 += b
        self.ids, self.types = np.concatenate(ids), np.concatenate(types)
        self.positions, self.fold = np.concatenate(positions), np.concatenate(fold)
        self.n = len(self.ids)


class TorchEncoderPass:
    """The BERT encoder of a harness in torch: ``run(get, start)`` -> pooled outputs [N, dim].

    ``prefix``: the weights' name prefix (cmf.runtime.bert._prefix). ``batches``: the harness's
    padded ``(ids, mask, types)`` batches; outputs come in their order."""

    def __init__(
        self,
        config: dict,
        pipeline: bert.Pipeline,
        prefix: str,
        batches: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
        pad_id: int,
        offset_positions: bool,
        names: Sequence[str],
    ) -> None:
        self.config, self.pipeline, self.prefix = config, pipeline, prefix
        self.names = frozenset(names)
        self.n_layer = bert._int(config, "num_hidden_layers")
        self.n_head = bert._int(config, "num_attention_heads")
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.act_name = config.get("hidden_act", "gelu")
        self.chunks: list[Chunk] = []
        group: list = []
        tokens, sentence0 = 0, 0
        for batch in batches:
            n = int(batch[1].sum())
            if group and tokens + n > CHUNK_TOKENS:
                self.chunks.append(Chunk(group, sentence0, pad_id, offset_positions))
                sentence0 += sum(b[0].shape[0] for b in group)
                group, tokens = [], 0
            group.append(batch)
            tokens += n
        if group:
            self.chunks.append(Chunk(group, sentence0, pad_id, offset_positions))
        self._layer_re = re.compile(re.escape(prefix) + r"encoder\.layer\.(\d+)\.(.*)")
        # (chunk, layer) -> {stage: tensor}, filled by the reference pass (``record``)
        self.cache: dict[tuple[int, int], dict[int, Any]] = {}
        self.cached_layers: set[int] = set()

    # -- where a run may start
    def entry(self, names: Sequence[str]) -> tuple[int, int] | None:
        """``(layer, stage)`` the replaced tensors ``names`` first change, when every one sits in
        an encoder layer whose activations are kept; None: the run starts from the embeddings."""
        first: tuple[int, int] | None = None
        for name in names:
            m = self._layer_re.fullmatch(name)
            if m is None:
                return None
            layer, rest = int(m.group(1)), m.group(2)
            stage = next((s for p, s in _STAGES if rest.startswith(p)), None)
            if stage is None or layer not in self.cached_layers:
                return None
            if first is None or (layer, stage) < first:
                first = (layer, stage)
        return first

    def plan_cache(self, d: int) -> None:
        """Choose the layers whose activations the reference pass keeps: the last ones that fit
        ``MAX_CACHE_BYTES`` (three [n, d] float32 activations per layer)."""
        per_layer = 3 * d * 4 * sum(c.n for c in self.chunks)
        fit = MAX_CACHE_BYTES // per_layer if per_layer else self.n_layer
        self.cached_layers = set(range(max(self.n_layer - fit, 0), self.n_layer))

    # -- the pass
    def _params(self, torch: Any, get: Callable[[str], np.ndarray], first_layer: int) -> dict:
        pre = self.prefix

        def t(name: str) -> Any:
            return _tensor(torch, get(pre + name))

        def lin(name: str) -> tuple[Any, Any]:  # a linear's or a LayerNorm's weight and bias
            return t(name + ".weight"), t(name + ".bias")

        ln = lin

        layers: dict[int, dict] = {}
        for i in range(first_layer, self.n_layer):
            L = f"encoder.layer.{i}."
            layers[i] = {
                "q": lin(L + "attention.self.query"),
                "k": lin(L + "attention.self.key"),
                "v": lin(L + "attention.self.value"),
                "o": lin(L + "attention.output.dense"),
                "ln_1": ln(L + "attention.output.LayerNorm"),
                "fc": lin(L + "intermediate.dense"),
                "proj": lin(L + "output.dense"),
                "ln_2": ln(L + "output.LayerNorm"),
            }
        out: dict[str, Any] = {"layers": layers}
        if first_layer == 0:
            wtt = pre + "embeddings.token_type_embeddings.weight"
            out["wte"] = t("embeddings.word_embeddings.weight")
            out["wpe"] = t("embeddings.position_embeddings.weight")
            out["wtt"] = _tensor(torch, get(wtt)) if wtt in self.names else None
            out["ln_emb"] = ln("embeddings.LayerNorm")
        return out

    def _attention(self, torch: Any, chunk: Chunk, x: Any, p: dict) -> Any:
        """The attention context [n, d] of the packed layer input ``x`` [n, d] (before the
        output projection), batch by batch on padded tensors."""
        f = torch.nn.functional
        q, k, v = (f.linear(x, *p[key]) for key in ("q", "k", "v"))  # [n, d] each
        d = x.shape[1]
        h = self.n_head
        out = x.new_empty((chunk.n, d))
        row = 0
        for (b, s, places), (_, mask) in zip(chunk.places, chunk.batches, strict=True):
            n = len(places)
            index = torch.from_numpy(places)
            heads = []
            for part in (q, k, v):
                padded = x.new_zeros((b * s, d))
                padded.index_copy_(0, index, part[row : row + n])
                heads.append(padded.reshape(b, s, h, d // h).transpose(1, 2))  # [b, h, s, hd]
            keys = torch.from_numpy(mask.astype(bool))[:, None, None, :]  # [b, 1, 1, s]
            ctx = f.scaled_dot_product_attention(*heads, attn_mask=keys)  # [b, h, s, hd]
            ctx = ctx.transpose(1, 2).reshape(b * s, d)  # [b s, d]
            out[row : row + n] = ctx.index_select(0, index)
            row += n
        return out

    def _layer(
        self,
        torch: Any,
        chunk: Chunk,
        i: int,
        stage: int,
        state: dict[int, Any],
        p: dict,
        hook: Callable[[int, str, Any], None] | None,
    ) -> Any:
        """Layer ``i`` from ``stage`` with ``state`` (stage -> its input) -> the layer's output."""
        f = torch.nn.functional
        act = _activation(torch, self.act_name)
        d = state[stage].shape[1]
        if stage <= STAGE_O:
            x = state[STAGE_QKV]  # [n, d]
            if stage == STAGE_QKV:
                if hook is not None:
                    hook(i, "qkv", x)
                a = self._attention(torch, chunk, x, p)  # [n, d]
            else:
                a = state[STAGE_O]
            if hook is not None:
                hook(i, "o", a)
            h = f.layer_norm(x + f.linear(a, *p["o"]), (d,), *p["ln_1"], eps=self.eps)  # [n, d]
        else:
            h = state[STAGE_FC]
        if hook is not None:
            hook(i, "fc", h)
        g = act(f.linear(h, *p["fc"]))  # [n, f]
        if hook is not None:
            hook(i, "proj", g)
        return f.layer_norm(h + f.linear(g, *p["proj"]), (d,), *p["ln_2"], eps=self.eps)

    def run(
        self,
        get: Callable[[str], np.ndarray],
        start: tuple[int, int] | None = None,
        *,
        record: bool = False,
        hook: Callable[[Any, str, np.ndarray, np.ndarray], None] | None = None,
    ) -> np.ndarray:
        """Pooled (and normalised, as the pipeline says) outputs [N, dim] float32 with weights
        from ``get``; ``start``: ``(layer, stage)`` to restart from the kept activations (None:
        from the embeddings). ``record``: keep the activations (the reference pass).
        ``hook(key, kind, rows, fold)``: each linear's input rows (float32 [n, in], real tokens
        only) and their folds, key ``(layer, kind)``, kind one of qkv, o, fc, proj."""
        import torch

        first = 0 if start is None else start[0]
        with torch.inference_mode():
            p = self._params(torch, get, first)
            outs = []
            for c, chunk in enumerate(self.chunks):
                layer_hook = None
                if record or hook is not None:
                    layer_hook = self._hook(c, chunk, record, hook)
                if start is None:
                    x = self._embed(torch, chunk, p)
                    i0, state = 0, {STAGE_QKV: x}
                else:
                    i0, state = first, dict(self.cache[(c, first)])
                for i in range(i0, self.n_layer):
                    stage = start[1] if start is not None and i == first else STAGE_QKV
                    x = self._layer(torch, chunk, i, stage, state, p["layers"][i], layer_hook)
                    state = {STAGE_QKV: x}
                outs.append(self._pool(chunk, x.numpy()))
        return np.concatenate(outs)

    def _hook(self, c: int, chunk: Chunk, record: bool, hook: Any) -> Callable:
        keep = {"qkv": STAGE_QKV, "o": STAGE_O, "fc": STAGE_FC}

        def on_input(i: int, kind: str, x: Any) -> None:
            if record and kind in keep and i in self.cached_layers:
                self.cache.setdefault((c, i), {})[keep[kind]] = x
            if hook is not None:
                hook((i, kind), kind, x.numpy(), chunk.fold)

        return on_input

    def _embed(self, torch: Any, chunk: Chunk, p: dict) -> Any:
        f = torch.nn.functional
        x = p["wte"][torch.from_numpy(chunk.ids)] + p["wpe"][torch.from_numpy(chunk.positions)]
        if p["wtt"] is not None:
            x = x + p["wtt"][torch.from_numpy(chunk.types)]
        return f.layer_norm(x, (x.shape[1],), *p["ln_emb"], eps=self.eps)  # [n, d]

    def _pool(self, chunk: Chunk, x: np.ndarray) -> np.ndarray:
        out, row = [], 0
        for (b, s, places), (_, mask) in zip(chunk.places, chunk.batches, strict=True):
            states = np.zeros((b * s, x.shape[1]), np.float32)
            states[places] = x[row : row + len(places)]
            row += len(places)
            e = bert.pool(states.reshape(b, s, -1), mask, self.pipeline.modes)  # [b, dim]
            out.append(bert.normalize(e) if self.pipeline.normalize else e)
        return np.concatenate(out)


def owners(prefix: str, n_layer: int) -> dict[tuple[int, str], list[str]]:
    """``(layer, kind)`` -> the weight names whose input that linear reads."""
    return {
        (i, key): [f"{prefix}encoder.layer.{i}.{s}.weight" for s in subs]
        for i in range(n_layer)
        for key, subs in LINEARS
    }
