"""cmf.reader.CmfFile: open-time checks, lazy per-tensor reads, CRC before decoding, limits."""

from __future__ import annotations

import os
import struct
import threading

import msgpack
import numpy as np
import pytest

import cmf
from cmf import format as fmt
from cmf.checksum import crc32c
from cmf.index import iter_leaves


def rewrite_index(path, change) -> None:
    """Apply ``change(index_obj)`` to the file's msgpack index; fix up trailer and CRC."""
    data = path.read_bytes()
    off, length, _, _, _ = fmt.TRAILER.unpack(data[-fmt.TRAILER_SIZE :])
    obj = msgpack.unpackb(data[off : off + length], raw=False)
    change(obj)
    blob = msgpack.packb(obj, use_bin_type=True)
    path.write_bytes(data[:off] + blob + fmt.pack_trailer(off, len(blob), crc32c(blob)))


def flip(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


def test_get_tensor_reads_only_its_own_segments(cmf_file, mixed_tensors, segment_of, assert_same):
    """Corrupt every segment of one tensor: the others still load; that one raises ChecksumError."""
    for offset, length in segment_of(cmf_file, "w"):
        if length:
            flip(cmf_file, offset + length // 2)
    with cmf.open(cmf_file) as f:  # the index is intact: opening works
        for name, array in mixed_tensors.items():
            if name in ("w", "w_tied"):
                with pytest.raises(cmf.ChecksumError, match="segment .* CRC-32C"):
                    f.get_tensor(name)
            else:
                assert_same(array, f.get_tensor(name))
        assert f.get_attachment("config.json") == b'{"hidden": 48}'
    with pytest.raises(cmf.ChecksumError):
        cmf.load_file(cmf_file)


@pytest.mark.parametrize("victim", ["b", "ids", "f8", "scalar"])
def test_each_tensor_is_isolated(cmf_file, mixed_tensors, segment_of, assert_same, victim):
    (offset, length), *_ = [s for s in segment_of(cmf_file, victim) if s[1]]
    flip(cmf_file, offset)
    with cmf.open(cmf_file) as f:
        with pytest.raises(cmf.ChecksumError):
            f.get_tensor(victim)
        for name in ("w", "h", "mask"):
            assert_same(mixed_tensors[name], f.get_tensor(name))


def test_segments_are_fetched_per_tensor(cmf_file, mixed_tensors, monkeypatch):
    fetched: list[int] = []
    real = cmf.CmfFile.segment
    monkeypatch.setattr(cmf.CmfFile, "segment", lambda self, i: fetched.append(i) or real(self, i))
    with cmf.open(cmf_file) as f:
        for name in mixed_tensors:
            fetched.clear()
            f.get_tensor(name)
            entry = f.entry(name)
            target = f.entry(entry.alias) if entry.alias else entry
            assert sorted(fetched) == sorted(leaf.segment for leaf in iter_leaves(target.encoding))


def test_corrupt_attachment_segment(cmf_file, segment_of):
    with cmf.open(cmf_file) as f:
        att = f.index.attachments[0]
        seg = f.index.segments[next(iter_leaves(att.encoding)).segment]
    flip(cmf_file, seg.offset)
    with cmf.open(cmf_file) as f:
        with pytest.raises(cmf.ChecksumError):
            f.get_attachment(att.name)
        assert f.get_attachment("tok/vocab.txt") == b"a\nb\n"
        f.get_tensor("w")


def test_returned_arrays_are_private_and_writable(cmf_file, mixed_tensors):
    with cmf.open(cmf_file) as f:
        a = f.get_tensor("ids")
        b = f.get_tensor("ids")
        assert a.flags.writeable and not np.shares_memory(a, b)
        a[:] = -1
        assert np.array_equal(b, mixed_tensors["ids"])
        assert np.array_equal(f.get_tensor("ids"), mixed_tensors["ids"])
    assert np.array_equal(cmf.load_file(cmf_file)["ids"], mixed_tensors["ids"])


def test_alias_resolves_to_target(cmf_file, mixed_tensors):
    with cmf.open(cmf_file) as f:
        entry = f.entry("w_tied")
        assert entry.alias == "w" and entry.encoding is None
        assert f.spec("w_tied") == f.spec("w")
        assert np.array_equal(f.get_tensor("w_tied"), mixed_tensors["w"])


def test_unknown_names(cmf_file):
    with cmf.open(cmf_file) as f:
        with pytest.raises(cmf.CmfError, match="no tensor named 'nope'"):
            f.get_tensor("nope")
        with pytest.raises(cmf.CmfError, match="no attachment named"):
            f.get_attachment("nope.json")
        assert "nope" not in f and 3 not in f


def test_concurrent_reads_agree(cmf_file, mixed_tensors):
    results: dict[int, dict] = {}
    with cmf.open(cmf_file) as f:

        def work(i):
            results[i] = {n: f.get_tensor(n).tobytes() for n in mixed_tensors}

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    expected = {n: np.ascontiguousarray(a).tobytes() for n, a in mixed_tensors.items()}
    assert len(results) == 4 and all(r == expected for r in results.values())


def test_close_is_idempotent_and_blocks_reads(cmf_file):
    f = cmf.open(cmf_file)
    f.close()
    f.close()
    with pytest.raises(cmf.CmfError, match="closed"):
        f.segment(0)
    assert f.keys()  # the parsed index stays available


# -- open-time checks ---------------------------------------------------------------------


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(cmf.CmfError, match="cannot open"):
        cmf.open(tmp_path / "missing.cmf")
    with pytest.raises(cmf.FormatError, match="not a regular file"):
        cmf.open(tmp_path)


@pytest.mark.parametrize("size", [0, 1, 95])
def test_too_small(tmp_path, size):
    p = tmp_path / "small.cmf"
    p.write_bytes(fmt.MAGIC + bytes(max(0, size - 8)) if size >= 8 else bytes(size))
    with pytest.raises(cmf.FormatError, match="at least 96"):
        cmf.open(p)


def test_not_a_cmf_file(tmp_path):
    p = tmp_path / "text.cmf"
    p.write_text("hello " * 100)
    with pytest.raises(cmf.FormatError, match="magic"):
        cmf.open(p)


@pytest.mark.parametrize("keep", [0.25, 0.5, 0.9, 0.999])
def test_truncated_files_are_rejected(cmf_file, keep):
    data = cmf_file.read_bytes()
    cmf_file.write_bytes(data[: max(96, int(len(data) * keep))])
    with pytest.raises(cmf.FormatError):
        cmf.open(cmf_file)


def test_appended_bytes_are_rejected(cmf_file):
    with open(cmf_file, "ab") as fh:
        fh.write(b"\0" * 7)
    with pytest.raises(cmf.FormatError, match="trailer"):
        cmf.open(cmf_file)


def test_preamble_versions_and_flags(cmf_file):
    data = bytearray(cmf_file.read_bytes())
    struct.pack_into("<H", data, 10, 7)  # minor 7: accepted
    cmf_file.write_bytes(bytes(data))
    with cmf.open(cmf_file) as f:
        assert f.minor == 7 and f.get_tensor("ids").size == 100
    struct.pack_into("<H", data, 8, 2)  # major 2: refused
    cmf_file.write_bytes(bytes(data))
    with pytest.raises(cmf.UnsupportedError, match="major version 2"):
        cmf.open(cmf_file)
    struct.pack_into("<H", data, 8, 1)
    struct.pack_into("<I", data, 12, 1)  # flags: refused
    cmf_file.write_bytes(bytes(data))
    with pytest.raises(cmf.UnsupportedError, match="flags"):
        cmf.open(cmf_file)


def test_index_crc_is_checked(cmf_file):
    data = cmf_file.read_bytes()
    off, length, _, _, _ = fmt.TRAILER.unpack(data[-32:])
    flip(cmf_file, off + length // 2)
    with pytest.raises(cmf.ChecksumError, match="index CRC-32C"):
        cmf.open(cmf_file)


def test_trailer_fields_are_checked(cmf_file):
    good = cmf_file.read_bytes()
    off, length, crc, _, magic = fmt.TRAILER.unpack(good[-32:])
    cases = {
        "reserved": fmt.TRAILER.pack(off, length, crc, 1, magic),
        "multiple of 64": fmt.TRAILER.pack(off + 1, length - 1, crc, 0, magic),
        "outside": fmt.TRAILER.pack(off, 0, crc, 0, magic),
        "file has": fmt.TRAILER.pack(off - 64, length, crc, 0, magic),
    }
    for message, trailer in cases.items():
        cmf_file.write_bytes(good[:-32] + trailer)
        with pytest.raises(cmf.CmfError, match=message):
            cmf.open(cmf_file)


def test_unknown_top_level_keys_are_ignored(cmf_file, mixed_tensors):
    rewrite_index(cmf_file, lambda obj: obj.update(future={"x": 1}))
    with cmf.open(cmf_file) as f:
        assert f.index.unknown_keys == ["future"]
        assert np.array_equal(f.get_tensor("w"), mixed_tensors["w"])


def test_unknown_codec_is_named(cmf_file):
    def change(obj):
        for t in obj["tensors"]:
            if "encoding" in t:
                t["encoding"]["codec"] = "brotli9"
                return

    rewrite_index(cmf_file, change)
    with pytest.raises(cmf.UnsupportedError, match="brotli9"):
        cmf.open(cmf_file)


def test_limits_tensor_budget_is_enforced_before_decoding(cmf_file, mixed_tensors, monkeypatch):
    limits = cmf.Limits(max_tensor_bytes=1000)
    fetched = []
    real = cmf.CmfFile.segment
    monkeypatch.setattr(cmf.CmfFile, "segment", lambda self, i: fetched.append(i) or real(self, i))
    with cmf.open(cmf_file, limits=limits) as f:
        assert np.array_equal(f.get_tensor("ids"), mixed_tensors["ids"])  # 800 bytes: fine
        fetched.clear()
        with pytest.raises(cmf.LimitError, match="memory budget"):
            f.get_tensor("w")  # 12 KiB
        assert fetched == []  # refused before reading a byte
    with pytest.raises(cmf.LimitError):
        cmf.load_file(cmf_file, limits=limits)


def test_limits_on_open(cmf_file):
    with pytest.raises(cmf.LimitError):
        cmf.open(cmf_file, limits=cmf.Limits(max_index_bytes=16))
    with pytest.raises(cmf.LimitError):
        cmf.open(cmf_file, limits=cmf.Limits(max_tensors=3))
    with pytest.raises(cmf.LimitError):
        cmf.open(cmf_file, limits=cmf.Limits(max_rank=1))


def test_reader_leaves_no_file_descriptors(cmf_file):
    fd_dir = "/proc/self/fd"
    if not os.path.isdir(fd_dir):
        pytest.skip("no /proc")
    before = len(os.listdir(fd_dir))
    for _ in range(20):
        with cmf.open(cmf_file) as f:
            f.get_tensor("w")
        with pytest.raises(cmf.CmfError):
            cmf.open(cmf_file.parent / "missing.cmf")
    assert len(os.listdir(fd_dir)) <= before


def test_big_tensors_decode_their_parts_on_threads(tmp_path):
    """Parts of at least PARALLEL_PART_BYTES (byte planes here) decode at once: same values,
    and a damaged plane is still one clear error."""
    from cmf import pipeline

    rng = np.random.default_rng(9)
    x = (rng.standard_normal(1 << 21) * 0.02).astype(np.float32)  # 4 planes of 2 MiB
    x[7] = np.float32("nan")
    path = str(tmp_path / "big.cmf")
    cmf.save_file({"x": x}, path)
    with cmf.open(path) as f:
        leaves = [leaf.segment for leaf in iter_leaves(f.entry("x").encoding)]
        big = [
            n
            for n, c in f.entry("x").encoding.parts.items()
            if pipeline._nbytes(c.spec) >= pipeline.PARALLEL_PART_BYTES
        ]
        assert len(big) >= 2
        assert f.get_tensor("x").tobytes() == x.tobytes()
        seg = f.index.segments[leaves[-1]]
    data = bytearray(open(path, "rb").read())
    data[seg.offset + seg.length // 2] ^= 0x01
    open(path, "wb").write(bytes(data))
    with cmf.open(path) as f, pytest.raises(cmf.CmfError, match="CRC"):
        f.get_tensor("x")


def _in_thread(fn, seconds=60):
    """Run ``fn`` on a daemon thread; its result, or a failure if it hangs."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "decoding hung"
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_shared_values_with_big_parts_under_big_parts_do_not_deadlock(tmp_path):
    """A big node's parts that are shared values whose own parts are big: the shared values
    decode serially under the reader's lock, never waiting on the pool they may run on."""
    from cmf import dtypes
    from cmf.codecs import ArraySpec
    from cmf.codecs.byteplanes import BytePlanes
    from cmf.codecs.lowrank import LowRank
    from cmf.codecs.zstd import Zstd
    from cmf.pipeline import PendingLeaf, PendingNode, SharedValue, apply, shared_ref
    from cmf.writer import Writer

    n = 1024  # f32 factors of 4 MiB: four 1 MiB planes each

    def factor(seed):
        a = (np.random.default_rng(seed).standard_normal((n, n)) * 1e-3).astype(np.float32)
        spec = ArraySpec(dtypes.of_array(a), a.shape)
        enc = apply(BytePlanes(), a, spec, lambda v, s: apply(Zstd(level=1), v, s, PendingLeaf))
        return SharedValue(a, enc, label=f"f{seed}")

    u, v = factor(1), factor(2)
    spec = ArraySpec(dtypes.of_array(np.zeros(1, np.float32)), (n, n))
    path = str(tmp_path / "shared.cmf")
    with Writer(path) as w:
        w.add_shared(u)
        w.add_shared(v)
        w.add_encoded(
            "t", spec, PendingNode(LowRank(rank=n), {"u": shared_ref(u), "v": shared_ref(v)}, spec)
        )
    expected = u.value.astype(np.float64) @ v.value.astype(np.float64)
    for _ in range(3):
        got = _in_thread(lambda: cmf.load_file(path)["t"])
        assert np.allclose(got, expected, atol=1e-6)
    assert _in_thread(lambda: cmf.validate(path)).valid


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_decodes_with_fresh_thread_pools(tmp_path):
    """Thread pools made before a fork have no threads in the child: the child starts new ones."""
    x = np.arange(1 << 21, dtype=np.float32)  # big enough for the parts pool
    path = str(tmp_path / "big.cmf")
    cmf.save_file({"x": x}, path)
    assert np.array_equal(cmf.load_file(path)["x"], x)  # the parent's pools exist now
    pid = os.fork()
    if pid == 0:  # child: exit 0 on success, 1 on a wrong result; a hang is killed below
        try:  # never return into pytest from the child
            ok = np.array_equal(cmf.load_file(path, workers=1)["x"], x)
        except BaseException:  # noqa: BLE001 - reported as a failing exit status
            ok = False
        os._exit(0 if ok else 1)
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung decoding")
