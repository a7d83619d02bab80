"""Row statistics of two ``[n, V]`` logit (or output) arrays, a slice of rows at a time.

A row's log-softmax is the same computed alone, and a 49k-token vocabulary's ``[n, V]`` float64
copies would take 100 MB each for 256 tokens (several at once in a KL sum), so every function
here works on slices of about ``SLICE_BYTES`` of float64 and keeps only ``[n]`` results. Shared
by the planner's harnesses (cmf.plan.harness_base) and ``cmf eval`` (cmf.runtime.evaluate)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

SLICE_BYTES = 16 << 20  # float64 work of one slice of rows


def log_softmax(x: np.ndarray) -> np.ndarray:  # [..., V] -> [..., V]
    s = x - x.max(axis=-1, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=-1, keepdims=True))


def row_slices(rows: int, width: int) -> Iterator[slice]:
    """Slices of ``rows`` rows of ``width`` float64 values, about ``SLICE_BYTES`` each."""
    step = max(1, SLICE_BYTES // max(8 * width, 1))
    return (slice(a, min(a + step, rows)) for a in range(0, rows, step))


def kl_rows(ref: np.ndarray, out: np.ndarray) -> np.ndarray:
    """float64 [n]: KL(softmax(ref_i) || softmax(out_i)) of each row of two [n, V] logit arrays
    (clipped at 0 against rounding)."""
    kl = np.empty(len(ref), np.float64)
    for s in row_slices(len(ref), ref.shape[-1]):
        la = log_softmax(np.asarray(ref[s], np.float64))  # [rows, V]
        lb = log_softmax(np.asarray(out[s], np.float64))  # [rows, V]
        kl[s] = np.maximum(np.sum(np.exp(la) * (la - lb), axis=-1), 0.0)
    return kl


def next_token_log_probs(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """float64 [n]: log softmax(logits_i)[ids_i] of [n, V] logits and [n] token ids."""
    ids = np.asarray(ids, np.int64)
    got = np.empty(len(ids), np.float64)
    for s in row_slices(len(ids), logits.shape[-1]):
        la = log_softmax(np.asarray(logits[s], np.float64))  # [rows, V]
        got[s] = la[np.arange(len(la)), ids[s]]
    return got


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64 [n]: the cosine of each row of two [n, d] arrays (1 where both rows are zero,
    0 where only one is)."""
    a, b = np.asarray(a), np.asarray(b)
    n = len(a)
    na, nb, dot = np.empty(n), np.empty(n), np.empty(n)
    for s in row_slices(n, a.shape[-1]):
        x, y = np.asarray(a[s], np.float64), np.asarray(b[s], np.float64)
        na[s], nb[s] = np.einsum("ij,ij->i", x, x), np.einsum("ij,ij->i", y, y)
        dot[s] = np.einsum("ij,ij->i", x, y)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = dot / np.sqrt(na * nb)
    c = np.where((na == 0) & (nb == 0), 1.0, np.where((na == 0) | (nb == 0), 0.0, c))
    return np.clip(c, -1.0, 1.0)
