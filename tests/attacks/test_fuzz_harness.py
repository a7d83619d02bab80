"""The fuzz harness's own checks (tools/fuzz_*.py) still catch what they are for.

The ``shards`` target's open watch (an audit hook, tools/fuzz_shards.py) caches its verdict on
each absolute path; these tests make sure a cached verdict never hides a read outside the set:
the same outside open is flagged on every run, and a path that resolved inside the set is looked
at again once something during a run could have changed how it resolves (here: a symlink).
"""

from __future__ import annotations

import os

import pytest

from tools import fuzz_shards
from tools.fuzz_common import Finding


def _run_with(monkeypatch, opens) -> None:
    fx = fuzz_shards.fixture()

    def check_set(path, data, fixture):
        opens(fixture)

    monkeypatch.setattr(fuzz_shards, "check_set", check_set)
    fuzz_shards.run_shards(fx.index_bytes)


def _read(path: str, flags: int = 0) -> None:
    try:
        os.close(os.open(path, os.O_RDONLY | flags))
    except OSError:
        pass


@pytest.mark.parametrize("where", ["secret", "dotdot", "link", "up"])
def test_outside_open_flagged_every_run(monkeypatch, where):
    def opens(fx):
        path = {
            "secret": fx.secret,
            "dotdot": os.path.join(fx.dir, "..", "secret.cmf"),
            "link": os.path.join(fx.dir, "link.cmf"),  # followed: reads secret.cmf
            "up": os.path.join(fx.dir, "up.cmf", "secret.cmf"),
        }[where]
        _read(path)

    for _ in range(3):  # the first run fills the cache, the others use it
        with pytest.raises(Finding, match="outside the set"):
            _run_with(monkeypatch, opens)


def test_inside_and_refused_opens_not_flagged(monkeypatch):
    def opens(fx):
        _read(os.path.join(fx.dir, fx.shards[0]), getattr(os, "O_NOFOLLOW", 0))
        _read(os.path.join(fx.dir, "link.cmf"), getattr(os, "O_NOFOLLOW", 0))  # ELOOP
        _read(os.path.join(fx.dir, fuzz_shards.INDEX))

    for _ in range(3):
        _run_with(monkeypatch, opens)


def test_verdict_recomputed_after_a_symlink(monkeypatch):
    fx = fuzz_shards.fixture()
    probe = os.path.join(fx.dir, "probe.cmf")
    _run_with(monkeypatch, lambda fx: _read(probe))  # missing, inside the set: fine, cached
    try:

        def opens(fx):
            os.symlink(os.path.join("..", "secret.cmf"), probe)  # what a broken reader might do
            _read(probe)

        with pytest.raises(Finding, match="outside the set"):
            _run_with(monkeypatch, opens)
    finally:
        if os.path.lexists(probe):
            os.remove(probe)
    _run_with(monkeypatch, lambda fx: _read(probe))  # gone again: fine
