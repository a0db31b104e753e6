"""The audit log (``[audit] path``) and the federation-wide trace id (W3C ``traceparent`` in ``_meta``)."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
import structlog
import trio
from hypothesis import given
from hypothesis import strategies as st
from mcp import Client
from mcp.shared.exceptions import MCPError
from oauth_issuer import TestIssuer
from test_cli_run import FEDNODE, read_events
from test_mcp_chain import FIXTURE, fixture_server
from test_oauth import bearer, call_add, oauth_clients

import fednode
from fednode._config._callers import Caller
from fednode._config._describe import describe
from fednode._errors import AuditError
from fednode._federation._audit import AuditEntry, AuditLog, item_name, outcome_of
from fednode._federation._caller_proof import params_digest
from fednode._federation._traceparent import (
    TraceParent,
    new_trace,
    parse_traceparent,
    trace_of,
    with_traceparent,
)

from conftest import SECRET, node_config

LINE_KEYS = ["time", "node", "trace", "role", "method", "name", "original", "server", "origin", "caller", "path",
             "outcome", "code", "ms"]
EXAMPLE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
#: looks like a credential: must never reach an audit line, whether it came in arguments or went out in results
SECRETISH = "sk-live-0123456789abcdefSECRET"

hex_digits = st.text("0123456789abcdef", min_size=1, max_size=1)


def hexes(length: int) -> st.SearchStrategy[str]:
    return st.text("0123456789abcdef", min_size=length, max_size=length).filter(lambda s: s != "0" * length)


class TestTraceparent:
    """A traceparent is parsed strictly (W3C Trace Context level 1); anything else is ignored, never an error."""

    def test_parses_the_spec_example(self) -> None:
        parsed = parse_traceparent(EXAMPLE)
        assert parsed == TraceParent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "01")
        assert str(parsed) == EXAMPLE

    @pytest.mark.parametrize("value", [
        EXAMPLE.upper(),  # hex must be lowercase
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero parent id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff is invalid
        EXAMPLE + "-extra",  # version 00 has exactly four fields
        EXAMPLE.replace("-", "_"),
        EXAMPLE[:-1],
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",  # a later version: fields end with "-"
        "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        "", None, 17, ["00"], {"traceparent": EXAMPLE}, "x" * 100_000,
    ])
    def test_refuses_what_is_not_one(self, value: object) -> None:
        assert parse_traceparent(value) is None

    def test_a_later_version_may_add_fields(self) -> None:
        parsed = parse_traceparent("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-later")
        assert parsed == TraceParent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "01")

    @given(hexes(32), hexes(16), st.text("0123456789abcdef", min_size=2, max_size=2))
    def test_round_trip(self, trace_id: str, parent_id: str, flags: str) -> None:
        value = TraceParent(trace_id, parent_id, flags)
        assert parse_traceparent(str(value)) == value

    @given(st.one_of(st.text(max_size=80), st.binary(max_size=80), st.integers(), st.none(),
                     st.lists(st.text(max_size=5), max_size=3)))
    def test_garbage_never_raises(self, value: object) -> None:
        parsed = parse_traceparent(value)
        assert parsed is None or (isinstance(value, str) and value[3:35] == parsed.trace_id)

    @given(st.text(max_size=60))
    def test_a_request_with_garbage_gets_a_new_trace(self, value: str) -> None:
        trace = trace_of({"_meta": {"traceparent": value}})
        assert parse_traceparent(str(trace)) == trace  # always a valid one to send on

    def test_the_clients_trace_goes_on_with_a_new_parent(self) -> None:
        params = {"name": "x", "_meta": {"traceparent": EXAMPLE, "progressToken": 7}}
        trace = trace_of(params)
        assert trace.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
        onward = with_traceparent(params, trace.child())
        assert onward["_meta"]["progressToken"] == 7 and onward["name"] == "x"
        child = parse_traceparent(onward["_meta"]["traceparent"])
        assert child is not None and child.trace_id == trace.trace_id and child.parent_id != trace.parent_id
        assert params["_meta"]["traceparent"] == EXAMPLE  # the client's params are not changed
        assert trace_of({}).trace_id != trace_of({}).trace_id
        assert trace_of({"_meta": "not an object"}).trace_id != trace.trace_id


    def test_a_hop_adding_its_span_leaves_the_caller_statement_valid(self) -> None:
        """Each hop puts its own span in _meta.traceparent, where there may have been no _meta at all:
        the params digest a caller statement is bound to does not change."""
        bare = {"name": "echo", "arguments": {"text": "x"}}
        digest = params_digest(bare)
        assert params_digest(with_traceparent(bare, new_trace())) == digest
        assert params_digest({**bare, "_meta": {}}) == digest
        with_token = {**bare, "_meta": {"progressToken": 1}}
        assert params_digest(with_traceparent(with_token, new_trace())) == params_digest(with_token) != digest


class TestLine:
    """An audit line has exactly the agreed fields, and names what a request was about."""

    def test_fields(self) -> None:
        caller = Caller(entry="node-a", kind="oauth", subject="ann@example.org", client="app", scopes=("mcp",))
        entry = AuditEntry(role="entry", method="tools/call", trace=TraceParent("a" * 32, "b" * 16), caller=caller,
                           path=["node-a"], name="fx__add", original="add", server="fx", origin="node-c",
                           time=0.0, started=10.0)
        line = entry.line("node-a", "ok", None, 10.25)
        assert list(line) == LINE_KEYS
        assert line == {"time": "1970-01-01T00:00:00.000Z", "node": "node-a", "trace": "a" * 32, "role": "entry",
                        "method": "tools/call", "name": "fx__add", "original": "add", "server": "fx",
                        "origin": "node-c", "caller": {"node": "node-a", "kind": "oauth", "sub": "ann@example.org",
                                                       "client": "app", "scopes": ["mcp"]},
                        "path": ["node-a"], "outcome": "ok", "code": None, "ms": 250.0}

    async def test_served_reads_only_the_shape_of_what_a_peer_sent(self) -> None:
        forward = {"origin": "node-c", "server": "fx", "method": "tools/call", "trace": ["node-a", 5, "node-b"],
                   "params": {"name": "add", "arguments": {"key": SECRETISH},
                              "_meta": {"traceparent": EXAMPLE}}}
        entry = AuditEntry.served("node-c", forward, Caller.of_node("node-b"))
        assert (entry.role, entry.original, entry.server, entry.origin) == ("owner", "add", "fx", "node-c")
        assert entry.path == ["node-a", "node-b", "node-c"] and entry.trace.trace_id == EXAMPLE[3:35]
        assert SECRETISH not in json.dumps(entry.line("node-c", "ok", None, entry.started))
        odd = AuditEntry.served("node-b", {"method": "x" * 10_000, "trace": "no", "params": []},
                                Caller.of_node("node-a"))
        line = odd.line("node-b", "error", -32602, odd.started)
        assert odd.role == "transit" and len(line["method"]) == 512 and line["path"] == ["node-b"]

    async def test_text_utf8_cannot_encode_is_written_escaped(self, tmp_path: Path) -> None:
        """A peer's JSON may carry lone surrogates (``"\\ud800"``): the writer must not fail on them."""
        path = tmp_path / "audit.jsonl"
        audit = AuditLog("node-b", log=structlog.get_logger())
        audit.open(path)
        entry = AuditEntry.served("node-b", json.loads('{"method": "tools/call", "server": "\\ud800x", '
                                                       '"params": {"name": "\\udfff"}}'), Caller.of_node("node-a"))
        async with trio.open_nursery() as nursery:
            await nursery.start(audit.run)
            audit.record(entry, "refused", -32602)
            [line] = await until_lines(path, 1)
            nursery.cancel_scope.cancel()
        assert (line["server"], line["original"]) == ("\ud800x", "\udfff") and audit.dropped == 0
        audit.close()

    @pytest.mark.parametrize(("method", "params", "name"), [
        ("tools/call", {"name": "fx__add", "arguments": {"a": SECRETISH}}, "fx__add"),
        ("prompts/get", {"name": "fx__greet"}, "fx__greet"),
        ("resources/read", {"uri": "fixture://a"}, "fixture://a"),
        ("completion/complete", {"ref": {"type": "ref/prompt", "name": "fx__greet"}}, "fx__greet"),
        ("completion/complete", {"ref": {"type": "ref/resource", "uri": "fixture://{x}"}}, "fixture://{x}"),
        ("tasks/get", {"taskId": "t1"}, None),
    ])
    def test_item_name(self, method: str, params: dict[str, Any], name: str | None) -> None:
        assert item_name(method, params) == name

    def test_outcomes(self) -> None:
        assert [outcome_of(code) for code in (-32052, -32050, -32051, -32004, -32054, -32053, -32602, None)] == [
            "timeout", "unreachable", "unreachable", "refused", "refused", "refused", "error", "error"]


def entry_for(method: str = "tools/call", trace: TraceParent | None = None) -> AuditEntry:
    return AuditEntry(role="entry", method=method, trace=trace or new_trace(), caller=Caller(entry="node-a"),
                      path=["node-a"], name="fx__echo", original="echo", server="fx", origin="node-a")


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def until_lines(path: Path, count: int, timeout: float = 30, *, lists: bool = True) -> list[dict[str, Any]]:
    """The lines of ``path`` once there are at least ``count`` (bounded: a busy machine writes late);
    without ``lists``, those of list requests (the SDK client may send its own) are left out."""
    with trio.fail_after(timeout):
        while len(found := [x for x in lines_of(path) if lists or not x["method"].endswith("/list")]) < count:
            await trio.sleep(0.02)
    return found


class TestWriter:
    """Lines go through a bounded buffer to a writer thread; full means dropped and counted, never blocked."""

    async def test_writes_lines_to_a_file_created_0600(self, tmp_path: Path) -> None:
        path = tmp_path / "audit.jsonl"
        counted: list[tuple[str, int]] = []
        audit = AuditLog("node-a", log=structlog.get_logger(), counted=lambda outcome, n: counted.append((outcome, n)))
        audit.open(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        async with trio.open_nursery() as nursery:
            await nursery.start(audit.run)
            audit.record(entry_for(), "ok")
            audit.record(entry_for(), "error", -32050)
            found = await until_lines(path, 2)
            nursery.cancel_scope.cancel()
        assert [(line["outcome"], line["code"]) for line in found] == [("ok", None), ("error", -32050)]
        assert all(list(line) == LINE_KEYS for line in found)
        assert audit.written == 2 and sum(n for outcome, n in counted if outcome == "written") == 2
        audit.close()

    async def test_a_full_buffer_drops_and_counts_and_warns_once_a_minute(self, tmp_path: Path,
                                                                           autojump_clock: trio.testing.MockClock,
                                                                           ) -> None:
        path = tmp_path / "audit.jsonl"
        counted: list[tuple[str, int]] = []
        audit = AuditLog("node-a", log=structlog.get_logger(), capacity=3,
                         counted=lambda outcome, n: counted.append((outcome, n)))
        audit.open(path)
        with structlog.testing.capture_logs() as logs:
            for _ in range(5):  # no writer running: the buffer fills
                audit.record(entry_for(), "ok")
            assert audit.dropped == 2
            await trio.sleep(30)
            audit.record(entry_for(), "ok")
            await trio.sleep(30)
            audit.record(entry_for(), "ok")
        warnings = [(e["event"], e["lines"]) for e in logs if e["log_level"] == "warning"]
        assert audit.dropped == 4 and warnings == [("audit.dropped", 1), ("audit.dropped", 3)]
        assert counted == [("dropped", 1)] * 4
        audit.close()  # what the buffer held is written (as at shutdown)
        assert len(lines_of(path)) == 3 and audit.written == 3

    async def test_reopen_after_the_file_is_moved_away(self, tmp_path: Path) -> None:
        """As logrotate does: move the file, then SIGHUP; the lines after the reopen land in a new file."""
        path, rotated = tmp_path / "audit.jsonl", tmp_path / "audit.jsonl.1"
        audit = AuditLog("node-a", log=structlog.get_logger())
        audit.open(path)
        async with trio.open_nursery() as nursery:
            await nursery.start(audit.run)
            audit.record(entry_for(trace=TraceParent("1" * 32, "2" * 16)), "ok")
            await until_lines(path, 1)
            path.rename(rotated)
            await audit.reopen(path)
            audit.record(entry_for(trace=TraceParent("3" * 32, "4" * 16)), "ok")
            await until_lines(path, 1)
            nursery.cancel_scope.cancel()
        assert [line["trace"] for line in lines_of(rotated)] == ["1" * 32]
        assert [line["trace"] for line in lines_of(path)] == ["3" * 32]
        with pytest.raises(AuditError, match="nowhere"):
            await audit.reopen(tmp_path / "nowhere" / "audit.jsonl")
        audit.close()

    async def test_a_node_that_cannot_open_its_audit_log_does_not_start(self, tmp_path: Path) -> None:
        missing = tmp_path / "no-such-folder" / "audit.jsonl"
        with pytest.raises(AuditError) as caught, trio.fail_after(30):
            async with fednode.open_node(node_config("node-a", audit={"path": str(missing)})):
                pass
        assert str(missing) in str(caught.value) and "No such file" in str(caught.value)

    async def test_fednode_run_names_the_audit_log_it_cannot_open(self, tmp_path: Path) -> None:
        path = _node_file(tmp_path, "node-a", "")
        path.write_text(path.read_text().replace('path = "node-a.jsonl"', 'path = "missing/audit.jsonl"'))
        with trio.fail_after(60):
            result = await trio.run_process([FEDNODE, "run", "--config", str(path)], capture_stderr=True,
                                            capture_stdout=True, check=False,
                                            env={"TEST_SECRET": SECRET, "PATH": "/usr/bin:/bin"})
        last = result.stderr.decode().strip().splitlines()[-1]
        assert result.returncode == 1
        assert last.startswith("fednode: ") and str(tmp_path / "missing" / "audit.jsonl") in last, last

    def test_the_path_is_relative_to_the_configuration_file(self, tmp_path: Path) -> None:
        config = tmp_path / "node.toml"
        config.write_text(f'[node]\nid = "node-a"\n[auth]\nsecret = "{SECRET}"\n[audit]\npath = "logs/audit.jsonl"\n')
        assert fednode.load_config(config).audit.path == tmp_path / "logs" / "audit.jsonl"
        assert f"  audit     {tmp_path / 'logs' / 'audit.jsonl'}" in describe(fednode.load_config(config)).splitlines()
        config.write_text(f'[node]\nid = "node-a"\n[auth]\nsecret = "{SECRET}"\n[audit]\nfile = "x"\n')
        with pytest.raises(fednode.ConfigError, match=r"audit\.file"):
            fednode.load_config(config)


@asynccontextmanager
async def audited_chain(tmp_path: Path) -> AsyncIterator[dict[str, fednode.Node]]:
    """In-process nodes node-a - node-b - node-c, each with its audit log ``<id>.jsonl``; fixture at node-c."""
    async with AsyncExitStack() as stack:
        nodes = {i: await stack.enter_async_context(fednode.open_node(node_config(
            f"node-{i}", audit={"path": str(tmp_path / f"node-{i}.jsonl")}))) for i in "abc"}
        for left, right in (("a", "b"), ("b", "c")):
            await nodes[right].register_peer(fednode.PeerConfig(id=f"node-{left}"), wait=False)
            await nodes[left].register_peer(fednode.PeerConfig(id=f"node-{right}", control=nodes[right].control_url))
        await nodes["c"].add_server(fixture_server(), timeout=60)
        await nodes["a"].federation.wait_for("fx__echo", "fx__fail", timeout=30)
        yield {f"node-{i}": node for i, node in nodes.items()}


class TestThroughTheChain:
    """Every node a request passes through writes one line; the lines share the trace id."""

    @pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
    async def test_entry_transit_and_owner_lines(self, tmp_path: Path, mode: str) -> None:
        with trio.fail_after(90):
            async with audited_chain(tmp_path) as nodes:
                a = nodes["node-a"]
                async with Client(a.mcp_url, mode=mode) as client:
                    await client.list_tools()
                    echoed = await client.call_tool("fx__echo", {"text": SECRETISH})
                    failed = await client.call_tool("fx__fail", {"token": SECRETISH})
                    with pytest.raises(MCPError):
                        await client.call_tool("fx__nope", {"token": SECRETISH})
                    meta = await client.call_tool("fx__meta", {}, meta={"traceparent": EXAMPLE})
                assert SECRETISH in str(echoed.content) and failed.is_error
                lines = {node_id: await until_lines(tmp_path / f"{node_id}.jsonl", count)
                         for node_id, count in (("node-a", 5), ("node-b", 3), ("node-c", 3))}
                while a.audit.written < len(lines["node-a"]):  # counted once the worker thread is back
                    await trio.sleep(0.02)
                metrics = (await _get(a, "/metrics")).text
        for found in lines.values():
            assert SECRETISH not in json.dumps(found)
            assert all(list(line) == LINE_KEYS for line in found)
        a_lines, b_lines, c_lines = lines["node-a"], lines["node-b"], lines["node-c"]
        # The list the client sent (and any its SDK sent itself) is a request served at the entry node.
        listed = [x for x in a_lines if x["method"] == "tools/list"]
        assert listed and all((x["role"], x["name"], x["outcome"], x["path"]) == ("entry", None, "ok", ["node-a"])
                              for x in listed)
        a_lines = [x for x in a_lines if x["method"] != "tools/list"]
        assert [(x["role"], x["name"], x["original"], x["outcome"]) for x in a_lines] == [
            ("entry", "fx__echo", "echo", "ok"), ("entry", "fx__fail", "fail", "tool_error"),
            ("entry", "fx__nope", None, "error"), ("entry", "fx__meta", "meta", "ok")]
        assert a_lines[2]["code"] == -32602 and a_lines[2]["server"] is None  # unknown at the entry: not forwarded
        assert [(x["role"], x["name"], x["original"], x["outcome"]) for x in b_lines] == [
            ("transit", None, "echo", "ok"), ("transit", None, "fail", "tool_error"), ("transit", None, "meta", "ok")]
        assert [(x["role"], x["original"], x["outcome"]) for x in c_lines] == [
            ("owner", "echo", "ok"), ("owner", "fail", "tool_error"), ("owner", "meta", "ok")]
        for a_line, b_line, c_line in zip([a_lines[i] for i in (0, 1, 3)], b_lines, c_lines, strict=True):
            assert a_line["trace"] == b_line["trace"] == c_line["trace"]
            assert [x["path"] for x in (a_line, b_line, c_line)] == [
                ["node-a"], ["node-a", "node-b"], ["node-a", "node-b", "node-c"]]
            assert {(x["server"], x["origin"], x["method"]) for x in (a_line, b_line, c_line)} == {
                ("fx", "node-c", "tools/call")}
            assert a_line["caller"] == {"node": "node-a", "kind": "anonymous"}
        # the client's own trace id is kept, and the owning node hands the server its span of it
        assert a_lines[3]["trace"] == EXAMPLE[3:35]
        assert meta.structured_content is not None
        handed = parse_traceparent(meta.structured_content["traceparent"])
        assert handed is not None and handed.trace_id == EXAMPLE[3:35] and handed.parent_id != EXAMPLE[36:52]
        assert f'fednode_audit_lines_total{{outcome="written"}} {len(lines["node-a"])}.0' in metrics

    async def test_the_caller_as_each_node_believes_it(self, tmp_path: Path) -> None:
        """The entry node's signed statement of the caller is believed at transit and owner nodes alike
        (their lines name the subject and the entry node); a statement changed on the way is not: the
        owning node refuses the request, and both lines name only the peer it came from."""
        alice = Caller(entry="node-a", kind="oauth", subject="alice@example.org", client="cli", scopes=("mcp",))
        with trio.fail_after(90):
            async with audited_chain(tmp_path) as nodes:
                a = nodes["node-a"]
                call = {"name": "fx__echo", "arguments": {"text": "hello"}}
                result = await a.federation.execute("tools/call", call, caller=alice)
                assert result.get("isError") is not True
                statements = a.federation.forwarding.callers.statements
                assert statements is not None
                params = {"name": "echo", "arguments": {"text": "hello"}}
                statement = statements.state(Caller(entry="node-a", kind="token", subject="bob"), origin="node-c",
                                             server="fx", method="tools/call", params=params, timeout=20)
                assert statement is not None
                forged = {**statement, "caller": {**statement["caller"], "sub": "alice@example.org"}}
                forward = {"origin": "node-c", "server": "fx", "method": "tools/call", "params": params,
                           "timeout": 20, "trace": ["node-a"], "caller": forged}
                with pytest.raises(fednode.RemoteError) as refused:
                    await a.request("node-b", "fed/forward", forward, timeout=30)
                assert refused.value.code == -32055
                lines = {node_id: await until_lines(tmp_path / f"{node_id}.jsonl", count)
                         for node_id, count in (("node-a", 1), ("node-b", 2), ("node-c", 2))}
        believed = [lines["node-a"][0], lines["node-b"][0], lines["node-c"][0]]
        assert [x["caller"] for x in believed] == [alice.to_wire()] * 3
        assert len({x["trace"] for x in believed}) == 1
        assert lines["node-b"][1]["caller"] == {"node": "node-a", "kind": "node"}
        assert (lines["node-c"][1]["caller"], lines["node-c"][1]["outcome"], lines["node-c"][1]["code"]) == (
            {"node": "node-b", "kind": "node"}, "refused", -32055)

    async def test_an_oauth_subject_two_hops_away(self, tmp_path: Path) -> None:
        """An SDK client with a token from the test issuer calls a tool two hops away: the owning node's
        line names its subject and the entry node, with the entry node's trace id; no token is logged."""
        issuer = TestIssuer()
        audit = {i: {"path": str(tmp_path / f"node-{i}.jsonl")} for i in "abc"}
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                await nursery.start(issuer.serve)
                async with fednode.open_node(node_config("node-a", clients=oauth_clients(issuer),
                                                         audit=audit["a"])) as a, \
                        fednode.open_node(node_config("node-b", audit=audit["b"])) as b, \
                        fednode.open_node(node_config("node-c", audit=audit["c"])) as c:
                    for left, right in ((a, b), (b, c)):
                        await right.register_peer(fednode.PeerConfig(id=left.id), wait=False)
                        await left.register_peer(fednode.PeerConfig(id=right.id, control=right.control_url))
                    await c.add_server(fixture_server(), timeout=60)
                    token = issuer.token(a.mcp_url, subject="alice@example.org")
                    assert await call_add(a.mcp_url, bearer(token)) == 42
                    lines = {node_id: await until_lines(tmp_path / f"{node_id}.jsonl", 1)
                             for node_id in ("node-b", "node-c")}
                    with trio.fail_after(30):
                        while not (calls := [x for x in lines_of(tmp_path / "node-a.jsonl")
                                             if x["method"] == "tools/call"]):
                            await trio.sleep(0.02)
                    lines["node-a"] = calls
                nursery.cancel_scope.cancel()
        entry, owner = lines["node-a"][0], lines["node-c"][0]
        assert owner["role"] == "owner" and owner["trace"] == entry["trace"] == lines["node-b"][0]["trace"]
        assert owner["caller"]["sub"] == entry["caller"]["sub"] == "alice@example.org"
        assert owner["caller"]["node"] == "node-a" and owner["caller"]["kind"] == "oauth"
        assert all(token not in json.dumps(found) for found in lines.values())

    async def test_refusals_at_transit_and_owner(self, tmp_path: Path) -> None:
        """A fed/forward a node refuses by its own checks (a loop, a server it does not offer) is audited as refused."""
        with trio.fail_after(90):
            async with audited_chain(tmp_path) as nodes:
                a = nodes["node-a"]
                forward = {"origin": "node-c", "server": "fx", "method": "tools/call", "timeout": 10,
                           "params": {"name": "echo", "arguments": {"text": SECRETISH}}, "trace": ["node-b"]}
                with pytest.raises(fednode.RemoteError, match="loop"):
                    await a.request("node-b", "fed/forward", forward, timeout=30)
                with pytest.raises(fednode.RemoteError, match="not offered"):
                    await a.request("node-b", "fed/forward", {**forward, "origin": "node-b", "trace": ["node-a"]},
                                    timeout=30)
                found = await until_lines(tmp_path / "node-b.jsonl", 2)
        assert [(x["role"], x["outcome"], x["code"], x["path"]) for x in found] == [
            ("transit", "refused", -32053, ["node-b", "node-b"]), ("owner", "refused", -32602, ["node-a", "node-b"])]
        assert all(x["caller"] == {"node": "node-a", "kind": "node"} and x["original"] == "echo" for x in found)
        assert SECRETISH not in json.dumps(found)

    async def test_reload_reopens_and_may_move_the_log(self, tmp_path: Path) -> None:
        with trio.fail_after(90):
            async with audited_chain(tmp_path) as nodes:
                a = nodes["node-a"]
                elsewhere = tmp_path / "elsewhere.jsonl"
                async with Client(a.mcp_url, mode="2026-07-28") as client:
                    await client.call_tool("fx__echo", {"text": "one"})
                    await until_lines(tmp_path / "node-a.jsonl", 1, lists=False)
                    result = await a.reload(node_config("node-a", audit={"path": str(elsewhere)}))
                    assert result.ok
                    await client.call_tool("fx__echo", {"text": "two"})
                    await until_lines(elsewhere, 1, lists=False)
                    result = await a.reload(node_config("node-a", audit={"path": str(tmp_path / "no" / "x")}))
                    assert not result.ok and "no/x" in (result.error or "")
                    await client.call_tool("fx__echo", {"text": "three"})  # the open file stays in use
                    await until_lines(elsewhere, 2, lists=False)
        assert len([x for x in lines_of(tmp_path / "node-a.jsonl") if x["method"] == "tools/call"]) == 1


async def _get(node: fednode.Node, path: str) -> Any:
    async with httpx2.AsyncClient(timeout=30) as client:
        return await client.get(node.data_url + path)


# -- three `fednode run` processes ---------------------------------------------------------------


def _node_file(tmp_path: Path, node_id: str, peers: str, servers: str = "") -> Path:
    path = tmp_path / f"{node_id}.toml"
    path.write_text(f'[node]\nid = "{node_id}"\ncontrol = "ws://127.0.0.1:0"\ndata = "http://127.0.0.1:0"\n'
                    'shutdown_grace = "2s"\n[auth]\nsecret = "${TEST_SECRET}"\n'
                    '[heartbeat]\ninterval = "0.5s"\ntimeout = "30s"\n'
                    f'[audit]\npath = "{node_id}.jsonl"\n' + peers + servers)
    return path


class _Run:
    """One `fednode run` process of this test: its handle and its log events."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.events: list[dict[str, Any]] = []

    async def value(self, event: str, key: str) -> str:
        while not (found := [e for e in self.events if e["event"] == event]):
            await trio.sleep(0.02)
        return str(found[0][key])


async def test_three_fednode_run_processes_share_a_trace_and_sighup_reopens(tmp_path: Path) -> None:
    """A - B - C as real processes: an SDK client at A calls a tool of C's server; A's entry line, B's
    transit line and C's owner line share one trace id; after C's file is moved away and C gets SIGHUP,
    the next call's line is in C's new file."""
    fixture = f'[[servers]]\nid = "fx"\ncommand = {json.dumps(sys.executable)}\nargs = [{json.dumps(FIXTURE)}]\n'
    runs: list[_Run] = []
    try:
        with trio.fail_after(150):
            async with trio.open_nursery() as nursery:
                async def start(path: Path) -> _Run:
                    process = await trio.lowlevel.open_process(
                        [FEDNODE, "run", "--config", str(path)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                        stdin=subprocess.DEVNULL, env={"TEST_SECRET": SECRET, "PATH": "/usr/bin:/bin"})
                    run = _Run(process)
                    runs.append(run)
                    assert process.stderr is not None
                    nursery.start_soon(read_events, process.stderr, run.events)
                    return run

                # Each dials the one started before it: its control address is known only once it runs.
                c = await start(_node_file(tmp_path, "node-c", '[[peers]]\nid = "node-b"\n', fixture))
                c_control = await c.value("node.started", "control")
                b = await start(_node_file(tmp_path, "node-b", '[[peers]]\nid = "node-a"\n'
                                           f'[[peers]]\nid = "node-c"\ncontrol = "{c_control}"\n'))
                b_control = await b.value("node.started", "control")
                a = await start(_node_file(tmp_path, "node-a", f'[[peers]]\nid = "node-b"\ncontrol = "{b_control}"\n'))
                url = await a.value("edge.listening", "url")
                async with Client(url, mode="2026-07-28") as client:
                    while "fx__add" not in [tool.name for tool in (await client.list_tools()).tools]:
                        await trio.sleep(0.1)  # C's catalog reaches A in its own time
                    first = await client.call_tool("fx__add", {"a": 1, "b": 2})
                    assert not first.is_error
                    found = {node_id: await until_lines(tmp_path / f"{node_id}.jsonl", 1, timeout=60, lists=False)
                             for node_id in ("node-a", "node-b", "node-c")}
                    c_file = tmp_path / "node-c.jsonl"
                    c_file.rename(tmp_path / "node-c.jsonl.1")
                    c.process.send_signal(signal.SIGHUP)
                    while not [e for e in c.events if e["event"] == "node.reloaded"]:
                        await trio.sleep(0.02)
                    second = await client.call_tool("fx__add", {"a": 3, "b": 4})
                    assert not second.is_error
                    reopened = await until_lines(c_file, 1, timeout=60)
                for run in runs:
                    run.process.send_signal(signal.SIGTERM)
                for run in runs:
                    assert await run.process.wait() == 0
                nursery.cancel_scope.cancel()
    finally:
        for run in runs:
            if run.process.returncode is None:  # only the processes this test started, by their own handles
                run.process.kill()
                await run.process.wait()
    a_line, b_line, c_line = found["node-a"][0], found["node-b"][0], found["node-c"][0]
    assert (a_line["role"], b_line["role"], c_line["role"]) == ("entry", "transit", "owner")
    assert a_line["trace"] == b_line["trace"] == c_line["trace"]
    assert [x["path"] for x in (a_line, b_line, c_line)] == [
        ["node-a"], ["node-a", "node-b"], ["node-a", "node-b", "node-c"]]
    assert {(x["method"], x["server"], x["original"], x["origin"]) for x in (a_line, b_line, c_line)} == {
        ("tools/call", "fx", "add", "node-c")}
    assert a_line["name"] == "fx__add" and a_line["caller"] == {"node": "node-a", "kind": "anonymous"}
    assert [line["trace"] for line in lines_of(tmp_path / "node-c.jsonl.1")] == [c_line["trace"]]
    assert len(reopened) == 1 and reopened[0]["trace"] != c_line["trace"] and reopened[0]["outcome"] == "ok"
    # the second call's entry line (at A, written whenever A got to it) has the trace of C's new line
    second_a = await until_lines(tmp_path / "node-a.jsonl", 2, timeout=30, lists=False)
    assert second_a[1]["trace"] == reopened[0]["trace"]
