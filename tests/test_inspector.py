"""The MCP Inspector (the reference MCP client, CLI mode) lists and calls a federated tool through a node.

Opt-in like the conformance suite (it installs Node 22 and ``@modelcontextprotocol/inspector`` from
the npm registry on first use, into ``.conformance/``): ``FEDNODE_CONFORMANCE=1 .venv/bin/python -m
pytest tests/test_inspector.py``. ``.ci/run`` sets it.

Node B has the example notes server attached; node A peers with B. The Inspector, in each of its
protocol eras (``legacy``, ``modern``, ``auto``), runs ``tools/list`` and ``tools/call`` of
``notes__word_count``:

- over Streamable HTTP at node A's ``{data}/mcp``;
- over stdio, launching ``fednode mcp FILE`` itself (a node of its own that peers with B), with the
  configuration as a positional path (the Inspector claims ``--config`` for itself) or in
  ``FEDNODE_CONFIG``.

At ``legacy`` the Inspector sets a log level right after ``initialize``; the notes server has no
logging, and before the fix the node passed the server's "Method not found" on as the result of
the next ``tools/call``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

import fednode

from conftest import SECRET, node_config

pytestmark = pytest.mark.skipif(os.environ.get("FEDNODE_CONFORMANCE") != "1",
                                reason="set FEDNODE_CONFORMANCE=1 to run the MCP Inspector (needs npm)")

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "inspector"
FEDNODE = str(Path(sys.executable).parent / "fednode")
ERAS = ("legacy", "modern", "auto")
TOOL = "notes__word_count"
TEXT = "three little words"
#: A stdio node is new for every Inspector run: its first requests may come before node B's routes.
STDIO_ATTEMPTS = 10
#: One Inspector run, start to exit (a stdio run starts a node too); generous for a busy machine.
RUN_TIMEOUT = 90


@pytest.fixture(scope="module")
def installed() -> None:
    done = subprocess.run([str(SCRIPT), "--install-only"], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, f"installing the Inspector failed:\n{done.stdout}\n{done.stderr}"


def inspector_env(home: Path) -> dict[str, str]:
    """The environment of an Inspector run: its catalog and settings files kept in ``home``."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("FEDNODE_")}, "HOME": str(home),
            "MCP_CATALOG_PATH": str(home / "catalog.json"), "MCP_CLIENT_CONFIG_PATH": str(home / "client.json")}


async def inspect(home: Path, era: str, method: str, target: list[str], *options: str) -> tuple[int, Any, str]:
    """Run ``inspector --cli`` once; returns its exit status, its JSON output (result or error) and stderr."""
    command = [str(SCRIPT), "--cli", "--protocol-era", era, "--method", method, "--format", "json",
               *options, "--", *target]
    with trio.fail_after(RUN_TIMEOUT):
        done = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False,
                                      stdin=subprocess.DEVNULL, env=inspector_env(home))
    stdout, stderr = done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
    # The result goes to stdout, an error envelope to stderr: the last JSON line of either.
    lines = [line for line in (stdout + "\n" + stderr).splitlines() if line.startswith("{")]
    output = json.loads(lines[-1]) if lines else None
    return done.returncode, output, f"exit {done.returncode}\nstdout: {stdout[-2000:]}\nstderr: {stderr[-2000:]}"


def listed(output: Any) -> set[str]:
    tools = (output or {}).get("result", {}).get("tools", [])
    return {tool.get("name") for tool in tools if isinstance(tool, dict)}


def call_text(output: Any) -> str | None:
    result = (output or {}).get("result") or {}
    content = result.get("content") or [{}]
    return content[0].get("text") if not result.get("isError") else None


async def list_and_call(home: Path, era: str, target: list[str], *options: str, attempts: int = 1) -> None:
    """tools/list shows the federated tool and tools/call returns its text (each retried while a
    fresh stdio node has not learned the route yet, at most ``attempts`` runs)."""
    for _ in range(attempts):
        status, output, report = await inspect(home, era, "tools/list", target, *options)
        if TOOL in listed(output):
            break
    assert status == 0 and TOOL in listed(output), f"{era} tools/list: {TOOL} not listed\n{report}"
    for _ in range(attempts):
        status, output, report = await inspect(home, era, "tools/call", target, *options,
                                               "--tool-name", TOOL, "--tool-args-json", json.dumps({"text": TEXT}))
        if (output or {}).get("error", {}).get("code") != "tool_not_found":
            break
    assert status == 0 and call_text(output) == "3", f"{era} tools/call {TOOL}\n{report}"


@asynccontextmanager
async def node_b_with_notes() -> AsyncIterator[fednode.Node]:
    """Node B with the example notes server attached (stdio); node-a and node-s may dial in."""
    async with fednode.open_node(node_config("node-b", peers=[{"id": "node-a"}, {"id": "node-s"}])) as b:
        await b.add_server(fednode.ServerConfig(id="notes", command=sys.executable,
                                                args=("-m", "fednode.examples.notes")), timeout=30)
        yield b


def stdio_config(tmp_path: Path, b: fednode.Node) -> Path:
    path = tmp_path / "node-s.toml"
    path.write_text('[node]\nid = "node-s"\ncontrol = "ws://127.0.0.1:0"\ndata = "http://127.0.0.1:0"\n'
                    f'[auth]\nsecret = "{SECRET}"\n'
                    f'[[peers]]\nid = "node-b"\ncontrol = "{b.control_url}"\n')
    return path


@pytest.mark.parametrize("era", ERAS)
async def test_over_http(installed: None, tmp_path: Path, era: str) -> None:
    with trio.fail_after(4 * RUN_TIMEOUT):
        async with node_b_with_notes() as b, \
                fednode.open_node(node_config("node-a", peers=[{"id": "node-b", "control": b.control_url}])) as a:
            await a.federation.wait_for(TOOL, timeout=30)
            await list_and_call(tmp_path, era, [a.mcp_url])


@pytest.mark.parametrize("era", ERAS)
async def test_over_stdio_with_a_positional_config(installed: None, tmp_path: Path, era: str) -> None:
    """``inspector --cli /abs/fednode mcp FILE``: what a desktop host's JSON config launches."""
    with trio.fail_after(2 * STDIO_ATTEMPTS * RUN_TIMEOUT):
        async with node_b_with_notes() as b:
            config = stdio_config(tmp_path, b)
            await list_and_call(tmp_path, era, [FEDNODE, "mcp", str(config)], attempts=STDIO_ATTEMPTS)


async def test_over_stdio_with_the_config_in_the_environment(installed: None, tmp_path: Path) -> None:
    with trio.fail_after(2 * STDIO_ATTEMPTS * RUN_TIMEOUT):
        async with node_b_with_notes() as b:
            config = stdio_config(tmp_path, b)
            await list_and_call(tmp_path, "legacy", [FEDNODE, "mcp"], "-e", f"FEDNODE_CONFIG={config}",
                                attempts=STDIO_ATTEMPTS)
