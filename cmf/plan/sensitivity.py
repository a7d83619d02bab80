"""Sensitivity: how much the model's output moves per unit of error in each tensor.

Measured (a model the runtime can run): for each planned tensor ``t``, Gaussian noise ``N`` of
known size is added to it alone, the model is run on the calibration inputs, and the output
error ``d`` (cmf.plan.harness) is measured: ``s_t = d / e`` with ``e = sum_ij w_j N_ij^2`` the
noise's weighted error (``w`` the input-channel importance of cmf.plan.candidates). The noise is
i.i.d. (not shaped by ``w``): then ``d`` weighs every channel as the model really does, so the
prediction is right for errors spread evenly over the channels even where ``w`` (estimated on
few calibration tokens) is off. The noise is sized to a relative weighted error of
``REL_NOISE`` (about what 6-bit codes make); where ``d`` is quadratic in the noise, ``s_t`` does
not depend on it. Where it is not (saturating nonlinearities: on an ONNX voice-activity model
one convolution's ``s`` fell 20x from 0.1 % to 3 % noise) the planner measures again at the
error its first allocation chose (cmf.plan.planner). The predicted output error of an
allocation is ``sum_t s_t e_t`` (errors of different tensors add: their cross terms average
out).

Data-free (no runner for the model, or ``data_free=True``): ``s_t = (n_t / N) / |W_t|^2``, so
the predicted error is the parameter-weighted mean of each tensor's squared relative error
``|dW_t|^2 / |W_t|^2`` — "relative weight error".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

from .harness import Harness

REL_NOISE = 0.01
SEED = 0x5E75


NOISE_CHUNK = 1 << 20  # noise is drawn and added this many elements (whole rows) at a time


def noisy_copy(
    x: np.ndarray, axis: int | None, w: np.ndarray | None, rel: float, energy: float, seed: int
) -> tuple[np.ndarray, float]:
    """``(x + noise, e)``: ``x`` with Gaussian noise of weighted energy ``rel**2 * energy``
    added (in float64, stored in ``x``'s dtype), and ``e`` the weighted energy of the noise it
    really got after that rounding. Made a slice of rows at a time (each slice's noise from its
    own seeded stream, drawn once to size the noise and again to add it): the memory is the
    copy plus one slice's temporaries, not float64 copies of the tensor (an embedding's would
    take GBs)."""
    x = np.asarray(x)
    rows_n = x.shape[0] if x.ndim >= 2 else 1
    x2 = x.reshape(rows_n, x.size // rows_n if rows_n else 0)  # (rows, cols)
    rows, cols = x2.shape
    step = max(1, NOISE_CHUNK // max(cols, 1))

    def draws() -> Iterator[tuple[int, np.ndarray]]:
        for k, r0 in enumerate(range(0, rows, step)):
            rng = np.random.default_rng([seed, k])
            yield r0, rng.standard_normal((min(step, rows - r0), cols))  # float64 (b, cols)

    def weigh(d2: np.ndarray, r0: int) -> float:  # squares of rows r0.. -> weighted sum
        if w is None or axis is None:
            return float(d2.sum())
        return float((d2 * (w[None, :] if axis == 1 else w[r0 : r0 + d2.shape[0], None])).sum())

    e_unit = sum(weigh(np.square(g), r0) for r0, g in draws())
    scale = rel * np.sqrt(energy / e_unit) if e_unit > 0 else 0.0
    noisy = np.empty_like(x2)
    e_real = 0.0
    for r0, g in draws():
        rows_of = slice(r0, r0 + g.shape[0])
        xs = x2[rows_of].astype(np.float64)
        g *= scale
        g += xs
        noisy[rows_of] = g.astype(x.dtype)
        d = noisy[rows_of].astype(np.float64)
        d -= xs
        e_real += weigh(np.square(d, out=d), r0)
    return noisy.reshape(x.shape), e_real


def measured(
    harness: Harness,
    items: Sequence[tuple[str, np.ndarray, int | None, np.ndarray | None, float]],
    *,
    rel: float = REL_NOISE,
    seed: int = SEED,
    copies: Mapping[str, Sequence[str]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict]:
    """``{name: {"sensitivity", "noise_error", "output_error", "seconds"}}`` for each
    ``(name, array, axis, w, energy)`` (``energy``: the tensor's weighted sum of squares).
    ``copies``: name -> other names holding the same tensor (stored once, so noisy together)."""
    _ = harness.reference  # the original outputs, once
    out: dict[str, dict] = {}
    for k, (name, x, axis, w, energy) in enumerate(items):
        start = time.perf_counter()
        noisy, e_real = noisy_copy(x, axis, w, rel, energy, seed + k)
        over = {n: noisy for n in [name, *((copies or {}).get(name, ()))]}
        d = harness.error(over) if e_real > 0 else 0.0
        out[name] = {
            "sensitivity": (d / e_real) if e_real > 0 else 0.0,
            "noise_error": e_real,
            "output_error": d,
            "seconds": time.perf_counter() - start,
        }
        if progress is not None:
            progress(name)
    return out


def data_free(items: Sequence[tuple[str, int, float]], total_params: int) -> dict[str, dict]:
    """``{name: {"sensitivity"}}`` for ``(name, numel, plain energy)`` (module docstring)."""
    return {
        name: {"sensitivity": (n / total_params) / energy if energy > 0 else 0.0}
        for name, n, energy in items
    }


def predicted(sens: Mapping[str, dict], errors: Mapping[str, float]) -> float:
    """``sum_t s_t e_t`` over the tensors of ``errors``."""
    return float(sum(sens[n]["sensitivity"] * e for n, e in errors.items() if n in sens))
