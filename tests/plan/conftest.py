"""Shared fixtures of the planner tests: a tiny BERT directory and fast planning options."""

from __future__ import annotations

import pytest

from ..runtime import helpers
from ..runtime.helpers import write_bert_dir

# coarser curves and 8 calibration texts: the same code paths, faster
FAST = {"steps_per_bit": 2, "templates": False, "calibrate": list(helpers.TEXTS)}


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    pytest.importorskip("tokenizers")
    path, _ = write_bert_dir(tmp_path_factory.mktemp("plan") / "tiny-bert")
    return str(path)
