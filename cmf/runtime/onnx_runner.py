"""Run an ONNX model rebuilt from its cmf skeleton and decoded weights, or an original ``.onnx``.

The skeleton (``model.onnx.skeleton``, spec/converters.md) gets its markers filled in memory by
cmf.convert.onnx's own rebuilding functions, one tensor at a time; an original ``.onnx`` goes
through ``OnnxSource`` (cmf's checked reader of inline and external data) into the same skeleton,
so original and compressed run through one code path. The model is run by onnxruntime when it is
installed (``pip install 'cmf-container[run]'``), else by ``onnx.reference.ReferenceEvaluator``.

``input_specs()`` describes the graph inputs; ``sample_inputs(seed)`` makes a set of inputs that
fits them (symbolic dims: 1 for the first, 8 for the others; ids that index a Gather table stay
inside it, ``*mask*`` inputs are ones, ``*type*`` ids zeros).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import onnx
from onnx import ModelProto, TensorProto

from ..convert.onnx import SKELETON, _check_spec, _fill, _markers, check_rebuilt
from ..errors import CmfError


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]  # ints, symbolic names, None for unknown


def skeleton_from(data: bytes, where: str) -> ModelProto:
    model = ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # protobuf's DecodeError (upb raises its own type)
        raise CmfError(f"{where}: attachment {SKELETON!r} is not a serialized ONNX model ({exc})") from None
    if not model.HasField("graph"):
        raise CmfError(f"{where}: attachment {SKELETON!r} is not an ONNX model (no graph)")
    return model


def rebuild(skeleton: ModelProto, items: Iterable[tuple[str, np.ndarray]],
            spec: Callable[[str], Any] | None = None) -> ModelProto:
    """Fill the markers of ``skeleton`` (in place) with the arrays of ``items``, one at a time.

    ``spec(name)`` (a cmf ArraySpec) lets each marker be checked before its tensor is decoded;
    without it the arrays are checked as they come. Every marker must be filled exactly once.
    """
    markers: dict[str, list[tuple[TensorProto, Any]]] = {}
    for name, marker, attr, _ in _markers(skeleton):
        markers.setdefault(name, []).append((marker, attr))
        if spec is not None:
            _check_spec(name, marker, spec(name))
    filled: set[str] = set()
    for name, array in items:
        if name not in markers:
            continue
        for marker, attr in markers[name]:
            if spec is None:
                _check_spec(name, marker, _ArraySpecOf(array))
            _fill(marker, attr, array)
        filled.add(name)
    missing = [n for n in markers if n not in filled]
    if missing:
        raise CmfError(f"the graph needs tensor {missing[0]!r}, which the model does not have"
                       + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    check_rebuilt(skeleton, "cmf run handles ONNX models up to 2 GiB")
    return skeleton


class _ArraySpecOf:
    """The (dtype, shape) of an array, in the shape of a cmf ArraySpec, for _check_spec."""

    def __init__(self, array: np.ndarray) -> None:
        from ..dtypes import of_array

        self.dtype = of_array(array)
        self.shape = tuple(array.shape)


class OnnxRunner:
    """A rebuilt ONNX model and the engine that runs it (``engine``: "onnxruntime" or "reference")."""

    def __init__(self, model: ModelProto, engine: str | None = None) -> None:
        self.model: ModelProto | None = model
        initializers = {t.name for t in model.graph.initializer}
        self.inputs = [_input_spec(v) for v in model.graph.input if v.name not in initializers]
        self.output_names = [o.name for o in model.graph.output]
        self._gather_bounds = _gather_bounds(model)
        engine = engine or ("onnxruntime" if _has_ort() else "reference")
        self.engine = engine
        try:
            if engine == "onnxruntime":
                import onnxruntime as ort

                options = ort.SessionOptions()
                options.log_severity_level = 3
                self._session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
                self.model = None  # onnxruntime holds its own copy of the weights
            else:
                from onnx.reference import ReferenceEvaluator

                self._session = ReferenceEvaluator(model)
        except CmfError:
            raise
        except Exception as exc:  # onnxruntime's Fail / InvalidGraph, the evaluator's errors
            raise CmfError(f"{engine} cannot load the model: {_first_line(exc)}") from None

    def input_specs(self) -> list[InputSpec]:
        return list(self.inputs)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on named inputs; returns output name -> array."""
        wanted = {i.name: i for i in self.inputs}
        unknown = sorted(set(feeds) - set(wanted))
        if unknown:
            raise CmfError(f"the model has no input {unknown[0]!r} (inputs: {', '.join(wanted) or 'none'})")
        missing = [n for n in wanted if n not in feeds]
        if missing:
            raise CmfError(f"input {missing[0]!r} is missing (inputs: {', '.join(wanted)})")
        feeds = {n: _as_input(np.asarray(a), wanted[n]) for n, a in feeds.items()}
        try:
            outputs = self._session.run(None, feeds)
        except Exception as exc:  # shape/type mismatches surface here
            raise CmfError(f"{self.engine} failed to run the model: {_first_line(exc)}") from None
        return {name: np.asarray(v) for name, v in zip(self.output_names, outputs)}

    def sample_inputs(self, seed: int = 0) -> dict[str, np.ndarray]:
        """Generated inputs that fit the graph's input specs (see module docstring)."""
        rng = np.random.default_rng(seed)
        dims: dict[str, int] = {}
        feeds = {}
        for spec in self.inputs:
            shape = []
            for k, d in enumerate(spec.shape):
                if isinstance(d, int) and d >= 0:
                    shape.append(d)
                elif isinstance(d, str):
                    shape.append(dims.setdefault(d, 1 if k == 0 else 8))
                else:
                    shape.append(1 if k == 0 else 8)
            feeds[spec.name] = _sample(spec, tuple(shape), rng, self._gather_bounds.get(spec.name))
        return feeds


def _sample(spec: InputSpec, shape: tuple[int, ...], rng: np.random.Generator, bound: int | None) -> np.ndarray:
    name, dt = spec.name.lower(), spec.dtype
    if dt.kind == "f":
        return rng.standard_normal(shape).astype(dt)
    if dt.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    if dt.kind in "iu":
        if "mask" in name:
            return np.ones(shape, dt)
        if "type" in name or "segment" in name:
            return np.zeros(shape, dt)
        return rng.integers(0, bound or 10, shape).astype(dt)
    raise CmfError(f"cannot generate values for input {spec.name!r} of type {dt}; pass --data")


def _as_input(array: np.ndarray, spec: InputSpec) -> np.ndarray:
    if array.dtype != spec.dtype:
        if not np.can_cast(array.dtype, spec.dtype, "same_kind"):
            raise CmfError(f"input {spec.name!r} is {array.dtype}; the model wants {spec.dtype}")
        array = array.astype(spec.dtype)
    if len(spec.shape) != array.ndim or any(isinstance(d, int) and d >= 0 and d != n for d, n in zip(spec.shape, array.shape)):
        shown = ["?" if not isinstance(d, int) else d for d in spec.shape]
        raise CmfError(f"input {spec.name!r} has shape {list(array.shape)}; the model wants {shown}")
    return np.ascontiguousarray(array)


def _input_spec(v: onnx.ValueInfoProto) -> InputSpec:
    t = v.type.tensor_type
    if not v.type.HasField("tensor_type"):
        raise CmfError(f"input {v.name!r} is not a tensor (sequences, maps and optionals are not supported)")
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type))
    except Exception:
        raise CmfError(f"input {v.name!r} has an unsupported element type {t.elem_type}") from None
    shape: tuple[int | str | None, ...] = tuple(
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim
    )
    return InputSpec(v.name, dtype, shape)


def _gather_bounds(model: ModelProto) -> dict[str, int]:
    """Graph input -> size of the table it indexes, for inputs used as Gather indices of an
    initializer (token ids into an embedding table)."""
    sizes = {t.name: list(t.dims) for t in model.graph.initializer}
    out: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[0] in sizes:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            dims = sizes[node.input[0]]
            if dims and -len(dims) <= axis < len(dims):
                bound = int(dims[axis])
                out[node.input[1]] = min(out.get(node.input[1], bound), bound)
    return out


def _has_ort() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def from_cmf(f: Any, engine: str | None = None) -> OnnxRunner:
    """Rebuild and load the ONNX model of an open CmfFile or ShardedFile ``f`` (a sharded set's
    skeleton is an attachment of its last shard; its tensors come from every shard)."""
    if SKELETON not in f.attachments():
        raise CmfError(f"{f.path} has no ONNX graph (attachment {SKELETON!r})")
    model = skeleton_from(f.get_attachment(SKELETON), f.path)
    names = {name for name, _, _, _ in _markers(model)}
    items: Iterator[tuple[str, np.ndarray]] = ((n, f.get_tensor(n)) for n in f.keys() if n in names)
    return OnnxRunner(rebuild(model, items, f.spec), engine)


def from_onnx_file(path: str | os.PathLike, engine: str | None = None) -> OnnxRunner:
    """Load an original ``.onnx`` through cmf's checked reader (external data included)."""
    from ..convert.onnx import OnnxSource

    src = OnnxSource(path)
    model = skeleton_from(src.attachments[SKELETON], os.fspath(path))
    return OnnxRunner(rebuild(model, src.items()), engine)
