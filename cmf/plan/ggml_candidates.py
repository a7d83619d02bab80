"""The planner's candidates under ``--gguf`` (spec/planner.md, "Planning into GGML types").

Each planned tensor's choices are GGML types: F16 and BF16 (any row length), and Q8_0, Q6_K,
Q5_K, Q4_K, Q3_K, Q2_K, IQ4_XS, IQ4_NL, Q5_0, each mapped through llama.cpp's fallback for its row
length (cmf.ggml_encode.fallback_type: a 576-wide row takes Q5_0 for Q4_K, Q8_0 for Q6_K...)
and the duplicates dropped (a fallback to F16 is the F16 choice); the lossless point is F32 in
the GGUF. A block type is encoded with cmf.ggml_encode.quantize_blocks, the per-column
importance the calibration's input moments give (llama.cpp's imatrix: ``E[x_j^2]`` plus 5 % of
its mean, as the planner's ``w``) where the importance runs along the rows' axis, and stored as
a ``ggml`` tree (cmf.codecs.ggml_pack: every field entropy coded); F16 / BF16 is the tensor
rounded to that dtype and stored as it (cmf.plan.ggml_encoding).

A point's ``bytes`` are the **GGUF's** bytes of the tensor (blocks x block bytes; 4 per
element for the lossless F32 point), not the .cmf's: a size target counts the GGUF. Its error is
the planner's weighted error (candidates.weighted_error), measured on a row sample of
``SAMPLE_ELEMENTS`` for bigger tensors (rows are encoded independently) and scaled, plus what
llama.cpp's rounding of the tensor's input adds for that type (:func:`activation_error`: the
decoder harness measures it per activation type, cmf.runtime.ggml_acts, in the moments' fifth
item).

Curves are kept per process (:data:`_CURVES`, keyed by the tensor's and its moments' digests),
so planning the same model for several targets in one process measures them once. With
``--jobs N`` (:func:`measure_gguf_curves`) the tensors not yet measured are measured in the
planner's worker processes (cmf.parallel), each exactly as :func:`measure_gguf` does here.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from .. import dtypes
from ..codecs import ArraySpec
from ..codecs.ggml_dequant import dequantize
from ..codecs.ggml_layout import split
from ..codecs.ggml_types import LAYOUTS
from ..errors import CmfError
from ..ggml_encode import TYPES, fallback_type, quantize_blocks
from . import feedback
from .candidates import (
    LOSSLESS,
    Choice,
    Curve,
    Point,
    _sample_rows,
    channel_weights,
    damped_fold_matrix,
    lower_hull,
    step_feedback,
    weighted_error,
)
from .ggml_encoding import PLAIN_TYPES, encode_ggml, importance_of, plain_rounded  # noqa: F401  (re-exported)
from .ggml_gptq import gptq_blocks

# Q5_0 for rows the K-quants take too: llama.cpp multiplies it by Q8_0 activation blocks of 32,
# which round an input with outlier channels finer than the K-quants' Q8_K blocks of 256
PLANNED_TYPES = (
    "F16",
    "BF16",
    "Q8_0",
    "Q6_K",
    "Q5_K",
    "Q4_K",
    "Q3_K",
    "Q2_K",
    "IQ4_XS",
    "IQ4_NL",
    "Q5_0",
)
SAMPLE_ELEMENTS = 1 << 18  # curves of bigger tensors are measured on a row sample of this many
_CURVES: dict[bytes, Curve] = {}
_CURVES_MAX = 4096


def ggml_choices(cols: int) -> list[Choice]:
    """The GGML-type choices for rows of ``cols`` elements (fallbacks applied, each type once;
    F16 and BF16 take any row)."""
    seen: list[str] = []
    for t in PLANNED_TYPES:
        got = t if t in PLAIN_TYPES else fallback_type(t, cols)
        if got not in seen:
            seen.append(got)
    return [Choice("ggml", {"type": t}, t) for t in seen]


def gguf_tensor_bytes(ggml_type: str, shape: tuple[int, ...]) -> int:
    """Bytes of a tensor of numpy ``shape`` in the GGUF as ``ggml_type`` (F32/F16 or a block
    type of cmf.ggml_encode)."""
    numel = math.prod(int(d) for d in shape)
    if ggml_type in ("F32", "F16", "BF16"):
        return numel * (4 if ggml_type == "F32" else 2)
    t = TYPES[ggml_type]
    return numel // t.block * t.nbytes


def fold_matrix(
    shape: tuple[int, ...], moments: tuple | None, damping: float = 0.05
) -> np.ndarray | None:
    """``Hn`` of candidates.channel_hessian (fold 1's input matrix, damped, mean diagonal 1)
    without the factor the step candidates' error feedback needs (GGML rounding uses none)."""
    if moments is None or len(moments) < 3 or moments[2] is None or len(shape) != 2:
        return None
    return damped_fold_matrix(moments[2][1], shape[moments[0] % 2], damping)


def activation_error(ggml_type: str, moments: tuple | None, damping: float = 0.05) -> float:
    """The weighted error llama.cpp's rounding of the tensor's input adds to a ``ggml_type``
    choice (module docstring): the harness's activation error of that type's vec-dot type
    (cmf.runtime.ggml_acts.activation_errors, the moments' fifth item) in the unit of
    weighted_error (over ``1 + damping``, as ``w`` and ``Hn`` are); 0 without it."""
    from ..runtime.ggml_acts import activation_type, same_values

    if moments is None or len(moments) < 5 or not moments[4]:
        return 0.0
    act = same_values(activation_type(ggml_type))
    return float(moments[4].get(act, 0.0)) / (1.0 + damping) if act != "F32" else 0.0


def _digest(x: np.ndarray, moments: Any) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    h.update(np.ascontiguousarray(x).reshape(-1).view(np.uint8))
    h.update(f"|{x.dtype.str}|{x.shape}|".encode())

    def add(v: Any) -> None:
        if isinstance(v, np.ndarray):
            h.update(np.ascontiguousarray(v).reshape(-1).view(np.uint8))
            h.update(str(v.shape).encode())
        elif isinstance(v, (tuple, list)):
            h.update(b"(")
            for item in v:
                add(item)
            h.update(b")")
        else:
            h.update(repr(v).encode())

    add(moments)
    return h.digest()


def _values(blocks: np.ndarray, ggml_type: str, shape: tuple[int, ...]) -> np.ndarray:
    """The f32 values of GGML ``blocks`` as the ``ggml`` codec decodes them (no tree built)."""
    lay = LAYOUTS[ggml_type]
    return dequantize(ggml_type, split(lay, np.asarray(blocks).reshape(-1, lay.nbytes))).reshape(
        shape
    )


def measure_gguf(
    name: str,
    x: np.ndarray,
    moments: tuple | None = None,
    *,
    level: int = 3,
    damping: float = 0.05,
    sample: int = SAMPLE_ELEMENTS,
    progress: Callable[[], None] | None = None,
    feedback_dir: str | None = None,
) -> Curve:
    """The curve of ``x`` over its GGML choices (module docstring): points of (GGUF bytes,
    weighted error), the lossless F32 point at the top; the error-feedback factor kept in
    ``feedback_dir`` (cmf.plan.feedback) for the rounds."""
    start = time.perf_counter()
    x = np.asarray(x)
    key = _digest(x, moments) + name.encode()
    if key in _CURVES:  # a copy: the planner trims hulls of its own
        got = _CURVES[key]
        return replace(got, points=list(got.points), hull=list(got.hull))
    spec = ArraySpec(dtypes.of_array(x), tuple(int(d) for d in x.shape))
    axis, w = channel_weights(spec.shape, moments, damping)
    h = fold_matrix(spec.shape, moments, damping) if w is not None else None
    plain_energy, energy = weighted_error(x, np.zeros_like(x), axis, w, h)
    sx, idx, factor = _sample_rows(x, sample) if x.ndim == 2 else (x, None, 1.0)
    sw = w if (w is None or axis == 1 or idx is None) else w[idx]
    sh = h if (h is None or axis == 1 or idx is None) else h[np.ix_(idx, idx)]
    u = step_feedback(spec.shape, moments, damping) if axis == 1 and sx.ndim == 2 else None
    points = []
    for choice in ggml_choices(spec.shape[-1]) if spec.dtype.name == "f32" else []:
        t = choice.params["type"]
        tries = []  # (choice, values): the plain rounding, and with error feedback where it applies
        try:
            if t in PLAIN_TYPES:  # the rounding alone (the lossless tree is not measured)
                tries.append((choice, np.asarray(plain_rounded(sx, t), np.float32)))
            else:
                tries.append(
                    (choice, _values(quantize_blocks(sx, t, importance_of(axis, sw)), t, sx.shape))
                )
                if u is not None:
                    fed = Choice("ggml", {"type": t, "feedback": True}, t)
                    tries.append((fed, gptq_blocks(sx, t, u, importance_of(axis, sw))[1]))
        except CmfError:
            continue
        finally:
            if progress is not None:
                progress()
        best = None
        for c, y in tries:  # the smaller error on fold 1 (the feedback used fold 0)
            plain, werr = weighted_error(sx, y, axis, sw, sh)
            if best is None or werr < best[1]:
                best = (c, werr, plain)
        c, werr, plain = best  # type: ignore[misc]
        werr = werr * factor + activation_error(t, moments, damping)
        points.append(
            Point(c, gguf_tensor_bytes(t, spec.shape), werr, plain * factor, factor != 1.0)
        )
    points.append(Point(LOSSLESS, gguf_tensor_bytes("F32", spec.shape), 0.0, 0.0))
    curve = Curve(
        name,
        x.size,
        energy,
        points,
        lower_hull(points),
        axis,
        w,
        time.perf_counter() - start,
        plain_energy,
        feedback.keep(feedback_dir, u),
    )
    if len(_CURVES) < _CURVES_MAX:
        _CURVES[key] = replace(curve, points=list(points), hull=list(curve.hull))
    return curve


def gguf_measure_task(
    name: str,
    source: Any,
    choices: Any,
    moments: Any,
    level: int,
    feedback_dir: str | None = None,
    templates_with_feedback: bool = True,  # unused: there are no templates among GGML types
) -> Curve:
    """cmf.parallel.measure_task under ``--gguf`` (in a worker): the tensor read from its file
    (a cmf.parallel.FileTensor) or sent as an array, float values as float32 (as
    cmf.plan.ggml_plan.gguf_source gives them), then :func:`measure_gguf`. ``choices`` is
    unused (the GGML choices follow from the row length)."""
    from ..parallel import FileTensor, read_tensor

    array = read_tensor(source) if isinstance(source, FileTensor) else np.asarray(source)
    if array.dtype.kind == "f" or array.dtype.name == "bfloat16":
        array = np.asarray(array, np.float32)
    return measure_gguf(name, array, moments, level=level, feedback_dir=feedback_dir)


def measure_gguf_curves(
    names: list[str],
    tensors: Any,
    moments: Any,
    *,
    level: int = 3,
    progress: Callable[[], None] | None = None,
    in_workers: Callable[[list[str]], dict[str, Curve]] | None = None,
    feedback_dir: str | None = None,
) -> dict[str, Curve]:
    """The curves stage under ``--gguf``: each tensor's :func:`measure_gguf` curve, from this
    process's cache where it has one; the others measured here, or, with ``in_workers`` (the
    planner's worker processes running :func:`gguf_measure_task` on a list of names), there,
    and cached here. The same curves either way."""
    curves: dict[str, Curve] = {}
    todo = []
    for name in names:
        key = _digest(np.asarray(tensors[name]), moments.get(name)) + name.encode()
        got = _CURVES.get(key)
        if got is not None:
            curves[name] = replace(got, points=list(got.points), hull=list(got.hull))
            for _ in ggml_choices(int(np.shape(tensors[name])[-1])):
                if progress is not None:
                    progress()
        else:
            todo.append((name, key))
    if in_workers is not None and len(todo) > 1:
        got_all = in_workers([n for n, _ in todo])
        for name, key in todo:
            curve = curves[name] = got_all[name]
            if len(_CURVES) < _CURVES_MAX:
                _CURVES[key] = replace(curve, points=list(curve.points), hull=list(curve.hull))
    else:
        for name, _ in todo:
            curves[name] = measure_gguf(
                name,
                tensors[name],
                moments.get(name),
                level=level,
                progress=progress,
                feedback_dir=feedback_dir,
            )
    return {n: curves[n] for n in names}


__all__ = [
    "PLANNED_TYPES",
    "activation_error",
    "encode_ggml",
    "ggml_choices",
    "gguf_measure_task",
    "gguf_tensor_bytes",
    "importance_of",
    "measure_gguf",
    "measure_gguf_curves",
]
