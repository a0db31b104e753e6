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


def test_evils_own_flood_frames_verify_at_the_node_they_are_sent_to() -> None:
    """The accepted route flood is accepted: each route verifies with evil's per-pair secret at node-a
    (and with no other secret), so the phase measures applying routes, not refusing them."""
    import json

    import fednode
    from fednode._config._signing import Keyring
    from fednode._federation._route_proof import RouteProofs
    from fednode._federation._routes import route_from_wire

    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import attack
    finally:
        sys.path.remove(str(SCRIPT.parent))
    evil_secret = "e" * 64
    (frame,) = attack.own_flood_frames(1, "node-a", evil_secret)
    assert 400 * 1024 < len(frame) < 600 * 1024

    def verdicts(secret: str) -> set[object]:
        peer = fednode.PeerConfig(id="evil", secrets=(fednode.Secret(secret),))
        auth = fednode.AuthConfig(secrets=(fednode.Secret("o" * 64),))
        proofs = RouteProofs("node-a", Keyring("node-a", auth=lambda: auth, peer=lambda p: peer if p == "evil"
                                               else None, nodes=lambda: ()))
        routes = [route_from_wire(item) for item in json.loads(frame)["params"]["set"]]
        assert len(routes) == 10 and all(r.origin == "evil" and r.path == ("evil",) for r in routes)
        return {proofs.verify(r.origin, r.server, r.prefix, r.digest, r.proof, r.path) for r in routes}

    assert verdicts(evil_secret) == {None}
    assert None not in verdicts("x" * 64)
