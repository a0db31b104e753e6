"""scripts/bench_load.py (issue 14's load generator) drives a real node and checks every answer."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio

import fednode

from conftest import node_config

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_load.py"
FIXTURE = str(Path(__file__).parent / "mcp_fixtures" / "test_server.py")


async def load(*args: str) -> dict[str, Any]:
    """Run the generator as its users do; the JSON result it prints last."""
    with trio.fail_after(60):
        done = await trio.run_process([sys.executable, str(SCRIPT), "--workers", "2", "--calls", "20",
                                       "--duration", "50", "--json", *args],
                                      capture_stdout=True, capture_stderr=True, check=False)
    out = done.stdout.decode()
    assert done.returncode == 0, out + done.stderr.decode()
    result: dict[str, Any] = json.loads(out.splitlines()[-1])
    return result


async def test_two_client_processes_through_a_node_and_a_wrong_answer_counted() -> None:
    server = fednode.ServerConfig(id="fx", command=sys.executable, args=(FIXTURE,))
    async with fednode.open_node(node_config("node-a")) as node:
        await node.add_server(server, timeout=60)
        await node.federation.wait_for("fx__add", "fx__fail", timeout=30)
        results = {mode: await load("--url", node.mcp_url, "--tool", "fx__add", "--mode", mode,
                                    "--pid", f"self={os.getpid()}") for mode in ("2026-07-28", "legacy")}
        # ``fail`` answers with an isError result: a call the checker must not count as done
        wrong = await load("--url", node.mcp_url, "--tool", "fx__fail", "--warmup", "0")
    for result in results.values():
        assert (result["calls"], result["failures"], result["error"]) == (40, 0, None)
        assert result["p50_ms"] > 0 and result["rate"] > 0
        assert result["cpu"]["self"] > 0  # the node runs in this process: its CPU time was read
    assert (wrong["calls"], wrong["failures"], wrong["kinds"]) == (0, 40, {"wrong result": 40})
    assert "isError" in wrong["examples"][0]


async def test_null_server_ceiling() -> None:
    result = await load("--null", "--mode", "legacy")
    assert (result["calls"], result["failures"]) == (40, 0)
    assert result["cpu"]["null server"] >= 0


def test_usage_errors_name_the_choices() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT.parent / "bench_mcp.py"), "--load-paths", "node1,nonsense"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "unknown --load-paths ['nonsense']; choose from null, direct-http, node1" in done.stderr
    done = subprocess.run([sys.executable, str(SCRIPT), "--url", "http://127.0.0.1:1/mcp", "--null"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "give exactly one of --url and --null" in done.stderr


class FakeClient:
    """An SDK client stand-in: add(2, 1) raises, add(3, 1) answers wrongly, anything from 100 on raises."""

    async def call_tool(self, name: str, arguments: dict[str, int]) -> Any:
        a, b = arguments["a"], arguments["b"]
        if a == 2 or a >= 100:
            raise RuntimeError(f"boom {a}")
        return SimpleNamespace(is_error=False, structured_content={"result": a + b + (a == 3)})


async def test_sequential_phase_counts_a_failed_call_and_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    bench_mcp = importlib.import_module("bench_mcp")
    report = importlib.import_module("_bench_report")
    spec = report.PathSpec("fake", "fake", "add", lambda mode: None, lambda mode: {}, "http")
    row = report.Row(spec, "legacy", 6, client=FakeClient())
    samples: list[int] = []
    await bench_mcp.run_sequential(row, 6, 0, samples)
    assert (len(samples), row.failures, row.kinds) == (4, 2, {"RuntimeError": 2})
    assert "boom 2" in row.examples[0] and "unexpected result for add(3, 1)" in row.examples[1]
    # A path that keeps failing is dropped (PathBroken), after a bounded number of calls.
    with pytest.raises(bench_mcp.PathBroken, match="10 calls failed in a row"):
        await bench_mcp.run_sequential(row, 1000, 100, samples)
    assert row.failures == 2 + 10 and len(samples) == 4
