"""tools/fuzz_campaign.py: a stopped campaign keeps what it did (the runs are recorded)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_sigterm_records_the_interrupted_run(tmp_path):
    work = tmp_path / "work"
    cmd = [
        sys.executable,
        os.path.join(ROOT, "tools", "fuzz_campaign.py"),
        "codec-raw",
        "--engine",
        "python",
        "--seconds",
        "600",
        "--work",
        str(work),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stats_path = work / "stats-codec-raw.json"
    deadline = time.monotonic() + 60
    while not stats_path.exists() and time.monotonic() < deadline:  # the target is fuzzing
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 130, out
    records = json.loads((work / "campaign.json").read_text())
    assert len(records) == 1, records
    rec = records[0]
    stats = json.loads(stats_path.read_text())
    assert rec["target"] == "codec-raw" and rec["interrupted"] is True
    assert rec["runs"] == stats["execs"] > 0
    assert rec["wall_seconds"] < 30  # stopped, not run out
    assert "| codec-raw | 1 |" in out  # the table of the runs so far


def test_a_continued_campaign_runs_a_new_seed(tmp_path):
    work = tmp_path / "work"
    base = [
        sys.executable,
        os.path.join(ROOT, "tools", "fuzz_campaign.py"),
        "codec-raw",
        "--engine",
        "python",
        "--seconds",
        "120",
        "--work",
        str(work),
    ]
    for total in (300, 600):  # the second campaign continues the first up to 600 executions
        subprocess.run(
            base + ["--executions", str(total)], check=True, capture_output=True, timeout=120
        )
    records = json.loads((work / "campaign.json").read_text())
    assert [r["seed"] for r in records] == [1, 2]
    assert sum(r["runs"] for r in records) >= 600
    subprocess.run(
        base + ["--executions", "900", "--seed", "7"], check=True, capture_output=True, timeout=120
    )
    assert json.loads((work / "campaign.json").read_text())[-1]["seed"] == 7
