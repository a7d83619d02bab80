"""The planner's harness for Llama-family causal LMs, streamed one decoder block at a time.

* **Runs** (``run``): the reference decoder (cmf.runtime.llama) built with ``lazy=True``: each
  block's weights are fetched from ``tensors`` (or the overrides) when the pass reaches the block
  and dropped after it. The reference pass keeps every block's input (``[n, d]`` each, a few MB);
  a run whose overrides all sit in block ``i`` or later starts at block ``i`` from that input, so
  measuring one tensor of the last block costs one block and the head, not the model.
* **Moments** (``input_moments``): a lazy mapping. Asking for a tensor of block ``i`` runs that
  block alone on its cached input and sums its four input kinds (attention, attention output,
  MLP, down projection) — one block's second-moment matrices in memory at a time, whatever the
  depth of the model.
* **Sensitivities** (``sensitivities``, with PyTorch): the output error is the mean KL divergence
  of next-token distributions, whose Hessian at the original weights is the Fisher information
  ``F = E_y[g g^T]`` (``g`` the gradient of ``log p(y)``, ``y`` drawn from the original model's own
  next-token distribution at each position). Noise of variance ``s^2`` per element in tensor ``t``
  then moves the mean KL by ``s^2 tr(F_t) / (2 n)`` (n positions). One streamed backward pass per
  drawn ``y`` gives ``|g_t|^2`` of every tensor at once (cross terms between positions vanish in
  expectation: each position's ``y`` is drawn on its own), so all sensitivities cost
  ``FISHER_SAMPLES`` backward passes instead of one forward pass per tensor. Without torch, or
  for tensors stored twice, the noise measurement of cmf.plan.sensitivity is used (on the
  streamed runs above).
* **llama.cpp's activation rounding** (``ggml_activations``, set by the planner's ``--gguf``):
  a run whose overrides carry ``ggml_types`` (a plan's encodings, a written file) rounds each
  matrix product's input as llama.cpp does for the weight's type (cmf.runtime.ggml_acts), and
  the moments of each tensor a product reads carry, fifth, its activation errors per rounding
  type (cmf.runtime.ggml_acts.activation_errors), which cmf.plan.ggml_candidates adds to each
  type's point.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from collections.abc import Mapping as MappingABC
from typing import Any

import numpy as np

from .harness_base import Harness, MomentSums, _cosines, _patched, kl_rows, next_token_log_probs

FISHER_SAMPLES = 4  # drawn next tokens per position: backward passes of the Fisher estimate
FISHER_SEED = 0x5EED
_BLOCK_RE = re.compile(r"(?:model\.layers|blk)\.(\d+)\.")
_HEADS = ("lm_head.weight", "output.weight")  # an output head of its own (Hugging Face, GGUF names)
_HEAD_NAMES = (*_HEADS, "model.norm.weight", "output_norm.weight")  # what sits after the last block
_EMBED_NAMES = ("model.embed_tokens.weight", "token_embd.weight")
_SUBS = (  # fused weight of a Layer -> its tensors, Hugging Face and GGUF names
    (
        "w_qkv",
        (
            ("self_attn.q_proj", "attn_q"),
            ("self_attn.k_proj", "attn_k"),
            ("self_attn.v_proj", "attn_v"),
        ),
    ),
    ("w_o", (("self_attn.o_proj", "attn_output"),)),
    ("w_gate_up", (("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"))),
    ("w_down", (("mlp.down_proj", "ffn_down"),)),
)


def block_of(name: str) -> int | None:
    """The decoder block a tensor belongs to (``model.layers.3.…`` / ``blk.3.…``), else None."""
    m = _BLOCK_RE.match(name)
    return int(m.group(1)) if m else None


class DecoderHarness(Harness):
    kind = "decoder"
    # simulate llama.cpp (cmf.runtime.ggml_acts): a run whose overrides carry ``ggml_types``
    # rounds each matrix product's input as llama.cpp does for the weight's type, and the input
    # moments carry each tensor's activation-rounding errors (the planner's --gguf sets it)
    ggml_activations = False

    def __init__(
        self,
        tensors: Mapping[str, np.ndarray],
        config: dict,
        ids: Sequence[int],
        build: Callable[..., Any],
        tokenizer: Any = None,
    ) -> None:
        super().__init__(tensors)
        self.config, self.ids, self.build, self.tokenizer = config, list(ids), build, tokenizer
        self.samples = len(self.ids)
        self.tokens = len(self.ids)
        self._inputs: list[np.ndarray] | None = (
            None  # each block's input in the reference pass, then the final states
        )
        self._n_layers: int | None = None
        self.fisher_note: str | None = None  # why the Fisher sensitivities were not used, if so
        self._start = 0  # the block the current run starts at (run() sets it)
        self._types: dict[str, str] | None = None  # the current run's GGML types (run() sets it)

    # -- running
    def _runner(self, get: Callable[[str], np.ndarray]) -> Any:
        return self.build(get, lazy=True)

    def _run(self, get: Callable[[str], np.ndarray]) -> np.ndarray:
        runner = self._runner(get)
        if self._types:  # llama.cpp's activation rounding per weight type (module docstring)
            from ..runtime.ggml_acts import llama_cpp_rounding

            with llama_cpp_rounding(runner, self._type_of):
                return self._pass(runner)
        return self._pass(runner)

    def _type_of(self, hf_name: str) -> str | None:
        """The GGML type of the run's tensor ``hf_name`` (or of its GGUF name), None if F32."""
        from ..runtime.llama import hf_to_gguf_name

        types = self._types or {}
        got = types.get(hf_name)
        return got if got is not None else types.get(hf_to_gguf_name(hf_name) or "")

    def _pass(self, runner: Any) -> np.ndarray:
        ids = np.asarray(self.ids, np.int64)
        self._n_layers = runner.config.n_layers
        if self._inputs is None and self._recording:
            kept: list[np.ndarray] = []
            out = runner.logits_from(0, runner.embed[runner._ids(ids)], lambda i, x: kept.append(x))
            self._inputs = kept
            return np.asarray(out, np.float32)
        if self._start > 0 and self._inputs is not None:
            return np.asarray(
                runner.logits_from(self._start, self._inputs[self._start]), np.float32
            )
        return np.asarray(runner.logits_from(0, runner.embed[runner._ids(ids)]), np.float32)

    def run(self, overrides: Mapping[str, np.ndarray] | None = None) -> Any:
        """Logits [n, V] with ``overrides``; started at the first block they touch (module doc)."""
        _ = self.reference if overrides else None  # the cached block inputs come with the reference
        self._start = self._first_block(overrides or {})
        types = getattr(overrides, "ggml_types", None) if self.ggml_activations else None
        self._types = dict(types) if types else None
        try:
            return super().run(overrides)
        finally:
            self._start, self._types = 0, None

    def _first_block(self, overrides: Mapping[str, Any]) -> int:
        n = self._n_layers
        if not overrides or n is None or self._inputs is None:
            return 0
        first = n
        for name in overrides:
            b = block_of(name)
            if b is None:
                b = n if name in _HEAD_NAMES and not self._tied(name) else 0
            first = min(first, b)
        return first

    def head_name(self) -> str | None:
        """The output head's own tensor (None when the model reads it from the embedding)."""
        return next((n for n in _HEADS if n in self.tensors), None)

    def embedding_name(self) -> str | None:
        return next((n for n in _EMBED_NAMES if n in self.tensors), None)

    def _tied(self, name: str) -> bool:
        """True if ``name`` is the output head and the model reads its embedding from it too."""
        return name in _HEADS and bool(self.config.get("tie_word_embeddings"))

    def stats(self, overrides: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
        """The error (mean KL), KL max, top-1 agreement, perplexities and logit cosines."""
        ref, out = self.reference, self.run(overrides)
        kl = kl_rows(ref, out)
        c = _cosines(ref, out)
        nxt = np.asarray(self.ids[1:], np.int64)
        la, lb = next_token_log_probs(ref[:-1], nxt), next_token_log_probs(out[:-1], nxt)
        return {
            "error": float(kl.mean()),
            "kl_mean": float(kl.mean()),
            "kl_max": float(kl.max()),
            "top1_agreement": float(np.mean(np.argmax(ref, -1) == np.argmax(out, -1))),
            "perplexity_original": float(np.exp(-la.mean())) if len(nxt) else None,
            "perplexity": float(np.exp(-lb.mean())) if len(nxt) else None,
            "cosine_mean": float(c.mean()),
            "cosine_min": float(c.min()),
        }

    # -- input moments, one block at a time
    def input_moments(self) -> DecoderMoments:
        _ = self.reference
        return DecoderMoments(self)

    def layer_names(self, i: int) -> list[tuple[str, list[str]]]:
        """``(fused weight attribute, [tensor names])`` of block ``i`` (the names present)."""
        out = []
        for attr, subs in _SUBS:
            names = []
            for hf, gg in subs:
                for cand in (f"model.layers.{i}.{hf}.weight", f"blk.{i}.{gg}.weight"):
                    if cand in self.tensors:
                        names.append(cand)
                        break
            out.append((attr, names))
        return out

    # -- sensitivities through the Fisher information (torch)
    def sensitivities(
        self,
        items: Sequence[tuple[str, np.ndarray, int | None, np.ndarray | None, float]],
        *,
        copies: Mapping[str, Sequence[str]] | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> dict[str, dict] | None:
        """``{name: {"sensitivity", "fisher_trace", "seconds"}}`` for the items (as
        cmf.plan.sensitivity.measured takes them) from the Fisher information (module docstring),
        or None without torch. Tensors stored twice (``copies``) are left out: the caller
        measures them with noise."""
        try:
            import torch
        except ImportError:
            return None
        from .fisher import fisher_traces

        start = time.perf_counter()
        try:
            traces = fisher_traces(torch, self, FISHER_SAMPLES, FISHER_SEED)
        except (RuntimeError, ValueError) as exc:  # torch refused this model: measure with noise
            self.fisher_note = (
                f"Fisher sensitivities failed ({type(exc).__name__}: {exc}); measured with noise"
            )
            return None
        n = max(len(self.ids), 1)
        out: dict[str, dict] = {}
        seconds = (time.perf_counter() - start) / max(len(items), 1)
        for name, x, axis, w, _energy in items:
            if name not in traces or (copies or {}).get(name):
                continue
            shape = np.shape(x)
            if w is None or axis is None:
                total_w = float(np.prod(shape))
            else:
                total_w = float(np.sum(w, dtype=np.float64)) * float(
                    shape[1 - axis] if len(shape) == 2 else 1
                )
            s = 0.5 * traces[name] / n / total_w if total_w > 0 else 0.0
            out[name] = {"sensitivity": s, "fisher_trace": traces[name], "seconds": seconds}
            if progress is not None:
                progress(name)
        return out


class DecoderMoments(MappingABC):
    """``name -> (axis, E[x_j^2], (fold matrices) | None)`` of a decoder's weights, computed a
    block at a time on demand from the reference pass's cached block inputs (one block kept)."""

    def __init__(self, harness: DecoderHarness) -> None:
        self.h = harness
        n = harness._n_layers or 0
        self._keys: list[str] = []
        for i in range(n):
            for _, group in harness.layer_names(i):
                self._keys += group
        self._cached: tuple[int, dict] | None = None
        self._global: dict[str, Any] = {}
        tied = bool(harness.config.get("tie_word_embeddings"))
        self.head = harness.head_name()
        self.embedding = harness.embedding_name()
        if not tied and self.head is not None:
            self._keys.append(self.head)
        elif tied and self.head is None and self.embedding is not None:
            self.head = self.embedding  # the output head too: its columns weigh by the final states
            self._keys.append(self.embedding)
        if (
            not tied
            and self.embedding is not None
            and not (
                self.head is not None
                and np.array_equal(harness.tensors[self.head], harness.tensors[self.embedding])
            )
        ):
            rows: dict = {}
            harness._token_rows(rows, self.embedding, harness.tokenizer, [harness.ids])
            if self.embedding in rows:
                self._global[self.embedding] = rows[self.embedding]
                self._keys.append(self.embedding)
        self._key_set = set(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __contains__(self, name: object) -> bool:
        return name in self._key_set

    def __getitem__(self, name: str) -> Any:
        if name not in self._key_set:
            raise KeyError(name)
        if name in self._global:
            return self._global[name]
        if name == self.head:
            self._global[name] = self._head_moments()
            return self._global[name]
        i = block_of(name)
        if self._cached is None or self._cached[0] != i:
            self._cached = (i, self._block_moments(i))
        return self._cached[1][name]

    def _head_moments(self) -> Any:
        from ..runtime.llama import rms_norm

        h = self.h
        runner = h._runner(h.tensors.__getitem__)
        x = rms_norm(h._inputs[-1], runner.norm, runner.config.rms_norm_eps)  # [n, d]
        sums = MomentSums()
        sums.add(0, x, (2 * np.arange(x.shape[0])) // max(x.shape[0], 1))
        if self.h.ggml_activations:
            from ..runtime.ggml_acts import activation_errors

            return (1, *sums.result(0), activation_errors(x, h.tensors[self.head]))
        return (1, *sums.result(0))

    def _block_moments(self, i: int) -> dict:
        from ..runtime import llama

        h = self.h
        runner = h._runner(h.tensors.__getitem__)
        layer = runner.layers[i]
        owners = {id(getattr(layer, attr)): names for attr, names in h.layer_names(i) if names}
        sums = MomentSums()
        original = llama.linear
        acts: dict[str, dict] = {}  # with ggml_activations: name -> its activation errors

        def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
            if id(w) in owners:  # fold: first or second half of the sequence
                flat = x.reshape(-1, x.shape[-1])
                sums.add(id(w), flat, (2 * np.arange(flat.shape[0])) // max(flat.shape[0], 1))
                if h.ggml_activations:
                    _activation_errors(acts, flat, w, owners[id(w)], h.tensors)
            return original(x, w, b)

        x = h._inputs[i]
        cos, sin = llama.rope_cos_sin(np.arange(len(x)), runner.inv_freq)
        with _patched(llama, "linear", linear):
            llama.block(x, layer, runner.config, cos, sin)
        out: dict = {}
        for key, names in owners.items():
            got = sums.result(key)
            if got is not None:
                for n in names:
                    out[n] = (1, *got, acts[n]) if n in acts else (1, *got)
        return out


def _activation_errors(
    out: dict[str, dict],
    x: np.ndarray,
    w: np.ndarray,
    names: Sequence[str],
    tensors: Mapping[str, np.ndarray],
) -> None:
    """``out[name]``: cmf.runtime.ggml_acts.activation_errors of each tensor ``names`` fuses
    into ``w`` (their rows in order), on the input ``x``."""
    from ..runtime.ggml_acts import activation_errors

    start = 0
    for n in names:
        rows = int(np.shape(tensors[n])[0])
        out[n] = activation_errors(x, w[start : start + rows])
        start += rows
