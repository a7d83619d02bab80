"""Sharded cmf models (spec/sharding.md): shards ``model-00001-of-0000N.cmf`` + a JSON shard
index ``model.cmf.index.json``, written by :class:`ShardedWriter` and read as one model by
:class:`ShardedFile` (the same API as :class:`cmf.reader.CmfFile`).

The shard index is hostile input like any file: bounded size and nesting, strict JSON (no
duplicate keys, no NaN), shard names that are plain file names (no paths, no traversal, no
symlinks), every tensor in exactly one shard, and every shard a valid cmf file.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .atomic import AtomicFile
from .codecs import ArraySpec
from .errors import CmfError, FormatError, LimitError, UnsupportedError
from .index import TensorEntry, check_metadata
from .limits import DEFAULT_LIMITS, Limits
from .pipeline import Pending
from .reader import CmfFile
from .writer import Writer, check_tensor_name

FORMAT = "cmf.shards"
VERSION = 1
INDEX_SUFFIX = ".cmf.index.json"
MAX_SHARDS = 100_000
MAX_SHARD_NAME = 255


def is_sharded(path: str | os.PathLike) -> bool:
    """True if ``path`` names a shard index (a ``.json`` file) or a directory."""
    path = os.fspath(path)
    return os.path.isdir(path) or path.lower().endswith(".json")


def index_names(directory: str | os.PathLike) -> list[str]:
    """The names of the ``*.cmf.index.json`` files in ``directory``, sorted."""
    try:
        return sorted(f for f in os.listdir(directory) if f.endswith(INDEX_SUFFIX))
    except OSError as exc:
        raise CmfError(f"cannot list {os.fspath(directory)}: {exc.strerror or exc}") from None


def index_path(path: str | os.PathLike) -> str:
    """The shard index of ``path``: itself, or the one ``*.cmf.index.json`` in a directory."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        return path
    found = index_names(path)
    if len(found) != 1:
        what = "none" if not found else ", ".join(found)
        raise FormatError(
            f"{path} is not a regular file: a directory, read as a sharded set when it holds "
            f"one *{INDEX_SUFFIX}; found {what}"
        )
    return os.path.join(path, found[0])


def set_paths(output: str | os.PathLike) -> tuple[str, str]:
    """(directory, stem) of a sharded set named by ``output``: ``dir/model.cmf``,
    ``dir/model.cmf.index.json`` or a directory (``dir/`` -> stem ``model``)."""
    output = os.fspath(output)
    if output.endswith(("/", os.sep)) or os.path.isdir(output):
        return os.path.abspath(output), "model"
    directory, base = os.path.split(os.path.abspath(output))
    for suffix in (INDEX_SUFFIX, ".cmf"):
        if base.lower().endswith(suffix) and len(base) > len(suffix):
            return directory, base[: -len(suffix)]
    return directory, base


# ----------------------------------------------------------------------------- the index


def _fail(where: str, msg: str) -> FormatError:
    return FormatError(f"{where}: {msg}")


def check_shard_name(value: Any, where: str = "shard index") -> str:
    """A plain file name ending in .cmf (spec/sharding.md §2); FormatError otherwise."""
    if not isinstance(value, str):
        raise _fail(where, f"a shard name must be a string, found {type(value).__name__}")
    shown = repr(value[:200])
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise _fail(where, f"shard name {shown} is not valid UTF-8") from None
    if not 1 <= size <= MAX_SHARD_NAME:
        raise _fail(where, f"shard name {shown} must be 1 to {MAX_SHARD_NAME} bytes")
    if "/" in value or "\\" in value or "\x00" in value:
        raise _fail(where, f"shard name {shown} must be a file name, not a path")
    if value.startswith(".") or (len(value) >= 2 and value[0].isalpha() and value[1] == ":"):
        raise _fail(where, f"shard name {shown} must not start with '.' or a drive prefix")
    if not value.endswith(".cmf"):
        raise _fail(where, f"shard name {shown} must end with '.cmf'")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise FormatError(f"duplicate key {key[:200]!r}")
        seen[key] = value
    return seen


def _bad_constant(name: str) -> Any:
    raise FormatError(f"{name} is not a JSON number")


def _depth(obj: Any, limit: int) -> None:
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            raise LimitError(f"nesting deeper than {limit}")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def read_index(
    path: str, limits: Limits = DEFAULT_LIMITS
) -> tuple[list[str], dict[str, str], dict]:
    """Parse and check a shard index: (shard names, tensor -> shard, metadata); unknown
    top-level keys are returned in metadata under ``"unknown_keys"`` (a validator warns)."""
    where = f"shard index {path}"
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise _fail(where, "is not a regular file")
        if st.st_size > limits.max_index_bytes:
            raise LimitError(
                f"{where}: {st.st_size} bytes, over the limit of {limits.max_index_bytes}"
            )
        with open(path, "rb") as fh:
            raw = fh.read(limits.max_index_bytes + 1)
    except OSError as exc:
        raise CmfError(f"cannot read {where}: {exc.strerror or exc}") from None
    if len(raw) > limits.max_index_bytes:
        raise LimitError(f"{where}: over the limit of {limits.max_index_bytes} bytes")
    try:
        text = raw.decode("utf-8")
        if text.startswith("\ufeff"):
            raise FormatError("starts with a byte order mark")
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_bad_constant)
    except UnicodeDecodeError as exc:
        raise _fail(where, f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise LimitError(f"{where}: nesting deeper than {limits.max_nesting}") from None
    except CmfError as exc:
        raise _fail(where, str(exc)) from None
    except ValueError as exc:  # json.JSONDecodeError, int conversion limits
        raise _fail(where, f"not valid JSON ({exc})") from None
    try:
        _depth(obj, limits.max_nesting)
    except CmfError as exc:
        raise type(exc)(f"{where}: {exc}") from None
    if not isinstance(obj, dict):
        raise _fail(where, f"expected a JSON object, found {type(obj).__name__}")
    if obj.get("format") != FORMAT:
        raise _fail(where, f"'format' must be {FORMAT!r}, found {str(obj.get('format'))[:100]!r}")
    version = obj.get("version")
    if type(version) is not int:
        raise _fail(where, f"'version' must be an integer, found {json.dumps(version)[:100]}")
    if version != VERSION:
        raise UnsupportedError(
            f"{where}: version {version} is not supported (this reader reads {VERSION})"
        )
    shards = obj.get("shards")
    if not isinstance(shards, list) or not 1 <= len(shards) <= MAX_SHARDS:
        raise _fail(where, f"'shards' must be an array of 1 to {MAX_SHARDS} file names")
    folded: dict[str, str] = {}
    for s in shards:
        check_shard_name(s, where)
        if s.casefold() in folded:
            raise _fail(where, f"shard {s!r} is listed twice (as {folded[s.casefold()]!r})")
        folded[s.casefold()] = s
    weight_map = obj.get("weight_map")
    if not isinstance(weight_map, dict):
        raise _fail(where, f"'weight_map' must be an object, found {type(weight_map).__name__}")
    if len(weight_map) > limits.max_tensors:
        raise LimitError(
            f"{where}: {len(weight_map)} tensors, over the limit of {limits.max_tensors}"
        )
    names = set(shards)
    for tensor, shard in weight_map.items():
        try:
            check_tensor_name(tensor, limits)
        except CmfError as exc:
            raise _fail(where, f"weight_map: {exc}") from None
        if not isinstance(shard, str) or shard not in names:
            raise _fail(
                where,
                f"weight_map: tensor {tensor[:200]!r} maps to {str(shard)[:200]!r}, "
                "which is not in 'shards'",
            )
    meta = obj.get("metadata", {})
    if not isinstance(meta, dict):
        raise _fail(where, f"'metadata' must be an object, found {type(meta).__name__}")
    unknown = [k for k in obj if k not in ("format", "version", "shards", "weight_map", "metadata")]
    return list(shards), dict(weight_map), {**meta, "unknown_keys": unknown}


def shard_file(directory: str, name: str) -> str:
    """The path of shard ``name``: a regular file in ``directory``, not a symlink."""
    path = os.path.join(directory, name)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise CmfError(f"shard {name!r} is missing from {directory}") from None
    except OSError as exc:
        raise CmfError(f"shard {name!r}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise CmfError(f"shard {name!r} is a symlink; shards are not followed through links")
    if not stat.S_ISREG(st.st_mode):
        raise CmfError(f"shard {name!r} is not a regular file")
    return path


def check_membership(
    shards: list[str], weight_map: dict[str, str], contents: dict[str, list[str]]
) -> list[str]:
    """Problems with 'each tensor in exactly one shard' (spec §2), given each shard's tensors."""
    problems, home = [], {}
    for shard in shards:
        for name in contents.get(shard, ()):
            if name in home:
                problems.append(f"tensor {name[:200]!r} is in both {home[name]!r} and {shard!r}")
                continue
            home[name] = shard
            mapped = weight_map.get(name)
            if mapped is None:
                problems.append(
                    f"tensor {name[:200]!r} of shard {shard!r} is not in the weight_map"
                )
            elif mapped != shard:
                problems.append(
                    f"tensor {name[:200]!r} is in shard {shard!r}, the weight_map says {mapped!r}"
                )
    for name, shard in weight_map.items():
        if shard in contents and name not in home:
            problems.append(
                f"the weight_map puts tensor {name[:200]!r} in shard {shard!r}, "
                "which has no such tensor"
            )
    return problems


# ----------------------------------------------------------------------------- reading


class ShardedFile:
    """A sharded set opened as one model (see module docstring); the API of CmfFile."""

    def __init__(self, path: str | os.PathLike, *, limits: Limits = DEFAULT_LIMITS) -> None:
        self.path = index_path(path)
        self.limits = limits
        self.directory = os.path.dirname(os.path.abspath(self.path))
        self.shard_names, weight_map, self.index_metadata = read_index(self.path, limits)
        self.shards: list[CmfFile] = []
        try:
            for name in self.shard_names:
                try:
                    self.shards.append(
                        CmfFile(
                            shard_file(self.directory, name), limits=limits, follow_symlinks=False
                        )
                    )
                except CmfError as exc:
                    if str(exc).startswith(f"shard {name!r}"):
                        raise
                    raise type(exc)(f"shard {name!r}: {exc}") from None
            contents = {n: f.keys() for n, f in zip(self.shard_names, self.shards, strict=True)}
            problems = check_membership(self.shard_names, weight_map, contents)
            problems += model_data_problems(self.shard_names, self.shards)
            if problems:
                more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
                raise FormatError(f"shard index {self.path}: {problems[0]}{more}")
            total = sum(len(c) for c in contents.values())
            if total > limits.max_tensors:
                raise LimitError(
                    f"{total} tensors in the shards, over the limit of {limits.max_tensors}"
                )
        except BaseException:
            self.close()
            raise
        self._where = {
            name: f for n, f in zip(self.shard_names, self.shards, strict=True) for name in f.keys()
        }
        self._last = self.shards[-1]
        self.size = sum(f.size for f in self.shards)
        self.minor = max(f.minor for f in self.shards)

    def keys(self) -> list[str]:
        return list(self._where)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __contains__(self, name: object) -> bool:
        return name in self._where

    def __len__(self) -> int:
        return len(self._where)

    def _shard(self, name: str) -> CmfFile:
        try:
            return self._where[name]
        except KeyError:
            raise CmfError(f"no tensor named {name!r} in {self.path}") from None

    def shard_of(self, name: str) -> str:
        return self.shard_names[self.shards.index(self._shard(name))]

    def metadata(self) -> dict[str, Any]:
        return self._last.metadata()

    def entry(self, name: str) -> TensorEntry:
        return self._shard(name).entry(name)

    def spec(self, name: str) -> ArraySpec:
        return self._shard(name).spec(name)

    def get_tensor(self, name: str, out: np.ndarray | None = None) -> np.ndarray:
        return self._shard(name).get_tensor(name, out)

    def attachments(self) -> list[str]:
        return self._last.attachments()

    def get_attachment(self, name: str) -> bytes:
        return self._last.get_attachment(name)

    def close(self) -> None:
        for f in self.shards:
            f.close()

    def __enter__(self) -> ShardedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def model_data_problems(names: list[str], files: list[CmfFile]) -> list[str]:
    out = []
    for name, f in zip(names[:-1], files[:-1], strict=True):
        if f.index.metadata or f.index.attachments:
            out.append(f"shard {name!r} has metadata or attachments; only the last shard may")
    return out


def open_model(
    path: str | os.PathLike, *, limits: Limits = DEFAULT_LIMITS
) -> CmfFile | ShardedFile:
    """A .cmf file, or a sharded set (its index JSON or its directory)."""
    if is_sharded(path):
        return ShardedFile(path, limits=limits)
    return CmfFile(path, limits=limits)


# Tensors smaller than numpy's huge-page threshold (4 MiB: numpy asks for transparent huge pages
# from there up) are decoded into shared blocks of up to ARENA_BYTES, which numpy allocates with
# huge pages: fresh memory arrives 2 MiB at a time instead of one zeroed 4 KiB page fault at a
# time (measured here: 90 MB written into fresh 4 KiB pages 41 ms, into huge pages 6 ms; the
# small tensors of an LLM are most of it). A block is freed when the last tensor in it is.
ARENA_TENSOR_MAX = 4 << 20
ARENA_BYTES = 64 << 20
ARENA_TOTAL_MAX = 1 << 30  # beyond this, small tensors get their own memory again
_ARENA_ALIGN = 64


def arena_outputs(specs: dict[str, Any]) -> dict[str, np.ndarray]:
    """Arrays to decode into for the small tensors of ``specs`` (name -> ArraySpec, every one
    already within the reader's limits): writable C-contiguous views, 64-byte aligned, of new
    blocks of at most ARENA_BYTES (a tensor over ARENA_TENSOR_MAX, or beyond ARENA_TOTAL_MAX in
    all, is not given one)."""
    placed: list[list[tuple[str, int]]] = []  # per block: (name, offset)
    sizes: list[int] = []
    total = 0
    for name, spec in specs.items():
        n = spec.nbytes
        if not 0 < n < ARENA_TENSOR_MAX or total + n > ARENA_TOTAL_MAX:
            continue
        if not sizes or sizes[-1] + n > ARENA_BYTES:
            placed.append([])
            sizes.append(0)
        placed[-1].append((name, sizes[-1]))
        sizes[-1] += -(-n // _ARENA_ALIGN) * _ARENA_ALIGN
        total += n
    out = {}
    for block, size in zip(placed, sizes, strict=True):
        memory = np.empty(size + _ARENA_ALIGN, dtype=np.uint8)
        skip = -memory.ctypes.data % _ARENA_ALIGN
        memory = memory[skip : skip + size]
        for name, at in block:
            spec = specs[name]
            view = memory[at : at + spec.nbytes].view(spec.dtype.numpy)
            out[name] = view.reshape(spec.shape)
    return out


def load_all(f: Any, workers: int) -> dict[str, np.ndarray]:
    """Every tensor of an open file or set, in order, decoded by ``workers`` threads (largest
    first); small tensors into shared huge-page blocks (arena_outputs)."""
    names = f.keys()
    outs = arena_outputs({name: f.spec(name) for name in names})
    if workers <= 1 or len(names) <= 1:
        return {name: f.get_tensor(name, outs.get(name)) for name in names}
    largest_first = sorted(names, key=lambda n: -f.spec(n).nbytes)
    with ThreadPoolExecutor(workers) as pool:
        decoded = dict(
            zip(
                largest_first,
                pool.map(lambda n: f.get_tensor(n, outs.get(n)), largest_first),
                strict=True,
            )
        )
    return {name: decoded[name] for name in names}


# ----------------------------------------------------------------------------- writing


class ShardedWriter:
    """Write a sharded set tensor by tensor (spec/sharding.md §4); the sink of cmf.parallel.

    ``output`` names the set (``dir/model.cmf``, ``dir/model.cmf.index.json`` or ``dir/``);
    a new shard starts before a tensor whose stored bytes would take the current one past
    ``shard_size``."""

    def __init__(
        self,
        output: str | os.PathLike,
        shard_size: int,
        *,
        metadata: dict[str, Any] | None = None,
        level: int = 3,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        if shard_size < 1:
            raise CmfError(f"shard size must be at least 1 byte, found {shard_size}")
        self.directory, self.stem = set_paths(output)
        if os.fspath(output).endswith(("/", os.sep)):
            os.makedirs(self.directory, exist_ok=True)
        self.index_file = os.path.join(self.directory, self.stem + INDEX_SUFFIX)
        self.shard_size = shard_size
        self.metadata = check_metadata(dict(metadata or {}))
        self.level = level
        self.limits = limits
        self._names: set[str] = set()
        self._parts: list[tuple[str, list[str]]] = []  # (temporary path, tensor names)
        self._done_bytes = self.raw_bytes = 0
        self.files: list[str] = []
        self.state = "open"
        self._writer = self._next()

    def _next(self) -> Writer:
        if len(self._parts) >= MAX_SHARDS:
            raise CmfError(f"more than {MAX_SHARDS} shards: choose a larger shard size")
        path = os.path.join(self.directory, f".{self.stem}-{len(self._parts) + 1:05d}.cmf.part")
        self._parts.append((path, []))
        return Writer(path, level=self.level, limits=self.limits)

    def _roll(self, stored: int) -> None:
        """Start a new shard if ``stored`` more bytes would overfill a non-empty one."""
        w = self._writer
        if w.index.tensors and w.stored_bytes + stored > self.shard_size:
            w.close()
            self._done_bytes += w.raw_bytes
            self._writer = self._next()

    # the sink interface of cmf.parallel.pack_tasks
    def check_name(self, name: str) -> None:
        check_tensor_name(name, self.limits)
        if name in self._names:
            raise CmfError(f"duplicate tensor name {name!r}")
        self._names.add(name)

    def has_key(self, key: bytes | None) -> bool:
        return key is not None and self._writer.has_key(key)

    def add_result(
        self,
        name: str,
        spec: ArraySpec,
        pending: Pending | None,
        error: dict | None = None,
        key: bytes | None = None,
    ) -> TensorEntry:
        if pending is not None and not self.has_key(key):
            self._roll(pending.stored)
        return self._added(name, self._writer.add_result(name, spec, pending, error, key))

    def add_encoded(
        self, name: str, spec: ArraySpec, pending: Pending, error: dict | None = None
    ) -> TensorEntry:
        self._roll(pending.stored)
        return self._added(name, self._writer.add_encoded(name, spec, pending, error))

    def _added(self, name: str, entry: TensorEntry) -> TensorEntry:
        self._parts[-1][1].append(name)
        return entry

    def add_attachment(self, name: str, data: bytes) -> None:
        self._writer.add_attachment(name, data)  # the last shard holds the model-level data

    @property
    def stored_bytes(self) -> int:
        return sum(os.path.getsize(f) for f in self.files) if self.files else 0

    def close(self) -> None:
        """Close the last shard, rename the shards, then write the shard index atomically."""
        if self.state != "open":
            raise CmfError(f"cannot close: the sharded writer is {self.state}, expected open")
        try:
            w = self._writer
            w.index.metadata = self.metadata  # model-level data: the last shard's
            w.close()
            self.raw_bytes = self._done_bytes + w.raw_bytes
            n = len(self._parts)
            names = [f"{self.stem}-{i:05d}-of-{n:05d}.cmf" for i in range(1, n + 1)]
            for name in names:
                check_shard_name(name, "output")
            weight_map = {}
            for (tmp, tensors), name in zip(self._parts, names, strict=True):
                final = os.path.join(self.directory, name)
                if os.path.islink(final) or os.path.isdir(final):
                    raise CmfError(f"refusing to replace {final}: it is a symlink or a directory")
                os.replace(tmp, final)
                self.files.append(final)
                weight_map.update({t: name for t in tensors})
            index = {
                "format": FORMAT,
                "version": VERSION,
                "metadata": {"total_size": self.raw_bytes, "stored_size": self.stored_bytes},
                "shards": names,
                "weight_map": weight_map,
            }
            with AtomicFile(self.index_file) as out:
                out.file.write(
                    json.dumps(index, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"
                )
        except BaseException:
            self.abort()
            raise
        self.state = "closed"

    def abort(self) -> None:
        """Drop the shards written so far (temporary names only); the index is not written."""
        if self.state == "open":
            self.state = "aborted"
        self._writer.abort()
        for tmp, _ in self._parts:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass

    def __enter__(self) -> ShardedWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            if self.state == "open":
                self.abort()
        elif self.state == "open":
            self.close()
