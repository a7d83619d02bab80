"""Bounded memory: packing a sharded Hugging Face model reads it tensor by tensor, so the packing
process's peak resident set stays near its baseline plus a few tensors, not the model size.

Uses tools/bench_memory.py (the benchmark runs the same code on a 1.5 GiB model): a model of
32 MiB in 8 shards of 1 MiB tensors, packed by ``cmf pack`` in a child process that reports its
own peak resident set (``VmHWM``; mapped file pages count there too); the baseline is a tiny
model packed the same way.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

import cmf

TOOL = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "bench_memory.py")

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_memory", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_peak_memory_stays_well_below_the_model_size(bench, tmp_path):
    mib = 1 << 20
    bench.make_sharded_model(str(tmp_path / "tiny"), 64 << 10, 2, 16 << 10)
    total = bench.make_sharded_model(str(tmp_path / "big"), 32 * mib, 8, 1 * mib)
    assert total == 32 * mib and len(os.listdir(tmp_path / "big")) == 10  # 8 shards + 2 json
    tiny = bench.measure_pack(str(tmp_path / "tiny"), str(tmp_path / "tiny.cmf"))
    big = bench.measure_pack(str(tmp_path / "big"), str(tmp_path / "big.cmf"))
    over = big["peak"] - tiny["peak"]
    # Measured: +3 MiB; the former reader (memory maps of every shard kept open) gave +15 MiB.
    assert over < total / 4, (over / mib, tiny["peak"] / mib, big["peak"] / mib)
    with cmf.open(tmp_path / "big.cmf") as f:
        assert len(f.keys()) == 32 and f.attachments() == ["config.json"]
    assert cmf.validate(tmp_path / "big.cmf").valid
