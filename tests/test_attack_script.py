"""scripts/attack.py (issue 12's measurement) still runs: a quick forged-route phase against real nodes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "attack.py"


def fixtures_of(pid: int) -> list[int]:
    """Live processes running the test fixture that the script with ``pid`` attached (its ``--name``)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as file:
                argv = file.read().split(b"\0")
        except OSError:
            continue
        if f"attack{pid}".encode() in argv:
            found.append(int(entry))
    return found


def test_quick_forged_phase_prints_the_summary_and_ends_its_processes() -> None:
    process = subprocess.Popen([sys.executable, str(SCRIPT), "--quick", "--phases", "forged"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # ~35 s on an idle machine; the script bounds each of its own waits
        stdout, stderr = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    out = stdout.decode()
    assert process.returncode == 0, out + stderr.decode()
    assert "CPUs, load average" in out.splitlines()[0]
    # The phase's own table, then the summary with the target.
    assert "| attack " in out and "client calls sent to evil" in out
    assert "forged (node-c, notes) path [node-c, evil]" in out
    assert "replayed, path shortened to [node-c, evil]" in out
    assert "phase forged failed" not in out
    summary = out[out.index("| target "):]
    assert "| measured " in summary and "| ok? |" in summary
    assert "forged routes never used" in summary
    # Every process it started is gone, node-c's servers included (a killed one may take a moment).
    deadline = time.monotonic() + 30
    while fixtures_of(process.pid):
        assert time.monotonic() < deadline, f"left running: {fixtures_of(process.pid)}"
        time.sleep(0.1)


def test_unknown_phase_is_a_usage_error() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--phases", "forged,nonsense"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "--phases: choose from quiet, forged, forward, routes, amplify" in done.stderr
