"""Sizes in bytes as people write them: the one parser of ``cmf pack --shard-size``,
``--target-size`` (cmf.plan.contracts.parse_target_size, which adds bits per parameter) and the
library functions behind them.

A size is a number (``1000``, ``1.5``, ``.5``, ``1e7``) and an optional unit, case-insensitive,
spaces allowed between them:

============================  =====================
unit                          bytes
============================  =====================
(none), ``B``                 1
``K``, ``KB``                 10**3
``M``, ``MB``                 10**6
``G``, ``GB``                 10**9
``TB``                        10**12
``KiB``                       2**10
``MiB``                       2**20
``GiB``                       2**30
``TiB``                       2**40
============================  =====================
"""

from __future__ import annotations

import math
import re

from .errors import UsageError

UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}
_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*")
_EXAMPLE = "a number with an optional unit (KB, MB, GB, KiB, MiB, GiB ...)"


def split_size(text: object, what: str = "size") -> tuple[float, str]:
    """The number and the unit (lower case, "" when none) of ``text``; UsageError (a CmfError)
    naming ``what`` unless it is a number with an optional unit of letters."""
    m = _SIZE.fullmatch(str(text))
    if m is None:
        raise UsageError(f"{what} {text!r}: expected {_EXAMPLE}")
    return float(m.group(1)), m.group(2).lower()


def unit_bytes(unit: str, text: object, what: str = "size") -> int:
    """The bytes of ``unit`` (lower case, from :func:`split_size`); UsageError naming ``text``
    for a unit of no size."""
    if unit not in UNITS:
        raise UsageError(f"{what} {text!r}: unknown unit {unit!r}; expected {_EXAMPLE}")
    return UNITS[unit]


def size_bytes(text: object, what: str = "size") -> float:
    """The bytes ``text`` names (a float: "1.5kb" is 1500.0, "0.5" is 0.5); UsageError unless
    it is a size (see the module docstring) above zero."""
    value, unit = split_size(text, what)
    size = value * unit_bytes(unit, text, what)
    if not math.isfinite(size) or size <= 0:
        raise UsageError(f"{what} {text!r} must be positive")
    return size


def parse_size(text: object, what: str = "size") -> int:
    """``"2GB"`` -> 2_000_000_000, ``"512MiB"`` -> 536_870_912, ``"1000"`` -> 1000: whole bytes
    (a fraction is dropped), at least 1; UsageError (a CmfError) otherwise."""
    size = int(size_bytes(text, what))
    if size < 1:
        raise UsageError(f"{what} {text!r} must be at least 1 byte")
    return size
