"""Ctrl-C and SIGTERM end ``cmf pack`` promptly, with worker processes (``--jobs``) or a dask
cluster busy, and leave no temporary file: a real signal to a real process group, as a
terminal sends it. The bound asserted here (5 s) leaves room for a loaded CI machine; the
figure on an idle machine is in the issue note (about 0.3 s)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import save_file as st_save

BOUND = 5.0  # seconds from the signal to the exit


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory):
    """A model whose planned pack measures candidates for tens of seconds (data-free plan)."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("interrupt") / "big.safetensors"
    st_save(
        {
            f"layer{i}.weight": rng.standard_normal((1024, 1024)).astype(np.float32)
            for i in range(16)
        },
        str(path),
    )
    return path


def _cmf(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cmf.cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        text=True,
    )


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def _cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the pack never got busy"
        time.sleep(0.05)


def _interrupt(proc: subprocess.Popen, sig: int = signal.SIGINT) -> tuple[float, str]:
    start = time.monotonic()
    os.killpg(proc.pid, sig)  # the whole group, as a terminal's Ctrl-C
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return time.monotonic() - start, err


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_with_busy_workers(tmp_path, slow_model, sig, code):
    out = tmp_path / "out"
    proc = _cmf("pack", slow_model, "-o", f"{out}/", "--preset", "balanced", "--jobs", "2")
    workers: list[int] = []

    def busy() -> bool:  # two workers have spent 1.5 s measuring (imports take less; the
        workers[:] = [
            c for c in _children(proc.pid) if _cpu_seconds(c) > 1.5
        ]  # resource tracker, ~0)
        return len(workers) >= 2

    _wait_for(busy, proc)
    seconds, err = _interrupt(proc, sig)
    assert proc.returncode == code, err
    assert "cmf: interrupted" in err and "Traceback" not in err, err
    assert seconds < BOUND, seconds
    for w in workers:  # the workers are gone too
        assert not os.path.exists(f"/proc/{w}") or "Z" in open(f"/proc/{w}/stat").read().split()[2]
    assert not out.exists() or os.listdir(out) == []


def test_ctrl_c_while_writing_leaves_no_temporary_file(tmp_path, slow_model):
    out = tmp_path / "out"
    out.mkdir()
    proc = _cmf("pack", slow_model, "-o", out / "m.cmf", "--preset", "q4", "--jobs", "2")
    _wait_for(lambda: any(n.endswith(".tmp") for n in os.listdir(out)), proc)
    seconds, err = _interrupt(proc)
    assert proc.returncode == 130 and seconds < BOUND, (seconds, err)
    assert os.listdir(out) == []


def test_ctrl_c_with_the_dask_executor(tmp_path, slow_model):
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        proc = _cmf(
            "pack",
            slow_model,
            "-o",
            tmp_path / "m.cmf",
            "--preset",
            "balanced",
            "--executor",
            "dask",
            "--scheduler",
            cluster.scheduler_address,
        )
        _wait_for(lambda: any(client.processing().values()), proc)
        time.sleep(0.5)  # a task is running, not only queued
        seconds, err = _interrupt(proc)
        assert proc.returncode == 130 and "cmf: interrupted" in err, err
        assert seconds < BOUND, seconds
        assert not (tmp_path / "m.cmf").exists()
