"""One rule for numbers strict JSON cannot hold, used by every JSON output of cmf (``--json``
of every command) and by the planner's metadata (cmf.plan: the same maps, stored in the index):
a float that is not finite (NaN, infinity, -infinity; numpy scalars included) becomes ``null``
(nil in msgpack), numpy scalars become Python numbers, map keys become strings and tuples
lists. spec/planner.md ("Metadata") states it."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def json_safe(obj: Any) -> Any:
    """``obj`` with non-finite floats as None, numpy scalars as Python numbers, keys as
    strings, tuples as lists, at any depth (other values as they are)."""
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
