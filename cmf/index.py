"""The index (spec/format.md §3): parse hostile msgpack into checked objects, and back.

``parse_index`` checks everything that can be checked without reading segment bytes: types,
names, shapes, segment tiling, codec trees resolved against their specs (spec §5), references.
Problems go to a :class:`Problems` sink: a reader raises on the first, ``cmf validate``
collects them all (one per bad entry).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack

from . import dtypes
from .codecs import ArraySpec, BytesSpec, Codec, Spec, codec_from_config
from .errors import CmfError, FormatError, LimitError
from .format import ALIGN, DATA_START, align
from .limits import Limits

MAX_DIM = 1 << 53
MAX_ATTACHMENT_NAME = 4096
TOP_LEVEL_KEYS = ("segments", "shared", "tensors", "attachments", "metadata")
SHARED_MINOR = 1  # the minor version that defines shared values (spec §3.5, §8)


# ----------------------------------------------------------------------------- objects


@dataclass(frozen=True)
class Segment:
    offset: int
    length: int
    crc32c: int


@dataclass(frozen=True)
class Leaf:
    """A byte string stored as ``segments[segment]``."""

    segment: int
    spec: BytesSpec


@dataclass(frozen=True)
class CodecNode:
    codec: Codec
    parts: dict[str, Node]
    spec: Spec


@dataclass(frozen=True)
class SharedRef:
    """The value of ``shared[index]`` (spec §3.5); ``spec`` equals that value's spec."""

    index: int
    spec: ArraySpec


Node = Leaf | CodecNode | SharedRef


@dataclass(frozen=True)
class SharedEntry:
    """A shared value: an array stored once, referenced by :class:`SharedRef` nodes."""

    spec: ArraySpec
    encoding: Node  # never contains a SharedRef


@dataclass(frozen=True)
class TensorEntry:
    name: str
    spec: ArraySpec
    encoding: Node | None = None  # exactly one of encoding / alias
    alias: str | None = None
    error: dict[str, float] | None = None  # measured error of a lossy encoding (informative)


@dataclass(frozen=True)
class Attachment:
    name: str
    size: int
    encoding: Node


@dataclass
class Index:
    segments: list[Segment] = field(default_factory=list)
    shared: list[SharedEntry | None] = field(default_factory=list)  # None: failed to parse
    tensors: list[TensorEntry] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    unknown_keys: list[str] = field(default_factory=list)

    def data_end(self) -> int:
        """Where the index must start: end of the last segment, aligned."""
        if not self.segments:
            return DATA_START
        last = self.segments[-1]
        return align(last.offset + last.length)


class Problems:
    """Sink for problems: raise at once (``collect=False``) or keep a list."""

    def __init__(self, collect: bool = False) -> None:
        self.collect = collect
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def error(self, exc: CmfError) -> None:
        if not self.collect:
            raise exc
        self.errors.append(str(exc))

    def warn(self, message: str) -> None:
        self.warnings.append(message)


# ----------------------------------------------------------------------------- msgpack


class _Hooks:
    """msgpack hooks: reject duplicate/non-string keys and count containers as they are built,
    so a small index of empty maps cannot make the parser allocate without bound."""

    def __init__(self, max_objects: int) -> None:
        self.left = max_objects

    @staticmethod
    def _too_many() -> None:
        raise LimitError("index holds more maps and arrays than the reader's limit")

    def pairs(self, pairs: list[tuple[Any, Any]]) -> dict:
        self.left -= 1
        if self.left < 0:
            self._too_many()
        try:
            out = dict(pairs)
        except TypeError:  # an unhashable key (an array or a map): explained below
            out = None
        if out is None or len(out) != len(pairs) or (out and set(map(type, out)) != _STR_ONLY):
            _explain_keys(pairs)
        return out

    def array(self, items: list) -> list:
        self.left -= 1
        if self.left < 0:
            self._too_many()
        return items


_STR_ONLY = {str}


def _explain_keys(pairs: list[tuple[Any, Any]]) -> None:
    """Raise the FormatError for the first non-string or repeated key of ``pairs`` (the slow
    path of ``_Hooks.pairs``, taken only when there is one)."""
    seen: set[str] = set()
    for key, _ in pairs:
        if type(key) is not str:
            raise FormatError(f"index: map key must be a string, found {type(key).__name__}")
        if key in seen:
            raise FormatError(f"index: duplicate map key {key[:100]!r}")
        seen.add(key)
    raise FormatError("index: a map's keys are not distinct strings")  # not reached


def unpack(data: bytes | memoryview, limits: Limits) -> Any:
    """Parse msgpack bytes with every length bounded; CmfError on anything odd."""
    n = len(data)
    if n > limits.max_index_bytes:
        raise LimitError(f"index is {n} bytes, limit {limits.max_index_bytes}")
    hooks = _Hooks(limits.max_index_objects)
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=False,  # the pairs hook checks key types with a clearer message
            object_pairs_hook=hooks.pairs,
            list_hook=hooks.array,
            max_str_len=n,
            max_bin_len=n,
            max_array_len=n,
            max_map_len=n,
            max_ext_len=n,  # so that _reject_ext names the type (timestamps: _check_nesting)
            ext_hook=_reject_ext,
            timestamp=0,
        )
    except CmfError:
        raise
    except msgpack.StackError:  # msgpack's own depth cap (far above max_nesting); no message
        raise LimitError(f"index nests deeper than {limits.max_nesting} levels") from None
    except msgpack.FormatError:  # msgpack's class of that name carries no message
        raise FormatError("index is not valid msgpack: a reserved type byte (0xc1)") from None
    except Exception as exc:  # msgpack raises many types: ExtraData, ValueError...
        raise FormatError(f"index is not valid msgpack: {type(exc).__name__}: {exc}") from None
    _check_nesting(obj, limits.max_nesting)
    return obj


def _reject_ext(code: int, data: bytes) -> None:
    raise FormatError(f"index: msgpack extension type {code} is not allowed")


_SCALARS = frozenset((str, int, float, bool, bytes, type(None)))


def _check_nesting(obj: Any, limit: int) -> None:
    """LimitError if ``obj`` nests deeper than ``limit``; FormatError on a value msgpack can
    build that the index never holds (a timestamp). Walks one level at a time, looking at each
    container's set of child types rather than at each child."""
    level = [obj]
    for depth in range(1, limit + 2):
        below: list = []
        for item in level:
            kind = type(item)
            if kind is dict:
                children = item.values()
            elif kind is list:
                children = item
            elif kind in _SCALARS:
                continue
            else:
                raise FormatError(f"index: value of type {kind.__name__} is not allowed")
            if depth > limit:
                raise LimitError(f"index nests deeper than {limit} levels")
            kinds = set(map(type, children))
            if kinds.isdisjoint(_SCALARS):  # e.g. the segments: an array of arrays
                below.extend(children)
            elif not kinds <= _SCALARS:
                below.extend([child for child in children if type(child) not in _SCALARS])
        if not below:
            return
        level = below


def pack(index: Index) -> bytes:
    """Serialize ``index`` to msgpack bytes (the writer's side)."""
    obj: dict[str, Any] = {
        "segments": [[s.offset, s.length, s.crc32c] for s in index.segments],
    }
    if index.shared:
        obj["shared"] = [
            {
                "dtype": e.spec.dtype.name,
                "shape": list(e.spec.shape),
                "encoding": node_obj(e.encoding),
            }
            for e in index.shared
        ]
    obj["tensors"] = [_tensor_obj(t) for t in index.tensors]
    if index.attachments:
        obj["attachments"] = [
            {"name": a.name, "size": a.size, "encoding": node_obj(a.encoding)}
            for a in index.attachments
        ]
    if index.metadata:
        obj["metadata"] = index.metadata
    return msgpack.packb(obj, use_bin_type=True)


def _tensor_obj(t: TensorEntry) -> dict[str, Any]:
    out: dict[str, Any] = {"name": t.name, "dtype": t.spec.dtype.name, "shape": list(t.spec.shape)}
    if t.alias is not None:
        out["alias"] = t.alias
    else:
        out["encoding"] = node_obj(t.encoding)
    if t.error is not None:
        out["error"] = t.error
    return out


def node_obj(node: Node) -> dict[str, Any]:
    if isinstance(node, Leaf):
        return {"segment": node.segment}
    if isinstance(node, SharedRef):
        return {"shared": node.index}
    return {
        "codec": node.codec.name,
        "config": node.codec.to_config(),
        "parts": {name: node_obj(child) for name, child in node.parts.items()},
    }


# ----------------------------------------------------------------------------- parsing


def _map(obj: Any, what: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
    if not isinstance(obj, dict):
        raise FormatError(f"{what} must be a map, found {type(obj).__name__}")
    for key in required:
        if key not in obj:
            raise FormatError(f"{what} lacks required key {key!r}")
    for key in obj:
        if key not in required and key not in optional:
            raise FormatError(f"{what} has unknown key {key[:100]!r}")
    return obj


def _uint(value: Any, what: str, bound: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < bound:
        raise FormatError(f"{what} must be an integer in [0, {bound}), found {value!r:.100}")
    return value


def _name(value: Any, what: str, max_bytes: int) -> str:
    if not isinstance(value, str):
        raise FormatError(f"{what} must be a string, found {type(value).__name__}")
    try:
        size, surrogate = len(value.encode("utf-8")), False
    except UnicodeEncodeError:  # a writer's str that UTF-8 cannot encode
        size, surrogate = len(value.encode("utf-8", "surrogatepass")), True
    if not 1 <= size <= max_bytes:
        raise FormatError(f"{what} must be 1 to {max_bytes} bytes, found {size}")
    if "\x00" in value:
        raise FormatError(f"{what} contains a NUL character")
    if surrogate:
        raise FormatError(f"{what} contains a lone surrogate (not UTF-8)")
    return value


def check_attachment_name(value: Any) -> str:
    """A safe relative POSIX path (spec §3.3); FormatError otherwise."""
    name = _name(value, "attachment name", MAX_ATTACHMENT_NAME)
    if (
        name.startswith("/")
        or "\\" in name
        or (len(name) >= 2 and name[0].isalpha() and name[1] == ":")
    ):
        raise FormatError(f"attachment name {name[:200]!r} is not a relative POSIX path")
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise FormatError(f"attachment name {name[:200]!r} has an empty, '.' or '..' component")
    return name


def _shape(value: Any, limits: Limits) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise FormatError(f"shape must be an array, found {type(value).__name__}")
    if len(value) > limits.max_rank:
        raise LimitError(f"rank {len(value)} exceeds the limit {limits.max_rank}")
    return tuple(_uint(d, "shape dimension", MAX_DIM) for d in value)


class _TreeParser:
    """Parses encoding trees, resolving specs and counting segment and shared references.

    ``shared`` holds the parsed shared values, None for one that failed to parse (a reference
    to it is an error too) and is filled in before any tensor tree is parsed."""

    def __init__(self, segments: list[Segment], limits: Limits) -> None:
        self.segments = segments
        self.limits = limits
        self.refs = [0] * len(segments)
        self.shared: list[SharedEntry | None] = []
        self.shared_refs: list[int] = []
        # codecs and part specs already built in this index: files repeat a few configurations
        # hundreds of times (same name + config => same codec; resolve is a function of the
        # codec and the spec). Only successes are kept, so every bad node is checked anew.
        self._codecs: dict[tuple, Codec] = {}
        self._resolved: dict[tuple, dict[str, Spec]] = {}

    def _codec(self, name: Any, config: Any) -> Codec:
        try:  # value types in the key: 1, 1.0 and True are equal and hash alike
            key = (name, *((k, type(v), v) for k, v in config.items()))
            hash(key)
        except (AttributeError, TypeError):  # not a map, or an array in it: not kept
            return codec_from_config(name, config)
        codec = self._codecs.get(key)
        if codec is None:
            codec = self._codecs[key] = codec_from_config(name, config)
        return codec

    def _resolve(self, codec: Codec, spec: Spec) -> dict[str, Spec]:
        try:
            key = (codec, spec)
            hash(key)
        except TypeError:
            return codec.resolve(spec)
        part_specs = self._resolved.get(key)
        if part_specs is None:
            part_specs = self._resolved[key] = codec.resolve(spec)
        return part_specs

    def parse(
        self, obj: Any, spec: Spec, where: str, depth: int = 0, in_shared: bool = False
    ) -> Node:
        if isinstance(obj, dict) and "shared" in obj and "segment" not in obj:
            return self._shared_ref(obj, spec, where, in_shared)
        if isinstance(obj, dict) and "segment" in obj:
            _map(obj, f"{where}: leaf", ("segment",))
            i = _uint(obj["segment"], f"{where}: segment number", max(len(self.segments), 1))
            if i >= len(self.segments):
                raise FormatError(f"{where}: segment {i} does not exist")
            if not isinstance(spec, BytesSpec):
                raise FormatError(f"{where}: a segment holds bytes, {spec.describe()} expected")
            seg = self.segments[i]
            if spec.length is not None and seg.length != spec.length:
                raise FormatError(
                    f"{where}: segment {i} holds {seg.length} bytes, {spec.length} expected"
                )
            self.refs[i] += 1
            return Leaf(i, spec)
        node = _map(obj, f"{where}: node", ("codec", "config", "parts"))
        if depth >= self.limits.max_tree_depth:
            raise LimitError(f"{where}: codec tree deeper than {self.limits.max_tree_depth}")
        codec = self._codec(node["codec"], node["config"])
        part_specs = self._resolve(codec, spec)
        parts = node["parts"]
        if not isinstance(parts, dict) or set(parts) != set(part_specs):
            found = sorted(parts) if isinstance(parts, dict) else type(parts).__name__
            raise FormatError(
                f"{where}: codec {codec.name!r} has parts {found}, expected {sorted(part_specs)}"
            )
        children = {
            name: self.parse(parts[name], part_specs[name], f"{where}/{name}", depth + 1, in_shared)
            for name in part_specs
        }
        return CodecNode(codec, children, spec)

    def _shared_ref(self, obj: dict, spec: Spec, where: str, in_shared: bool) -> SharedRef:
        _map(obj, f"{where}: shared reference", ("shared",))
        if in_shared:
            raise FormatError(
                f"{where}: a shared value's encoding must not reference a shared value"
            )
        count = len(self.shared)
        i = _uint(obj["shared"], f"{where}: shared value number", 1 << 64)
        if i >= count:
            raise FormatError(f"{where}: shared value {i} does not exist ({count} in the index)")
        entry = self.shared[i]
        if entry is None:
            raise FormatError(f"{where}: shared value {i} is invalid (reported above)")
        if spec != entry.spec:
            raise FormatError(
                f"{where}: shared value {i} is {entry.spec.describe()}, {spec.describe()} expected"
            )
        self.shared_refs[i] += 1
        return SharedRef(i, entry.spec)

    def shared_values(self, obj: Any, problems: Problems) -> list[SharedEntry | None]:
        """Parse the top-level ``shared`` array (spec §3.5); bad entries go to ``problems``
        and are None in the result (only a collecting sink gets that far)."""
        if not isinstance(obj, list):
            raise FormatError(f"index 'shared' must be an array, found {type(obj).__name__}")
        if len(obj) > self.limits.max_shared:
            raise LimitError(f"{len(obj)} shared values exceed the limit {self.limits.max_shared}")
        self.shared = [None] * len(obj)
        self.shared_refs = [0] * len(obj)
        total = 0
        for i, item in enumerate(obj):
            where = f"shared value {i}"
            try:
                e = _map(item, where, ("dtype", "shape", "encoding"))
                try:
                    spec = ArraySpec(dtypes.by_name(e["dtype"]), _shape(e["shape"], self.limits))
                except CmfError as exc:
                    raise type(exc)(f"{where}: {exc}") from None
                total += spec.nbytes
                if total > self.limits.max_shared_bytes:
                    raise LimitError(
                        f"{where}: shared values decode to more than "
                        f"{self.limits.max_shared_bytes} bytes together (the reader keeps them)"
                    )
                node = self.parse(e["encoding"], spec, where, in_shared=True)
                self.shared[i] = SharedEntry(spec, node)
            except CmfError as exc:
                problems.error(exc)
        return list(self.shared)


def _segments(obj: Any, index_offset: int | None) -> list[Segment]:
    if not isinstance(obj, list):
        raise FormatError(f"index 'segments' must be an array, found {type(obj).__name__}")
    out: list[Segment] = []
    expected = DATA_START
    for i, item in enumerate(obj):
        if not isinstance(item, list) or len(item) != 3:
            raise FormatError(f"segment {i} must be [offset, length, crc32c]")
        offset, length, crc = item
        if not (  # the common case at a glance; _uint says what is wrong otherwise
            type(offset) is int
            and type(length) is int
            and type(crc) is int
            and 0 <= offset < 1 << 64
            and 0 <= length < 1 << 64
            and 0 <= crc < 1 << 32
        ):
            offset = _uint(offset, f"segment {i} offset", 1 << 64)
            length = _uint(length, f"segment {i} length", 1 << 64)
            crc = _uint(crc, f"segment {i} crc32c", 1 << 32)
        if offset != expected:
            raise FormatError(
                f"segment {i} starts at {offset}, expected {expected} "
                f"(segments must tile the data area in order, {ALIGN}-byte aligned)"
            )
        expected = align(offset + length)
        if index_offset is not None and expected > index_offset:
            raise FormatError(
                f"segment {i} ends at {offset + length}, past the index at {index_offset}"
            )
        out.append(Segment(offset, length, crc))
    if index_offset is not None and expected != index_offset:
        raise FormatError(
            f"index starts at {index_offset}, expected {expected} right after the last segment"
        )
    return out


def _metadata_value(value: Any, depth: int, max_depth: int) -> None:
    if depth > max_depth:
        raise LimitError(f"metadata nests deeper than {max_depth} levels")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise FormatError(f"metadata keys must be strings, found {type(k).__name__}")
            _metadata_value(k, depth, max_depth)
            _metadata_value(v, depth + 1, max_depth)
    elif isinstance(value, (list, tuple)):  # a writer's tuple is stored as an array
        if not _flat_values(value, depth + 1, max_depth):
            for v in value:
                _metadata_value(v, depth + 1, max_depth)
    elif isinstance(value, bytes):
        raise FormatError("metadata values must not be binary")
    elif (
        isinstance(value, int)
        and not isinstance(value, bool)
        and not -(1 << 63) <= value < (1 << 64)
    ):
        raise FormatError("metadata integer out of range")
    elif isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise FormatError("metadata strings must be valid UTF-8 (no lone surrogates)") from None
    elif not isinstance(value, (int, float, type(None))):  # bool is an int
        raise FormatError(
            f"metadata values are nil, bool, int, float, str, arrays and maps; "
            f"found {type(value).__name__}"
        )


_FLAT = frozenset((str, int, float, bool, type(None)))


def _flat_values(values: Any, depth: int, max_depth: int) -> bool:
    """Check an array of scalars in a few C-level passes (tokenizer vocabularies hold ~10^5
    strings): the same verdicts as ``_metadata_value`` on each item. False if the array holds
    anything else (then each item is checked on its own)."""
    kinds = set(map(type, values))
    if not kinds <= _FLAT:
        return False
    if values and depth > max_depth:
        raise LimitError(f"metadata nests deeper than {max_depth} levels")
    if str in kinds:
        try:  # UTF-8 refuses every surrogate, paired or not, so joining cannot hide one
            "".join(values if len(kinds) == 1 else [v for v in values if type(v) is str]).encode(
                "utf-8"
            )
        except UnicodeEncodeError:
            raise FormatError("metadata strings must be valid UTF-8 (no lone surrogates)") from None
    if int in kinds:
        ints = values if len(kinds) == 1 else [v for v in values if type(v) is int]
        if not (-(1 << 63) <= min(ints) and max(ints) < (1 << 64)):
            raise FormatError("metadata integer out of range")
    return True


def check_metadata(value: Any, max_depth: int = 8) -> dict[str, Any]:
    """Check metadata per spec §3.4 (JSON-like values, string keys, bounded depth)."""
    if not isinstance(value, dict):
        raise FormatError(f"metadata must be a map, found {type(value).__name__}")
    _metadata_value(value, 1, max_depth)
    return value


def _check_parsed_metadata(value: Any, max_depth: int) -> dict[str, Any]:
    """:func:`check_metadata` of metadata that :func:`unpack` parsed, with the same verdicts:
    its keys are strings (the pairs hook), its strings valid UTF-8 (msgpack decodes them
    strictly), its ints in [-2^63, 2^64) (all msgpack holds) and no other type survives
    :func:`unpack`, so what is left to check is binary values and the depth, one level at a
    time by each container's set of child types."""
    if not isinstance(value, dict):
        raise FormatError(f"metadata must be a map, found {type(value).__name__}")
    level, depth = [value], 1
    while level:
        below: list = []
        for item in level:
            children = item.values() if type(item) is dict else item
            if not children:
                continue
            if depth >= max_depth:  # the children would sit at depth + 1
                raise LimitError(f"metadata nests deeper than {max_depth} levels")
            kinds = set(map(type, children))
            if bytes in kinds:
                raise FormatError("metadata values must not be binary")
            if dict in kinds or list in kinds:
                below.extend(c for c in children if type(c) is dict or type(c) is list)
        level, depth = below, depth + 1
    return value


def parse_index(obj: Any, limits: Limits, index_offset: int | None, problems: Problems) -> Index:
    """Check a parsed msgpack object (as :func:`unpack` returns it) against spec §3 and build
    an :class:`Index`."""
    top = obj
    if not isinstance(top, dict):
        raise FormatError(f"index must be a map, found {type(top).__name__}")
    for key in ("segments", "tensors"):
        if key not in top:
            raise FormatError(f"index lacks required key {key!r}")
    index = Index(unknown_keys=[k for k in top if k not in TOP_LEVEL_KEYS])
    for key in index.unknown_keys:
        problems.warn(f"index has unknown top-level key {key[:100]!r} (ignored)")
    index.segments = _segments(top["segments"], index_offset)
    trees = _TreeParser(index.segments, limits)
    if "shared" in top:
        index.shared = trees.shared_values(top["shared"], problems)

    tensors = top["tensors"]
    if not isinstance(tensors, list):
        raise FormatError(f"index 'tensors' must be an array, found {type(tensors).__name__}")
    if len(tensors) > limits.max_tensors:
        raise LimitError(f"{len(tensors)} tensors exceed the limit {limits.max_tensors}")
    by_name: dict[str, TensorEntry] = {}
    for i, obj_t in enumerate(tensors):
        try:
            entry = _tensor(obj_t, i, limits, trees, by_name)
        except CmfError as exc:
            problems.error(exc)
            continue
        by_name[entry.name] = entry
        index.tensors.append(entry)

    attachments = top.get("attachments", [])
    if not isinstance(attachments, list):
        problems.error(FormatError("index 'attachments' must be an array"))
        attachments = []
    seen: set[str] = set()
    for i, obj_a in enumerate(attachments):
        try:
            a = _map(obj_a, f"attachment {i}", ("name", "size", "encoding"))
            name = check_attachment_name(a["name"])
            if name in seen:
                raise FormatError(f"duplicate attachment name {name[:200]!r}")
            size = _uint(a["size"], f"attachment {name!r} size", 1 << 64)
            if size > limits.max_attachment_bytes:
                raise LimitError(
                    f"attachment {name!r} is {size} bytes, limit {limits.max_attachment_bytes}"
                )
            node = trees.parse(a["encoding"], BytesSpec(size), f"attachment {name!r}")
        except CmfError as exc:
            problems.error(exc)
            continue
        seen.add(name)
        index.attachments.append(Attachment(name, size, node))

    try:
        index.metadata = _check_parsed_metadata(top.get("metadata", {}), limits.max_metadata_depth)
    except CmfError as exc:
        problems.error(exc)

    entries_ok = len(problems.errors) == 0  # a bad entry leaves its segments unreferenced
    for i, count in enumerate(trees.refs):
        if count > 1 or (count == 0 and entries_ok):
            state = "not referenced" if count == 0 else f"referenced {count} times"
            problems.error(FormatError(f"segment {i} is {state}; each must be used exactly once"))
    for i, count in enumerate(trees.shared_refs):
        if count == 0 and entries_ok:
            problems.error(FormatError(f"shared value {i} is not referenced; each must be used"))
    return index


def _tensor(
    obj: Any, i: int, limits: Limits, trees: _TreeParser, earlier: dict[str, TensorEntry]
) -> TensorEntry:
    t = _map(obj, f"tensor {i}", ("name", "dtype", "shape"), ("encoding", "alias", "error"))
    name = _name(t["name"], f"tensor {i} name", limits.max_name_bytes)
    where = f"tensor {name[:200]!r}"
    if name in earlier:
        raise FormatError(f"duplicate tensor name {name[:200]!r}")
    try:
        spec = ArraySpec(dtypes.by_name(t["dtype"]), _shape(t["shape"], limits))
    except CmfError as exc:  # say which tensor: validate lists many of these
        raise type(exc)(f"{where}: {exc}") from None
    if ("encoding" in t) == ("alias" in t):
        raise FormatError(f"{where} must have exactly one of 'encoding' and 'alias'")
    if "alias" in t:
        if "error" in t:
            raise FormatError(f"{where}: an alias has no encoding, so it cannot have 'error'")
        target = earlier.get(t["alias"]) if isinstance(t["alias"], str) else None
        if target is None or target.alias is not None:
            raise FormatError(f"{where}: alias must name an earlier tensor that has an encoding")
        if target.spec != spec:
            raise FormatError(
                f"{where}: alias of {target.name!r} has spec {spec.describe()}, "
                f"target has {target.spec.describe()}"
            )
        return TensorEntry(name, spec, alias=target.name)
    error = _error_stats(t["error"], where) if "error" in t else None
    return TensorEntry(name, spec, encoding=trees.parse(t["encoding"], spec, where), error=error)


def _error_stats(value: Any, where: str) -> dict[str, float] | None:
    """The optional ``error`` map: metric name -> number (informative, never used to decode)."""
    if (
        not isinstance(value, dict)
        or len(value) > 16
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values())
    ):
        raise FormatError(f"{where}: 'error' must be a map of at most 16 metric names to numbers")
    return value


def iter_leaves(node: Node) -> Iterator[Leaf]:
    """The leaves of ``node``'s own tree (not those of shared values it references)."""
    if isinstance(node, Leaf):
        yield node
    elif isinstance(node, CodecNode):
        for child in node.parts.values():
            yield from iter_leaves(child)


def tensor_nbytes(entry: TensorEntry) -> int:
    return math.prod(entry.spec.shape) * entry.spec.dtype.itemsize
