"""Memory bombs, each in a fresh process: CmfError, and peak memory stays under 64 MiB."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .bombs import BOMBS, CONTROL

MiB = 1 << 20
LIMIT = 64 * MiB
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def measure(name: str, directory: str) -> dict:
    r = subprocess.run(
        [sys.executable, "-m", "tests.attacks.bombs", name, directory],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_bomb(tmp_path, name):
    m = measure(name, str(tmp_path))
    _, _, expected = BOMBS[name]
    assert m["is_cmf_error"], f"{m['error']}: {m['message']}"
    assert expected.lower() in m["message"].lower(), m["message"]
    assert m["tracemalloc_peak"] < LIMIT, f"tracemalloc peak {m['tracemalloc_peak'] / MiB:.1f} MiB"
    grew = m["rss_after"] - m["rss_before"]
    assert grew < LIMIT, f"ru_maxrss grew by {grew / MiB:.1f} MiB"
    print(
        f"\n{name}: {m['file_bytes']} B file, "
        f"tracemalloc peak {m['tracemalloc_peak'] / 1024:.1f} KiB, "
        f"maxrss {m['rss_before'] / MiB:.1f} -> {m['rss_after'] / MiB:.1f} MiB: {m['message'][:90]}"
    )


def test_measurement_sees_real_allocations(tmp_path):
    m = measure(CONTROL, str(tmp_path))
    assert m["error"] is None, m["message"]
    assert m["tracemalloc_peak"] >= 80 * MiB
    assert m["rss_after"] - m["rss_before"] >= 64 * MiB
