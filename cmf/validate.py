"""Strict validation (``cmf validate``): every check of spec/format.md, every problem listed;
for a sharded set, every check of spec/sharding.md too (cmf.shards reads the set, this module
judges it)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from . import format as fmt
from .errors import ChecksumError, CmfError
from .index import SHARED_MINOR, CodecNode, Index, Leaf, Node, Problems, SharedRef
from .limits import DEFAULT_LIMITS, Limits
from .reader import CmfFile
from .shards import (
    check_membership,
    index_path,
    is_sharded,
    model_data_problems,
    read_index,
    shard_file,
)


@dataclass
class Report:
    path: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    tensors_checked: int = 0
    attachments_checked: int = 0
    shared_checked: int = 0
    segments_checked: int = 0
    damaged: list[dict] = field(default_factory=list)  # segments failing their CRC: what they hold

    @property
    def valid(self) -> bool:
        return not self.errors

    def to_json(self) -> dict:
        return {
            "path": self.path,
            "valid": self.valid,
            "errors": self.errors,
            "warnings": self.warnings,
            "tensors_checked": self.tensors_checked,
            "attachments_checked": self.attachments_checked,
            "segments_checked": self.segments_checked,
            "damaged": self.damaged,
        }


def validate(
    path: str | os.PathLike, *, limits: Limits = DEFAULT_LIMITS, follow_symlinks: bool = True
) -> Report:
    """Check ``path`` completely: structure, padding, every CRC, every tensor decoded.
    A shard index (``*.json``) or a directory is checked as a sharded set (spec/sharding.md)."""
    if is_sharded(path):
        return validate_set(path, limits=limits)
    report = Report(os.fspath(path))
    problems = Problems(collect=True)
    try:
        f = CmfFile(path, limits=limits, problems=problems, follow_symlinks=follow_symlinks)
    except CmfError as exc:
        report.errors = problems.errors + [str(exc)]
        report.warnings = problems.warnings
        return report
    with f:
        _check_padding(f, problems)
        bad_segments = set()
        for i in range(len(f.index.segments)):
            try:
                f.segment(i)
            except ChecksumError as exc:
                problems.error(exc)
                bad_segments.add(i)
                report.damaged.append({"segment": i, "owners": f.segment_owners(i)})
            except CmfError as exc:
                problems.error(exc)
                bad_segments.add(i)
            report.segments_checked += 1
        needed, what = _needed_minor(f.index)
        if needed > f.minor:
            problems.warn(f"file uses {what} (cmf 1.{needed}) but its minor version is {f.minor}")
        for i, shared in enumerate(f.index.shared):
            if shared is None or _segments(shared.encoding, f.index) & bad_segments:
                continue  # already reported (parse error or checksum)
            try:
                f.shared_value(i)
                report.shared_checked += 1
            except CmfError as exc:
                problems.error(exc)
        for entry in f.index.tensors:
            if entry.alias is not None:
                continue
            if _segments(entry.encoding, f.index) & bad_segments:
                continue  # already reported as a checksum error
            try:
                f.decode_node(entry.encoding)
                report.tensors_checked += 1
            except CmfError as exc:
                problems.error(CmfError(f"tensor {entry.name!r}: {exc}"))
        for att in f.index.attachments:
            if _segments(att.encoding, f.index) & bad_segments:
                continue
            try:
                f.decode_node(att.encoding)
                report.attachments_checked += 1
            except CmfError as exc:
                problems.error(CmfError(f"attachment {att.name!r}: {exc}"))
    report.errors = problems.errors
    report.warnings = problems.warnings
    return report


def _segments(node: Node, index: Index) -> set[int]:
    """Every segment decoding ``node`` reads, those of the shared values it references too."""
    if isinstance(node, Leaf):
        return {node.segment}
    if isinstance(node, SharedRef):
        shared = index.shared[node.index]
        return _segments(shared.encoding, index) if shared is not None else set()
    if isinstance(node, CodecNode):
        return set().union(*(_segments(c, index) for c in node.parts.values()))
    return set()


def _needed_minor(index: Index) -> tuple[int, str]:
    """The minor version that defines what ``index`` uses (spec §8), and what needs it."""
    best, what = 0, ""
    if any(e is not None for e in index.shared):
        best, what = SHARED_MINOR, "shared values"
    stack: list[Node] = [e.encoding for e in index.shared if e is not None]
    stack += [t.encoding for t in index.tensors if t.encoding is not None]
    stack += [a.encoding for a in index.attachments]
    while stack:
        node = stack.pop()
        if isinstance(node, CodecNode):
            since = node.codec.since_minor
            if since > best:
                best, what = since, f"codec {node.codec.name!r}"
            stack.extend(node.parts.values())
    return best, what


def _check_padding(f: CmfFile, problems: Problems) -> None:
    """Preamble padding and the gaps between segments must be zero bytes."""
    gaps = [(fmt.PREAMBLE.size, fmt.DATA_START)]
    for seg in f.index.segments:
        end = seg.offset + seg.length
        gaps.append((end, fmt.align(end)))
    for start, stop in gaps:
        if stop > start and any(f._read(start, stop - start)):
            problems.error(CmfError(f"padding bytes {start}..{stop} are not all zero"))


def validate_set(path: str | os.PathLike, *, limits: Limits = DEFAULT_LIMITS) -> Report:
    """Validate a sharded set: the index, then every shard completely (errors name the shard)."""
    report = Report(os.fspath(path))
    try:
        report.path = ipath = index_path(path)
        shards, weight_map, meta = read_index(ipath, limits)
    except CmfError as exc:
        report.errors.append(str(exc))
        return report
    report.warnings += [
        f"shard index: unknown top-level key {k[:100]!r}" for k in meta["unknown_keys"]
    ]
    directory = os.path.dirname(os.path.abspath(ipath))
    contents: dict[str, list[str]] = {}
    opened: list[tuple[str, CmfFile]] = []
    for name in shards:
        try:
            shard_path = shard_file(directory, name)
        except CmfError as exc:
            report.errors.append(str(exc))
            continue
        sub = validate(shard_path, limits=limits, follow_symlinks=False)
        report.errors += [f"shard {name!r}: {e}" for e in sub.errors]
        report.warnings += [f"shard {name!r}: {w}" for w in sub.warnings]
        report.damaged += [{**d, "shard": name} for d in sub.damaged]
        for counter in (
            "tensors_checked",
            "attachments_checked",
            "shared_checked",
            "segments_checked",
        ):
            setattr(report, counter, getattr(report, counter) + getattr(sub, counter))
        try:
            f = CmfFile(
                shard_path, limits=limits, problems=Problems(collect=True), follow_symlinks=False
            )
        except CmfError:
            continue  # reported by validate()
        opened.append((name, f))
        contents[name] = [t.name for t in f.index.tensors]
    try:
        if len(contents) == len(shards):
            report.errors += [
                f"shard index: {p}" for p in check_membership(shards, weight_map, contents)
            ]
            names, files = zip(*opened, strict=True) if opened else ((), ())
            report.errors += [
                f"shard index: {p}" for p in model_data_problems(list(names), list(files))
            ]
        else:  # some shards unreadable: report what can be checked
            for p in check_membership(shards, weight_map, contents):
                if (
                    "in both" in p
                    or "is not in the weight_map" in p
                    or ", the weight_map says" in p
                ):
                    report.errors.append(f"shard index: {p}")
    finally:
        for _, f in opened:
            f.close()
    return report
