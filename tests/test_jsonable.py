"""cmf.jsonable.json_safe: the one rule for numbers strict JSON cannot hold (spec/planner.md,
"Metadata"): null for NaN and infinities, in the planner's metadata and every --json output."""

from __future__ import annotations

import json
import math

import numpy as np

from cmf.cli_output import json_safe as cli_json_safe
from cmf.jsonable import json_safe


def test_non_finite_numbers_are_null():
    obj = {
        "a": math.nan,
        "b": [math.inf, -math.inf, 1.5],
        "c": (np.float32("nan"), np.float64(2.0)),
        3: {"d": np.int64(7), "e": np.bool_(True), "f": "nan"},
    }
    safe = json_safe(obj)
    assert safe == {
        "a": None,
        "b": [None, None, 1.5],
        "c": [None, 2.0],
        "3": {"d": 7, "e": True, "f": "nan"},
    }
    assert type(safe["3"]["d"]) is int and type(safe["c"][1]) is float
    json.dumps(safe, allow_nan=False)  # strict JSON


def test_the_cli_uses_the_same_function():
    assert cli_json_safe is json_safe
