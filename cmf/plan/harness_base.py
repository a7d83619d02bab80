"""The base of every harness (cmf.plan.harness): the output-error metrics, running sums of
input moments, and :class:`Harness`, a model run with some tensors replaced."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..errors import CmfError
from ..extras import install_hint
from ..runtime.logit_stats import kl_rows, next_token_log_probs  # noqa: F401  (the harnesses' metrics)
from ..runtime.logit_stats import row_cosines as _cosines

DEFAULT_ONNX_SAMPLES = 8
DEFAULT_MAX_TOKENS = 256
METRIC = "1 - mean cosine"
DECODER_METRIC = "mean KL of next-token distributions (nats)"

# tensor name -> (input-channel axis, E[x_j^2] (n,), (E[x x^T] of fold 0, of fold 1) or None,
#                 fold 1's rows scaled by 1/sqrt(count) (k, n) float32 or None)
Moments = dict[str, tuple]
MAX_HESSIAN_DIM = 4096  # input channels up to which E[x x^T] is kept (2 x 128 MiB at 4096)
MAX_HESSIAN_BYTES = 1 << 30  # all kept matrices together


class MomentSums:
    """Running sums of input activations per key: ``sum x_j^2``, the row count, and per fold
    ``sum x x^T`` and its row count, while the matrices fit ``MAX_HESSIAN_DIM`` /
    ``MAX_HESSIAN_BYTES`` (one budget per instance). Fold 1's rows themselves are kept too
    while there are at most half as many as channels: ``E[x x^T]`` of fold 1 is then
    ``f^T f`` with ``f`` (k, n) those rows over ``sqrt(k)``, and a quadratic form through ``f``
    costs ``k / n`` of one through the matrix (cmf.plan.candidates.LowRankForm)."""

    def __init__(self, full: bool = True) -> None:
        # key -> [sum x^2, rows, [sum x x^T] * 2 | None, [rows] * 2, [fold-1 rows (float32)] | None]
        self.sums: dict[Any, list] = {}
        self.budget = MAX_HESSIAN_BYTES if full else 0

    def add(self, key: Any, rows: np.ndarray, fold: np.ndarray | int = 0) -> None:
        """Add ``rows`` (tokens, n) of one activation; ``fold``: 0 or 1, for all rows or per row."""
        rows = np.asarray(rows, np.float64)
        n = rows.shape[-1]
        acc = self.sums.get(key)
        if acc is None:
            full = None
            if n <= MAX_HESSIAN_DIM and 2 * n * n * 8 <= self.budget:
                self.budget -= 2 * n * n * 8
                full = [np.zeros((n, n)), np.zeros((n, n))]
            acc = self.sums[key] = [np.zeros(n), 0, full, [0, 0], [] if full is not None else None]
        acc[0] += np.einsum("ij,ij->j", rows, rows)
        acc[1] += rows.shape[0]
        if acc[2] is not None:
            folds = np.broadcast_to(np.asarray(fold) % 2, (rows.shape[0],))
            for f in (0, 1):
                part = rows[folds == f]
                if part.shape[0]:
                    acc[2][f] += part.T @ part
                    acc[3][f] += part.shape[0]
                    if f == 1 and acc[4] is not None:
                        acc[4] = acc[4] + [part.astype(np.float32)] if acc[3][1] <= n // 2 else None

    def result(
        self, key: Any
    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None, np.ndarray | None] | None:
        """``(E[x_j^2], (E[x x^T] of each fold) or None, fold 1's factor or None)`` of ``key``
        (class docstring); None if it saw no rows. The matrices are None unless both folds saw
        rows."""
        return self._result(self.sums.get(key), copy=True)

    def pop(self, key: Any) -> tuple | None:
        """``result(key)``, after which the key's sums are gone: the matrices are divided in
        place (no second copy of every matrix while the results are made)."""
        return self._result(self.sums.pop(key, None), copy=False)

    def _result(self, acc: list | None, copy: bool) -> tuple | None:
        if acc is None or not acc[1]:
            return None
        full = factor = None
        if acc[2] is not None and min(acc[3]) > 0:
            if copy:
                full = (acc[2][0] / acc[3][0], acc[2][1] / acc[3][1])
            else:
                acc[2][0] /= acc[3][0]
                acc[2][1] /= acc[3][1]
                full = (acc[2][0], acc[2][1])
            if acc[4]:
                factor = np.concatenate(acc[4]) / np.float32(np.sqrt(acc[3][1]))  # (k, n)
        return acc[0] / acc[1], full, factor


def output_error(kind: str, ref: Any, out: Any, groups: np.ndarray | None = None) -> float:
    """The output error (module docstring) of outputs ``out`` against ``ref``; with ``groups``
    (a domain number per output row) the error of the worst domain, so that a plan holds on
    every kind of text the calibration covers, not only on average."""
    if kind == "decoder":
        kl = kl_rows(ref, out)
        if groups is None:
            return float(kl.mean())
        return float(max(kl[groups == g].mean() for g in np.unique(groups)))
    if kind == "encoder":
        c = _cosines(ref, out)
        if groups is None:
            return float(1.0 - c.mean())
        return float(1.0 - min(c[groups == g].mean() for g in np.unique(groups)))
    errs = []
    for name in ref[0]:
        if ref[0][name].dtype.kind != "f":
            continue
        a = np.concatenate([s[name].reshape(-1) for s in ref])[None]
        b = np.concatenate([s[name].reshape(-1) for s in out])[None]
        errs.append(1.0 - float(_cosines(a, b)[0]))
    return float(np.mean(errs)) if errs else 0.0


def cosine_stats(kind: str, ref: Any, out: Any) -> dict[str, float]:
    """``{"cosine_mean", "cosine_min"}`` of the rows (encoder/decoder) or outputs (onnx)."""
    if kind in ("encoder", "decoder"):
        c = _cosines(ref, out)
    else:
        c = np.array(
            [
                1.0 - output_error(kind, [{k: s[k]} for s in ref], [{k: s[k]} for s in out])
                for k in ref[0]
                if ref[0][k].dtype.kind == "f"
            ]
            or [1.0]
        )
    return {"cosine_mean": float(c.mean()), "cosine_min": float(c.min())}


def fallback_warnings(harness: Harness) -> list[str]:
    """What a user must know about the data ``harness`` calibrates on: generated rather than
    real inputs, or less text than the planner asks for."""
    out = []
    if getattr(harness, "generated", False):
        out.append(
            "calibrated on generated inputs (no --calibrate): errors are measured on data made "
            "from the graph's input types, not on what the model is fed; pass real inputs "
            "with --calibrate inputs.npz"
        )
    asked = getattr(harness, "asked_tokens", None)
    if asked is not None and harness.samples < asked:
        out.append(
            f"the calibration text gave {harness.samples} tokens, fewer than the {asked} "
            "the planner uses: sensitivities are measured on less data"
        )
    return out


class Harness:
    """A runnable model (see the module docstring). ``tensors``: name -> original array."""

    kind = "?"

    def __init__(self, tensors: Mapping[str, np.ndarray]) -> None:
        # a plain dict is copied; a lazy mapping (cmf.plan.lazy) is kept: its tensors are read as
        # runs ask
        self.tensors = dict(tensors) if isinstance(tensors, dict) else tensors
        self._ref: Any = None
        self._recording = False  # the reference pass is running: a harness may keep activations
        self.samples = 0

    # -- running
    def _run(self, get: Callable[[str], np.ndarray]) -> Any:
        raise NotImplementedError

    def run(self, overrides: Mapping[str, np.ndarray] | None = None) -> Any:
        """Outputs on the calibration inputs with ``overrides`` in place of the originals."""
        over = overrides or {}

        def get(name: str) -> np.ndarray:
            if name in over:
                return np.asarray(over[name])
            if name not in self.tensors:
                raise CmfError(f"the model has no tensor {name!r}")
            return self.tensors[name]

        return self._run(get)

    @property
    def reference(self) -> Any:
        """The outputs with the original tensors, run once (``_recording`` while it runs)."""
        if self._ref is None:
            self._recording = True
            try:
                self._ref = self.run()
            finally:
                self._recording = False
        return self._ref

    groups: np.ndarray | None = None  # domain number of each output row (run order), or None
    group_names: Sequence[str] = ()

    def error(self, overrides: Mapping[str, np.ndarray] | None = None) -> float:
        return output_error(self.kind, self.reference, self.run(overrides), self.groups)

    def stats(self, overrides: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
        out = self.run(overrides)
        got: dict[str, Any] = {
            "error": output_error(self.kind, self.reference, out, self.groups),
            **cosine_stats(self.kind, self.reference, out),
        }
        if self.groups is not None:
            c = _cosines(self.reference, out)
            got["domains"] = {
                name: {
                    "cosine_mean": float(c[self.groups == g].mean()),
                    "cosine_min": float(c[self.groups == g].min()),
                }
                for g, name in enumerate(self.group_names)
                if np.any(self.groups == g)
            }
        return got

    def input_moments(self) -> Moments:
        return {}

    token_prior: str | None = (
        "en,world"  # languages of the token-frequency prior (cmf.plan.tokens), None: off
    )
    token_note: str | None = (
        None  # why the token-embedding rows got no weights, if they should have
    )

    def _token_rows(
        self, out: Moments, name: str | None, tokenizer: Any, ids: Sequence[Sequence[int]]
    ) -> None:
        """Add the token-embedding matrix ``name``'s rows as input channels weighted by token
        frequency (cmf.plan.tokens) to ``out``, where a prior is at hand."""
        from .tokens import row_importance, token_frequencies, word_prior

        self.token_note = None
        if (
            name is None
            or name not in self.tensors
            or tokenizer is None
            or self.tensors[name].ndim != 2
        ):
            return
        vocab = self.tensors[name].shape[0]
        prior = word_prior(tokenizer, vocab, self.token_prior)
        if prior is None and self.token_prior is not None:
            self.token_note = (
                f"no word frequencies for --token-prior {self.token_prior} (needs wordfreq: "
                f"{install_hint('plan')}, and a language it knows): {name}'s rows weighed alike"
            )
        p = token_frequencies(ids, vocab, prior)
        if (
            p is not None
        ):  # one-hot inputs: E[x_t^2] = p_t (weighed as its square root), E[x x^T] diagonal
            out[name] = (0, row_importance(p), None)


@contextmanager
def _patched(module: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)
