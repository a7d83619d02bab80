"""Run an ONNX model rebuilt from its cmf skeleton and decoded weights, or an original ``.onnx``.

The skeleton (``model.onnx.skeleton``, spec/converters.md) gets its markers filled in memory by
cmf.convert.onnx's own rebuilding functions, one tensor at a time; an original ``.onnx`` goes
through ``OnnxSource`` (cmf's checked reader of inline and external data) into the same skeleton,
so original and compressed run through one code path. The model is run by onnxruntime when it is
installed (``pip install 'cmf-container[run]'``), else by ``onnx.reference.ReferenceEvaluator``.

``input_specs()`` describes the graph inputs; ``sample_inputs(seed)`` makes a set of inputs that
fits them and that the model runs on. Dims the graph leaves open (symbolic names, one size per
name across inputs, or unknown) are resolved by ``fitting_shapes()``: a batch (the first axis) of
1; the height and width of an image-like input (rank 4, float: ``[N, C, H, W]`` or
``[N, H, W, C]`` with a fixed channel count) at sizes a stride-32 network accepts (224 x 224,
then 256, 320, 192, 160, 128, 96, 64, 512, 32; a line-shaped input whose height is fixed below 64,
such as a text-line recognizer's 48, gets widths 320, 256, ... instead); any other open dim a
sequence length of 16, then 32, 64, 8, 128, 256, 512, 1 (with 2-4 such dims, each also at 1 in
turn: a recurrent state's batch). Each candidate is checked by running the model once (the first
whose float outputs are finite wins; the old 1-then-8 sizes are tried last) and CmfError lists
what was tried when none runs. Values, deterministic for a seed: images are
strokes on a plain background (text-like edges, in [-1, 1]), other floats standard normal; ids
that index a Gather table (through Cast/Reshape/... ) stay inside it, an integer input the graph
tests with Equal against constants (a sample rate) takes those values in turn, ``*mask*``
inputs are ones, ``*type*``/``*segment*`` ids zeros, other integers in [0, 10).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

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
        raise CmfError(
            f"{where}: attachment {SKELETON!r} is not a serialized ONNX model ({exc})"
        ) from None
    if not model.HasField("graph"):
        raise CmfError(f"{where}: attachment {SKELETON!r} is not an ONNX model (no graph)")
    return model


def rebuild(
    skeleton: ModelProto,
    items: Iterable[tuple[str, np.ndarray]],
    spec: Callable[[str], Any] | None = None,
) -> ModelProto:
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
        raise CmfError(
            f"the graph needs tensor {missing[0]!r}, which the model does not have"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    check_rebuilt(skeleton, "cmf run handles ONNX models up to 2 GiB")
    return skeleton


class _ArraySpecOf:
    """The (dtype, shape) of an array, in the shape of a cmf ArraySpec, for _check_spec."""

    def __init__(self, array: np.ndarray) -> None:
        from ..dtypes import of_array

        self.dtype = of_array(array)
        self.shape = tuple(array.shape)


class OnnxRunner:
    """A rebuilt ONNX model and the engine that runs it (``engine``: "onnxruntime" or
    "reference")."""

    def __init__(self, model: ModelProto, engine: str | None = None) -> None:
        self.model: ModelProto | None = model
        initializers = {t.name for t in model.graph.initializer}
        self.inputs = [_input_spec(v) for v in model.graph.input if v.name not in initializers]
        self.output_names = [o.name for o in model.graph.output]
        self._gather_bounds = _gather_bounds(model)
        self._int_values = _compared_values(model)
        engine = engine or ("onnxruntime" if _has_ort() else "reference")
        self.engine = engine
        try:
            if engine == "onnxruntime":
                import onnxruntime as ort

                options = ort.SessionOptions()
                options.log_severity_level = 3
                self._session = ort.InferenceSession(
                    model.SerializeToString(), options, providers=["CPUExecutionProvider"]
                )
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
            raise CmfError(
                f"the model has no input {unknown[0]!r} (inputs: {', '.join(wanted) or 'none'})"
            )
        missing = [n for n in wanted if n not in feeds]
        if missing:
            raise CmfError(f"input {missing[0]!r} is missing (inputs: {', '.join(wanted)})")
        feeds = {n: _as_input(np.asarray(a), wanted[n]) for n, a in feeds.items()}
        try:
            outputs = self._session.run(None, feeds)
        except Exception as exc:  # shape/type mismatches surface here
            raise CmfError(f"{self.engine} failed to run the model: {_first_line(exc)}") from None
        return {name: np.asarray(v) for name, v in zip(self.output_names, outputs, strict=True)}

    def sample_inputs(self, seed: int = 0) -> dict[str, np.ndarray]:
        """Generated inputs, deterministic for ``seed``, at the shapes of :meth:`fitting_shapes`
        (see the module docstring)."""
        return self._generate(self.fitting_shapes(), seed)

    def fitting_shapes(self) -> dict[str, tuple[int, ...]]:
        """Input name -> a shape the model runs on: the first candidate of
        :func:`candidate_shapes` that runs with finite float outputs (else the first that runs),
        found by running the model once per candidate, and kept. CmfError naming the shapes
        tried and the first failure when none runs."""
        if self._shapes is None:
            failures: list[tuple[dict[str, tuple[int, ...]], str]] = []
            ran = None
            for shapes in candidate_shapes(self.inputs):
                try:
                    outs = self._run_checked(self._generate(shapes, 0), quiet=True)
                except CmfError as exc:
                    failures.append((shapes, str(exc)))
                    continue
                if all(np.isfinite(v).all() for v in outs.values() if v.dtype.kind == "f"):
                    ran = shapes
                    break
                ran = ran or shapes
            if ran is None:
                tried = "; ".join(
                    ", ".join(f"{n} {list(s)}" for n, s in sh.items()) or "no inputs"
                    for sh, _ in failures[:4]
                )
                more = f" and {len(failures) - 4} more" if len(failures) > 4 else ""
                raise CmfError(
                    f"no generated inputs fit the model (tried {tried}{more}): "
                    f"{failures[0][1] if failures else 'nothing to try'}; give real "
                    "inputs (cmf pack --calibrate, cmf run --input, cmf eval --data)"
                )
            self._shapes = ran
        return dict(self._shapes)

    _shapes: dict[str, tuple[int, ...]] | None = None

    def _generate(self, shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        out = {}
        for spec in self.inputs:
            values = self._int_values.get(spec.name)
            if values and spec.dtype.kind in "iu":  # a switch the graph tests: one of its values
                out[spec.name] = np.full(shapes[spec.name], values[seed % len(values)], spec.dtype)
            else:
                bound = self._gather_bounds.get(spec.name)
                out[spec.name] = _sample(spec, shapes[spec.name], rng, bound)
        return out

    def _run_checked(
        self, feeds: dict[str, np.ndarray], quiet: bool = False
    ) -> dict[str, np.ndarray]:
        """:meth:`run` on inputs made here; ``quiet``: onnxruntime logs nothing on failure."""
        if not quiet or self.engine != "onnxruntime":
            return self.run(feeds)
        import onnxruntime as ort

        options = ort.RunOptions()
        options.log_severity_level = 4  # a candidate shape that does not fit is no error yet
        try:
            outputs = self._session.run(None, feeds, options)
        except Exception as exc:
            raise CmfError(f"{self.engine} failed to run the model: {_first_line(exc)}") from None
        return {name: np.asarray(v) for name, v in zip(self.output_names, outputs, strict=True)}


# Sizes tried for the dims a graph leaves open (module docstring), best first.
IMAGE_SIZES = (224, 256, 320, 192, 160, 128, 96, 64, 512, 32)  # H and W: multiples of 32
LINE_WIDTHS = (320, 256, 224, 160, 128, 96, 64, 512, 32)  # W of a line, height fixed below 64
LENGTHS = (16, 32, 64, 8, 128, 256, 512, 1)  # any other open dim (sequence length, samples, ...)
LINE_HEIGHT = 64  # a fixed height below this makes an image input a text line
IMAGE_CHANNELS = (1, 3, 4)  # images (not feature maps) get stroke pictures as values


def _fixed(d: int | str | None) -> bool:
    return isinstance(d, int) and d >= 0


def spatial_axes(spec: InputSpec) -> tuple[int, int] | None:
    """The (height, width) axes of an image-like input: rank 4, float, channels fixed and at
    least one of height and width open — ``[N, C, H, W]`` or else ``[N, H, W, C]``."""
    if spec.dtype.kind != "f" or len(spec.shape) != 4:
        return None
    f = [_fixed(d) for d in spec.shape]
    if f[1] and not (f[2] and f[3]):
        return 2, 3
    if f[3] and not f[1]:
        return 1, 2
    return None


def _channel_axis(spec: InputSpec, shape: tuple[int, ...]) -> int | None:
    """The channel axis of an input that is a picture (rank 4, float, 1/3/4 channels)."""
    if spec.dtype.kind != "f" or len(shape) != 4:
        return None
    if _fixed(spec.shape[1]) and spec.shape[1] in IMAGE_CHANNELS:
        return 1
    if _fixed(spec.shape[3]) and spec.shape[3] in IMAGE_CHANNELS:
        return 3
    return None


def candidate_shapes(inputs: Sequence[InputSpec]) -> list[dict[str, tuple[int, ...]]]:
    """Shapes to try for ``inputs``, best first (module docstring): every open dim gets a role
    (batch: axis 0 of a rank >= 2 input; height/width of an image-like input; else a length),
    one symbolic name one size; candidate ``i`` takes the ``i``-th size of each role's list
    (the last once a list runs out), and where 2-4 dims are lengths, each of them at 1 in turn;
    the old sizes (1 for axis 0, 8 elsewhere) come last."""
    roles: dict[Any, tuple[int, tuple[int, ...]]] = {}  # key -> (priority, sizes)
    order: list[tuple[str, int, Any]] = []  # (input, axis, key) of every open dim
    for spec in inputs:
        image = spatial_axes(spec)
        for k, d in enumerate(spec.shape):
            if _fixed(d):
                continue
            key = d if isinstance(d, str) else (spec.name, k)
            if image is not None and k in image:
                other = spec.shape[image[1] if k == image[0] else image[0]]
                line = k == image[1] and isinstance(other, int) and 0 < other < LINE_HEIGHT
                role = (3, LINE_WIDTHS if line else IMAGE_SIZES)
            elif k == 0 and len(spec.shape) >= 2:
                role = (2, (1,))
            else:
                role = (1, LENGTHS)
            if key not in roles or roles[key][0] < role[0]:
                roles[key] = role
            order.append((spec.name, k, key))
    legacy: dict[Any, int] = {}
    for _name, k, key in order:
        legacy.setdefault(key, 1 if k == 0 else 8)
    n = max((len(sizes) for _, sizes in roles.values()), default=1)
    lengths = [key for key, (priority, _) in roles.items() if priority == 1]
    assignments = []
    for i in range(n):
        base = {key: sizes[min(i, len(sizes) - 1)] for key, (_, sizes) in roles.items()}
        assignments.append(base)
        if 2 <= len(lengths) <= 4:  # one may be a batch in disguise (a state's [2, ?, 128])
            assignments += [{**base, key: 1} for key in lengths]
    assignments.append(legacy)
    out: list[dict[str, tuple[int, ...]]] = []
    for sizes in assignments:
        shapes = {}
        for spec in inputs:
            shapes[spec.name] = tuple(
                d
                if isinstance(d, int) and d >= 0
                else sizes[d if isinstance(d, str) else (spec.name, k)]
                for k, d in enumerate(spec.shape)
            )
        if shapes not in out:
            out.append(shapes)
    return out


def _sample(
    spec: InputSpec, shape: tuple[int, ...], rng: np.random.Generator, bound: int | None
) -> np.ndarray:
    name, dt = spec.name.lower(), spec.dtype
    if dt.kind == "f":
        channels = _channel_axis(spec, shape)
        if channels is not None:
            return strokes(shape, channels, rng).astype(dt)
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


def strokes(shape: tuple[int, ...], channel_axis: int, rng: np.random.Generator) -> np.ndarray:
    """Pictures of ``shape`` (rank 4, channels on ``channel_axis``) in [-1, 1]: lines of
    glyph-sized cells, each a few horizontal and vertical strokes, dark on light or light on
    dark, a little noise and a tint per channel — edges and text-like structure that excite a
    vision model as real pictures do, where white noise mostly does not."""
    hw = [d for a, d in enumerate(shape[1:], 1) if a != channel_axis]
    n, c, (h, w) = shape[0], shape[channel_axis], hw
    out = np.empty((n, c, h, w), np.float32)
    for b in range(n):
        bg, fg = rng.uniform(0.6, 1.0), rng.uniform(0.0, 0.4)
        if rng.random() < 0.3:
            bg, fg = fg, bg
        img = np.full((h, w), bg)
        line = h if h < LINE_HEIGHT else int(rng.integers(16, max(17, h // 3)))
        top = 0 if h < LINE_HEIGHT else int(rng.integers(0, max(1, line // 2)))
        while top < h:
            cell = max(4, int(line * rng.uniform(0.5, 0.9)))
            t, lo = max(1, cell // 10), top + line // 6
            hi = max(lo + 1, top + line - line // 6)
            for x0 in range(int(rng.integers(0, cell)), max(w - cell // 2, 1), cell):
                for _ in range(int(rng.integers(1, 5))):
                    if rng.random() < 0.5:  # horizontal stroke
                        y, a = int(rng.integers(lo, hi)), int(rng.integers(0, max(1, cell // 2)))
                        end = x0 + min(cell, a + int(rng.integers(max(1, cell // 3), cell + 1)))
                        img[y : y + t, x0 + a : end] = fg
                    else:
                        x = x0 + int(rng.integers(0, cell))
                        a = int(rng.integers(lo, max(lo + 1, (lo + hi) // 2)))
                        end = a + int(rng.integers(max(1, (hi - lo) // 2), hi - lo + 1))
                        img[a:end, x : x + t] = fg
            top += int(line * rng.uniform(1.1, 1.6))
        img += rng.normal(0.0, 0.03, (h, w))
        out[b] = np.clip(img[None] * rng.uniform(0.9, 1.1, (c, 1, 1)), 0.0, 1.0) * 2.0 - 1.0
    return out if channel_axis == 1 else np.moveaxis(out, 1, 3)


def _as_input(array: np.ndarray, spec: InputSpec) -> np.ndarray:
    if array.dtype != spec.dtype:
        if not np.can_cast(array.dtype, spec.dtype, "same_kind"):
            raise CmfError(f"input {spec.name!r} is {array.dtype}; the model wants {spec.dtype}")
        array = array.astype(spec.dtype)
    if len(spec.shape) != array.ndim or any(
        isinstance(d, int) and d >= 0 and d != n
        for d, n in zip(spec.shape, array.shape, strict=True)
    ):
        shown = ["?" if not isinstance(d, int) else d for d in spec.shape]
        raise CmfError(
            f"input {spec.name!r} has shape {list(array.shape)}; the model wants {shown}"
        )
    return np.ascontiguousarray(array)


def _input_spec(v: onnx.ValueInfoProto) -> InputSpec:
    t = v.type.tensor_type
    if not v.type.HasField("tensor_type"):
        raise CmfError(
            f"input {v.name!r} is not a tensor (sequences, maps and optionals are not supported)"
        )
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type))
    except Exception:
        raise CmfError(f"input {v.name!r} has an unsupported element type {t.elem_type}") from None
    shape: tuple[int | str | None, ...] = tuple(
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim
    )
    return InputSpec(v.name, dtype, shape)


_PASS_INDICES = {
    "Cast",
    "Reshape",
    "Unsqueeze",
    "Squeeze",
    "Flatten",
    "Identity",
    "Transpose",
    "Expand",
    "Clip",
}  # ids keep their values through these (first input)


def _gather_bounds(model: ModelProto) -> dict[str, int]:
    """Graph input -> size of the table it indexes, for inputs used (directly or through
    Cast/Reshape/Unsqueeze/...) as Gather indices of an initializer or Constant (token ids
    into an embedding table)."""
    sizes = {t.name: list(t.dims) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and len(node.output) == 1:
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                sizes[node.output[0]] = list(value.dims)
    producer = {o: node for node in model.graph.node for o in node.output}
    out: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[0] in sizes:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            dims = sizes[node.input[0]]
            if not dims or not -len(dims) <= axis < len(dims):
                continue
            bound, name = int(dims[axis]), node.input[1]
            for _ in range(16):  # back through ops that pass the ids on unchanged
                p = producer.get(name)
                if p is None or p.op_type not in _PASS_INDICES or not p.input:
                    break
                name = p.input[0]
            out[name] = min(out.get(name, bound), bound)
    return out


def _compared_values(model: ModelProto) -> dict[str, list[int]]:
    """Graph input -> the integer constants it is tested against with Equal (directly or through
    Cast/Reshape/...): a sample rate, a mode switch. Generated inputs take one of these values."""
    from onnx import numpy_helper

    consts: dict[str, np.ndarray] = {}
    ints = (TensorProto.INT64, TensorProto.INT32)
    for t in model.graph.initializer:
        if len(t.dims) <= 1 and t.data_type in ints:
            consts[t.name] = numpy_helper.to_array(t)
    for node in model.graph.node:
        if node.op_type != "Constant" or len(node.output) != 1:
            continue
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        if value is not None and len(value.dims) <= 1 and value.data_type in ints:
            consts[node.output[0]] = numpy_helper.to_array(value)
    producer = {o: node for node in model.graph.node for o in node.output}
    out: dict[str, list[int]] = {}
    for node in model.graph.node:
        if node.op_type != "Equal" or len(node.input) != 2:
            continue
        for x, c in (node.input, node.input[::-1]):
            if c not in consts or consts[c].size != 1:
                continue
            for _ in range(8):
                p = producer.get(x)
                if p is None or p.op_type not in _PASS_INDICES or not p.input:
                    break
                x = p.input[0]
            v = int(consts[c].reshape(-1)[0])
            if v not in out.setdefault(x, []):
                out[x].append(v)
    return out


WEIGHT_OPS = {"MatMul", "Gemm", "Conv", "ConvTranspose", "Einsum"}
# elementwise and shape ops between a last weighted layer and a graph output
OUTPUT_PASS = {
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Softmax",
    "LogSoftmax",
    "Sigmoid",
    "Tanh",
    "Relu",
    "LeakyRelu",
    "Clip",
    "HardSigmoid",
    "HardSwish",
    "Gelu",
    "Erf",
    "Reshape",
    "Transpose",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Identity",
    "Cast",
    "BatchNormalization",
    "Resize",
    "Upsample",
    "Concat",
    "Split",
    "Slice",
    "Pad",
    "ReduceMean",
    "GlobalAveragePool",
    "AveragePool",
    "Dropout",
    "Neg",
    "Exp",
    "Log",
    "Abs",
    "Pow",
    "Sqrt",
    "Max",
    "Min",
}
_WEIGHT_PASS = {
    "Transpose",
    "Cast",
    "Reshape",
    "Identity",
    "Unsqueeze",
    "Squeeze",
    "DequantizeLinear",
}


def output_weights(model: ModelProto, tensors: Iterable[str]) -> set[str]:
    """The tensors among ``tensors`` (initializer or Constant names) that feed a graph output
    directly: inputs of a MatMul/Gemm/Conv/ConvTranspose/Einsum whose result reaches an output
    through elementwise and shape ops only (``OUTPUT_PASS``) — a final classifier, a detector's
    last convolution, their biases."""
    names = set(tensors)
    producer = {o: node for node in model.graph.node for o in node.output}
    found: set[str] = set()
    seen: set[str] = set()
    todo = [o.name for o in model.graph.output]
    while todo:
        value = todo.pop()
        if value in seen:
            continue
        seen.add(value)
        node = producer.get(value)
        if node is None:
            continue
        if node.op_type in WEIGHT_OPS or node.op_type in OUTPUT_PASS:
            for x in node.input:
                for _ in range(8):  # a weight may arrive transposed, cast or dequantized
                    if x in names:
                        found.add(x)
                        break
                    p = producer.get(x)
                    if p is None or p.op_type not in _WEIGHT_PASS or not p.input:
                        break
                    x = p.input[0]
            if node.op_type in OUTPUT_PASS:
                todo.extend(x for x in node.input if x and x not in names)
    return found


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
