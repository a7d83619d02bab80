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
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from .harness import Harness

REL_NOISE = 0.01
SEED = 0x5E75


def noise_like(
    x: np.ndarray, axis: int | None, w: np.ndarray | None, rel: float, energy: float, seed: int
) -> tuple[np.ndarray, float]:
    """Noise for ``x`` of weighted energy ``rel**2 * energy`` (its weighted error ``e``)."""
    rng = np.random.default_rng(seed)
    g = rng.standard_normal(x.shape)
    e_unit = _weighted(g, axis, w)
    scale = rel * np.sqrt(energy / e_unit) if e_unit > 0 else 0.0
    return (g * scale), (rel * rel * energy)


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
        n, e = noise_like(np.asarray(x, np.float64), axis, w, rel, energy, seed + k)
        noisy = (np.asarray(x, np.float64) + n).astype(np.asarray(x).dtype)
        e_real = _weighted(np.asarray(noisy, np.float64) - np.asarray(x, np.float64), axis, w)
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


def _weighted(d: np.ndarray, axis: int | None, w: np.ndarray | None) -> float:
    d2 = np.square(d)
    if w is None or axis is None:
        return float(d2.sum())
    return float((d2 * (w[None, :] if axis == 1 else w[:, None])).sum())


def predicted(sens: Mapping[str, dict], errors: Mapping[str, float]) -> float:
    """``sum_t s_t e_t`` over the tensors of ``errors``."""
    return float(sum(sens[n]["sensitivity"] * e for n, e in errors.items() if n in sens))
