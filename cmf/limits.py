"""Reader limits (spec/format.md §6). Every declared size is checked against these first."""

from __future__ import annotations

from dataclasses import dataclass

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Bounds a reader enforces on a file before trusting it."""

    max_index_bytes: int = 64 * MiB
    max_index_objects: int = 2_000_000  # maps + arrays built while parsing the index
    max_nesting: int = 64
    max_rank: int = 32
    max_tensor_bytes: int = 16 * GiB
    max_attachment_bytes: int = 1 * GiB
    max_tree_depth: int = 16
    max_tensors: int = 1_000_000
    max_name_bytes: int = 1024
    max_metadata_depth: int = 8
    max_shared: int = 65_536  # shared values in the index (spec §3.5)
    max_shared_bytes: int = 1 * GiB  # their decoded sizes together (a reader caches them)


DEFAULT_LIMITS = Limits()
