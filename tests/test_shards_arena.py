"""cmf.shards.load_all: small tensors decode into shared huge-page blocks (arena_outputs), big
ones into their own memory; every array is writable, C-contiguous and bit-exact."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import cmf
from cmf import shards
from cmf.codecs import ArraySpec
from cmf.dtypes import BY_NAME


def _model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    return {
        "a": rng.standard_normal((64, 48)).astype(np.float32),
        "b": rng.standard_normal(48).astype(ml_dtypes.bfloat16),
        "big": rng.standard_normal((1024, 1100)).astype(np.float32),  # over 4 MiB
        "ids": np.arange(100, dtype=np.int64),
        "mask": rng.integers(0, 2, 33).astype(bool),
        "scalar": np.array(2.5, dtype=np.float64),
        "empty": np.zeros((0, 3), dtype=np.int32),
        "odd": rng.integers(0, 255, 7).astype(np.uint8),
    }


def _root(a: np.ndarray):
    while isinstance(a, np.ndarray) and a.base is not None:
        a = a.base
    return a


@pytest.mark.parametrize("workers", [1, 3])
def test_load_file_is_exact_and_small_tensors_share_blocks(tmp_path, workers):
    model = _model()
    cmf.save_file(model, tmp_path / "m.cmf")
    got = cmf.load_file(tmp_path / "m.cmf", workers=workers)
    assert list(got) == list(model)
    for name, array in model.items():
        g = got[name]
        assert g.dtype == array.dtype and g.shape == array.shape
        assert g.tobytes() == array.tobytes()
        assert g.flags.writeable and g.flags.c_contiguous
    assert _root(got["a"]) is _root(got["ids"]) is _root(got["odd"])  # one block
    assert got["a"].ctypes.data % 64 == 0 and got["ids"].ctypes.data % 64 == 0
    assert _root(got["big"]) is not _root(got["a"])
    got["a"][:] = 0  # writing one tensor leaves its neighbours alone
    assert got["ids"].tobytes() == model["ids"].tobytes()


def test_q4_load_file_into_blocks_matches_get_tensor(tmp_path):
    cmf.save_file(_model(), tmp_path / "q4.cmf", preset="q4")
    got = cmf.load_file(tmp_path / "q4.cmf")
    with cmf.open(tmp_path / "q4.cmf") as f:
        for name in f.keys():
            assert got[name].tobytes() == f.get_tensor(name).tobytes()


def _specs(sizes: dict[str, int]) -> dict[str, ArraySpec]:
    return {name: ArraySpec(BY_NAME["u8"], (n,)) for name, n in sizes.items()}


def test_arena_blocks_are_bounded(monkeypatch):
    monkeypatch.setattr(shards, "ARENA_BYTES", 1000)
    monkeypatch.setattr(shards, "ARENA_TOTAL_MAX", 2500)
    monkeypatch.setattr(shards, "ARENA_TENSOR_MAX", 900)
    sizes = {"a": 400, "b": 400, "c": 400, "huge": 900, "d": 10, "e": 700, "f": 600, "zero": 0}
    outs = shards.arena_outputs(_specs(sizes))
    assert "huge" not in outs and "zero" not in outs  # too big; nothing to hold
    assert "f" not in outs  # over the total
    roots = {name: _root(a) for name, a in outs.items()}
    assert roots["a"] is roots["b"] and roots["c"] is not roots["a"]  # 448 + 448 + 400 > 1000
    assert all(r.nbytes <= 1000 + 64 for r in roots.values())  # + alignment
    for name, a in outs.items():
        assert a.shape == (sizes[name],) and a.ctypes.data % 64 == 0
