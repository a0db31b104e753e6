"""The client-side commands (keygen, token, tools, call, status) as a user runs them, against real nodes."""

from __future__ import annotations

import json
import stat
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from test_cli_run import FEDNODE
from test_mcp_chain import fixture_server

import fednode
from fednode._cli._commands import parse_arguments
from fednode._cli._formatting import format_status

from conftest import SECRET, mesh, node_config

CLIENT_TOKEN = "client-token-for-cli-tests-0123"
#: The fixture's tools as the node exposes them (prefix "fx").
# fx__roots_only: the node declares roots when it reads the fixture's lists, so it is listed too.
FX_TOOLS = {"fx__add", "fx__echo", "fx__fail", "fx__slow", "fx__progress", "fx__grow", "fx__pid", "fx__meta",
            "fx__ask", "fx__task_status", "fx__roots_only"}


async def fednode_cli(*args: str, env: dict[str, str] | None = None,
                      timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    """Run the ``fednode`` console command; nothing inherited from the test's environment but PATH.

    ``timeout`` is a safety net: several interpreters starting at once on a busy machine are slow."""
    with trio.fail_after(timeout):
        return await trio.run_process([FEDNODE, *args], capture_stdout=True, capture_stderr=True, check=False,
                                      stdin=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin", **(env or {})})


async def fednode_many(*invocations: Sequence[str],
                       env: dict[str, str] | None = None) -> list[subprocess.CompletedProcess[bytes]]:
    """Run several ``fednode`` commands at once (each pays the interpreter's start-up) and return their results."""
    results: list[subprocess.CompletedProcess[bytes] | None] = [None] * len(invocations)

    async def one(index: int, args: Sequence[str]) -> None:
        results[index] = await fednode_cli(*args, env=env)

    async with trio.open_nursery() as nursery:
        for index, args in enumerate(invocations):
            nursery.start_soon(one, index, args)
    return [r for r in results if r is not None]


def out(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stdout.decode()


def err_line(result: subprocess.CompletedProcess[bytes]) -> str:
    """The single line a failed command prints on stderr (asserting it is exactly one, without a traceback)."""
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("fednode: ")
    return lines[0]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@asynccontextmanager
async def node_with_fixture(client_tokens: Sequence[str] = ()) -> AsyncIterator[fednode.Node]:
    """One node on 127.0.0.1 with the fixture MCP server attached, its tools listed."""
    async with fednode.open_node(node_config("node-a", clients={"tokens": list(client_tokens)})) as node:
        await node.add_server(fixture_server(), timeout=60)
        await node.federation.wait_for("fx__add", timeout=30)
        yield node


class TestKeygen:
    """keygen writes fresh key material to new owner-only files, never prints a secret, never overwrites."""

    async def test_hs512_secret_file_is_private_and_loads_in_a_config(self, tmp_path: Path) -> None:
        result = await fednode_cli("keygen", "--out", str(tmp_path / "link"))
        assert result.returncode == 0, result.stderr
        secret_file = tmp_path / "link.secret"
        assert mode(secret_file) == 0o600
        secret = secret_file.read_text().strip()
        assert len(secret.encode()) >= 64
        assert secret not in out(result) and secret not in result.stderr.decode()
        assert str(secret_file) in out(result) and 'secret = "${FEDNODE_SECRET}"' in out(result)

        config_file = tmp_path / "node.toml"
        config_file.write_text('[node]\nid = "node-a"\n[auth]\nsecret = "${FEDNODE_SECRET}"\n'
                               '[[peers]]\nid = "node-b"\n')
        config = fednode.load_config(config_file, environ={"FEDNODE_SECRET": secret})
        assert config.auth.secrets[0].reveal() == secret.encode()

    async def test_eddsa_key_pairs_authenticate_two_nodes(self, tmp_path: Path) -> None:
        a, b = await fednode_many(("keygen", "--algorithm", "EdDSA", "--out", str(tmp_path / "a")),
                                  ("keygen", "--algorithm", "eddsa", "--out", str(tmp_path / "b")))
        assert a.returncode == b.returncode == 0, (a.stderr, b.stderr)
        for name in ("a.pem", "a.pub", "b.pem", "b.pub"):
            assert mode(tmp_path / name) == 0o600
        assert (tmp_path / "a.pem").read_text().startswith("-----BEGIN PRIVATE KEY-----")
        assert (tmp_path / "a.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")

        def config(printed: str, peer_id: str, node_id: str, peer_public: str) -> fednode.NodeConfig:
            # The lines keygen printed for [auth] go into the configuration as they are.
            lines = printed.splitlines()
            start = lines.index("  [auth]")
            auth = "\n".join(line.strip() for line in lines[start:start + 3])
            assert 'algorithm = "EdDSA"' in auth and "private_key = " in auth
            text = f'[node]\nid = "{node_id}"\n{auth}\n[[peers]]\nid = "{peer_id}"\npublic_key = "{peer_public}"\n'
            (tmp_path / f"{node_id}.toml").write_text(text)
            return fednode.load_config(tmp_path / f"{node_id}.toml")

        config_a = config(out(a), "node-b", "node-a", str(tmp_path / "b.pub"))
        config_b = config(out(b), "node-a", "node-b", str(tmp_path / "a.pub"))
        minted = fednode.AuthManager("node-a", config_a.auth, {p.id: p for p in config_a.peers}).create_token("node-b")
        claims = fednode.AuthManager("node-b", config_b.auth, {p.id: p for p in config_b.peers}).verify_token(minted)
        assert (claims.issuer, claims.audience) == ("node-a", "node-b")

    async def test_refuses_to_overwrite_existing_files(self, tmp_path: Path) -> None:
        (tmp_path / "old.secret").write_text("keep me\n")
        (tmp_path / "pair.pub").write_text("keep me too\n")
        hs, ed = await fednode_many(("keygen", "--out", str(tmp_path / "old")),
                                    ("keygen", "--algorithm", "EdDSA", "--out", str(tmp_path / "pair")))
        assert hs.returncode == 1 and "old.secret already exists" in err_line(hs)
        assert ed.returncode == 1 and "pair.pub already exists" in err_line(ed)
        assert (tmp_path / "old.secret").read_text() == "keep me\n"
        assert (tmp_path / "pair.pub").read_text() == "keep me too\n"
        assert not (tmp_path / "pair.pem").exists()  # nothing half-written


class TestToken:
    """token prints a link token the peer accepts, and names the configured peers when asked for another."""

    async def test_token_verifies_at_the_peer_and_unknown_peer_is_refused(self, tmp_path: Path) -> None:
        config_file = tmp_path / "node-a.toml"
        config_file.write_text('[node]\nid = "node-a"\n[auth]\nsecret = "${TEST_SECRET}"\n'
                               '[[peers]]\nid = "node-b"\n[[peers]]\nid = "node-c"\n')
        env = {"TEST_SECRET": SECRET}
        good, unknown = await fednode_many(("token", "--config", str(config_file), "--peer", "node-b"),
                                           ("token", "--config", str(config_file), "--peer", "node-x"), env=env)
        assert good.returncode == 0 and good.stderr == b""
        [minted] = out(good).splitlines()  # the token alone
        config_b = node_config("node-b", peers=[{"id": "node-a"}])
        claims = fednode.AuthManager("node-b", config_b.auth, {p.id: p for p in config_b.peers}).verify_token(minted)
        assert (claims.issuer, claims.audience) == ("node-a", "node-b")

        assert unknown.returncode == 1 and unknown.stdout == b""
        line = err_line(unknown)
        assert "'node-x'" in line and "node-b, node-c" in line
        assert SECRET not in line


class TestToolsAndCall:
    """tools lists and call calls through a node; bad input of any kind ends with one clear line."""

    async def test_tools_table_json_and_config(self, tmp_path: Path) -> None:
        with trio.fail_after(180):
            async with node_with_fixture() as node:
                config_file = tmp_path / "client.toml"
                config_file.write_text(f'[node]\nid = "node-a"\ndata = "{node.data_url}"\n'
                                       f'[auth]\nsecret = "{SECRET}"\n')
                table, as_json, via_config = await fednode_many(
                    ("tools", "--url", node.data_url), ("tools", "--url", node.mcp_url, "--json"),
                    ("tools", "--config", str(config_file)))
        assert table.returncode == as_json.returncode == via_config.returncode == 0
        lines = out(table).splitlines()
        assert lines[0].split() == ["NAME", "DESCRIPTION"]
        assert any(line.split(None, 1) == ["fx__add", "Add two numbers."] for line in lines)
        assert {line.split()[0] for line in lines[1:]} == FX_TOOLS
        listed = json.loads(out(as_json))
        assert {tool["name"] for tool in listed} == FX_TOOLS
        add = next(tool for tool in listed if tool["name"] == "fx__add")
        assert add["inputSchema"]["required"] == ["a", "b"]
        assert out(via_config) == out(table)

    async def test_call_results_and_argument_parsing(self) -> None:
        with trio.fail_after(180):
            async with node_with_fixture() as node:
                url = node.data_url
                added, echoed, flag, verbatim, merged = await fednode_many(
                    ("call", "fx__add", "--arg", "a=2", "--arg", "b=40.5", "--url", url),
                    ("call", "fx__echo", "--arg", "text=hello world", "--url", url),
                    # JSON values are parsed (the fixture echoes Python's str() of what it got) ...
                    ("call", "fx__echo", "--arg", 'text={"k": [1, true, null]}', "--url", url),
                    # ... anything else stays a string.
                    ("call", "fx__echo", "--arg", "text=007", "--url", url),
                    ("call", "fx__add", "--json-args", '{"a": 1, "b": 2}', "--arg", "b=5", "--url", url, "--json"))
        assert [r.returncode for r in (added, echoed, flag, verbatim, merged)] == [0] * 5
        assert out(added) == '42.5\n{\n  "result": 42.5\n}\n'  # text content, then structuredContent
        assert out(echoed) == "hello world\n"
        assert out(flag) == "{'k': [1, True, None]}\n"
        assert out(verbatim) == "007\n"
        result = json.loads(out(merged))
        assert result["structuredContent"] == {"result": 6} and result["isError"] is False
        assert result["content"] == [{"type": "text", "text": "6"}]

    async def test_bad_arguments_are_usage_errors(self, tmp_path: Path) -> None:
        url = "http://127.0.0.1:9"  # never contacted: the input is refused first
        any_port = tmp_path / "any-port.toml"
        any_port.write_text(f'[node]\nid = "node-a"\n[auth]\nsecret = "{SECRET}"\n')  # data port 0
        no_equals, not_object, not_json, no_target, two_targets, port_zero = await fednode_many(
            ("call", "fx__add", "--arg", "a", "--url", url),
            ("call", "fx__add", "--json-args", "[1, 2]", "--url", url),
            ("call", "fx__add", "--json-args", "{a: 1}", "--url", url),
            ("call", "fx__add"),
            ("tools", "--url", url, "--config", "node.toml"),
            ("status", "--config", str(any_port)))
        results = (no_equals, not_object, not_json, no_target, two_targets, port_zero)
        assert [r.returncode for r in results] == [2] * 6
        assert "port 0" in err_line(port_zero) and "--url" in err_line(port_zero)
        assert err_line(no_equals) == "fednode: invalid value for --arg: 'a' is not key=value"
        assert "--json-args" in err_line(not_object) and "expected a JSON object, got list" in err_line(not_object)
        assert "--json-args" in err_line(not_json) and "not valid JSON" in err_line(not_json)
        assert err_line(no_target) == err_line(two_targets) == "fednode: give exactly one of --url URL or --config FILE"

    async def test_unknown_tool_and_tool_error(self) -> None:
        with trio.fail_after(180):
            async with node_with_fixture() as node:
                unknown, failed, failed_json = await fednode_many(
                    ("call", "fx__nope", "--url", node.data_url),
                    ("call", "fx__fail", "--url", node.data_url),
                    ("call", "fx__fail", "--url", node.data_url, "--json"))
        assert unknown.returncode == 1 and unknown.stdout == b""
        assert err_line(unknown) == (f"fednode: unknown tool 'fx__nope' at {node.data_url} "
                                     "(list them with: fednode tools)")
        assert failed.returncode == 1 and out(failed) == "it failed\n"
        assert err_line(failed) == "fednode: tool 'fx__fail' reported an error"
        assert failed_json.returncode == 1 and json.loads(out(failed_json))["isError"] is True

    async def test_unreachable_url_and_debug_traceback(self) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        await listeners[0].aclose()  # nothing listens there now: connections are refused
        url = f"http://127.0.0.1:{port}"
        plain, debug, status = await fednode_many(("call", "fx__add", "--url", url),
                                                  ("tools", "--url", url, "--debug"),
                                                  ("status", "--url", url))
        assert plain.returncode == 1 and err_line(plain).startswith(f"fednode: cannot reach {url}")
        assert status.returncode == 1 and err_line(status).startswith(f"fednode: cannot reach {url}")
        assert debug.returncode == 1
        stderr = debug.stderr.decode()
        assert "Traceback (most recent call last)" in stderr and "ConnectError" in stderr
        assert stderr.splitlines()[-1].startswith(f"fednode: cannot reach {url}")

    async def test_client_token_required_and_checked(self, tmp_path: Path) -> None:
        with trio.fail_after(180):
            async with node_with_fixture([CLIENT_TOKEN]) as node:
                config_file = tmp_path / "node-a.toml"
                config_file.write_text(f'[node]\nid = "node-a"\ndata = "{node.data_url}"\n[auth]\nsecret = "{SECRET}"\n'
                                       f'[clients]\ntokens = ["{CLIENT_TOKEN}"]\n')
                url = node.data_url
                wrong, missing, status_wrong = await fednode_many(
                    ("call", "fx__add", "--json-args", '{"a": 1, "b": 1}', "--url", url, "--token", "not-the-token"),
                    ("tools", "--url", url),
                    ("status", "--url", url, "--token", "not-the-token"))
                from_env, from_config = await fednode_many(
                    ("call", "fx__add", "--json-args", '{"a": 1, "b": 1}', "--url", url),
                    ("call", "fx__add", "--json-args", '{"a": 1, "b": 1}', "--config", str(config_file)),
                    env={"FEDNODE_TOKEN": CLIENT_TOKEN})
        assert wrong.returncode == 1 and "refused the client token (401 Unauthorized)" in err_line(wrong)
        assert status_wrong.returncode == 1 and "refused the client token (401 Unauthorized)" in err_line(status_wrong)
        assert missing.returncode == 1 and "requires a client token (401 Unauthorized)" in err_line(missing)
        assert from_env.returncode == from_config.returncode == 0
        assert out(from_env).startswith("2\n") and out(from_config) == out(from_env)
        for result in (wrong, missing, status_wrong, from_env, from_config):
            assert CLIENT_TOKEN.encode() not in result.stderr


class TestStatus:
    """status shows what the node's {data}/status reports, as tables or as the JSON received."""

    SAMPLE: dict[str, Any] = {
        "node": {"id": "a", "version": "0.1.0", "uptime_s": 3723.4, "control": "ws://127.0.0.1:8100",
                 "data": "http://127.0.0.1:8101",
                 "reload": {"count": 2, "last": {"ok": False, "error": "peers[0].id: bad id", "summary": "",
                                                 "ago_s": 3.2}}},
        "peers": [{"id": "b", "state": "up", "direction": "outbound", "rtt_ms": 0.41, "last_seen_s": 1.2,
                   "reconnects": 1, "last_error": None, "control": "ws://127.0.0.1:8200"},
                  {"id": "c", "state": "backoff", "direction": None, "rtt_ms": None, "last_seen_s": None,
                   "reconnects": 4, "last_error": "connection refused", "control": None}],
        "servers": [{"id": "clock", "state": "up", "era": "2026-07-28", "restarts": 0, "last_error": None,
                     "tools": 2, "prompts": 0, "resources": 1, "resource_templates": 0}],
        "routes": {"total": 3, "by_origin": {"b": 1, "c": 2}, "conflicts": ["tools 'x__now': servers 'x' and 'y'"]},
        "in_flight": 5,
    }

    def test_format_shows_every_section(self) -> None:
        lines = format_status(self.SAMPLE).splitlines()
        assert lines[0] == ("node a  version 0.1.0  up 1h02m  reloads 2 (last 3.2s ago: failed: "
                            "peers[0].id: bad id)")
        peer_b = next(line.split() for line in lines if line.strip().startswith("b "))
        assert peer_b == ["b", "up", "outbound", "0.41", "ms", "1.2s", "ago", "1", "ws://127.0.0.1:8200", "-"]
        peer_c = next(line.split() for line in lines if line.strip().startswith("c "))
        assert peer_c == ["c", "backoff", "-", "-", "-", "4", "-", "connection", "refused"]
        clock = next(line.split() for line in lines if line.strip().startswith("clock"))
        assert clock == ["clock", "up", "2026-07-28", "0", "2", "0", "1", "0", "-"]
        assert "routes: 3" in lines and "conflicts: 1" in lines
        assert [line.split() for line in lines if line.startswith("  ") and line.split()[0] in "bc"][-2:] == [
            ["b", "1"], ["c", "2"]]
        assert "  - tools 'x__now': servers 'x' and 'y'" in lines
        assert lines[-1] == "in flight: 5"

    def test_format_tolerates_an_empty_node(self) -> None:
        text = format_status({"node": {"id": "solo"}})
        assert text.splitlines()[0].startswith("node solo")
        assert "peers: 0" in text and "servers: 0" in text and "in flight: 0" in text

    async def test_status_of_a_node_with_a_peer_and_a_server(self) -> None:
        with trio.fail_after(180):
            async with mesh("node-a", "node-b") as nodes:
                a = nodes["node-a"]
                await a.add_server(fixture_server(), timeout=60)
                table, as_json = await fednode_many(("status", "--url", a.data_url),
                                                    ("status", "--url", a.mcp_url, "--json"))
        assert table.returncode == as_json.returncode == 0, (table.stderr, as_json.stderr)
        status = json.loads(out(as_json))
        assert status["node"]["id"] == "node-a"
        assert [(p["id"], p["state"]) for p in status["peers"]] == [("node-b", fednode.PeerState.UP.value)]
        assert [(s["id"], s["state"], s["tools"]) for s in status["servers"]] == [("fx", "up", len(FX_TOOLS))]
        lines = out(table).splitlines()
        assert lines[0].startswith(f"node node-a  version {fednode.__version__}  up ")
        peer_b = next(line.split() for line in lines if line.strip().startswith("node-b"))
        assert peer_b[:3] == ["node-b", "up", "outbound"]
        fx = next(line.split() for line in lines if line.strip().startswith("fx "))
        assert fx[:2] == ["fx", "up"] and fx[4] == str(len(FX_TOOLS))


@pytest.mark.parametrize(("json_args", "args", "expected"), [
    (None, ["n=1", "f=2.5", "t=true", "z=null", "s=hello", "q=\"007\"", "e=", "kv=a=b"],
     {"n": 1, "f": 2.5, "t": True, "z": None, "s": "hello", "q": "007", "e": "", "kv": "a=b"}),
    ('{"a": {"deep": [1]}, "b": 1}', ["b=2"], {"a": {"deep": [1]}, "b": 2}),
])
def test_parse_arguments(json_args: str | None, args: list[str], expected: dict[str, Any]) -> None:
    assert parse_arguments(json_args, args) == expected
