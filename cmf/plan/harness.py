"""Run a model with some of its tensors replaced, and say how far its outputs moved.

The planner measures everything it predicts at the model's output. A :class:`Harness` holds a
model's original tensors (float32), its calibration inputs, and a way to run it with any tensors
swapped for others (noisy or decoded ones) on the reference decoder (cmf.runtime):

* ``encoder`` (BERT family): sentence embeddings of the calibration texts;
* ``decoder`` (Llama family): next-token logits over the calibration text (cut to 256 tokens),
  run one decoder block at a time (weights fetched per block, never all held as float32 at once;
  a run that changes only block ``i`` and later starts from block ``i``'s cached input);
* ``onnx``: every float output of every calibration input set.

**Engines.** Encoders run on PyTorch (float32, cmf.plan.encoder_torch: a port of
cmf.runtime.bert's forward on the real tokens only, restarting a run at the first layer stage its
replaced tensors touch) when torch is importable, else on the numpy reference (cmf.runtime.bert),
which stays the reference the torch pass is tested against (they agree to float32 rounding). The
environment variable ``CMF_PLAN_ENGINE`` chooses: ``auto`` (the default), ``torch`` (an error
without PyTorch) or ``reference`` (numpy, as before the torch pass existed). Decoders and ONNX
graphs always run on their reference runners (a decoder's Fisher sensitivities use torch when
importable, whatever this variable says).

**The output error** (what ``--target-error`` bounds, spec/planner.md) is ``1 - mean cosine``:
the cosine similarity of each sentence embedding (encoder) with the original's, averaged; for
ONNX models each float output is taken over all calibration samples at once (one vector per
output), and the mean is over the outputs. It is ``1 - cosine_mean`` of ``cmf eval``. For
decoders (causal LMs) it is the mean KL divergence ``KL(original || compressed)`` of the
next-token distributions over the calibration tokens, in nats: ``kl_mean`` of ``cmf eval`` and
what llama.cpp's ``--kl-divergence`` reports.

``input_moments()`` runs the original model once and returns, for each weight matrix that
multiplies an activation, the mean square of every input channel over the calibration tokens:
``E[x_j^2]`` (the diagonal of the input covariance), with the weight axis it runs along. The
quantization error of a weight ``W`` then moves the layer's output by
``E|dW x|^2 ~= sum_ij dW_ij^2 E[x_j^2]`` (errors of different elements are uncorrelated).
Where the input has at most ``MAX_HESSIAN_DIM`` channels (and all such matrices together stay
under ``MAX_HESSIAN_BYTES``) encoders and decoders also return the second-moment matrix
``E[x x^T]`` of each of two *folds* of the calibration inputs (alternate sentences; for one
sequence its two halves): the planner's step quantizer chooses codes with error feedback
through one fold's matrix (GPTQ-style) and measures their error ``tr(dW E[x x^T] dW^T)`` on the
other's, inputs the codes were not fitted to. ONNX graphs get the diagonal only (see
``OnnxHarness.input_moments``). A token-embedding matrix (a lookup: one-hot inputs) gets its
rows' importance from token frequencies instead (cmf.plan.tokens), along axis 0.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import CmfError
from ..extras import install_hint
from .decoder import DecoderHarness
from .harness_base import (  # noqa: F401  (re-exported: the harness API lives here)
    DECODER_METRIC,
    DEFAULT_MAX_TOKENS,
    DEFAULT_ONNX_SAMPLES,
    MAX_HESSIAN_BYTES,
    MAX_HESSIAN_DIM,
    METRIC,
    Harness,
    Moments,
    MomentSums,
    _patched,
    cosine_stats,
    fallback_warnings,
    kl_rows,
    output_error,
)

# The harness API: the base pieces live in cmf.plan.harness_base, decoders in cmf.plan.decoder.
__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_ONNX_SAMPLES",
    "DECODER_METRIC",
    "MAX_HESSIAN_BYTES",
    "MAX_HESSIAN_DIM",
    "METRIC",
    "DecoderHarness",
    "EncoderHarness",
    "Harness",
    "MomentSums",
    "Moments",
    "OnnxHarness",
    "cosine_stats",
    "fallback_warnings",
    "kl_rows",
    "open_harness",
    "output_error",
]

# ----------------------------------------------------------------------------- encoders


class EncoderHarness(Harness):
    kind = "encoder"

    def __init__(
        self,
        tensors: Mapping[str, np.ndarray],
        config: dict,
        pipeline: Any,
        tokenizer: Any,
        texts: Sequence[str],
        domains: Sequence[str] | None = None,
        engine: str | None = None,
    ) -> None:
        from ..runtime import bert
        from ..runtime.bert import BertEncoder

        super().__init__(tensors)
        self.config, self.pipeline = config, pipeline
        probe = BertEncoder.from_tensors(
            self.tensors.__getitem__, list(self.tensors), config, pipeline, tokenizer
        )
        encodings = probe.tokenize(texts)
        self.tokenizer, self.calibration_ids = probe.tokenizer, [e.ids for e in encodings]
        self.embedding = f"{bert._prefix(list(self.tensors))}embeddings.word_embeddings.weight"
        self.batches = []  # (ids, mask, types) padded per batch of 32, longest first
        order = sorted(range(len(encodings)), key=lambda i: -len(encodings[i].ids))
        for start in range(0, len(order), 32):
            chunk = order[start : start + 32]
            s = max(len(encodings[i].ids) for i in chunk)
            ids = np.full((len(chunk), s), probe.pad_id, np.int64)
            types, mask = np.zeros_like(ids), np.zeros_like(ids)
            for row, i in enumerate(chunk):
                e = encodings[i]
                n = len(e.ids)
                ids[row, :n], types[row, :n], mask[row, :n] = e.ids, e.type_ids, 1
            self.batches.append((ids, mask, types))
        self.samples = len(encodings)
        self.tokens = int(sum(m.sum() for _, m, _ in self.batches))
        if domains is not None and len(set(domains)) > 1:  # outputs come in `order`
            self.group_names = sorted(set(domains))
            number = {name: g for g, name in enumerate(self.group_names)}
            self.groups = np.array([number[domains[i]] for i in order], np.int64)
        self.engine = plan_engine() if engine is None else _checked_engine(engine)
        self._torch: Any = None
        self._start: tuple[int, int] | None = None  # where a torch run restarts (run())
        if self.engine == "torch":
            from .encoder_torch import TorchEncoderPass

            names = list(self.tensors)
            self._torch = TorchEncoderPass(
                config,
                pipeline,
                bert._prefix(names),
                self.batches,
                probe.pad_id,
                probe.offset_positions,
                names,
            )
            self._torch.plan_cache(probe.params["wte"].shape[1])

    def run(self, overrides: Mapping[str, np.ndarray] | None = None) -> Any:
        """Sentence embeddings with ``overrides``; on torch a run restarts at the first layer
        stage they touch (cmf.plan.encoder_torch)."""
        if self._torch is None or not overrides:
            return super().run(overrides)
        _ = self.reference  # the kept activations come with the reference pass
        self._start = self._torch.entry(list(overrides))
        try:
            return super().run(overrides)
        finally:
            self._start = None

    def runner(self, get: Callable[[str], np.ndarray]) -> Any:
        from ..runtime.bert import BertEncoder

        return BertEncoder.from_tensors(get, list(self.tensors), self.config, self.pipeline)

    def _run(self, get: Callable[[str], np.ndarray]) -> np.ndarray:
        if self._torch is not None:
            return self._torch.run(get, self._start, record=self._recording)
        enc = self.runner(get)
        return np.concatenate(
            [enc.embed_ids(ids, mask, types) for ids, mask, types in self.batches]
        )

    def input_moments(self) -> Moments:
        if self._torch is not None:
            return self._torch_moments()
        from ..runtime import bert

        enc = self.runner(self.tensors.__getitem__)
        pre = bert._prefix(list(self.tensors))
        owners: dict[int, list[str]] = {}
        for i, p in enumerate(enc.params["blocks"]):
            L = f"{pre}encoder.layer.{i}."
            for key, subs in (
                ("qkv", ["attention.self.query", "attention.self.key", "attention.self.value"]),
                ("o", ["attention.output.dense"]),
                ("fc", ["intermediate.dense"]),
                ("proj", ["output.dense"]),
            ):
                owners[id(p[key])] = [L + s + ".weight" for s in subs]
        sums = MomentSums()

        def linear(x: np.ndarray, w: dict) -> np.ndarray:
            if id(w) in owners:  # padded positions do not count
                flat = x.reshape(-1, x.shape[-1])
                keep = self._mask_rows(flat.shape[0])
                per = x.shape[1] if x.ndim == 3 else 1  # [b, s, d]: fold = the sentence's parity
                fold = (self._sentence0 + np.arange(flat.shape[0]) // per) % 2
                sums.add(
                    id(w),
                    flat[keep] if keep is not None else flat,
                    fold[keep] if keep is not None else fold,
                )
            return original(x, w)

        original = bert.linear
        with _patched(bert, "linear", linear):
            self._sentence0 = 0
            for ids, mask, types in self.batches:
                self._current_mask = mask.reshape(-1).astype(bool)
                enc.embed_ids(ids, mask, types)
                self._sentence0 += ids.shape[0]
        self._current_mask = None
        return self._moments_of(sums, owners)

    def _torch_moments(self) -> Moments:
        """input_moments on torch: one pass (the reference pass, if it has not run yet)."""
        from ..runtime import bert
        from .encoder_torch import owners

        pre = bert._prefix(list(self.tensors))
        names = owners(pre, self._torch.n_layer)
        sums = MomentSums()

        def hook(key: Any, kind: str, rows: np.ndarray, fold: np.ndarray) -> None:
            sums.add(key, rows, fold)

        record = self._ref is None
        out_ref = self._torch.run(self.tensors.__getitem__, None, record=record, hook=hook)
        if record:
            self._ref = out_ref
        return self._moments_of(sums, names)

    def _moments_of(self, sums: MomentSums, owners: Mapping[Any, Sequence[str]]) -> Moments:
        """The moments of each weight from ``sums`` (key -> the weights sharing that input), and
        the token embedding's row importances."""
        out: Moments = {}
        for key, names in owners.items():
            got = sums.pop(key)
            if got is not None:
                for n in names:
                    out[n] = (1, *got)  # weights are [out, in]: input channels along axis 1
        self._token_rows(out, self.embedding, self.tokenizer, self.calibration_ids)
        return out

    _current_mask: np.ndarray | None = None
    _sentence0 = 0  # index of the batch's first sentence (folds of input_moments)

    def _mask_rows(self, n: int) -> np.ndarray | None:
        m = self._current_mask
        return m if m is not None and m.size == n else None


ENGINE_VARIABLE = "CMF_PLAN_ENGINE"
PLAN_ENGINES = ("auto", "torch", "reference")


def _checked_engine(name: str) -> str:
    if name not in PLAN_ENGINES:
        raise CmfError(f"{ENGINE_VARIABLE}={name!r}: expected one of {', '.join(PLAN_ENGINES)}")
    if name == "reference":
        return name
    if importlib.util.find_spec("torch") is None:
        if name == "torch":
            raise CmfError(
                f"{ENGINE_VARIABLE}=torch, but PyTorch is not installed ({install_hint('torch')})"
            )
        return "reference"
    return "torch"


def plan_engine() -> str:
    """The engine encoder harnesses run on: ``torch`` or ``reference`` (module docstring)."""
    return _checked_engine(os.environ.get(ENGINE_VARIABLE, "").strip().lower() or "auto")


# ----------------------------------------------------------------------------- ONNX


class OnnxHarness(Harness):
    kind = "onnx"

    def __init__(
        self,
        tensors: Mapping[str, np.ndarray],
        skeleton: bytes,
        where: str,
        feeds: list[dict[str, np.ndarray]] | None,
        samples: int = DEFAULT_ONNX_SAMPLES,
    ) -> None:
        from ..runtime import onnx_runner

        super().__init__(tensors)
        self.skeleton, self.where = skeleton, where
        probe = self._runner(self.tensors.__getitem__)
        from ..runtime.evaluate import onnx_feeds, split_samples

        self.generated = feeds is None  # inputs made from the graph's input types, not real data
        if feeds is None:  # at shapes the model was seen to run on (OnnxRunner.fitting_shapes)
            self.feeds = [probe.sample_inputs(seed) for seed in range(samples)]
        else:
            self.feeds = [x for f in feeds for x in split_samples(probe, onnx_feeds(probe, f))]
        self.samples = len(self.feeds)
        self.tokens = self.samples
        self._onnx_runner = onnx_runner

    def _model(self, get: Callable[[str], np.ndarray]) -> Any:
        from ..convert.onnx import _markers
        from ..runtime import onnx_runner

        model = onnx_runner.skeleton_from(self.skeleton, self.where)
        wanted = {name for name, _, _, _ in _markers(model)}
        return onnx_runner.rebuild(model, ((n, get(n)) for n in self.tensors if n in wanted))

    def _runner(self, get: Callable[[str], np.ndarray], extra: Sequence[str] = ()) -> Any:
        from onnx import helper

        from ..runtime import onnx_runner

        model = self._model(get)
        for name in extra:
            model.graph.output.append(helper.make_empty_tensor_value_info(name))
        return onnx_runner.OnnxRunner(model)

    def _run(self, get: Callable[[str], np.ndarray]) -> list[dict[str, np.ndarray]]:
        runner = self._runner(get)
        return [runner.run(f) for f in self.feeds]

    def output_weights(self) -> set[str]:
        """The tensors that feed a graph output directly (a final classifier, a detector's last
        convolution; cmf.runtime.onnx_runner.output_weights)."""
        from ..runtime import onnx_runner

        model = onnx_runner.skeleton_from(self.skeleton, self.where)
        return onnx_runner.output_weights(model, self.tensors)

    def input_moments(self) -> Moments:
        """MatMul/Gemm nodes whose weight (B) is one of the tensors: E[x^2] of input A."""
        from ..runtime import onnx_runner

        model = onnx_runner.skeleton_from(self.skeleton, self.where)
        uses: dict[
            str, list[tuple[str, int, int]]
        ] = {}  # activation -> (weight, weight axis, act axis)
        for node in model.graph.node:
            if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
                continue
            a, b = node.input[0], node.input[1]
            if b not in self.tensors or self.tensors[b].ndim != 2:
                continue
            attrs = {x.name: x.i for x in node.attribute}
            w_axis = 1 if node.op_type == "Gemm" and attrs.get("transB", 0) else 0
            a_axis = 0 if node.op_type == "Gemm" and attrs.get("transA", 0) else -1
            uses.setdefault(a, []).append((b, w_axis, a_axis))
        if not uses:
            return {}
        graph_outputs = {o.name for o in model.graph.output}
        extra = [a for a in uses if a not in graph_outputs and a not in self.tensors]
        try:
            runner = self._runner(self.tensors.__getitem__, extra)
        except CmfError:
            return {}
        names = runner.output_names
        # diagonal only: error feedback is measured on encoders and decoders (tools/bench.py
        # plan), not yet on an ONNX graph it applies to (silero-vad's weights are convolutions)
        sums = MomentSums(full=False)
        axes: dict[str, int] = {}
        for feeds in self.feeds:
            outs = runner.run(feeds)
            for a, users in uses.items():
                if a in self.tensors:
                    continue
                x = outs.get(a) if a in names else feeds.get(a)
                if x is None or x.dtype.kind != "f":
                    continue
                for w, w_axis, a_axis in users:
                    k = self.tensors[w].shape[w_axis]
                    xa = np.moveaxis(np.asarray(x, np.float64), a_axis, -1)
                    if xa.shape[-1] != k:
                        continue
                    axes[w] = w_axis
                    sums.add(w, xa.reshape(-1, k))
        out: Moments = {}
        for w, w_axis in axes.items():
            got = sums.result(w)
            if got is not None:
                out[w] = (w_axis, *got)
        return out


# ----------------------------------------------------------------------------- opening


def open_harness(
    path: str | os.PathLike,
    calibrate: Any = None,
    *,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    samples: int = DEFAULT_ONNX_SAMPLES,
    tensors: Mapping[str, np.ndarray] | None = None,
) -> Harness:
    """The harness of the model at ``path`` (a model directory, .onnx, .safetensors with side
    files, .gguf or .cmf); CmfError when no runner fits it (the planner then goes data-free).

    ``calibrate``: a .txt (one text per line), a .npz/.npy (ONNX inputs), a list of strings or
    of input dicts; default: the built-in sentences (text models) or generated inputs (ONNX).
    """
    from ..runtime.bert import pipeline_from
    from ..runtime.evaluate import calibration_texts, read_arrays, read_texts
    from ..runtime.rebuild import ONNX_SKELETON, detect_kind, load_tokenizer, open_model

    if isinstance(calibrate, (str, os.PathLike)):
        p = os.fspath(calibrate)
        calibrate = read_arrays(p) if p.lower().endswith((".npz", ".npy")) else read_texts(p)
    with open_model(path) as src:
        kind, config = detect_kind(src)
        if tensors is None:
            tensors = {n: _as_float32(src.get_tensor(n)) for n in src.keys()}
        if kind == "onnx":
            if calibrate is not None and not (
                isinstance(calibrate, (dict, np.ndarray))
                or (isinstance(calibrate, list) and all(isinstance(x, dict) for x in calibrate))
            ):
                raise CmfError(
                    "calibration inputs for an ONNX model: a .npz/.npy, a dict of arrays "
                    "or a list of dicts"
                )
            feeds = None
            if calibrate is not None:
                feeds = calibrate if isinstance(calibrate, list) else [calibrate]
            return OnnxHarness(
                tensors, src.attachment(ONNX_SKELETON), os.fspath(path), feeds, samples
            )
        if calibrate is not None and not (
            isinstance(calibrate, list) and all(isinstance(t, str) for t in calibrate)
        ):
            raise CmfError(
                f"calibration inputs for a text model ({kind}): a .txt file or a list of strings"
            )
        domains = None
        if calibrate:
            texts = list(calibrate)
        else:  # every kind of text, interleaved (a decoder reads the first tokens only)
            domains, texts = (list(x) for x in zip(*calibration_texts(), strict=True))
        tokenizer = load_tokenizer(src)
        if kind == "encoder":
            return EncoderHarness(
                tensors, config, pipeline_from(src.json), tokenizer, texts, domains
            )
        from ..runtime import llama

        meta = dict(src.metadata)
        gguf = meta.get("cmf.source_format") == "gguf" and src.json("config.json") is None

        def build(get: Callable[[str], np.ndarray], lazy: bool = False) -> Any:
            if gguf:
                return llama.LlamaRunner.from_gguf(get, meta, lazy=lazy)
            return llama.LlamaRunner.from_tensors(get, config, lazy=lazy)

        tokenizer.no_padding()
        tokenizer.no_truncation()
        ids = list(tokenizer.encode(" ".join(texts)).ids)[:max_tokens]
        if len(ids) < 2:
            raise CmfError("the calibration text is shorter than 2 tokens")
        harness = DecoderHarness(tensors, config, ids, build, tokenizer)
        harness.asked_tokens = max_tokens
        return harness


def _as_float32(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind == "f" or a.dtype.kind == "V":
        try:
            return np.ascontiguousarray(a, dtype=np.float32)
        except (TypeError, ValueError):
            return a
    return a
