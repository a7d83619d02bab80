"""cmf.atomic.AtomicFile: the target holds the old file or the complete new one, never a torn
one."""

from __future__ import annotations

import os
import stat

import pytest

from cmf.atomic import AtomicFile
from cmf.errors import CmfError


def test_commit_replaces_the_target(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    out = AtomicFile(target)
    out.file.write(b"new contents")
    assert target.read_bytes() == b"old"  # not visible before commit
    assert os.path.exists(out.tmp) and os.path.dirname(out.tmp) == str(tmp_path)
    out.commit()
    assert target.read_bytes() == b"new contents"
    assert sorted(os.listdir(tmp_path)) == ["out.bin"]


def test_discard_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    out = AtomicFile(target)
    out.file.write(b"partial")
    out.discard()
    out.discard()
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["out.bin"]


def test_context_manager(tmp_path):
    target = tmp_path / "cm.bin"
    with AtomicFile(target) as out:
        out.file.write(b"ok")
    assert target.read_bytes() == b"ok"
    with pytest.raises(KeyError):
        with AtomicFile(target) as out:
            out.file.write(b"torn")
            raise KeyError("boom")
    assert target.read_bytes() == b"ok"
    assert sorted(os.listdir(tmp_path)) == ["cm.bin"]


def test_commit_after_discard_is_not_possible(tmp_path):
    out = AtomicFile(tmp_path / "x")
    out.discard()
    with pytest.raises(ValueError):  # the file is closed
        out.commit()
    assert os.listdir(tmp_path) == []


def test_mode_is_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        with AtomicFile(tmp_path / "m") as out:
            out.file.write(b"x")
        with AtomicFile(tmp_path / "n") as out:
            assert stat.S_IMODE(os.fstat(out.file.fileno()).st_mode) == 0o644
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "m").st_mode) == 0o644


def test_umask_is_restored(tmp_path):
    old = os.umask(0o077)
    try:
        AtomicFile(tmp_path / "u").discard()
        assert os.umask(0o077) == 0o077
    finally:
        os.umask(old)


def test_replacing_a_symlink_replaces_the_link_not_its_target(tmp_path):
    real = tmp_path / "real.bin"
    real.write_bytes(b"keep me")
    link = tmp_path / "link.bin"
    link.symlink_to(real)
    with AtomicFile(link) as out:
        out.file.write(b"new")
    assert real.read_bytes() == b"keep me"
    assert not link.is_symlink() and link.read_bytes() == b"new"


def test_errors(tmp_path):
    with pytest.raises(CmfError, match="is a directory"):
        AtomicFile(tmp_path)
    with pytest.raises(CmfError, match="cannot create a file in"):
        AtomicFile(tmp_path / "missing" / "f")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(CmfError, match="cannot create"):
            AtomicFile(ro / "f")
    finally:
        ro.chmod(0o755)


def test_sync_behind_then_commit_or_discard(tmp_path):
    """A writer may ask for what it wrote so far to go to the disk on a thread; the file is the
    same, and a discard after it still leaves nothing."""
    target = tmp_path / "big.bin"
    out = AtomicFile(target)
    for k in range(8):
        out.file.write(bytes([k]) * 100_000)
        out.sync_behind()
    out.commit()
    assert target.read_bytes() == b"".join(bytes([k]) * 100_000 for k in range(8))
    out = AtomicFile(tmp_path / "other.bin")
    out.file.write(b"x" * 100_000)
    out.sync_behind()
    out.discard()
    assert sorted(os.listdir(tmp_path)) == ["big.bin"]


def test_a_failed_sync_behind_fails_the_commit(tmp_path, monkeypatch):
    """An error of the background sync (an EIO the final fsync would no longer see) is raised
    by commit, and the target is left as it was."""
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def broken(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", broken, raising=False)  # the final fsync works
    out = AtomicFile(target)
    out.file.write(b"new")
    out.sync_behind()
    with pytest.raises(OSError, match="Input/output"):
        out.commit()
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["out.bin"]
