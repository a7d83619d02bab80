"""Mappings the planner reads tensors through without holding a model in memory.

A model bigger than memory is planned one tensor (one decoder block) at a time: the source's
tensors are read from its files when asked for and dropped after use (``file_tensors``), seen as
float32 (``float32_view``), and lists of per-tensor work items read their arrays as they are
iterated (``LazyItems``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from collections.abc import Mapping as MappingABC
from collections.abc import Sequence as SequenceABC
from typing import Any


class LazyMapping(MappingABC):
    """``names`` -> ``get(name)``, called on each access; nothing is kept (membership and
    iteration never call ``get``). ``ggml_types``: name -> the GGML type each tensor has in a
    GGUF, where the mapping stands for one (cmf.plan.decoder simulates llama.cpp with it)."""

    ggml_types: dict[str, str] | None = None

    def __init__(self, names: Iterable[str], get: Callable[[str], Any]) -> None:
        self._names = list(names)
        self._set = set(self._names)
        self._get = get

    def __getitem__(self, name: str) -> Any:
        if name not in self._set:
            raise KeyError(name)
        return self._get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._set

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def file_tensors(refs: Mapping[str, Any]) -> LazyMapping:
    """name -> the array of a safetensors-backed source (cmf.parallel's FileTensor refs), read
    from its file on each access (cmf.parallel.read_tensor), in the source's order."""
    from ..parallel import read_tensor

    return LazyMapping(refs, lambda name: read_tensor(refs[name]))


def float32_view(base: Mapping[str, Any], convert: Callable[[Any], Any]) -> LazyMapping:
    """name -> ``convert(base[name])`` on each access (the planner's float32 view of a source)."""
    return LazyMapping(base, lambda name: convert(base[name]))


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
