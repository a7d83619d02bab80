"""Fidelity: run the original and the compressed model side by side and compare their outputs.

``evaluate(original, compressed, inputs=None)`` loads one model at a time (outputs are kept, the
weights are dropped before the other model loads) and returns a JSON-able report:

* ONNX models: per output, cosine similarity of each sample's output (mean, min), max absolute
  error, top-1 agreement (argmax over the last axis) for float outputs of rank >= 2, and the
  fraction of equal elements for integer/bool outputs. Inputs: a ``.npz`` (named arrays), a
  ``.npy`` (a model with one input), a dict or a list of dicts; by default 8 generated sets that
  fit the graph's input specs.
* BERT-family encoders: cosine of each sentence's embedding (mean, min), max absolute error.
  Inputs: a ``.txt`` (one text per line) or a list of strings; by default the 40 English
  sentences bundled in ``cmf/runtime/data/sentences.txt``.
* decoders: on one text (the file's content, or the bundled sentences as one paragraph) cut to
  ``max_tokens`` tokens: perplexity of each model, mean and max KL(original || compressed) of the
  next-token distributions, top-1 agreement of the next token, cosine of the logits. With
  ``ggml_activations`` (numpy runner only) each matrix product's input is rounded as llama.cpp's
  CPU backend rounds it for the weight's GGML type in the GGUF a .cmf unpacks to
  (cmf.runtime.ggml_acts: 8-bit blocks for block types, F16 / BF16 for those; a source that is
  not a .cmf, and F32 tensors, are not rounded): the KL llama.cpp will see.

Every report has ``cosine_mean``, ``cosine_min``, ``max_abs_error`` and ``identical`` (every
output equal bit for bit) at the top level.
"""

from __future__ import annotations

import gc
import os
import time
import zipfile
from collections.abc import Sequence
from importlib import resources
from typing import Any

import numpy as np

from ..errors import CmfError
from .logit_stats import kl_rows, next_token_log_probs, row_cosines, row_slices
from .rebuild import detect_kind, kind_of, load_runner, open_model

DEFAULT_ONNX_SAMPLES = 8
KIND_NAMES = {
    "onnx": "an ONNX model",
    "encoder": "a BERT-family encoder",
    "decoder": "a Llama-family decoder",
}
DEFAULT_MAX_TOKENS = 256


def sample_sentences() -> list[str]:
    """The built-in English sentences (varied topics, lengths and punctuation)."""
    text = resources.files("cmf.runtime").joinpath("data/sentences.txt").read_text("utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


CALIBRATION_DOMAINS = ("prose", "technical", "code", "multilingual")


def calibration_texts() -> list[tuple[str, str]]:
    """The planner's built-in calibration texts as ``(domain, text)``: everyday English prose
    (``data/sentences.txt``), technical and API documentation, source code and shell lines, and
    short texts in other languages and scripts (``data/calibration/<domain>.txt``), interleaved
    domain by domain so that any prefix covers every domain."""
    root = resources.files("cmf.runtime").joinpath("data")
    lists = [[(CALIBRATION_DOMAINS[0], t) for t in sample_sentences()]]
    for domain in CALIBRATION_DOMAINS[1:]:
        text = root.joinpath("calibration", f"{domain}.txt").read_text("utf-8")
        lists.append([(domain, line.strip()) for line in text.splitlines() if line.strip()])
    out = []
    for i in range(max(len(x) for x in lists)):
        out.extend(x[i] for x in lists if i < len(x))
    return out


def read_texts(path: str | os.PathLike) -> list[str]:
    try:
        with open(path, encoding="utf-8") as fh:
            lines = [line.strip() for line in fh]
    except OSError as exc:
        raise CmfError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise CmfError(f"{path} is not UTF-8 text") from None
    texts = [line for line in lines if line]
    if not texts:
        raise CmfError(f"{path} has no text")
    return texts


def read_arrays(path: str | os.PathLike) -> dict[str, np.ndarray] | np.ndarray:
    """A .npz as name -> array, or a .npy as one array (never unpickles)."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return loaded
        with loaded:
            return {name: loaded[name] for name in loaded.files}
    except OSError as exc:
        raise CmfError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise CmfError(
            f"{path}: not a .npy/.npz of plain arrays ({type(exc).__name__}: {exc})"
        ) from None


def onnx_feeds(runner: Any, data: Any) -> dict[str, np.ndarray]:
    """Named inputs for an OnnxRunner from a dict, or one array for a model with one input."""
    if isinstance(data, dict):
        return {str(k): np.asarray(v) for k, v in data.items()}
    names = [i.name for i in runner.input_specs()]
    if len(names) != 1:
        raise CmfError(
            f"the model has {len(names)} inputs ({', '.join(names)}); give them by name "
            "(a .npz, or NAME=file.npy)"
        )
    return {names[0]: np.asarray(data)}


def split_samples(runner: Any, feeds: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """``feeds`` as a list of input sets: split along a leading *sample* axis when every given
    array has one more dimension than its graph input (``np.savez("inputs.npz", x=np.stack(
    samples))`` for a model whose batch is fixed at 1, or samples of different runs), else the
    one set as it is. CmfError when the arrays disagree on the number of samples."""
    ranks = {i.name: len(i.shape) for i in runner.input_specs()}
    if not feeds or any(k not in ranks or np.ndim(v) != ranks[k] + 1 for k, v in feeds.items()):
        return [feeds]
    counts = {len(v) for v in feeds.values()}
    if len(counts) != 1:
        raise CmfError(
            f"calibration inputs with a leading sample axis must agree on its length, "
            f"found {sorted(counts)}"
        )
    n = counts.pop()
    if n == 0:
        raise CmfError("calibration inputs: the sample axis is empty")
    return [{k: np.asarray(v[i]) for k, v in feeds.items()} for i in range(n)]


# -- metrics --------------------------------------------------------------------------------------
def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays (flattened, float64); 1.0 when both are zero."""
    x, y = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
    na, nb = float(np.dot(x, x)), float(np.dot(y, y))
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(np.clip(np.dot(x, y) / np.sqrt(na * nb), -1.0, 1.0))


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| in float64, a slice of rows at a time (NaN if either holds one)."""
    if a.size == 0:
        return 0.0
    a2 = a.reshape(len(a), -1) if a.ndim else a.reshape(1, 1)  # [n, rest]
    b2 = b.reshape(a2.shape)
    worst = np.empty(len(a2))  # [n]
    with np.errstate(invalid="ignore", over="ignore"):
        for s in row_slices(len(a2), a2.shape[1]):
            d = np.asarray(a2[s], np.float64) - np.asarray(b2[s], np.float64)
            worst[s] = np.max(np.abs(d), axis=1)
    return float(np.max(worst))


def _identical(a: np.ndarray, b: np.ndarray) -> bool:
    """The same dtype, shape and bytes (NaN payloads included; no copy of contiguous arrays)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.hasobject:  # e.g. an ONNX model's string outputs: compared by value
        return bool(np.array_equal(a, b))
    x, y = np.ascontiguousarray(a).reshape(-1), np.ascontiguousarray(b).reshape(-1)
    return bool(np.array_equal(x.view(np.uint8), y.view(np.uint8)))


def _summary(cosines: Sequence[float], max_abs: float, identical: bool) -> dict[str, Any]:
    return {
        "cosine_mean": float(np.mean(cosines)) if len(cosines) else None,
        "cosine_min": float(np.min(cosines)) if len(cosines) else None,
        "max_abs_error": max_abs,
        "identical": identical,
    }


def compare_outputs(
    a: list[dict[str, np.ndarray]], b: list[dict[str, np.ndarray]]
) -> dict[str, Any]:
    """Per-output and overall agreement of two runs over the same list of input sets."""
    per: dict[str, Any] = {}
    all_cos: list[float] = []
    worst, same = 0.0, True
    for name in a[0]:
        xs, ys = [s[name] for s in a], [s[name] for s in b]
        if any(x.shape != y.shape for x, y in zip(xs, ys, strict=True)):
            raise CmfError(f"output {name!r} has different shapes in the two models")
        identical = all(_identical(x, y) for x, y in zip(xs, ys, strict=True))
        max_abs = max((_max_abs(x, y) for x, y in zip(xs, ys, strict=True)), default=0.0)
        row: dict[str, Any] = {"shape": list(xs[0].shape), "dtype": str(xs[0].dtype)}
        if xs[0].dtype.kind in "fc":
            cos = [cosine(x, y) for x, y in zip(xs, ys, strict=True)]
            row.update(_summary(cos, max_abs, identical))
            all_cos += cos
            if xs[0].ndim >= 2 and xs[0].shape[-1] >= 2:
                agree = [
                    np.mean(np.argmax(x, -1) == np.argmax(y, -1))
                    for x, y in zip(xs, ys, strict=True)
                ]
                row["top1_agreement"] = float(np.mean(agree))
        else:
            row.update(
                {
                    "max_abs_error": max_abs,
                    "identical": identical,
                    "equal_fraction": float(
                        np.mean(
                            [
                                np.mean(x == y) if x.size else 1.0
                                for x, y in zip(xs, ys, strict=True)
                            ]
                        )
                    ),
                }
            )
        per[name] = row
        worst = max(worst, max_abs)
        same = same and identical
    return {**_summary(all_cos, worst, same), "outputs": per}


def compare_logits(ids: Sequence[int], a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Perplexities, KL(a || b) of next-token distributions, top-1 agreement, cosine of logits
    (of two [n, V] logit arrays, a slice of rows at a time: no float64 copy of either)."""
    if a.shape != b.shape:
        raise CmfError(f"the models' logits differ in shape: {list(a.shape)} and {list(b.shape)}")
    nxt = np.asarray(ids[1:], np.int64)
    kl = kl_rows(a, b)  # [n]
    la, lb = next_token_log_probs(a[:-1], nxt), next_token_log_probs(b[:-1], nxt)  # [n - 1]
    cos = row_cosines(a, b).tolist()
    return {
        **_summary(cos, _max_abs(a, b), _identical(a, b)),
        "tokens": len(ids),
        "perplexity_original": float(np.exp(-la.mean())),
        "perplexity_compressed": float(np.exp(-lb.mean())),
        "kl_mean": float(kl.mean()),
        "kl_max": float(kl.max()),
        "top1_agreement": float(np.mean(np.argmax(a, -1) == np.argmax(b, -1))),
    }


# -- the report ------------------------------------------------------------------------------------
def evaluate(
    original: str | os.PathLike,
    compressed: str | os.PathLike,
    inputs: Any = None,
    *,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    samples: int = DEFAULT_ONNX_SAMPLES,
    engine: str | None = None,
    ggml_activations: bool = False,
) -> dict[str, Any]:
    """Run ``original`` and ``compressed`` on the same inputs and report how far the outputs
    moved (see the module docstring for ``inputs``, ``ggml_activations`` and the fields).
    ``engine`` as cmf.runtime.rebuild.load_runner takes it; the report's ``engines`` names the
    one each ran on."""
    if ggml_activations:
        if engine not in (None, "auto", "reference"):
            raise CmfError(
                f"llama.cpp's activation rounding runs on the numpy runner, not {engine}"
            )
        engine = "reference"
    if isinstance(inputs, (str, os.PathLike)):
        path = os.fspath(inputs)
        inputs = read_arrays(path) if path.lower().endswith((".npz", ".npy")) else read_texts(path)
    srcs = [open_model(original), open_model(compressed)]
    try:
        srcs[0].borrow(srcs[1])
        srcs[1].borrow(srcs[0])
        kinds = [detect_kind(src)[0] for src in srcs]
        if kinds[0] != kinds[1]:
            raise CmfError(
                f"{original} is {KIND_NAMES[kinds[0]]} but {compressed} is {KIND_NAMES[kinds[1]]}"
            )
        results, seconds, engines = [], [], []
        prepared: Any = None
        for src in srcs:
            runner = load_runner(src, engine=engine)
            kind = kind_of(runner)
            engines.append(getattr(runner, "engine", "reference"))
            if prepared is None:
                prepared = _prepare(kind, runner, inputs, max_tokens, samples)
                signature = _signature(kind, runner)
            elif _signature(kind, runner) != signature:
                raise CmfError(
                    f"{original} and {compressed} are different models: "
                    f"{_signature(kind, runner)} vs {signature}"
                )
            start = time.perf_counter()
            results.append(
                _run_as_llama_cpp(kind, runner, prepared, src)
                if ggml_activations
                else _run(kind, runner, prepared)
            )
            seconds.append(time.perf_counter() - start)
            del runner
            gc.collect()
    finally:
        for src in srcs:
            src.close()
    kind = kinds[0]
    head = {
        "kind": kind,
        "original": os.fspath(original),
        "compressed": os.fspath(compressed),
        "seconds": {"original": round(seconds[0], 3), "compressed": round(seconds[1], 3)},
        "engines": {"original": engines[0], "compressed": engines[1]},
    }
    if kind == "onnx":
        return {**head, "samples": len(prepared), **compare_outputs(results[0], results[1])}
    if kind == "encoder":
        a, b = results
        cos = [cosine(x, y) for x, y in zip(a, b, strict=True)]
        return {
            **head,
            "samples": len(prepared),
            "dim": int(a.shape[1]),
            **_summary(cos, _max_abs(a, b), _identical(a, b)),
        }
    if ggml_activations:
        head["ggml_activations"] = True
    return {**head, **compare_logits(prepared, results[0], results[1])}


def _signature(kind: str, runner: Any) -> str:
    """What must agree for two models' outputs to be comparable."""
    if kind == "onnx":
        inputs = ", ".join(f"{i.name} {i.dtype}" for i in runner.input_specs())
        return f"inputs ({inputs}) -> outputs ({', '.join(runner.output_names)})"
    if kind == "encoder":
        return f"embeddings of size {runner.dim}"
    size = runner.runner.vocab_size if hasattr(runner.runner, "vocab_size") else "?"
    return f"vocabulary of {size} tokens"


def _prepare(kind: str, runner: Any, inputs: Any, max_tokens: int, samples: int) -> Any:
    if kind == "onnx":
        if inputs is None:
            return [runner.sample_inputs(seed) for seed in range(samples)]
        if isinstance(inputs, list) and all(isinstance(x, dict) for x in inputs):
            return [onnx_feeds(runner, x) for x in inputs]
        if isinstance(inputs, (dict, np.ndarray)):
            return [onnx_feeds(runner, inputs)]
        raise CmfError("inputs for an ONNX model: a .npz/.npy, a dict of arrays or a list of dicts")
    if isinstance(inputs, dict) or isinstance(inputs, np.ndarray):
        raise CmfError(f"inputs for a text model ({kind}): a .txt file or a list of strings")
    texts = sample_sentences() if inputs is None else [str(t) for t in inputs]
    if not texts:
        raise CmfError("no inputs to evaluate on")
    if kind == "encoder":
        return texts
    ids = runner.encode(" ".join(texts))[:max_tokens]
    if len(ids) < 2:
        raise CmfError("the evaluation text is shorter than 2 tokens")
    return ids


def _run_as_llama_cpp(kind: str, runner: Any, prepared: Any, src: Any) -> Any:
    """:func:`_run` of a decoder with its matrix products' inputs rounded as llama.cpp does for
    each weight's GGML type (module docstring)."""
    from .ggml_acts import file_ggml_types, llama_cpp_rounding
    from .llama import hf_to_gguf_name
    from .rebuild import CmfModel

    if kind != "decoder":
        raise CmfError(f"llama.cpp's activation rounding is for decoders, not {KIND_NAMES[kind]}")
    types = file_ggml_types(src.file) if isinstance(src, CmfModel) else {}

    def type_of(name: str) -> str | None:
        got = types.get(name)
        return got if got is not None else types.get(hf_to_gguf_name(name) or "")

    with llama_cpp_rounding(runner.runner, type_of):
        return _run(kind, runner, prepared)


def _run(kind: str, runner: Any, prepared: Any) -> Any:
    if kind == "onnx":
        return [runner.run(feeds) for feeds in prepared]
    if kind == "encoder":
        return runner.embed(prepared)
    return runner.logits(prepared)
