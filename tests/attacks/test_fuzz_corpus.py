"""The fuzz targets (tools/fuzz_*.py) in the default test run.

- Regression corpus: every input a fuzz target found a bug with is kept in
  ``tests/attacks/corpus/<target>/`` and replayed through that target with the harness's checks
  (tools/fuzz_common.py: only CmfError, under 1 s, address space capped): it must give a
  CmfError, or decode cleanly for files named ``ok-*``. The bugs (all fixed), one file each:

  - container/zero-dim-2e40x2e40-shape.bin: a tensor ``f32[0, 2^40, 2^40]`` (empty) made numpy
    raise ValueError in get_tensor and in ``cmf validate``;
  - codec-byteplanes/zero-dim-2e31x2e32-shape.bin: the same in ``byteplanes`` (found by the codec
    fuzzer);
  - onnx/non-utf8-*.bin: a protobuf string field that is not UTF-8 comes back as bytes: TypeError
    while packing;
  - onnx/zero-dim-2e62-shape.bin: an initializer of dims ``[0, 2^62]`` (empty): ValueError from
    numpy while packing;
  - codec-lowrank/bf16-signalling-nan-factor.bin: a bf16 signalling NaN in a factor raised a
    RuntimeWarning before the FormatError;
  - gguf/array-of-2e60-items.bin: a 524-byte GGUF file declaring an array of 2^60 items: gguf-py
    appended empty views until the machine ran out of memory;
  - gguf-write/byte-order-list.bin: a ``cmf.gguf.layout`` byte order that is a list: TypeError
    (unhashable) in the GGUF writer;
  - codec-quantize/ok-*, codec-codebook/ok-*: f32 overflow to infinity (a valid result) raised
    numpy RuntimeWarnings.

- Smoke: every target runs its seeds and 150 mutated inputs (python engine, fixed seed) with no
  finding; ``tools/fuzz_smoke.py`` runs more in CI, ``tools/fuzz_campaign.py`` the real thing.
"""

from __future__ import annotations

import os

import pytest

from tools import fuzz_codecs, fuzz_container, fuzz_convert, fuzz_shards
from tools.fuzz_common import Finding, Stats, cap_memory, execute, fuzz_python, restore_memory

TARGETS = {
    **fuzz_container.TARGETS,
    **fuzz_codecs.TARGETS,
    **fuzz_convert.TARGETS,
    **fuzz_shards.TARGETS,
}
CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
FILES = sorted(
    (target, name)
    for target in (os.listdir(CORPUS) if os.path.isdir(CORPUS) else [])
    for name in os.listdir(os.path.join(CORPUS, target))
)


def test_corpus_targets_exist():
    assert FILES, "tests/attacks/corpus is empty"
    assert {t for t, _ in FILES} <= set(TARGETS)
    assert not [n for _, n in FILES if n.endswith(".cmf")], "*.cmf is git-ignored: name them .bin"


@pytest.mark.parametrize("target, name", FILES, ids=[f"{t}/{n}" for t, n in FILES])
def test_regression_input(target, name):
    with open(os.path.join(CORPUS, target, name), "rb") as fh:
        data = fh.read()
    stats = Stats(target, "replay")
    cap_memory(1 << 30)  # a regression must fail this test, not exhaust the machine
    try:
        outcome = execute(TARGETS[target], data, stats)
    except Finding as f:
        pytest.fail(f"{target}/{name}: {f}")
    finally:
        restore_memory()
    if name.startswith("ok-"):
        assert outcome == "ok", outcome
    else:
        assert outcome != "ok" and "Error" in outcome.split(":")[0], outcome


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_target_smoke(target, tmp_path):
    stats = fuzz_python(
        TARGETS[target],
        runs=150,
        seconds=None,
        seed=7,
        findings_dir=os.fspath(tmp_path),
        quiet=True,
    )
    assert not stats.findings, stats.findings[:3]
    assert stats.execs >= 150
