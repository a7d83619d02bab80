"""The dtype table of spec/format.md §4: cmf names <-> numpy dtypes (ml_dtypes for bf16/fp8).

ml_dtypes is imported when a bf16 or fp8 dtype is first needed, not with cmf: importing it
costs most of a second, which every command reading or writing only f32/f16/int tensors would
pay. An array of those dtypes can only exist once ml_dtypes is imported, so :func:`of_array`
finds them by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .errors import CmfError, UnsupportedError


class DType:
    """One cmf dtype: its spec name, numpy dtype (little-endian) and whether it is a float.
    Equal by name; pickled by name (the table's own instance comes back)."""

    __slots__ = ("name", "is_float", "_numpy", "_make")

    def __init__(self, name: str, numpy: np.dtype | Callable[[], np.dtype], is_float: bool):
        self.name, self.is_float = name, is_float
        self._numpy = numpy if isinstance(numpy, np.dtype) else None
        self._make = None if isinstance(numpy, np.dtype) else numpy

    @property
    def numpy(self) -> np.dtype:
        if self._numpy is None:
            self._numpy = self._make()  # type: ignore[misc]
        return self._numpy

    @property
    def itemsize(self) -> int:
        return self.numpy.itemsize

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DType) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"DType({self.name!r})"

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return by_name, (self.name,)


def _ml(attr: str) -> Callable[[], np.dtype]:
    def make() -> np.dtype:
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, attr))

    return make


_ML_NAMES = {"bfloat16": "bf16", "float8_e4m3fn": "f8_e4m3", "float8_e5m2": "f8_e5m2"}
_TABLE = [
    DType("f64", np.dtype("<f8"), True),
    DType("f32", np.dtype("<f4"), True),
    DType("f16", np.dtype("<f2"), True),
    DType("bf16", _ml("bfloat16"), True),
    DType("f8_e4m3", _ml("float8_e4m3fn"), True),
    DType("f8_e5m2", _ml("float8_e5m2"), True),
    DType("i8", np.dtype("i1"), False),
    DType("i16", np.dtype("<i2"), False),
    DType("i32", np.dtype("<i4"), False),
    DType("i64", np.dtype("<i8"), False),
    DType("u8", np.dtype("u1"), False),
    DType("u16", np.dtype("<u2"), False),
    DType("u32", np.dtype("<u4"), False),
    DType("u64", np.dtype("<u8"), False),
    DType("bool", np.dtype("?"), False),
]
BY_NAME: dict[str, DType] = {d.name: d for d in _TABLE}
_BY_NUMPY: dict[np.dtype, DType] = {d._numpy: d for d in _TABLE if d._numpy is not None}


def by_name(name: object) -> DType:
    """The dtype called ``name``; UnsupportedError for anything else."""
    if isinstance(name, str) and name in BY_NAME:
        return BY_NAME[name]
    raise UnsupportedError(f"unknown dtype {name!r}; expected one of {', '.join(BY_NAME)}")


def of_array(array: np.ndarray) -> DType:
    """The cmf dtype of a numpy array (any byte order); CmfError if cmf has no such dtype."""
    dt = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    found = _BY_NUMPY.get(dt)
    if found is None and dt.name in _ML_NAMES:  # ml_dtypes is imported: the array has its dtype
        candidate = BY_NAME[_ML_NAMES[dt.name]]
        if candidate.numpy == dt:
            found = _BY_NUMPY[dt] = candidate
    if found is None:
        raise CmfError(f"unsupported array dtype {array.dtype}; cmf stores {', '.join(BY_NAME)}")
    return found
