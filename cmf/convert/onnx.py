"""ONNX in and out: every weight out of the graph into cmf tensors, the graph kept as a skeleton.

``OnnxSource(path)`` finds weights wherever ONNX keeps them: graph initializers, sparse
initializers (values and indices), tensor attributes of any node (``Constant`` ``value`` and
``sparse_value``, ``ConstantOfShape`` ...), ``Constant`` ``value_floats`` / ``value_ints`` lists,
the same inside the subgraphs of ``If`` / ``Loop`` / ``Scan`` (any attribute of type GRAPH or
GRAPHS, at any depth) and inside model-local functions, with their data inline (``raw_data`` or
typed fields) or in external data files. Initializers are always extracted; attribute tensors
and lists only from ``min_constant_bytes`` up (scalars and tiny shape constants stay in the graph).

Each extracted weight is replaced in the graph by a *marker*: the same TensorProto (name, dims,
data_type, doc_string kept) with no data and one ``external_data`` entry
``{"cmf.tensor": <cmf tensor name>}`` while ``data_location`` stays DEFAULT (so no ONNX loader
ever resolves the marker as a file). For a ``value_floats`` / ``value_ints`` list the list is
emptied and the marker sits in the attribute's ``t`` field. The graph with markers is the
attachment ``model.onnx.skeleton`` (a serialized ModelProto). Tensors of dtypes cmf does not
store (string, complex, 4-bit, fnuz fp8 ...) stay in the skeleton, inline.

cmf tensor names: a main-graph initializer keeps its name; a main-graph ``Constant`` is named
after its output; another node attribute is ``<node>.<attribute>`` where ``<node>`` is the
node's name if it is unique in its graph, else ``<op_type>_<index>``; a sparse tensor gives
``<name>.values`` and ``<name>.indices``; a list attribute ``<constant>.value_floats``; inside a
subgraph every name is prefixed by ``<node>.<attribute>/`` (``[k]/`` added for GRAPHS), inside a
function by ``<domain>:<function>/``. A clash gets ``#2``, ``#3`` ...; an empty, over-long or
NUL-holding name becomes ``onnx.tensor.<k>``: names are unique and depend only on the model.
Metadata: ``cmf.source_format`` = ``"onnx"``, ``onnx.skeleton`` (the attachment's name),
``onnx.ir_version``, ``onnx.opset_import`` (domain -> version), ``onnx.producer``.

External data is read by cmf, never by ``onnx.load``: relative locations only, no ``..``, no
symlinked file or directory component (opened with ``O_NOFOLLOW`` relative to the model's
directory), a regular file, decimal offset and length inside it, length equal to dims x itemsize.

``write_onnx(cmf_file, path)`` rebuilds the model (data as ``raw_data``), checks it with
``onnx.checker`` and writes it atomically; past ``external_data_threshold`` bytes of tensors, the
main graph's initializers of 1 KiB and more go to a sidecar ``<output name>.data``.
"""

from __future__ import annotations

import errno
import math
import os
import re
import shutil
import stat
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ml_dtypes
import numpy as np
import onnx
from onnx import AttributeProto, ModelProto, TensorProto

from ..atomic import AtomicFile, _fsync_dir, _umask
from ..errors import CmfError

if TYPE_CHECKING:
    from ..reader import CmfFile

SKELETON = "model.onnx.skeleton"
MARKER_KEY = "cmf.tensor"
MIN_CONSTANT_BYTES = 64
EXTERNAL_DATA_THRESHOLD = 1 << 30
EXTERNAL_MIN_TENSOR_BYTES = 1024
MAX_PROTOBUF = (1 << 31) - 1
MAX_NAME_BYTES = 1024

T = TensorProto
# ONNX data type -> numpy dtype of the cmf dtype that stores it (spec/format.md §4)
NUMPY = {
    T.FLOAT: np.dtype("<f4"),
    T.DOUBLE: np.dtype("<f8"),
    T.FLOAT16: np.dtype("<f2"),
    T.BFLOAT16: np.dtype(ml_dtypes.bfloat16),
    T.FLOAT8E4M3FN: np.dtype(ml_dtypes.float8_e4m3fn),
    T.FLOAT8E5M2: np.dtype(ml_dtypes.float8_e5m2),
    T.INT8: np.dtype("i1"),
    T.INT16: np.dtype("<i2"),
    T.INT32: np.dtype("<i4"),
    T.INT64: np.dtype("<i8"),
    T.UINT8: np.dtype("u1"),
    T.UINT16: np.dtype("<u2"),
    T.UINT32: np.dtype("<u4"),
    T.UINT64: np.dtype("<u8"),
    T.BOOL: np.dtype("?"),
}
# bits per element of the types cmf leaves in the graph, for reading their external data
_OTHER_BITS = {
    T.COMPLEX64: 64,
    T.COMPLEX128: 128,
    T.FLOAT8E4M3FNUZ: 8,
    T.FLOAT8E5M2FNUZ: 8,
    **{
        getattr(T, n): b
        for n, b in [
            ("UINT4", 4),
            ("INT4", 4),
            ("FLOAT4E2M1", 4),
            ("FLOAT8E8M0", 8),
            ("UINT2", 2),
            ("INT2", 2),
        ]
        if hasattr(T, n)
    },
}
# typed field holding each type's values when raw_data is not used (protobuf TensorProto doc)
_FIELD = {
    T.FLOAT: "float_data",
    T.DOUBLE: "double_data",
    T.INT64: "int64_data",
    T.UINT32: "uint64_data",
    T.UINT64: "uint64_data",
}
_BITS_IN_INT32 = {
    T.FLOAT16: np.uint16,
    T.BFLOAT16: np.uint16,
    T.FLOAT8E4M3FN: np.uint8,
    T.FLOAT8E5M2: np.uint8,
}
_LISTS = {
    "value_floats": (AttributeProto.FLOATS, T.FLOAT),
    "value_ints": (AttributeProto.INTS, T.INT64),
}
_NUMBER = re.compile(r"[0-9]{1,19}")
A = AttributeProto
_FIELD_KIND = {
    "t": A.TENSOR,
    "tensors": A.TENSORS,
    "sparse_tensor": A.SPARSE_TENSOR,  # IR < 3: no type
    "sparse_tensors": A.SPARSE_TENSORS,
    "g": A.GRAPH,
    "graphs": A.GRAPHS,
    "floats": A.FLOATS,
    "ints": A.INTS,
}


def _type_name(data_type: int) -> str:
    try:
        return T.DataType.Name(data_type)
    except ValueError:
        return f"type {data_type}"


# -- walking a model: every place a weight can be ---------------------------------------------
@dataclass
class Slot:
    """One place that holds a tensor: ``tensor`` (a TensorProto inside the model), or the list
    attribute ``attr`` (value_floats / value_ints) when ``attr`` is set."""

    name: str
    tensor: TensorProto | None
    attr: AttributeProto | None
    always: bool  # an initializer: extracted whatever its size
    top: bool = False  # a dense initializer of the main graph (may go to external data)


def _node_ids(nodes: Any) -> list[str]:
    counts = Counter(n.name for n in nodes)
    return [
        n.name if n.name and counts[n.name] == 1 else f"{n.op_type}_{i}"
        for i, n in enumerate(nodes)
    ]


def _sparse(sp: Any, base: str, always: bool) -> Iterator[Slot]:
    yield Slot(f"{base}.values", sp.values, None, always)
    yield Slot(f"{base}.indices", sp.indices, None, always)


def _graph_slots(graph: onnx.GraphProto, prefix: str, depth: int = 0) -> Iterator[Slot]:
    if depth > 64:
        raise CmfError("ONNX subgraphs nested more than 64 deep")
    for init in graph.initializer:
        yield Slot(prefix + init.name, init, None, True, depth == 0)
    for sp in graph.sparse_initializer:
        yield from _sparse(sp, prefix + (sp.values.name or "sparse_initializer"), True)
    yield from _node_slots(graph.node, prefix, depth)


def _node_slots(nodes: Any, prefix: str, depth: int) -> Iterator[Slot]:
    for node, nid in zip(nodes, _node_ids(nodes), strict=True):
        constant = (
            node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.output) == 1
        )
        base = prefix + (node.output[0] if constant and node.output[0] else nid)
        for a in node.attribute:
            where = base if constant else f"{base}.{a.name}"
            kind = a.type or _FIELD_KIND.get(
                next((f.name for f, _ in a.ListFields() if f.name in _FIELD_KIND), "")
            )
            if kind == AttributeProto.TENSOR:
                yield Slot(where, a.t, None, False)
            elif kind == AttributeProto.TENSORS:
                for k, t in enumerate(a.tensors):
                    yield Slot(f"{prefix}{nid}.{a.name}[{k}]", t, None, False)
            elif kind == AttributeProto.SPARSE_TENSOR:
                yield from _sparse(a.sparse_tensor, where, False)
            elif kind == AttributeProto.SPARSE_TENSORS:
                for k, sp in enumerate(a.sparse_tensors):
                    yield from _sparse(sp, f"{prefix}{nid}.{a.name}[{k}]", False)
            elif constant and a.name in _LISTS and kind == _LISTS[a.name][0]:
                yield Slot(f"{base}.{a.name}", None, a, False)
            elif kind == AttributeProto.GRAPH:
                yield from _graph_slots(a.g, f"{prefix}{nid}.{a.name}/", depth + 1)
            elif kind == AttributeProto.GRAPHS:
                for k, g in enumerate(a.graphs):
                    yield from _graph_slots(g, f"{prefix}{nid}.{a.name}[{k}]/", depth + 1)


def model_slots(model: ModelProto) -> Iterator[Slot]:
    """Every tensor-holding place of ``model``, in a fixed order (main graph, then functions)."""
    yield from _graph_slots(model.graph, "")
    for f in model.functions:
        yield from _node_slots(f.node, f"{f.domain}:{f.name}/", 1)


# -- tensors: size, inline decoding, external data --------------------------------------------
def _numel(t: TensorProto, what: str) -> int:
    if any(d < 0 for d in t.dims):
        raise CmfError(f"{what}: inconsistent shape, negative dimension in {list(t.dims)}")
    if math.prod(int(d) for d in t.dims if d) > 1 << 59:  # numpy refuses such a shape, even empty
        raise CmfError(
            f"{what}: inconsistent shape, dims {list(t.dims)} are too large for an array"
        )
    return math.prod(int(d) for d in t.dims)


@dataclass(frozen=True)
class External:
    """A checked reference to external data: ``location`` under ``base``, ``length`` bytes at
    ``offset``."""

    base: str
    location: str
    offset: int
    length: int


def _check_location(location: str, what: str) -> list[str]:
    if not location:
        raise CmfError(f"{what}: external data has no location")
    if "\x00" in location or "\\" in location:
        raise CmfError(f"{what}: external data location {location!r} has a NUL or a backslash")
    if location.startswith("/") or re.match(r"^[A-Za-z]:", location):
        raise CmfError(
            f"{what}: external data location {location!r} is absolute; only paths "
            "relative to the model's directory are read"
        )
    parts = [p for p in location.split("/") if p not in ("", ".")]
    if ".." in parts or not parts:
        raise CmfError(f"{what}: external data location {location!r} leaves the model's directory")
    return parts


def _open_external(base: str, location: str, what: str) -> int:
    """An fd for ``location`` under directory ``base``: no symlink anywhere, a regular file."""
    parts = _check_location(location, what)
    try:
        dir_fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise CmfError(
            f"{what}: cannot open the model's directory {base}: {exc.strerror}"
        ) from None
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            sub = "/".join(parts[: i + 1])
            try:
                st = os.lstat(part, dir_fd=dir_fd)
            except OSError as exc:
                raise CmfError(
                    f"{what}: external data file {location!r}: {sub}: {exc.strerror}"
                ) from None
            if stat.S_ISLNK(st.st_mode):
                raise CmfError(f"{what}: external data {location!r}: {sub} is a symlink (refused)")
            flags = os.O_RDONLY | os.O_NOFOLLOW | (os.O_NONBLOCK if last else os.O_DIRECTORY)
            try:
                fd = os.open(part, flags, dir_fd=dir_fd)
            except OSError as exc:
                why = "is a symlink (refused)" if exc.errno == errno.ELOOP else exc.strerror
                raise CmfError(f"{what}: external data {location!r}: {sub} {why}") from None
            os.close(dir_fd)
            dir_fd = fd
        if not stat.S_ISREG(os.fstat(dir_fd).st_mode):
            raise CmfError(f"{what}: external data {location!r} is not a regular file")
        fd, dir_fd = dir_fd, -1
        return fd
    finally:
        if dir_fd >= 0:
            os.close(dir_fd)


def _external(t: TensorProto, base: str, nbytes: int | None, what: str) -> External:
    entries: dict[str, str] = {}
    for e in t.external_data:
        if e.key in entries or e.key not in ("location", "offset", "length", "checksum"):
            raise CmfError(
                f"{what}: {'duplicate' if e.key in entries else 'unknown'} external "
                f"data key {e.key!r}"
            )
        entries[e.key] = e.value
    location = entries.get("location", "")
    offset_text = entries.get("offset", "0")
    if not _NUMBER.fullmatch(offset_text):
        raise CmfError(f"{what}: external data offset {offset_text!r} is not a decimal number")
    offset = int(offset_text)
    fd = _open_external(base, location, what)
    try:
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    if offset > size:
        raise CmfError(
            f"{what}: external data offset {offset} is past the end of {location!r} ({size} bytes)"
        )
    length_text = entries.get("length")
    if length_text is None:
        length = size - offset
    elif not _NUMBER.fullmatch(length_text):
        raise CmfError(f"{what}: external data length {length_text!r} is not a decimal number")
    else:
        length = int(length_text)
    if offset + length > size:
        raise CmfError(
            f"{what}: external data [{offset}, {offset + length}) is outside "
            f"{location!r} ({size} bytes; truncated?)"
        )
    if nbytes is not None and length != nbytes:
        raise CmfError(
            f"{what}: inconsistent shapes: external data has {length} bytes, dims "
            f"{list(t.dims)} of {_type_name(t.data_type)} need {nbytes}"
        )
    return External(base, location, offset, length)


def read_external(ref: External, what: str) -> bytes:
    """The bytes ``ref`` points to, read with the same checks as when it was opened."""
    fd = _open_external(ref.base, ref.location, what)
    try:
        if os.fstat(fd).st_size < ref.offset + ref.length:
            raise CmfError(f"{what}: external data {ref.location!r} is truncated")
        chunks, done = [], 0
        while done < ref.length:
            chunk = os.pread(fd, min(ref.length - done, 1 << 26), ref.offset + done)
            if not chunk:
                raise CmfError(f"{what}: external data {ref.location!r} is truncated")
            chunks.append(chunk)
            done += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _nbytes(t: TensorProto, numel: int) -> int | None:
    if t.data_type in NUMPY:
        return numel * NUMPY[t.data_type].itemsize
    bits = _OTHER_BITS.get(t.data_type)
    return None if bits is None else (numel * bits + 7) // 8


def _from_bytes(data: bytes, t: TensorProto, what: str) -> np.ndarray:
    dtype = NUMPY[t.data_type]
    numel = _numel(t, what)
    if len(data) != numel * dtype.itemsize:
        raise CmfError(
            f"{what}: inconsistent shapes: {len(data)} bytes of data, dims "
            f"{list(t.dims)} of {_type_name(t.data_type)} need {numel * dtype.itemsize}"
        )
    array = np.frombuffer(data, dtype=dtype).reshape(tuple(int(d) for d in t.dims))
    if dtype == np.bool_ and numel and np.frombuffer(data, np.uint8).max() > 1:
        raise CmfError(f"{what}: bool data holds a byte other than 0 or 1")
    return array


def _from_fields(t: TensorProto, what: str) -> np.ndarray:
    """Values kept in the typed repeated fields (float_data, int32_data, ...)."""
    dtype = NUMPY[t.data_type]
    values = np.asarray(getattr(t, _FIELD.get(t.data_type, "int32_data")))
    numel = _numel(t, what)
    if values.size != numel:
        raise CmfError(
            f"{what}: inconsistent shapes: {values.size} values, dims {list(t.dims)} hold {numel}"
        )
    bits = _BITS_IN_INT32.get(t.data_type)
    target = np.dtype(bits) if bits else dtype
    if values.size and target.kind in "iub":
        wide = values.astype(np.int64) if values.dtype.kind != "u" else values
        lo, hi = (0, 1) if target.kind == "b" else (np.iinfo(target).min, np.iinfo(target).max)
        if wide.min() < lo or wide.max() > hi:
            raise CmfError(f"{what}: a value is outside the range of {_type_name(t.data_type)}")
    array = values.astype(target)
    if bits:
        array = array.view(dtype)
    return array.reshape(tuple(int(d) for d in t.dims))


def _is_marker(t: TensorProto) -> bool:
    return any(e.key == MARKER_KEY for e in t.external_data)


def _clear_data(t: TensorProto) -> None:
    for field in (
        "raw_data",
        "float_data",
        "int32_data",
        "string_data",
        "int64_data",
        "double_data",
        "uint64_data",
        "external_data",
        "segment",
        "data_location",
    ):
        t.ClearField(field)


def _mark(t: TensorProto, name: str) -> None:
    _clear_data(t)
    e = t.external_data.add()
    e.key, e.value = MARKER_KEY, name


# -- ONNX -> cmf ---------------------------------------------------------------------------------
def load_model_proto(path: str) -> ModelProto:
    """Parse an ONNX file (no external data); CmfError for anything that is not a model."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise CmfError(f"cannot open {path}: {exc.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise CmfError(f"{path} is not a regular file")
    with os.fdopen(fd, "rb") as fh:
        if st.st_size > MAX_PROTOBUF:
            raise CmfError(
                f"{path}: {st.st_size} bytes is over protobuf's 2 GiB limit; not an ONNX file"
            )
        data = fh.read()
    model = ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # protobuf's DecodeError (upb raises its own type)
        raise CmfError(
            f"{path}: not an ONNX model, or truncated ({type(exc).__name__}: {exc})"
        ) from None
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise CmfError(f"{path}: not an ONNX model (no ir_version or no graph)")
    check_strings(model, path)
    return model


_OTHER, _MESSAGE, _STRING = 0, 1, 2
_FIELD_KINDS: dict[Any, tuple[int, bool]] = {}  # descriptor -> (kind, repeated); onnx.proto's few
_STR = {str}


def _field_kind(f: Any) -> tuple[int, bool]:
    kind = _FIELD_KINDS.get(f)
    if kind is None:
        repeated = getattr(f, "is_repeated", None)
        if repeated is None:  # protobuf < 5.28
            repeated = f.label == f.LABEL_REPEATED
        elif callable(repeated):
            repeated = repeated()
        what = (
            _MESSAGE if f.type == f.TYPE_MESSAGE else _STRING if f.type == f.TYPE_STRING else _OTHER
        )
        kind = _FIELD_KINDS[f] = (what, bool(repeated))
    return kind


def check_strings(message: Any, what: str) -> None:
    """CmfError if a string field anywhere in ``message`` is not valid UTF-8: protobuf (proto2,
    as onnx.proto) then hands out ``bytes`` where every other string is ``str``."""
    stack = [message]
    while stack:
        for f, value in stack.pop().ListFields():
            kind, repeated = _field_kind(f)
            if kind == _MESSAGE:
                if repeated:
                    stack.extend(value)
                else:
                    stack.append(value)
            elif kind == _STRING and not (
                set(map(type, value)) <= _STR if repeated else type(value) is str
            ):
                raise CmfError(f"{what}: not a valid ONNX model: {f.full_name} is not UTF-8 text")


class OnnxSource:
    """An ONNX model opened for packing (see module docstring)."""

    def __init__(
        self, path: str | os.PathLike, *, min_constant_bytes: int = MIN_CONSTANT_BYTES
    ) -> None:
        self.path = os.fspath(path)
        base = os.path.dirname(os.path.abspath(self.path))
        self._model = load_model_proto(self.path)  # keeps the weights; items() reads them from it
        skeleton = ModelProto()
        skeleton.CopyFrom(self._model)  # loses its weights as they are found
        self._plan: list[tuple[str, TensorProto | External | np.ndarray, TensorProto | None]] = []
        used: set[str] = set()
        for slot, skel in zip(model_slots(self._model), model_slots(skeleton), strict=True):
            self._take(slot, skel, base, min_constant_bytes, used)
        m = self._model
        self.metadata: dict[str, Any] = {
            "cmf.source_format": "onnx",
            "onnx.skeleton": SKELETON,
            "onnx.ir_version": int(m.ir_version),
            "onnx.opset_import": {o.domain or "ai.onnx": int(o.version) for o in m.opset_import},
            "onnx.producer": f"{m.producer_name} {m.producer_version}".strip(),
        }
        self.attachments: dict[str, bytes] = {SKELETON: skeleton.SerializeToString()}

    def _unique(self, name: str, used: set[str]) -> str:
        if not name or "\x00" in name or len(name.encode("utf-8", "replace")) > MAX_NAME_BYTES - 16:
            name = f"onnx.tensor.{len(self._plan)}"
        candidate, k = name, 1
        while candidate in used:
            k += 1
            candidate = f"{name}#{k}"
        used.add(candidate)
        return candidate

    def _take(self, slot: Slot, skel: Slot, base: str, min_bytes: int, used: set[str]) -> None:
        """Plan to extract ``slot`` (of the model) and put a marker at ``skel`` (its place in
        the skeleton), or leave it in the skeleton."""
        if slot.attr is not None:  # value_floats / value_ints
            a = skel.attr
            data_type = _LISTS[a.name][1]
            values = a.floats if data_type == T.FLOAT else a.ints
            if len(values) * NUMPY[data_type].itemsize < min_bytes:
                return
            name = self._unique(slot.name, used)
            self._plan.append((name, np.asarray(values, dtype=NUMPY[data_type]), None))
            marker = TensorProto(name=a.name, data_type=data_type, dims=[len(values)])
            _mark(marker, name)
            a.ClearField("floats" if data_type == T.FLOAT else "ints")
            a.type = _LISTS[a.name][0]  # the marker in ``t`` must not make it look like a TENSOR
            a.t.CopyFrom(marker)
            return
        t = slot.tensor
        what = f"{self.path}: tensor {slot.name!r}"
        numel = _numel(t, what)
        nbytes = _nbytes(t, numel)
        external = t.data_location == T.EXTERNAL
        if _is_marker(t):
            raise CmfError(f"{what}: external data key {MARKER_KEY!r} is reserved for cmf")
        if t.data_type not in NUMPY or (not slot.always and (nbytes or 0) < min_bytes):
            if not external:  # stays in the graph; stray entries (ONNX ignores them) go
                skel.tensor.ClearField("external_data")
            elif nbytes is None:
                raise CmfError(
                    f"{what}: unsupported dtype {_type_name(t.data_type)} with external data"
                )
            else:  # bring its data inline so the skeleton stands alone
                data = read_external(_external(t, base, nbytes, what), what)
                _clear_data(skel.tensor)
                skel.tensor.raw_data = data
            return
        if external:
            source: TensorProto | External = _external(t, base, nbytes, what)
        else:
            source = t
            self._decode_inline(t, what)  # fail early on inconsistent data
        name = self._unique(slot.name, used)
        self._plan.append((name, source, t))
        _mark(skel.tensor, name)

    @staticmethod
    def _decode_inline(t: TensorProto, what: str) -> np.ndarray:
        if t.HasField("raw_data"):
            return _from_bytes(t.raw_data, t, what)
        return _from_fields(t, what)

    def __len__(self) -> int:
        return len(self._plan)

    def names(self) -> list[str]:
        return [name for name, _, _ in self._plan]

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        for name, source, proto in self._plan:
            what = f"{self.path}: tensor {name!r}"
            if isinstance(source, np.ndarray):
                yield name, source
            elif isinstance(source, External):
                yield name, _from_bytes(read_external(source, what), proto, what)
            else:
                yield name, self._decode_inline(source, what)


# -- cmf -> ONNX ---------------------------------------------------------------------------------
def _skeleton(cmf_file: CmfFile) -> ModelProto:
    if SKELETON not in cmf_file.attachments():
        raise CmfError(
            f"{cmf_file.path} has no ONNX graph (attachment {SKELETON!r}): it was not "
            "packed from an ONNX model; unpack it to .safetensors instead"
        )
    model = ModelProto()
    try:
        model.ParseFromString(cmf_file.get_attachment(SKELETON))
    except Exception as exc:
        raise CmfError(f"attachment {SKELETON!r} is not a serialized ONNX model ({exc})") from None
    if not model.HasField("graph"):
        raise CmfError(f"attachment {SKELETON!r} is not an ONNX model (no graph)")
    check_strings(model, f"attachment {SKELETON!r}")
    return model


def _markers(model: ModelProto) -> list[tuple[str, TensorProto, AttributeProto | None, bool]]:
    """(cmf name, marker, list attribute or None, main-graph initializer?) for every marker;
    CmfError for any external data reference that is not a marker (a skeleton must not point at
    files)."""
    found = []
    for slot in model_slots(model):
        if slot.attr is not None:
            a = slot.attr
            if a.HasField("t"):
                if not _is_marker(a.t):
                    raise CmfError(f"attribute {slot.name!r} holds both a list and a tensor")
                found.append((_marker_name(a.t), a.t, a, False))
            continue
        t = slot.tensor
        if _is_marker(t):
            found.append((_marker_name(t), t, None, slot.top))
        elif t.data_location == T.EXTERNAL or len(t.external_data):
            raise CmfError(f"tensor {slot.name!r} in {SKELETON} refers to external data")
    return found


def _marker_name(t: TensorProto) -> str:
    entries = {e.key: e.value for e in t.external_data}
    if len(t.external_data) != 1 or t.data_location != T.DEFAULT:
        raise CmfError(
            f"marker for {entries.get(MARKER_KEY)!r} in {SKELETON} has other external data"
        )
    return entries[MARKER_KEY]


def _check_spec(name: str, marker: TensorProto, spec: Any) -> None:
    want = NUMPY.get(marker.data_type)
    if want is None:
        raise CmfError(
            f"tensor {name!r}: unsupported dtype {_type_name(marker.data_type)} in {SKELETON}"
        )
    if spec.dtype.numpy != want:
        raise CmfError(
            f"tensor {name!r} is {spec.dtype.name}; the graph wants {_type_name(marker.data_type)}"
        )
    if tuple(int(d) for d in marker.dims) != tuple(spec.shape):
        raise CmfError(
            f"tensor {name!r} has shape {list(spec.shape)}; the graph wants {list(marker.dims)}"
        )


def _fill(marker: TensorProto, attr: AttributeProto | None, array: np.ndarray) -> None:
    if attr is not None:
        attr.ClearField("t")
        (attr.floats if attr.type == AttributeProto.FLOATS else attr.ints).extend(array.tolist())
        return
    _clear_data(marker)
    marker.raw_data = np.ascontiguousarray(array).reshape(-1).view(np.uint8).tobytes()


def write_onnx(
    cmf_file: CmfFile,
    path: str | os.PathLike,
    external_data_threshold: int | None = EXTERNAL_DATA_THRESHOLD,
) -> list[str]:
    """Rebuild the ONNX model packed in ``cmf_file`` (a CmfFile) at ``path``; returns the files
    written (the model, then the sidecar ``<name>.data`` if tensors went to external data).

    External data is used when the tensors total more than ``external_data_threshold`` bytes
    (``0``: always; ``None``: never), for main-graph initializers of at least 1 KiB.
    """
    path = os.path.abspath(os.fspath(path))
    model = _skeleton(cmf_file)
    markers = _markers(model)
    specs = {}
    for name, marker, _, _ in markers:
        specs[name] = cmf_file.spec(name)  # CmfError if the file has no such tensor
        _check_spec(name, marker, specs[name])
    total = sum(s.nbytes for s in specs.values())
    outside: set[int] = set()  # indices of the markers whose data goes to the sidecar
    if external_data_threshold is not None and total > external_data_threshold:
        outside = {
            i
            for i, (n, _, _, top) in enumerate(markers)
            if top and specs[n].nbytes >= EXTERNAL_MIN_TENSOR_BYTES
        }
    if not outside:
        for name, marker, attr, _ in markers:
            _fill(marker, attr, cmf_file.get_tensor(name))
        check_rebuilt(model, "write it with external data")
        with AtomicFile(path) as out:
            out.file.write(model.SerializeToString())
        return [path]
    return _write_with_sidecar(cmf_file, model, markers, outside, path)


def check_rebuilt(model: Any, too_big: str) -> None:
    """CmfError unless the rebuilt ``model`` fits in one protobuf (``too_big`` says what to do
    instead) and passes onnx.checker."""
    if model.ByteSize() > MAX_PROTOBUF:
        raise CmfError(
            f"the rebuilt model is {model.ByteSize()} bytes, over protobuf's 2 GiB limit; {too_big}"
        )
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise CmfError(f"the rebuilt model fails onnx.checker: {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _write_with_sidecar(
    cmf_file: CmfFile, model: ModelProto, markers: list, outside: set[int], path: str
) -> list[str]:
    directory, base = os.path.split(path)
    data_name = base + ".data"
    if os.path.isdir(path) or os.path.isdir(os.path.join(directory, data_name)):
        raise CmfError(f"cannot write {path} and {data_name}: a directory is in the way")
    try:
        staging = tempfile.mkdtemp(dir=directory, prefix=f".{base}.", suffix=".tmp")
    except OSError as exc:
        raise CmfError(f"cannot create a file in {directory}: {exc.strerror}") from None
    try:
        staged_model, staged_data = os.path.join(staging, base), os.path.join(staging, data_name)
        with open(staged_data, "wb") as fh:
            offset = 0
            for i, (name, marker, attr, _) in enumerate(markers):
                array = cmf_file.get_tensor(name)
                if i not in outside:
                    _fill(marker, attr, array)
                    continue
                align = 4096 if array.nbytes >= 1 << 20 else 64
                pad = -offset % align
                fh.write(b"\0" * pad)
                offset += pad
                fh.write(memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8)))
                _clear_data(marker)
                marker.data_location = T.EXTERNAL
                for key, value in (
                    ("location", data_name),
                    ("offset", str(offset)),
                    ("length", str(array.nbytes)),
                ):
                    e = marker.external_data.add()
                    e.key, e.value = key, value
                offset += array.nbytes
            fh.flush()
            os.fsync(fh.fileno())
        if model.ByteSize() > MAX_PROTOBUF:
            raise CmfError(
                f"the rebuilt graph is {model.ByteSize()} bytes without its initializers, "
                "over protobuf's 2 GiB limit"
            )
        with open(staged_model, "wb") as fh:
            fh.write(model.SerializeToString())
            fh.flush()
            os.fsync(fh.fileno())
        for p in (staged_model, staged_data):
            os.chmod(p, 0o666 & ~_umask())
        try:
            onnx.checker.check_model(staged_model)  # by path: external data and > 2 GiB models
        except onnx.checker.ValidationError as exc:
            raise CmfError(f"the rebuilt model fails onnx.checker: {_first_line(exc)}") from None
        final_data = os.path.join(directory, data_name)
        os.replace(staged_data, final_data)  # data first: the model appears only once it is whole
        os.replace(staged_model, path)
        _fsync_dir(directory)
        return [path, final_data]
    finally:
        shutil.rmtree(staging, ignore_errors=True)
