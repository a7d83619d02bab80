"""Per-tensor candidates and their rate-distortion curves (spec/planner.md).

For one float weight the planner tries a set of *choices* — ways to encode it — and measures
each on the real tensor: the bytes it really takes (the encoded tree, entropy coding included)
and the error it really makes (decoded as a reader decodes it). The curve keeps the lower convex
hull of (bytes, error) points, the only ones an optimal allocation picks.

Families of choices:

* ``step``: entropy-coded uniform quantization (ECSQ). One step size per input channel,
  ``s_j = step / sqrt(w_j)`` with ``w_j`` the channel's importance (mean 1; all 1 without
  activations), codes rounded to nearest and entropy coded. Stored as a plain ``quantize`` node
  (one scale per input channel, ``search: false``); values beyond the code range are kept exact
  by an ``outlier`` node around it. At equal bytes this beats block-scaled fixed-rate codes
  by 1-2 dB on trained weights, and the importance puts the accuracy where activations are.
  With the input's second-moment matrices ``H0``, ``H1`` of two folds of the calibration inputs
  (cmf.plan.harness) the codes are chosen channel by channel with error feedback (GPTQ,
  Frantar et al. 2022): each channel's rounding error is pushed onto the channels not yet
  rounded, through the Cholesky factor of ``(H0 + mean(diag H0) I)^-1``; same steps, same
  code entropy, and on MiniLM's layers 1-1.5 dB less output error on held-out sentences. The
  error is measured with ``H1``, inputs the codes were not fitted to.
* ``quantize``: fixed-rate block quantization with an error-minimizing scale search
  (cmf.plan.presets' q8/q4 family), several bits, block sizes and schemes.
* ``codebook``: k-means palettes with entropy-coded indices.
* ``lowrank``: a truncated SVD with 8-bit factors, where it stores fewer bytes.
* ``lossless``: the top point, zero error.

Where the step choices round with error feedback, the planner measures no template choice unless
asked to be thorough: on MiniLM and SmolLM2-135M not one was chosen (3 of 7,700 hull points, all
at the cheapest end), and they took 40 % of the curves' time.

The *error* of a choice is the importance-weighted squared error ``sum_ij w_j dW_ij^2`` (plain
squared error without activations), or with the fold matrices the quadratic form
``tr(dW Hn dW^T)``, ``Hn`` the damped ``H1`` scaled to a mean diagonal of 1 (as ``w``); the
sensitivity (cmf.plan.sensitivity) turns it into output error. Fixed-rate and codebook
candidates of a large tensor are measured on a sample of its rows (``SAMPLE_ELEMENTS``) and
scaled; so are step candidates of a matrix of more than ``STEP_SAMPLE_ELEMENTS`` whose steps run
along its columns or are one for all (each row is rounded on its own, error feedback included):
on a row sample of that size. Per-row steps (token-embedding rows) are measured on the whole
tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import dtypes
from ..checksum import content_digest
from ..codecs import ArraySpec
from ..codecs.outlier import Outlier
from ..codecs.partition import Partition
from ..codecs.quantize import Quantize
from ..codecs.sparse import choose_index_bits, delta_encode
from ..errors import CmfError
from ..pipeline import Pending, PendingNode, decode_pending, encode_lossless
from . import feedback
from .ggml_encoding import encode_ggml
from .presets import codes_template
from .recipe import encode_template

SAMPLE_ELEMENTS = 1 << 18  # template candidates of bigger tensors are measured on this many
STEP_SAMPLE_ELEMENTS = (
    1 << 18
)  # error-feedback step candidates of bigger tensors: rows sampled to this many
MAX_OUTLIERS = 1e-3  # a step choice needing more exact values than this fraction is dropped
MAX_STEP_BITS = 12  # widest codes of a step choice (u16 codes beyond 8 bits)
STEP_LIMIT = (
    1 << (MAX_STEP_BITS - 1)
) - 1  # largest code magnitude; beyond it a value is an outlier
FLOATS = ("f32", "f16", "bf16", "f64")
MIN_ELEMENTS = 4096  # as the q8/q4 presets: smaller tensors stay lossless
ROW_CLASS_SPREAD = 2.0  # per-row steps spanning this ratio or more are stored as row classes
ROW_CLASS_ELEMENTS = 1 << 16  # ... in tensors of at least this many elements
GPTQ_DAMPING = 1.0  # of mean(diag H0), added before inverting (best of 0.1-3 on held-out MiniLM)
GPTQ_BLOCK = 128  # channels per lazy-update block (the trailing update is one matmul)


def plannable(spec: ArraySpec) -> bool:
    """Tensors the planner chooses an encoding for (the others are stored losslessly)."""
    return spec.dtype.name in FLOATS and len(spec.shape) >= 2 and spec.numel >= MIN_ELEMENTS


# ----------------------------------------------------------------------------- choices


@dataclass(frozen=True)
class Choice:
    """One way to encode a tensor: ``family`` and its JSON-able ``params``."""

    family: str
    params: dict = field(default_factory=dict)
    label: str = ""

    def to_json(self) -> dict:
        return {"family": self.family, **self.params}


def step_choices(levels: Sequence[float] | None = None, per_bit: int = 4) -> list[Choice]:
    """Step sizes relative to the tensor's RMS, ``1 / per_bit`` bit apart (about 1 to 10
    bits)."""
    rel = (
        levels if levels is not None else [2.0 ** (1 - k / per_bit) for k in range(9 * per_bit + 1)]
    )
    return [Choice("step", {"rel_step": float(r)}, f"step {r:.3g}") for r in rel]


def _qt(bits: int, block: int, scheme: str = "symmetric") -> dict:
    return {
        "codec": "quantize",
        "config": {
            "bits": bits,
            "block": block,
            "axis": -1,
            "scheme": scheme,
            "scale_dtype": "f16",
            "search": True,
        },
        "parts": {"q": codes_template(bits)},
    }


def template_choices(thorough: bool = False) -> list[Choice]:
    """Fixed-rate quantize, codebook and low-rank templates (a few; more with ``thorough``)."""
    out = []
    grid = [
        (2, 32, "asymmetric"),
        (3, 32, "asymmetric"),
        (3, 64, "symmetric"),
        (4, 32, "symmetric"),
        (4, 128, "symmetric"),
    ]
    if thorough:
        grid += [
            (2, 64, "asymmetric"),
            (3, 32, "symmetric"),
            (4, 64, "symmetric"),
            (5, 32, "symmetric"),
            (5, 0, "symmetric"),
            (6, 0, "symmetric"),
            (8, 0, "symmetric"),
            (4, 32, "asymmetric"),
        ]
    for bits, block, scheme in grid:
        label = (
            f"q{bits} {'row' if block == 0 else f'g{block}'}"
            f"{' asym' if scheme == 'asymmetric' else ''}"
        )
        out.append(Choice("template", {"template": _qt(bits, block, scheme)}, label))
    for k in (4, 8, 16) if not thorough else (4, 8, 16, 32, 64):
        t = {"codec": "codebook", "fit": {"k": k}, "parts": {"indices": codes_template(8)}}
        out.append(Choice("template", {"template": t}, f"codebook k{k}"))
    if thorough:
        for r in (0.1, 0.2):
            t = {
                "codec": "lowrank",
                "fit": {"rel_error": r},
                "parts": {p: _qt(8, 0) for p in ("u", "v")},
            }
            out.append(Choice("template", {"template": t}, f"lowrank {r}"))
    return out


LOSSLESS = Choice("lossless", {}, "lossless")


# ----------------------------------------------------------------------------- importance


def channel_weights(
    shape: tuple[int, ...], moments: tuple | None, damping: float = 0.05
) -> tuple[int | None, np.ndarray | None]:
    """``(axis, w)``: per-input-channel importance along ``axis`` of a 2-D weight, mean 1
    (``E[x_j^2]`` plus ``damping`` times its mean, so channels the calibration barely saw
    still count), or ``(None, None)`` for uniform importance. ``moments`` is
    ``(axis, E[x_j^2])`` or ``(axis, E[x_j^2], E[x x^T] or None)``."""
    if moments is None or len(shape) != 2:
        return None, None
    axis, m = moments[0], moments[1]
    axis = axis % 2
    m = np.asarray(m, np.float64).reshape(-1)
    if m.size != shape[axis] or not np.all(np.isfinite(m)) or m.mean() <= 0:
        return None, None
    m = m + damping * m.mean()
    return axis, m / m.mean()


@dataclass(frozen=True)
class LowRankForm:
    """The matrix ``f^T f + ridge I`` (n, n), kept as ``f`` (k, n) with k < n: the ``Hn`` of
    :func:`channel_hessian` when fold 1's rows are known (cmf.plan.harness_base.MomentSums).
    A quadratic form through it costs ``k / n`` of one through the matrix."""

    f: np.ndarray  # (k, n) float32
    ridge: float

    def take(self, idx: np.ndarray) -> LowRankForm:
        """The form over the channels ``idx`` (the sub-matrix ``H[idx][:, idx]``)."""
        return LowRankForm(np.ascontiguousarray(self.f[:, idx]), self.ridge)


def quadratic_form(d: np.ndarray, h: np.ndarray | LowRankForm) -> float:
    """``tr(d h d^T)`` of ``d`` (rows, n) float64 with ``h`` (n, n) or a :class:`LowRankForm`;
    the products in float32, the sums in float64."""
    d32 = d.astype(np.float32)
    if isinstance(h, LowRankForm):
        p = d32 @ h.f.T  # (rows, k)
        return float(np.einsum("ij,ij->", p, p, dtype=np.float64)) + h.ridge * float(
            np.einsum("ij,ij->", d, d)
        )
    return float(np.einsum("ij,ij->", d32 @ h, d32, dtype=np.float64))


def _take_channels(h: np.ndarray | LowRankForm, idx: np.ndarray) -> np.ndarray | LowRankForm:
    return h.take(idx) if isinstance(h, LowRankForm) else h[np.ix_(idx, idx)]


_HESSIAN_CACHE: list[tuple[tuple, Any, tuple]] = []  # (key, inputs kept alive, result), newest last
HESSIAN_CACHE_ENTRIES = 3  # the inputs of a block's q/k/o/v (or gate/up) come a few tensors apart


def channel_hessian(
    shape: tuple[int, ...], moments: tuple | None, damping: float = 0.05
) -> tuple[np.ndarray | None, np.ndarray | LowRankForm | None]:
    """``(u, Hn)`` from the fold matrices of ``moments`` (cmf.plan.harness): ``u`` (n, n) the
    upper Cholesky factor of ``(H0 + GPTQ_DAMPING mean(diag H0) I)^-1`` that :func:`gptq_levels`
    feeds errors through, ``Hn`` ``H1`` plus ``damping`` times its mean diagonal, scaled to a
    mean diagonal of 1, that errors are measured with: an (n, n) float32 matrix, or a
    :class:`LowRankForm` where ``moments`` carries fold 1's rows; ``(None, None)`` without
    matrices. The last few results are kept for tensors that share an input: the same arrays,
    or in a worker, where each task's moments arrive as new arrays, the same contents."""
    if moments is None or len(moments) < 3 or moments[2] is None or len(shape) != 2:
        return None, None
    n = shape[moments[0] % 2]
    factor = moments[3] if len(moments) > 3 else None
    arrays = (moments[2][0], moments[2][1], factor)
    for k, kept, got in _HESSIAN_CACHE:  # the same objects: no hashing
        if k[0] == (n, damping) and all(a is b for a, b in zip(kept, arrays, strict=True)):
            return got
    key = ((n, damping), *(None if a is None else content_digest(a) for a in arrays))
    for k, _, got in _HESSIAN_CACHE:
        if k == key:
            return got
    got = _channel_hessian(n, moments[2], factor, damping)
    _HESSIAN_CACHE.append((key, arrays, got))
    del _HESSIAN_CACHE[:-HESSIAN_CACHE_ENTRIES]
    return got


def forget_hessians() -> None:
    """Drop the results :func:`channel_hessian` keeps (and the input matrices they hold): the
    planner calls it when a plan is done."""
    _HESSIAN_CACHE.clear()


def damped_fold_matrix(h1: np.ndarray, n: int, damping: float) -> np.ndarray | None:
    """``Hn`` as a float64 (n, n) matrix: fold 1's matrix ``h1`` symmetrised, plus ``damping``
    times its mean diagonal, scaled to a mean diagonal of 1; None unless ``h1`` is a finite
    (n, n) matrix with a positive mean diagonal."""
    h1 = np.asarray(h1, np.float64)
    if h1.shape != (n, n) or not np.isfinite(h1).all():
        return None
    m1 = float(np.mean(np.diag(h1)))
    if m1 <= 0:
        return None
    return ((h1 + h1.T) / 2 + damping * m1 * np.eye(n)) / (m1 * (1 + damping))


def inverse_cholesky(h: np.ndarray) -> np.ndarray:
    """The upper Cholesky factor ``u`` of ``h^-1`` (``h`` (n, n) symmetric positive definite;
    ``h^-1 = u^T u``) without forming ``h^-1``: with ``h = r r^T``, ``r`` upper triangular (the
    Cholesky factor of ``h`` with its rows and columns reversed), ``u = r^-1``. A third of the
    work of an inverse and a factorisation. LinAlgError if ``h`` is not positive definite."""
    lower = np.linalg.cholesky(h[::-1, ::-1])  # (n, n): J h J = lower lower^T
    return _lower_inverse(lower)[::-1, ::-1]


def _lower_inverse(a: np.ndarray) -> np.ndarray:
    """The inverse of the lower-triangular ``a`` (n, n), by halves: ``[[p, 0], [c, d]]^-1 =
    [[p^-1, 0], [-d^-1 c p^-1, d^-1]]`` (matrix products; small blocks inverted directly)."""
    n = a.shape[0]
    if n <= 64:
        return np.tril(np.linalg.inv(a))
    k = n // 2
    p, d = _lower_inverse(a[:k, :k]), _lower_inverse(a[k:, k:])
    out = np.zeros_like(a)
    out[:k, :k] = p
    out[k:, k:] = d
    out[k:, :k] = -(d @ (a[k:, :k] @ p))
    return out


def _channel_hessian(
    n: int, folds: tuple, factor: np.ndarray | None, damping: float
) -> tuple[np.ndarray | None, np.ndarray | LowRankForm | None]:
    h0, h1 = (np.asarray(h, np.float64) for h in folds)
    if (
        h0.shape != (n, n)
        or h1.shape != (n, n)
        or not (np.isfinite(h0).all() and np.isfinite(h1).all())
    ):
        return None, None
    m0, m1 = float(np.mean(np.diag(h0))), float(np.mean(np.diag(h1)))
    if m0 <= 0 or m1 <= 0:
        return None, None
    try:
        u = inverse_cholesky((h0 + h0.T) / 2 + GPTQ_DAMPING * m0 * np.eye(n))
    except np.linalg.LinAlgError:
        return None, None
    scale = m1 * (1 + damping)
    if (
        factor is not None
        and factor.ndim == 2
        and factor.shape[1] == n
        and factor.shape[0] < n
        and np.isfinite(factor).all()
    ):
        return u, LowRankForm(
            (factor / np.float32(np.sqrt(scale))).astype(np.float32), damping / (1 + damping)
        )
    return u, damped_fold_matrix(h1, n, damping).astype(np.float32)


def weighted_error(
    x: np.ndarray,
    y: np.ndarray,
    axis: int | None,
    w: np.ndarray | None,
    h: np.ndarray | LowRankForm | None = None,
) -> tuple[float, float]:
    """(plain, weighted) squared error of ``y`` against ``x`` in float64, in row chunks; with
    ``h`` (:func:`channel_hessian`) the weighted error is ``tr(dW h dW^T)`` over input channels."""
    x2 = np.asarray(x).reshape(x.shape[0], -1) if x.ndim >= 2 else np.asarray(x).reshape(1, -1)
    y2 = np.asarray(y).reshape(x2.shape)
    plain = weighted = 0.0
    if h is not None and axis == 0:  # input channels along rows: work on the transpose
        x2, y2 = x2.T, y2.T
    step = max(1, (1 << 20) // max(1, x2.shape[1]))
    for i in range(0, x2.shape[0], step):
        d = y2[i : i + step].astype(np.float64) - x2[i : i + step].astype(np.float64)
        if h is not None:
            weighted += quadratic_form(d, h)
        d *= d
        plain += float(d.sum())
        if w is not None and h is None:
            ww = w[None, :] if axis == 1 else w[i : i + step, None]
            weighted += float((d * ww).sum())
    return plain, (weighted if w is not None else plain)


def tensor_rms(xf: np.ndarray) -> float:
    """Root mean square of the float32 array ``xf`` (1.0 for an all-zero or empty one), summed
    in float64 a slice of ``RMS_CHUNK`` elements at a time: no float64 copy of the tensor (an
    embedding's would be hundreds of MB). Step sizes are relative to it."""
    flat = xf.reshape(-1)
    total = 0.0
    for a in range(0, flat.size, RMS_CHUNK):
        part = flat[a : a + RMS_CHUNK].astype(np.float64)
        total += float(np.square(part, out=part).sum())  # numpy's own sum: no BLAS threads
    if not flat.size:
        return 1.0
    return float(np.sqrt(total / flat.size)) or 1.0


RMS_CHUNK = 1 << 20


def step_feedback(
    shape: tuple[int, ...], moments: tuple | None, damping: float = 0.05
) -> np.ndarray | None:
    """The ``feedback`` that :func:`measure` used for the step choices of a tensor of ``shape``
    with ``moments`` (None where it used none): recomputed rather than kept, so a plan holds
    one matrix pair per layer input, not a factor per tensor."""
    if channel_weights(shape, moments, damping)[1] is None:
        return None
    return channel_hessian(shape, moments, damping)[0]


def gptq_levels(
    x: np.ndarray, steps: np.ndarray, u: np.ndarray, limit: int, sparse_values: bool = False
) -> tuple[np.ndarray, Any]:
    """``(levels, values)`` (rows, n) float32: codes of ``x`` (rows, n) with per-channel ``steps``
    (n,), rounded channel by channel with error feedback through ``u`` (:func:`channel_hessian`),
    and the values they stand for. A code beyond ``limit`` marks a value the step encoding keeps
    in an ``outlier`` node: ``values`` holds the error-adjusted value to keep there (stored in
    the tensor's dtype, so exact up to that rounding), and no error is fed forward from it.
    ``sparse_values``: ``values`` is ``(flat positions, values)`` of those codes only (ascending),
    not a second (rows, n) array, and ``levels`` are int16 with those codes set to 0 (half the
    memory of a whole tensor's float32 codes). Rows are independent: a big ``x`` is rounded
    ``GPTQ_CHUNK_ELEMENTS`` at a time, so the work arrays stay small."""
    rows, n = x.shape
    per = max(1, GPTQ_CHUNK_ELEMENTS // max(n, 1))
    if sparse_values and limit >= 1 << 15:
        raise CmfError(f"step: codes of magnitude {limit} do not fit int16")
    levels = np.empty((rows, n), np.int16 if sparse_values else np.float32)
    values = None if sparse_values else np.empty((rows, n), np.float32)
    where, kept = [], []
    for r0 in range(0, rows, per):
        lv, vv = gptq_levels_many(x[r0 : r0 + per], [steps], u, limit)[0]
        if values is not None:
            levels[r0 : r0 + per] = lv
            values[r0 : r0 + per] = vv
            continue
        beyond = lv > limit
        beyond |= lv < -limit
        if beyond.any():
            where.append(np.flatnonzero(beyond) + r0 * n)
            kept.append(vv[beyond])
            lv = np.where(beyond, np.float32(0), lv)
        levels[r0 : r0 + per] = lv
    if values is not None:
        return levels, values
    if not where:
        return levels, (np.zeros(0, np.int64), np.zeros(0, np.float32))
    return levels, (np.concatenate(where), np.concatenate(kept))


GPTQ_BATCH_ELEMENTS = (
    1 << 23
)  # codes of all step sizes rounded together (bounds the batch's arrays)
GPTQ_CHUNK_ELEMENTS = 1 << 21  # rows of one tensor rounded at a time (gptq_levels)


def gptq_levels_many(
    x: np.ndarray, steps: Sequence[np.ndarray], u: np.ndarray, limit: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`gptq_levels` of ``x`` for each step vector of ``steps``, the channels' loop run
    once over a batch of them side by side (the same arithmetic per element; a batch of up to
    ``GPTQ_BATCH_ELEMENTS`` values). float32 arithmetic; within a block of ``GPTQ_BLOCK``
    channels each channel takes the errors of the ones before it in one matrix-vector product
    (lazy updates), the channels after the block in one matrix product."""
    rows, n = x.shape
    per = max(1, GPTQ_BATCH_ELEMENTS // max(rows * n, 1))
    out: list[tuple[np.ndarray, np.ndarray]] = []
    u32 = np.asarray(u, np.float32)
    base = np.asarray(x, dtype=np.float32).T  # (n, rows)
    for k0 in range(0, len(steps), per):
        group = np.stack(
            [np.asarray(g, np.float32) for g in steps[k0 : k0 + per]], axis=1
        )  # (n, S)
        count = group.shape[1]
        wt = np.tile(base, (1, count))  # (n, S * rows): copy k in columns k*rows..(k+1)*rows
        levels = np.empty_like(wt)
        for b0 in range(0, n, GPTQ_BLOCK):
            b1 = min(b0 + GPTQ_BLOCK, n)
            err = np.empty((b1 - b0, wt.shape[1]), np.float32)  # (b, S * rows)
            for j in range(b0, b1):
                if j > b0:  # the errors of this block's earlier channels, fed forward now
                    wt[j] -= u32[b0:j, j] @ err[: j - b0]
                wj = wt[j].reshape(count, rows)
                st = group[j][:, None]  # (S, 1): the step of channel j in each copy
                c = np.rint(wj / st)
                levels[j] = c.reshape(-1)
                e = np.where(np.abs(c) > limit, np.float32(0), wj - c * st) / u32[j, j]
                err[j - b0] = e.reshape(-1)
            if b1 < n:
                wt[b1:] -= u32[b0:b1, b1:].T @ err
        for k in range(count):  # (rows, n) views, as one call each would return
            cols = slice(k * rows, (k + 1) * rows)
            out.append((levels[:, cols].T, wt[:, cols].T))
    return out


# ----------------------------------------------------------------------------- encoding


def encode_step(
    x: np.ndarray,
    spec: ArraySpec,
    rel_step: float,
    axis: int | None,
    w: np.ndarray | None,
    level: int = 3,
    feedback: np.ndarray | None = None,
    levels_of: Callable[[np.ndarray], Any] | None = None,
    decoded: bool = True,
    count_only: bool = False,
) -> tuple[Pending, np.ndarray | None]:
    """The step (ECSQ) encoding of ``x`` (module docstring) and the array it decodes to;
    CmfError if it cannot be made. With ``feedback`` (``u`` of :func:`channel_hessian`; per-channel
    steps only) the codes are chosen with error feedback (:func:`gptq_levels`). ``count_only``:
    entropy-coded parts counted, not made (cmf.plan.recipe.encode_template)."""
    xf = np.asarray(x, dtype=np.float32)
    if not np.isfinite(xf).all():
        raise CmfError("step: the tensor has non-finite values")
    rms = tensor_rms(xf)
    base = rel_step * rms
    if axis is None or w is None:  # one step for the whole tensor
        return _encode_scaled(
            x, xf, spec, np.full((1,), base), None, level, None, None, decoded, count_only
        )
    w = np.asarray(w, np.float64)
    if not (np.isfinite(w).all() and (w > 0).all()):
        raise CmfError("step: channel importances must be finite and positive")
    steps = base / np.sqrt(
        w
    )  # one step per input channel: quantize blocks run along the other axis
    if (
        axis == 0
        and feedback is None
        and spec.numel >= ROW_CLASS_ELEMENTS
        and steps.max() >= ROW_CLASS_SPREAD * steps.min()
    ):
        return _encode_row_classes(x, xf, spec, steps, level, decoded, count_only)
    scales = steps.reshape((1, spec.shape[1]) if axis == 1 else (spec.shape[0], 1))
    return _encode_scaled(
        x, xf, spec, scales, 1 - axis, level, feedback, levels_of, decoded, count_only
    )


def _encode_row_classes(
    x: np.ndarray,
    xf: np.ndarray,
    spec: ArraySpec,
    steps: np.ndarray,
    level: int,
    decoded: bool = True,
    count_only: bool = False,
) -> tuple[Pending, np.ndarray | None]:
    """Per-row ``steps`` (rows,) rounded to a grid ``sqrt(2)`` apart, each group of rows with
    one step its own single-scale node under a ``partition`` node (spec/codecs/partition.md):
    each class's codes get their own entropy-coder table. A class's step is raised where its
    largest value would need codes beyond ``MAX_STEP_BITS``."""
    k = np.rint(2 * np.log2(steps / steps.min())).astype(np.int64)  # (rows,) grid index
    grid, classes = np.unique(k, return_inverse=True)
    if grid.size > 256:
        raise CmfError("step: the row steps span more than 256 classes")
    limit = STEP_LIMIT
    rest = spec.shape[1:]
    counts, parts = [], {}
    y = np.empty(spec.shape, spec.dtype.numpy) if decoded else None
    for c, g in enumerate(grid):
        rows = np.flatnonzero(classes == c)
        xc = np.ascontiguousarray(np.asarray(x)[rows])
        peak = float(np.abs(xf[rows]).max()) if xc.size else 0.0
        step = max(float(steps.min()) * 2.0 ** (g / 2), peak / (limit - 2))  # f16 rounding: margin
        cspec = ArraySpec(spec.dtype, (rows.size, *rest))
        parts[f"p{c}"], yc = _encode_scaled(
            xc, xf[rows], cspec, np.full((1,), step), None, level, None, None, decoded, count_only
        )
        if y is not None:
            y[rows] = yc
        counts.append(int(rows.size))
    codec = Partition(counts=tuple(counts))
    cls = encode_lossless(classes.astype(np.uint8), codec.resolve(spec)["class"], level)
    return PendingNode(codec, {"class": cls, **parts}, spec), y


def stored_steps(scales: np.ndarray) -> tuple[str, np.ndarray, np.ndarray]:
    """(scale dtype, the steps as stored, as float32) of step sizes ``scales``; CmfError if one
    does not fit the dtype."""
    sdt = "f16" if (scales.min() >= 6.2e-5 and scales.max() <= 6.0e4) else "f32"
    s_stored = scales.astype(dtypes.BY_NAME[sdt].numpy)
    s32 = s_stored.astype(np.float32)
    if not (np.isfinite(s32).all() and (s32 > 0).all()):
        raise CmfError("step: a step size does not fit the scale dtype")
    return sdt, s_stored, s32


def _plain_levels(
    x: np.ndarray, xf: np.ndarray, s: np.ndarray, limit: int
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """``rint(xf / s)`` (float32 division; ``s`` broadcast against ``xf``) as int16 codes, a
    slice of rows at a time, with the codes beyond ``limit`` set to 0 and returned apart as
    ``(flat positions, x's values there)``: the form :func:`gptq_levels` gives with
    ``sparse_values``, without a float32 array of the whole tensor's codes."""
    levels = np.empty(xf.shape, np.int16)
    if xf.size == 0:
        return levels, (np.zeros(0, np.int64), np.asarray(x).reshape(-1)[:0])
    xr = xf.reshape(xf.shape[0], -1) if xf.ndim >= 1 else xf.reshape(1, 1)  # [rows, rest]
    sr = np.broadcast_to(np.asarray(s, np.float32), xf.shape).reshape(xr.shape)  # a view
    lr = levels.reshape(xr.shape)
    per = max(1, GPTQ_CHUNK_ELEMENTS // max(xr.shape[1], 1))
    where = []
    for r0 in range(0, xr.shape[0], per):
        lv = np.divide(xr[r0 : r0 + per], sr[r0 : r0 + per], dtype=np.float32)  # [per, rest]
        np.rint(lv, out=lv)
        beyond = lv > limit
        beyond |= lv < -limit
        if beyond.any():
            where.append(np.flatnonzero(beyond) + r0 * xr.shape[1])
            lv[beyond] = 0
        lr[r0 : r0 + per] = lv
    flat = np.concatenate(where) if where else np.zeros(0, np.int64)
    return levels, (flat, np.asarray(x).reshape(-1)[flat])


def _encode_scaled(
    x: np.ndarray,
    xf: np.ndarray,
    spec: ArraySpec,
    scales: np.ndarray,
    qaxis: int | None,
    level: int,
    feedback: np.ndarray | None,
    levels_of: Callable[[np.ndarray], Any] | None = None,
    decoded: bool = True,
    count_only: bool = False,
) -> tuple[Pending, np.ndarray | None]:
    """The step encoding of ``x`` (``xf`` its float32 copy) with ``scales`` (``(1,)``, or the
    blocks shape of per-channel steps with quantize axis ``qaxis``), and the array it decodes
    to (None unless ``decoded``). Work arrays: the codes (float32), the error-adjusted values
    (with feedback), the stored codes and the decoded array, each made once."""
    sdt, s_stored, s32 = stored_steps(scales)
    limit = STEP_LIMIT
    kept = np.asarray(x)  # the values outliers keep exactly
    if feedback is not None and qaxis is not None:
        steps = s32.reshape(-1).astype(np.float64)
        if qaxis == 0:  # (rows, n): channels along columns
            got = levels_of(steps) if levels_of is not None else None
            if got is not None:  # views of a batch: copied before the changes below
                levels, kept = np.array(got[0], dtype=np.float32), got[1]
            else:
                levels, kept = gptq_levels(xf, steps, feedback, limit, sparse_values=True)
        else:
            levels, kept = gptq_levels(xf.T, steps, feedback, limit)
            levels, kept = np.ascontiguousarray(levels.T), kept.T
    elif limit < 1 << 15:
        levels, kept = _plain_levels(x, xf, s32 if qaxis is not None else s32[0], limit)
    else:
        levels = np.divide(xf, s32 if qaxis is not None else s32[0], dtype=np.float32)
        np.rint(levels, out=levels)
    if levels.dtype == np.int16:  # gptq_levels' sparse form: codes beyond the range already 0
        flat = kept[0] if len(kept[0]) else None
        count = len(kept[0])
        if count > MAX_OUTLIERS * xf.size:
            raise CmfError("step: too many values beyond the code range")
    else:
        levels = np.ascontiguousarray(levels, dtype=np.float32)
        np.add(levels, np.float32(0), out=levels)  # no -0.0
        outliers = levels > limit  # (no float temporary: an embedding's codes can be 100+ MB)
        outliers |= levels < -limit
        count = int(outliers.sum())
        if count > MAX_OUTLIERS * xf.size:
            raise CmfError("step: too many values beyond the code range")
        flat = np.flatnonzero(outliers.reshape(-1)) if count else None
        del outliers
        if count:
            levels.reshape(-1)[flat] = 0
    lo, hi = (int(levels.min()), int(levels.max())) if levels.size else (0, 0)
    bits = 2
    while -lo > (1 << (bits - 1)) or hi > (1 << (bits - 1)) - 1:  # [-2^(b-1), 2^(b-1) - 1]
        bits += 1
    y = None
    if (
        decoded
    ):  # what the quantize decoder computes: f32(level) * f32(scale), one rounding, then the dtype
        with np.errstate(over="ignore"):
            y = (
                levels.astype(np.float32, copy=False) * (s32 if qaxis is not None else s32[0])
            ).astype(spec.dtype.numpy, copy=False)
    levels += levels.dtype.type(1 << (bits - 1))  # codes 0 .. 2^bits - 1 (bits <= 12)
    if levels.dtype == np.int16 and bits > 8:
        q = levels.view(np.uint16)  # the same values: no copy
    else:
        q = levels.astype(np.uint8 if bits <= 8 else np.uint16)
    del levels
    codec = Quantize(
        bits=bits, block=0, axis=qaxis, scheme="symmetric", scale_dtype=sdt, search=False
    )
    parts_spec = codec.resolve(spec)
    quant = PendingNode(
        codec,
        {
            "q": encode_template(
                codes_template(bits), q, parts_spec["q"], level, count_only=count_only
            ),
            "scale": encode_lossless(
                s_stored.reshape(parts_spec["scale"].shape), parts_spec["scale"], level
            ),
        },
        spec,
    )
    if not count:
        return quant, y
    nbits, entries, _ = choose_index_bits(flat, (8, 16))
    ocodec = Outlier(count=count, bits=nbits, entries=entries)
    ospec = ocodec.resolve(spec)
    codes = delta_encode(flat, nbits)
    if isinstance(kept, tuple):  # (positions, values) of the codes beyond the range (gptq_levels)
        if not np.array_equal(kept[0], flat):
            raise CmfError(
                "step: the error-feedback outliers disagree with the codes (internal error)"
            )
        values = np.ascontiguousarray(kept[1], dtype=spec.dtype.numpy)
    else:
        values = np.ascontiguousarray(np.asarray(kept).reshape(-1)[flat], dtype=spec.dtype.numpy)
    if y is not None:
        y.reshape(-1)[flat] = values
    return PendingNode(
        ocodec,
        {
            "dense": quant,  # the quantized values at the outlier positions are replaced on decode
            "index": encode_lossless(codes, ospec["index"], level),
            "values": encode_lossless(values, ospec["values"], level),
        },
        spec,
    ), y


def encode_choice(
    choice: Choice,
    x: np.ndarray,
    spec: ArraySpec,
    axis: int | None,
    w: np.ndarray | None,
    level: int = 3,
    feedback: np.ndarray | None = None,
) -> Pending:
    """The pending tree of ``choice`` for ``x`` (CmfError / FitRefused if it does not apply)."""
    return encode_decoded(choice, x, spec, axis, w, level, feedback, decoded=False)[0]


def encode_point(
    choice: Choice,
    x: np.ndarray,
    axis: int | None,
    w: np.ndarray | None,
    moments: tuple | None,
    level: int = 3,
    kept_feedback: str | None = None,
) -> Pending:
    """The encoding of a chosen curve point on the whole tensor ``x`` (the planner's rounds, in
    its process or in a worker): error feedback for the step family and ``--gguf``'s
    GPTQ-rounded types as :func:`measure` used it, read from the file ``kept_feedback`` (the
    curve's ``feedback``) or else recomputed from ``moments`` (:func:`step_feedback`)."""
    spec = ArraySpec(dtypes.of_array(x), tuple(int(d) for d in np.shape(x)))
    u = None
    if choice.family == "step" or choice.params.get("feedback"):
        if kept_feedback is not None and axis is not None and len(spec.shape) == 2:
            u = feedback.load(kept_feedback, spec.shape[axis])  # float32, as the rounding uses
        else:
            u = step_feedback(spec.shape, moments)
    return encode_choice(choice, x, spec, axis, w, level, u)


def encode_decoded(
    choice: Choice,
    x: np.ndarray,
    spec: ArraySpec,
    axis: int | None,
    w: np.ndarray | None,
    level: int = 3,
    feedback: np.ndarray | None = None,
    levels_of: Callable[[np.ndarray], Any] | None = None,
    decoded: bool = True,
    count_only: bool = False,
) -> tuple[Pending, np.ndarray | None]:
    """The pending tree of ``choice`` for ``x`` and the array a reader decodes it to
    (``feedback``: see :func:`encode_step`; ``levels_of(steps)``: error-feedback codes and
    values already rounded for those steps, or None). ``decoded=False``: the step family
    skips making the decoded array and returns None for it (the others return it anyway).
    ``count_only``: the tree's entropy coders count their bytes without making them (its
    ``stored`` is exact but it cannot be written: the curves measure with it)."""
    if choice.family == "lossless":
        return encode_lossless(np.asarray(x), spec, level), np.asarray(x)
    if choice.family == "step":
        return encode_step(
            x,
            spec,
            choice.params["rel_step"],
            axis,
            w,
            level,
            feedback,
            levels_of,
            decoded,
            count_only,
        )
    if choice.family == "template":
        pending = encode_template(choice.params["template"], x, spec, level, count_only=count_only)
        return pending, decode_pending(pending)
    if choice.family == "ggml":  # a GGML type (cmf.plan.ggml_candidates)
        return encode_ggml(
            x,
            spec,
            choice.params["type"],
            axis,
            w,
            level,
            feedback if choice.params.get("feedback") else None,
        )
    raise CmfError(f"unknown choice family {choice.family!r}")


# ----------------------------------------------------------------------------- curves


@dataclass
class Point:
    choice: Choice
    bytes: int  # stored bytes (scaled up from the sample for sampled points)
    error: float  # weighted squared error (plain without importance)
    plain: float  # plain squared error
    sampled: bool = False

    def to_json(self) -> dict:
        return {
            "choice": self.choice.label,
            "bytes": self.bytes,
            "error": self.error,
            "sampled": self.sampled,
        }


@dataclass
class Curve:
    name: str
    numel: int
    energy: float  # weighted sum of squares of the tensor (error of storing zeros)
    points: list[Point]
    hull: list[Point]
    axis: int | None = None
    weights: np.ndarray | None = None
    seconds: float = 0.0
    plain_energy: float = 0.0  # plain sum of squares of the tensor
    feedback: str | None = None  # the step points' error-feedback factor kept in a file


def lower_hull(points: Sequence[Point]) -> list[Point]:
    """The lower convex hull of (bytes, error): bytes increasing, error strictly decreasing,
    slopes (error saved per byte) decreasing."""
    pts = sorted(points, key=lambda p: (p.bytes, p.error))
    mono: list[Point] = []
    for p in pts:  # Pareto front: each point must beat every cheaper one
        if not mono or p.error < mono[-1].error:
            if mono and p.bytes == mono[-1].bytes:
                mono[-1] = p
            else:
                mono.append(p)
    hull: list[Point] = []
    for p in mono:
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # b is above the segment a-p (or on it): drop it
            cross = (b.bytes - a.bytes) * (p.error - a.error) - (b.error - a.error) * (
                p.bytes - a.bytes
            )
            if cross <= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def _sample_rows(x: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Evenly spaced stripes of rows holding about ``limit`` elements: (sample, row indices or
    None for all rows, numel / sample numel)."""
    rows = x.shape[0]
    per_row = x.size // max(rows, 1)
    take = max(1, limit // max(per_row, 1))
    if take >= rows:
        return x, None, 1.0
    stripes = 16
    size = max(1, take // stripes)
    starts = np.linspace(0, rows - size, stripes).astype(int)
    idx = np.unique(np.concatenate([np.arange(s, s + size) for s in starts]))
    return np.ascontiguousarray(x[idx]), idx, rows / idx.size


def _feedback_batch(
    x: np.ndarray, choices: Sequence[Choice], w: np.ndarray | None, u: np.ndarray
) -> dict[bytes, tuple[np.ndarray, np.ndarray]]:
    """Error-feedback codes and values of ``x`` (rows, n) for every step choice at once
    (:func:`gptq_levels_many`), keyed by the stored steps' bytes as :func:`encode_step`
    computes them (per-column steps ``rel * rms / sqrt(w)``)."""
    if w is None:
        return {}
    xf = np.asarray(x, dtype=np.float32)
    if not np.isfinite(xf).all():
        return {}
    rms = tensor_rms(xf)
    w = np.asarray(w, np.float64)
    vectors = []
    for choice in choices:
        if choice.family != "step":
            continue
        try:
            _, _, s32 = stored_steps((choice.params["rel_step"] * rms / np.sqrt(w)).reshape(1, -1))
        except CmfError:
            continue
        vectors.append(s32.reshape(-1).astype(np.float64))
    return {
        v.tobytes(): r
        for v, r in zip(vectors, gptq_levels_many(xf, vectors, u, STEP_LIMIT), strict=True)
    }


def measure(
    name: str,
    x: np.ndarray,
    choices: Sequence[Choice],
    moments: tuple | None = None,
    *,
    level: int = 3,
    sample: int = SAMPLE_ELEMENTS,
    damping: float = 0.05,
    step_sample: int = STEP_SAMPLE_ELEMENTS,
    progress: Callable[[], None] | None = None,
    feedback_dir: str | None = None,
    templates_with_feedback: bool = True,
) -> Curve:
    """Measure every choice on ``x`` (module docstring) and return its curve. ``moments``:
    cmf.plan.harness's ``(axis, E[x_j^2][, fold matrices])`` of the tensor's input, or None.
    Encoding a step point again (:func:`step_feedback`) needs the same ``moments``, or the
    error-feedback factor kept in ``feedback_dir`` (cmf.plan.feedback), named by the curve's
    ``feedback``. ``templates_with_feedback=False``: where the step choices round with error
    feedback, the template choices are not measured (module docstring)."""
    import time

    start = time.perf_counter()
    x = np.asarray(x)
    spec = ArraySpec(dtypes.of_array(x), tuple(int(d) for d in x.shape))
    axis, w = channel_weights(spec.shape, moments, damping)
    u, h = channel_hessian(spec.shape, moments, damping) if w is not None else (None, None)
    plain_energy, energy = weighted_error(x, np.zeros_like(x), axis, w, h)
    points = []
    sample_of: tuple | None = None
    step_of: tuple | None = None
    batch: dict = {}  # error-feedback codes of the row sample, and of the whole tensor, per steps
    whole: dict = {}
    skip_templates = u is not None and not templates_with_feedback
    for choice in choices:
        if skip_templates and choice.family == "template":
            if progress is not None:
                progress()
            continue
        try:
            if choice.family == "template" and x.size > sample:
                if sample_of is None:
                    sx, idx, factor = _sample_rows(x, sample)
                    sw = w if (w is None or axis == 1 or idx is None) else w[idx]
                    sh = h if (h is None or axis == 1 or idx is None) else _take_channels(h, idx)
                    sspec = ArraySpec(spec.dtype, tuple(int(d) for d in sx.shape))
                    sample_of = (sx, sw, sh, sspec, factor)
                sx, sw, sh, sspec, factor = sample_of
                pending, y = encode_decoded(choice, sx, sspec, axis, sw, level, count_only=True)
                plain, werr = weighted_error(sx, y, axis, sw, sh)
                point = Point(
                    choice,
                    round(pending.stored * factor),
                    werr * factor,
                    plain * factor,
                    factor != 1.0,
                )
            elif (
                choice.family == "step"
                and axis in (1, None)
                and x.ndim == 2
                and x.size > step_sample
            ):
                # steps per input column (or one step) and error feedback along each row alone: a
                # sample of rows measures the curve (the chosen point is encoded on the whole
                # tensor, and measured, by the rounds)
                if step_of is None:
                    step_of = _sample_rows(x, step_sample)
                    batch = _feedback_batch(step_of[0], choices, w, u) if u is not None else {}
                sx, _, factor = step_of
                sspec = ArraySpec(spec.dtype, tuple(int(d) for d in sx.shape))
                pending, y = encode_decoded(
                    choice,
                    sx,
                    sspec,
                    axis,
                    w,
                    level,
                    u,
                    lambda steps, batch=batch: batch.get(steps.tobytes()),
                    count_only=True,
                )
                plain, werr = weighted_error(sx, y, axis, w, h)
                point = Point(
                    choice,
                    round(pending.stored * factor),
                    werr * factor,
                    plain * factor,
                    factor != 1.0,
                )
            else:
                if (
                    choice.family == "step"
                    and u is not None
                    and axis == 1
                    and x.ndim == 2
                    and not whole
                ):
                    whole = _feedback_batch(x, choices, w, u)  # every step's codes in one pass
                pending, y = encode_decoded(
                    choice,
                    x,
                    spec,
                    axis,
                    w,
                    level,
                    u,
                    lambda steps, whole=whole: whole.get(steps.tobytes()),
                    count_only=True,
                )
                plain, werr = weighted_error(x, y, axis, w, h)
                point = Point(choice, pending.stored, werr, plain)
        except CmfError:
            continue  # this choice does not apply here (FitRefused, non-finite values...)
        finally:
            if progress is not None:
                progress()
        points.append(point)
    if not any(p.choice.family == "lossless" for p in points):
        pending = encode_lossless(x, spec, level)
        points.append(Point(LOSSLESS, pending.stored, 0.0, 0.0))
    kept = feedback.keep(feedback_dir, u) if any(c.family == "step" for c in choices) else None
    return Curve(
        name,
        x.size,
        energy,
        points,
        lower_hull(points),
        axis,
        w,
        time.perf_counter() - start,
        plain_energy,
        kept,
    )
