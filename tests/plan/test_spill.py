"""The rounds' kept encodings on disk (cmf.plan.spill)."""

from __future__ import annotations

import numpy as np
import pytest

import cmf
from cmf.codecs import ArraySpec, BytesSpec
from cmf.errors import CmfError
from cmf.pipeline import PendingLeaf, PendingNode, decode_pending, encode_lossless
from cmf.plan.spill import EncodingStore, SpilledLeaf
from cmf.writer import Writer


def _pending(seed: int, n: int = 5000):
    x = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
    x[3] = np.frombuffer(np.uint32(0x7FC00123).tobytes(), np.float32)[0]  # a NaN payload
    spec = ArraySpec(cmf.dtypes.of_array(x), (n,))
    return x, spec, encode_lossless(x, spec, 3)


def _leaves(p):
    if isinstance(p, PendingNode):
        return [leaf for c in p.parts.values() for leaf in _leaves(c)]
    return [p]


def test_spilled_trees_decode_and_write_the_same_bytes(tmp_path):
    x, spec, pending = _pending(0)
    store = EncodingStore(str(tmp_path))
    store["a"] = pending
    spilled = store["a"]
    assert all(isinstance(leaf, SpilledLeaf) for leaf in _leaves(spilled))
    assert spilled.stored == pending.stored  # sizes without reading the bytes
    out = np.frombuffer(decode_pending(spilled), np.float32)
    assert out.tobytes() == x.tobytes()  # bit-exact, the NaN payload too
    for name, p in (("plain", pending), ("spilled", spilled)):
        with Writer(tmp_path / f"{name}.cmf") as w:
            w.add_encoded("t", spec, p)
    assert (tmp_path / "plain.cmf").read_bytes() == (tmp_path / "spilled.cmf").read_bytes()
    with cmf.open(tmp_path / "spilled.cmf") as f:
        assert f.get_tensor("t").tobytes() == x.tobytes()


@pytest.mark.parametrize(
    "data",
    [
        b"abc",
        bytearray(b"\x00" * 70),
        np.arange(12, dtype=np.uint16),
        memoryview(np.arange(40, dtype=np.uint8))[::2],  # not contiguous
        b"",
    ],
)
def test_any_bytes_like_leaf_comes_back_as_given(tmp_path, data):
    store = EncodingStore(str(tmp_path))
    raw = bytes(memoryview(data).tobytes() if isinstance(data, memoryview) else bytes(data))
    store[1] = PendingLeaf(data, BytesSpec(len(raw)))
    assert store[1].data == raw
    assert store[1].stored == len(raw)


def test_dropped_space_is_reused_and_stale_leaves_are_refused(tmp_path):
    store = EncodingStore(str(tmp_path))
    for k in range(4):
        store[k] = _pending(k)[2]
    size = store.file_bytes
    stale = _leaves(store[1])
    del store[1]
    del store[2]
    store["again"] = _pending(1)[2]  # as big as what was dropped: fits in the freed space
    assert store.file_bytes == size
    with pytest.raises(CmfError, match="already dropped"):
        for leaf in stale:
            _ = leaf.data
    for k in (3, 0, "again"):
        del store[k]
    assert store.file_bytes == 0 and len(store) == 0  # the file shrinks back
    store.close()
    store["x"] = PendingLeaf(b"1", BytesSpec(1))  # a closed store opens a new file
    kept = store["x"]
    store.close()
    with pytest.raises(CmfError, match="closed"):
        _ = kept.data


def test_setting_a_key_again_replaces_its_bytes(tmp_path):
    store = EncodingStore(str(tmp_path))
    store["k"] = PendingLeaf(b"first", BytesSpec(5))
    store["k"] = PendingLeaf(b"second!", BytesSpec(7))
    assert store["k"].data == b"second!" and list(store) == ["k"]
