"""cmf.Writer: streaming, atomic, a strict state machine, and files laid out as the spec says."""

from __future__ import annotations

import os
import stat
import tracemalloc

import msgpack
import numpy as np
import pytest

import cmf
from cmf import format as fmt
from cmf.checksum import crc32c
from cmf.codecs.raw import Raw
from cmf.pipeline import PendingLeaf, apply


def listing(directory) -> list[str]:
    return sorted(os.listdir(directory))


# -- atomicity ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        np.ones(4, np.complex64),
        np.array([object(), None]),
        np.array(["text"]),
        np.zeros(2, [("a", "<i4")]),
    ],
    ids=["complex64", "object", "str", "structured"],
)
def test_failure_midway_keeps_the_old_file_and_leaves_no_temp(tmp_path, bad):
    path = tmp_path / "model.cmf"
    cmf.save_file({"old": np.arange(5, dtype=np.int16)}, path)
    before = path.read_bytes()
    tensors = {f"t{i}": np.full(1000, i, np.float32) for i in range(3)}
    tensors["bad"] = bad
    tensors["after"] = np.ones(3)
    with pytest.raises(cmf.CmfError, match="unsupported array dtype"):
        cmf.save_file(tensors, path)
    assert path.read_bytes() == before
    assert listing(tmp_path) == ["model.cmf"]
    assert list(cmf.load_file(path)) == ["old"]


def test_user_exception_inside_writer_block(tmp_path):
    path = tmp_path / "model.cmf"
    cmf.save_file({"old": np.zeros(3)}, path)
    before = path.read_bytes()

    def tensors():
        yield "a", np.ones(100)
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError, match="source broke"):
        with cmf.Writer(path) as w:
            for name, array in tensors():
                w.add_tensor(name, array)
    assert w.state == "aborted"
    assert path.read_bytes() == before and listing(tmp_path) == ["model.cmf"]


def test_no_target_until_close(tmp_path):
    path = tmp_path / "new.cmf"
    w = cmf.Writer(path)
    w.add_tensor("x", np.ones(10))
    assert not path.exists()
    assert len(listing(tmp_path)) == 1 and listing(tmp_path)[0].endswith(".tmp")
    w.close()
    assert listing(tmp_path) == ["new.cmf"]


def test_abort_without_context_manager(tmp_path):
    w = cmf.Writer(tmp_path / "x.cmf")
    w.add_tensor("x", np.ones(10))
    w.abort()
    assert listing(tmp_path) == []
    w.abort()  # idempotent


def test_abort_after_close_keeps_the_file(tmp_path):
    w = cmf.Writer(tmp_path / "x.cmf")
    w.add_tensor("x", np.ones(10))
    w.close()
    w.abort()
    assert w.state == "closed"
    assert np.array_equal(cmf.load_file(tmp_path / "x.cmf")["x"], np.ones(10))


def test_replacing_a_file_that_is_open_for_reading(tmp_path):
    path = tmp_path / "m.cmf"
    cmf.save_file({"v": np.full(1000, 1.0, np.float32)}, path)
    with cmf.open(path) as old:
        cmf.save_file({"v": np.full(1000, 2.0, np.float32), "w": np.ones(1)}, path)
        assert old.keys() == ["v"] and old.get_tensor("v")[0] == 1.0  # the old mapping lives
    with cmf.open(path) as new:
        assert new.keys() == ["v", "w"] and new.get_tensor("v")[0] == 2.0


def test_permissions_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        cmf.save_file({"x": np.ones(1)}, tmp_path / "a.cmf")
    finally:
        os.umask(old)
    mode = stat.S_IMODE(os.stat(tmp_path / "a.cmf").st_mode)
    assert mode == 0o640
    cmf.save_file({"x": np.ones(1)}, tmp_path / "b.cmf")
    mode = stat.S_IMODE(os.stat(tmp_path / "b.cmf").st_mode)
    assert mode != 0o600 and mode == 0o666 & ~old


def test_bad_targets(tmp_path):
    with pytest.raises(cmf.CmfError, match="directory"):
        cmf.Writer(tmp_path)
    with pytest.raises(cmf.CmfError, match="cannot create"):
        cmf.Writer(tmp_path / "no" / "such" / "dir.cmf")


# -- names, state machine, metadata ---------------------------------------------------------


def test_duplicate_names_rejected(tmp_path):
    with cmf.Writer(tmp_path / "d.cmf") as w:
        w.add_tensor("a", np.zeros(2))
        with pytest.raises(cmf.CmfError, match="duplicate tensor name 'a'"):
            w.add_tensor("a", np.ones(2))
        w.add_attachment("f.txt", b"1")
        with pytest.raises(cmf.CmfError, match="duplicate attachment name"):
            w.add_attachment("f.txt", b"2")
    with cmf.open(tmp_path / "d.cmf") as f:
        assert f.keys() == ["a"] and f.get_attachment("f.txt") == b"1"
        assert np.array_equal(f.get_tensor("a"), np.zeros(2))


@pytest.mark.parametrize(
    "name", ["", "nul\x00byte", "x" * 1025, "é" * 513, "\ud800", 5, None, b"bytes"]
)
def test_bad_tensor_names_rejected(tmp_path, name):
    with cmf.Writer(tmp_path / "n.cmf") as w:
        with pytest.raises(cmf.CmfError, match="bad tensor name"):
            w.add_tensor(name, np.zeros(2))
        w.add_tensor("ok", np.zeros(2))
    assert cmf.validate(tmp_path / "n.cmf").valid


@pytest.mark.parametrize("name", ["x" * 1024, "é" * 512, "日本語/テンソル", "a\nb", "🦙.weight"])
def test_unusual_valid_names(tmp_path, name):
    cmf.save_file({name: np.arange(3)}, tmp_path / "u.cmf")
    with cmf.open(tmp_path / "u.cmf") as f:
        assert f.keys() == [name]
        assert np.array_equal(f.get_tensor(name), np.arange(3))


def test_state_machine(tmp_path):
    w = cmf.Writer(tmp_path / "s.cmf")
    assert w.state == "open"
    w.add_tensor("a", np.zeros(2, np.int8))
    w.close()
    assert w.state == "closed"
    for action in (
        lambda: w.add_tensor("b", np.zeros(2)),
        lambda: w.add_attachment("c", b""),
        lambda: w.add_encoded("d", None, None),
        w.close,
    ):
        with pytest.raises(cmf.CmfError, match="writer is closed, expected open"):
            action()
    w2 = cmf.Writer(tmp_path / "t.cmf")
    w2.abort()
    with pytest.raises(cmf.CmfError, match="writer is aborted"):
        w2.add_tensor("a", np.zeros(1))
    with pytest.raises(cmf.CmfError, match="writer is aborted"):
        w2.close()


def test_rank_above_limit_rejected(tmp_path):
    with cmf.Writer(tmp_path / "r.cmf") as w:
        with pytest.raises(cmf.CmfError, match="rank 33"):
            w.add_tensor("deep", np.zeros((1,) * 33))
        w.add_tensor("ok", np.zeros((1,) * 32))
    assert cmf.load_file(tmp_path / "r.cmf")["ok"].shape == (1,) * 32


@pytest.mark.parametrize(
    "metadata",
    [{1: "a"}, {"k": {(1, 2): "tuple key"}}, {"k": b"x"}, {"k": np.int64(1)}, {"k": "\udc80"}],
)
def test_bad_metadata_rejected_before_any_file_exists(tmp_path, metadata):
    with pytest.raises(cmf.CmfError):
        cmf.Writer(tmp_path / "m.cmf", metadata=metadata)
    assert listing(tmp_path) == []


def test_attachment_limits(tmp_path):
    with cmf.Writer(tmp_path / "a.cmf", limits=cmf.Limits(max_attachment_bytes=10)) as w:
        with pytest.raises(cmf.CmfError, match="over 10 bytes"):
            w.add_attachment("big.bin", bytes(11))
        w.add_attachment("ok.bin", bytes(10))
        with pytest.raises(cmf.CmfError):
            w.add_attachment("../escape", b"x")
    with cmf.open(tmp_path / "a.cmf") as f:
        assert f.attachments() == ["ok.bin"]


# -- what gets written ----------------------------------------------------------------------


def test_layout_follows_the_spec(tmp_path, mixed_tensors):
    """Parse the file with struct + msgpack only: preamble, aligned zero-padded segments with
    their CRCs, index right after the data, trailer (spec/format.md §1-3)."""
    path = tmp_path / "l.cmf"
    with cmf.Writer(path, metadata={"m": 1}) as w:
        for name, a in mixed_tensors.items():
            w.add_tensor(name, a)
        w.add_attachment("a.txt", b"hello" * 50)
    data = path.read_bytes()
    assert data[:8] == b"\x89CMF\r\n\x1a\n" and data[8:16] == bytes([1, 0, 0, 0, 0, 0, 0, 0])
    assert data[16:64] == bytes(48)
    off, length, crc, reserved, magic = fmt.TRAILER.unpack(data[-32:])
    assert magic == b"CMFINDX\x00" and reserved == 0
    assert off % 64 == 0 and off + length + 32 == len(data) == w.stored_bytes
    assert crc32c(data[off : off + length]) == crc
    index = msgpack.unpackb(data[off : off + length], raw=False)
    assert set(index) == {"segments", "tensors", "attachments", "metadata"}
    expected = 64
    for seg_off, seg_len, seg_crc in index["segments"]:
        assert seg_off == expected
        assert crc32c(data[seg_off : seg_off + seg_len]) == seg_crc
        end = seg_off + seg_len
        expected = -(-end // 64) * 64
        assert data[end:expected] == bytes(expected - end)  # zero padding
    assert expected == off
    assert [t["name"] for t in index["tensors"]] == list(mixed_tensors)
    tied = next(t for t in index["tensors"] if t["name"] == "w_tied")
    assert tied == {"name": "w_tied", "dtype": "f32", "shape": [64, 48], "alias": "w"}
    assert index["metadata"] == {"m": 1}
    assert w.raw_bytes == sum(a.nbytes for a in mixed_tensors.values())


def test_empty_file_is_valid(tmp_path):
    cmf.save_file({}, tmp_path / "e.cmf")
    assert os.path.getsize(tmp_path / "e.cmf") > 64 + 32
    assert cmf.load_file(tmp_path / "e.cmf") == {}
    assert cmf.validate(tmp_path / "e.cmf").valid


def test_dedupe_off_stores_copies(tmp_path):
    w = np.random.default_rng(0).standard_normal(2000).astype(np.float32)
    with cmf.Writer(tmp_path / "d.cmf", dedupe=False) as wr:
        wr.add_tensor("a", w)
        wr.add_tensor("b", w)
    with cmf.open(tmp_path / "d.cmf") as f:
        assert f.entry("b").alias is None
        assert np.array_equal(f.get_tensor("b"), w)
    cmf.save_file({"a": w, "b": w}, tmp_path / "e.cmf")
    assert os.path.getsize(tmp_path / "e.cmf") < os.path.getsize(tmp_path / "d.cmf") - 4000


def test_custom_encoder_and_add_encoded(tmp_path):
    def stored(array, spec):
        return apply(Raw(), array, spec, lambda v, s: PendingLeaf(v, s))

    zeros = np.zeros(10_000, np.float32)
    with cmf.Writer(tmp_path / "c.cmf", encoder=stored) as w:
        w.add_tensor("z", zeros)
        entry = w.add_tensor("y", np.ones(10_000, np.float32), encoder=None)
        spec = entry.spec
        w.add_encoded("pre", spec, stored(np.full(10_000, 3, np.float32), spec))
    assert os.path.getsize(tmp_path / "c.cmf") > 3 * 40_000  # nothing was compressed
    back = cmf.load_file(tmp_path / "c.cmf")
    assert np.array_equal(back["z"], zeros) and np.array_equal(
        back["pre"], np.full(10_000, 3, np.float32)
    )


def test_encoder_gets_a_c_contiguous_little_endian_array_of_the_spec(tmp_path):
    seen = []

    def spy(array, spec):
        seen.append(
            (array.shape == spec.shape, array.flags.c_contiguous, array.dtype == spec.dtype.numpy)
        )
        return apply(Raw(), array, spec, lambda v, s: PendingLeaf(v, s))

    inputs = {
        "scalar": np.array(3.5, np.float32),
        "scalar_be": np.array(7, ">i8"),
        "T": np.arange(12, dtype=np.int16).reshape(3, 4).T,
        "be": np.arange(5, dtype=">f8")[::2],
        "empty": np.zeros((2, 0), np.uint16),
    }
    with cmf.Writer(tmp_path / "e.cmf", encoder=spy) as w:
        for name, array in inputs.items():
            w.add_tensor(name, array)
    assert seen == [(True, True, True)] * len(inputs)
    back = cmf.load_file(tmp_path / "e.cmf")
    for name, array in inputs.items():
        assert back[name].shape == array.shape and np.array_equal(back[name], array)


def test_lossless_is_smaller_for_compressible_data(tmp_path):
    x = np.repeat(np.arange(100, dtype=np.float32), 1000)
    cmf.save_file({"x": x}, tmp_path / "c.cmf")
    assert os.path.getsize(tmp_path / "c.cmf") < x.nbytes / 20


# -- streaming memory -----------------------------------------------------------------------


def test_streaming_keeps_about_one_tensor_in_memory(tmp_path):
    count, size = 20, 4 << 20  # 80 MiB in total, 4 MiB a tensor

    def source():
        rng = np.random.default_rng(0)
        for i in range(count):
            yield f"layer.{i}", rng.standard_normal(size // 4, dtype=np.float32)

    tracemalloc.start()
    try:
        with cmf.Writer(tmp_path / "big.cmf") as w:
            for name, array in source():
                w.add_tensor(name, array)
                del array
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert w.raw_bytes == count * size
    assert peak < 6 * size, f"peak {peak / size:.1f} tensors"  # measured about 2.7
    with cmf.open(tmp_path / "big.cmf") as f:
        assert len(f) == count and f.get_tensor("layer.19").shape == (size // 4,)
