"""Crash safety: kill -9 of a writer, a file replaced under mmapped readers, concurrent reads.

- kill -9 (tools/kill9_writer.py): the target holds the old file or the new one, never a torn
  one, and what it holds validates. The default run kills 4 writers; ``-m slow`` 100 of
  ``cmf.save_file`` and 20 of ``cmf pack``.
- ``os.replace`` while 8 readers (8 handles, one thread each) have the file mapped: no crash,
  each handle keeps decoding the file it opened; handles opened afterwards see the new one.
- 8 threads x 1000 random ``get_tensor`` calls on one ``cmf.open`` handle (every codec, a
  shared codebook decoded once under a lock, an alias) give the bytes of a serial read.
"""

from __future__ import annotations

import os
import random
import threading

import numpy as np
import pytest

import cmf
from tools.kill9_writer import campaign

# ----------------------------------------------------------------------------- kill -9


def test_kill9_writer_quick(tmp_path):
    s = campaign(4, os.fspath(tmp_path), seed=1, layers=16, calibrate=1)
    assert s["torn"] == 0 and s["invalid"] == 0, s
    assert s["old"] + s["new"] == 4


@pytest.mark.slow
def test_kill9_writer_100_runs(tmp_path):
    s = campaign(100, os.fspath(tmp_path), seed=2)
    print(f"\nkill -9 of cmf.save_file: {s}")
    assert s["torn"] == 0 and s["invalid"] == 0, s
    assert s["old"] and s["new"], f"kills did not land on both sides of the rename: {s}"


@pytest.mark.slow
def test_kill9_cmf_pack_20_runs(tmp_path):
    s = campaign(20, os.fspath(tmp_path), cli=True, seed=3)
    print(f"\nkill -9 of cmf pack: {s}")
    assert s["torn"] == 0 and s["invalid"] == 0, s


# ----------------------------------------------------------------------------- shared fixtures

MIXED_RECIPE = {
    "rules": [
        {"match": "cb.*", "encoding": {"codec": "codebook", "fit": {"k": 16, "shared": "g"}}},
        {
            "match": "q.*",
            "encoding": {
                "codec": "quantize",
                "config": {
                    "bits": 4,
                    "block": 32,
                    "axis": -1,
                    "scheme": "symmetric",
                    "scale_dtype": "f16",
                    "search": False,
                },
                "parts": {"q": {"codec": "bitpack", "config": {"bits": 4}}},
            },
        },
        {
            "match": "h.*",
            "encoding": {"codec": "huffman", "config": {"chunk": 256, "max_length": 12}},
        },
        {"match": "sp.*", "encoding": {"codec": "sparse", "fit": {"sparsity": 0.8}}},
        {"match": "lr.*", "encoding": {"codec": "lowrank", "fit": {"rank": 4}}},
        {"match": "ol.*", "encoding": {"codec": "outlier", "fit": {"count": 8}}},
    ],
    "default": "lossless",
}


def mixed_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    r = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for i in range(4):
        out[f"cb.{i}"] = (r.standard_normal((64, 64)) * 0.02).astype(np.float32)
        out[f"q.{i}"] = r.standard_normal((32, 64)).astype(np.float32)
        out[f"h.{i}"] = np.minimum(r.geometric(0.3, 4000), 40).astype(np.uint8)
        out[f"sp.{i}"] = r.standard_normal((48, 48)).astype(np.float32)
        out[f"lr.{i}"] = (r.standard_normal((96, 4)) @ r.standard_normal((4, 80))).astype(
            np.float32
        )
        out[f"ol.{i}"] = r.standard_normal((40, 40)).astype(np.float16)
        out[f"raw.{i}"] = r.standard_normal((128, 32)).astype(np.float32)
        out[f"i.{i}"] = r.integers(-1000, 1000, 500).astype(np.int32)
    out["alias"] = out["raw.0"].copy()
    return out


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    path = tmp_path_factory.mktemp("mixed") / "mixed.cmf"
    cmf.save_file(mixed_tensors(), path, recipe=MIXED_RECIPE)
    with cmf.open(path) as f:
        expected = {n: f.get_tensor(n).tobytes() for n in f.keys()}
        assert f.index.shared and f.entry("alias").alias == "raw.0"
    return os.fspath(path), expected


# ----------------------------------------------------------------------------- concurrency


def test_8_threads_x_1000_get_tensor_one_handle(mixed):
    path, expected = mixed
    names = sorted(expected)
    errors: list[str] = []
    barrier = threading.Barrier(8)
    with cmf.open(path) as f:

        def worker(k: int) -> None:
            rng = random.Random(k)
            barrier.wait()
            for _ in range(1000):
                name = rng.choice(names)
                try:
                    got = f.get_tensor(name).tobytes()
                except Exception as exc:  # noqa: BLE001 - any error fails the test
                    errors.append(f"{name}: {type(exc).__name__}: {exc}")
                    return
                if got != expected[name]:
                    errors.append(f"{name}: different bytes")
                    return

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors[:5]


def test_replace_while_8_readers_have_it_mapped(mixed, tmp_path):
    src, expected = mixed
    path = os.fspath(tmp_path / "live.cmf")
    with open(src, "rb") as fh:
        original = fh.read()
    with open(path, "wb") as fh:
        fh.write(original)
    handles = [cmf.open(path) for _ in range(8)]  # 8 readers, each with its own mapping
    names = sorted(expected)
    stop = threading.Event()
    errors: list[str] = []
    reads = [0] * 8

    def reader(k: int) -> None:
        rng = random.Random(100 + k)
        f = handles[k]
        while not stop.is_set() or reads[k] < 50:
            name = rng.choice(names)
            try:
                got = f.get_tensor(name).tobytes()
            except Exception as exc:  # noqa: BLE001
                errors.append(f"reader {k}: {name}: {type(exc).__name__}: {exc}")
                return
            if got != expected[name]:
                errors.append(f"reader {k}: {name}: not the bytes of the file it opened")
                return
            reads[k] += 1

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    replacements = []
    for i in range(6):  # new files over the path, some larger, some smaller, one truncated junk
        other = os.fspath(tmp_path / f"next{i}.cmf")
        if i == 5:
            with open(other, "wb") as fh:
                fh.write(b"\0" * 100)
        else:
            cmf.save_file({"w": np.full((i + 1) * 100, i, np.float32)}, other)
        os.replace(other, path)
        replacements.append(i)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    try:
        assert not errors, errors[:5]
        assert all(r >= 50 for r in reads), reads
        for f in handles:  # each still reads its own view after all the replacements
            assert f.get_tensor("raw.1").tobytes() == expected["raw.1"]
        with pytest.raises(cmf.CmfError):  # a new open sees the last file: 100 zero bytes
            cmf.open(path)
    finally:
        for f in handles:
            f.close()
