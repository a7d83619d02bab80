"""Small helpers shared by the codec tests: specs of a dtype name or an array, an array's bytes,
and random bit patterns of any cmf dtype (the conftest's, importable)."""

from __future__ import annotations

import numpy as np

import cmf
from cmf.codecs import ArraySpec
from cmf.dtypes import BY_NAME

from ..conftest import _random_bits as random_bits  # noqa: F401  (re-exported)


def spec(dtype: str, shape) -> ArraySpec:
    return ArraySpec(BY_NAME[dtype], tuple(shape))


def spec_of(x: np.ndarray) -> ArraySpec:
    return ArraySpec(cmf.dtypes.of_array(x), x.shape)


def bits(x: np.ndarray) -> bytes:
    return np.ascontiguousarray(x).tobytes()
