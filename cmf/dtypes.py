"""The dtype table of spec/format.md §4: cmf names <-> numpy dtypes (ml_dtypes for bf16/fp8)."""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

from .errors import CmfError, UnsupportedError


@dataclass(frozen=True)
class DType:
    """One cmf dtype: its spec name, numpy dtype (little-endian) and whether it is a float."""

    name: str
    numpy: np.dtype
    is_float: bool

    @property
    def itemsize(self) -> int:
        return self.numpy.itemsize


_TABLE = [
    DType("f64", np.dtype("<f8"), True),
    DType("f32", np.dtype("<f4"), True),
    DType("f16", np.dtype("<f2"), True),
    DType("bf16", np.dtype(ml_dtypes.bfloat16), True),
    DType("f8_e4m3", np.dtype(ml_dtypes.float8_e4m3fn), True),
    DType("f8_e5m2", np.dtype(ml_dtypes.float8_e5m2), True),
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
_BY_NUMPY: dict[np.dtype, DType] = {d.numpy: d for d in _TABLE}


def by_name(name: object) -> DType:
    """The dtype called ``name``; UnsupportedError for anything else."""
    if isinstance(name, str) and name in BY_NAME:
        return BY_NAME[name]
    raise UnsupportedError(f"unknown dtype {name!r}; expected one of {', '.join(BY_NAME)}")


def of_array(array: np.ndarray) -> DType:
    """The cmf dtype of a numpy array (any byte order); CmfError if cmf has no such dtype."""
    dt = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    found = _BY_NUMPY.get(dt)
    if found is None:
        raise CmfError(f"unsupported array dtype {array.dtype}; cmf stores {', '.join(BY_NAME)}")
    return found
