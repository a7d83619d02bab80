"""The stored hostile files in tests/attacks/files/ are current and each gives its error."""

from __future__ import annotations

import os

import pytest

import cmf

from .common import read_all
from .make_files import FILES, FILES_DIR


def test_stored_files_are_current():
    stored = sorted(f for f in os.listdir(FILES_DIR) if f.endswith(".cmf"))
    assert stored == sorted(FILES), "run: python -m tests.attacks.make_files"
    for name, (build, _, _) in FILES.items():
        with open(os.path.join(FILES_DIR, name), "rb") as fh:
            assert fh.read() == build(), f"{name} is stale; run: python -m tests.attacks.make_files"


def test_stored_files_are_small():
    for name in FILES:
        assert os.path.getsize(os.path.join(FILES_DIR, name)) <= 4096, name


@pytest.mark.parametrize("name", sorted(FILES))
def test_stored_file_is_rejected(name):
    _, error, match = FILES[name]
    path = os.path.join(FILES_DIR, name)
    with pytest.raises(cmf.CmfError) as info:
        read_all(path)
    assert type(info.value).__name__ == error, f"{type(info.value).__name__}: {info.value}"
    assert match in str(info.value), str(info.value)
    report = cmf.validate(path)
    assert not report.valid and any(match in e for e in report.errors), report.errors
