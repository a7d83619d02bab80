"""Mappings the planner reads tensors through without holding a model in memory.

A model bigger than memory is planned one tensor (one decoder block) at a time: the source's
tensors are read from its files when asked for and dropped after use (``FileTensors``), seen as
float32 (``Float32View``), and lists of per-tensor work items read their arrays as they are
iterated (``LazyItems``)."""

from __future__ import annotations

from collections.abc import Mapping as MappingABC
from collections.abc import Sequence as SequenceABC
from typing import Any, Callable, Iterator, Mapping

import numpy as np


class FileTensors(MappingABC):
    """name -> the array of a safetensors-backed source, read from its file on each access
    (cmf.parallel.read_tensor), in the source's order; nothing is kept."""

    def __init__(self, refs: Mapping[str, Any]) -> None:
        self._refs = dict(refs)

    def __getitem__(self, name: str) -> np.ndarray:
        from ..parallel import read_tensor

        return read_tensor(self._refs[name])

    def __contains__(self, name: object) -> bool:
        return name in self._refs

    def __iter__(self) -> Iterator[str]:
        return iter(self._refs)

    def __len__(self) -> int:
        return len(self._refs)


class Float32View(MappingABC):
    """name -> ``convert(base[name])`` on each access (the planner's float32 view of a source)."""

    def __init__(self, base: Mapping[str, Any], convert: Callable[[Any], Any]) -> None:
        self._base, self._convert = base, convert

    def __getitem__(self, name: str) -> Any:
        return self._convert(self._base[name])

    def __contains__(self, name: object) -> bool:
        return name in self._base

    def __iter__(self) -> Iterator[str]:
        return iter(self._base)

    def __len__(self) -> int:
        return len(self._base)


class LazyItems(SequenceABC):
    """``(name, tensors[name], *rest)`` work items whose array is read when the item is taken."""

    def __init__(self, tensors: Mapping[str, Any], rows: list[tuple]) -> None:
        self._tensors, self._rows = tensors, rows

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self._rows)))]
        name, *rest = self._rows[i]
        return (name, self._tensors[name], *rest)

    def __len__(self) -> int:
        return len(self._rows)
