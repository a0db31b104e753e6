"""`fednode run` as a real process: starts, links, and exits 0 on SIGTERM/SIGINT within the grace period."""

from __future__ import annotations

import errno
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio

import fednode
from fednode._cli import _cli, _commands

from conftest import SECRET, node_config
from helpers import BlackholeProxy

FEDNODE = str(Path(sys.executable).parent / "fednode")


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "node-s.toml"
    path.write_text(
        '[node]\nid = "node-s"\ncontrol = "ws://127.0.0.1:0"\nshutdown_grace = "10s"\n'
        '[auth]\nsecret = "${TEST_SECRET}"\n'
        # Long enough that a busy machine never drops the link by accident (nor ends the wait for
        # a blackholed peer's close before the second signal).
        '[heartbeat]\ninterval = "0.5s"\ntimeout = "30s"\n'
        '[[peers]]\nid = "node-t"\n')
    return path


async def read_events(stream: trio.abc.ReceiveStream, events: list[dict[str, object]]) -> None:
    buffer = b""
    while chunk := await stream.receive_some(65536):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            events.append(json.loads(line))  # every stderr line must be a JSON log event


@asynccontextmanager
async def fednode_run(config_path: Path) -> AsyncIterator[tuple[trio.Process, list[dict[str, Any]], str, trio.Nursery]]:
    """`fednode run` as a child process; yields it, its log events (live), its control URL and a nursery."""
    events: list[dict[str, Any]] = []
    process = await trio.lowlevel.open_process(
        [FEDNODE, "run", "--config", str(config_path)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL, env={"TEST_SECRET": SECRET, "PATH": "/usr/bin:/bin"})
    try:
        async with trio.open_nursery() as nursery:
            assert process.stderr is not None
            nursery.start_soon(read_events, process.stderr, events)
            while not any(e["event"] == "node.started" for e in events):
                await trio.sleep(0.02)
            control = str(next(e["control"] for e in events if e["event"] == "node.started"))
            yield process, events, control, nursery
            nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:  # only the process this test started, by its own handle
            process.kill()
            await process.wait()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_run_links_and_exits_zero_on_signal(tmp_path: Path, signum: int) -> None:
    with trio.fail_after(60):
        async with fednode_run(write_config(tmp_path)) as (process, events, control, _), \
                fednode.open_node(node_config("node-t")) as t:
            await t.register_peer(fednode.PeerConfig(id="node-s", control=control))
            assert (await t.request("node-s", "node/info", timeout=30))["id"] == "node-s"
            start = trio.current_time()
            with structlog.testing.capture_logs() as t_logs:
                process.send_signal(signum)
                status = await process.wait()
                elapsed = trio.current_time() - start
                with trio.fail_after(30):
                    while t.connected_peers():
                        await trio.sleep(0.01)
            assert status == 0
            assert elapsed < 10.0  # the configured shutdown_grace: the peer answered the close
            downs = [e["reason"] for e in t_logs if e["event"] == "link.down"]
            assert downs == ["connection closed (1000: node shutting down)"]
    names = [e["event"] for e in events]
    assert names.count("node.shutdown") == 1 and names[-1] == "node.stopped"
    assert "link.up" in names and "link.down" in names
    assert all(e.get("node") == "node-s" for e in events)
    assert SECRET not in json.dumps(events)


@pytest.mark.parametrize("role", ["control", "data"])
async def test_run_names_the_address_in_use(tmp_path: Path, role: str) -> None:
    """A port held by another socket: exit 1 with one line naming which address, and no exception group."""
    with trio.fail_after(60):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        busy = {"control": f"ws://127.0.0.1:{port}", "data": f"http://127.0.0.1:{port}"}
        free = {"control": "ws://127.0.0.1:0", "data": "http://127.0.0.1:0"}
        addresses = {**free, role: busy[role]}
        path = tmp_path / "busy.toml"
        path.write_text(f'[node]\nid = "node-s"\ncontrol = "{addresses["control"]}"\ndata = "{addresses["data"]}"\n'
                        f'[auth]\nsecret = "{SECRET}"\n')
        try:
            result = await trio.run_process([FEDNODE, "run", "--config", str(path)], capture_stdout=True,
                                            capture_stderr=True, check=False)
            debug = await trio.run_process([FEDNODE, "run", "--debug", "--config", str(path)], capture_stdout=True,
                                           capture_stderr=True, check=False)
        finally:
            await listeners[0].aclose()
    assert result.returncode == 1
    last = result.stderr.decode().strip().splitlines()[-1]
    in_use = f"{role} address {busy[role]} is in use (errno {errno.EADDRINUSE})"
    assert last == f"fednode: cannot start node 'node-s': {in_use}"
    assert "Traceback" not in result.stderr.decode() and "nursery" not in result.stderr.decode()
    # --debug adds the traceback, and still ends with the same line.
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr.decode() and "BindError" in debug.stderr.decode()
    assert debug.stderr.decode().strip().splitlines()[-1] == last


async def test_second_signal_exits_at_once(tmp_path: Path) -> None:
    """While shutdown waits for a peer that no longer answers, a second signal ends the process at once."""
    with trio.fail_after(60):
        async with fednode_run(write_config(tmp_path)) as (process, events, control, nursery):
            proxy = BlackholeProxy(int(control.rsplit(":", 1)[1]))
            await nursery.start(proxy.serve)
            async with fednode.open_node(node_config("node-t")) as t:
                await t.register_peer(fednode.PeerConfig(id="node-s", control=proxy.url))
                proxy.blackhole = True  # node-s's close frame will never be answered
                process.send_signal(signal.SIGTERM)
                while not any(e["event"] == "node.shutdown" for e in events):
                    await trio.sleep(0.02)
                start = trio.current_time()
                process.send_signal(signal.SIGINT)
                status = await process.wait()
                assert trio.current_time() - start < 5.0  # well inside the 10 s grace period
                assert status == 128 + signal.SIGINT
    assert not any(e["event"] == "node.stopped" for e in events)


class TestFailureLines:
    """Whatever a node fails with reaches the user as one line per cause, never as an exception group."""

    def test_every_cause_of_a_group_gets_its_own_line(self, capsys: pytest.CaptureFixture[str]) -> None:
        in_use = fednode.BindError("control", "ws://127.0.0.1:7001", OSError(errno.EADDRINUSE, "Address in use"))
        group = ExceptionGroup("outer", [in_use, ExceptionGroup("inner", [RuntimeError("boom")])])
        with pytest.raises(SystemExit) as exited:
            _cli._exit_for(group, "node-s", debug=False)
        assert exited.value.code == 1
        assert capsys.readouterr().err.splitlines() == [
            "fednode: cannot start node 'node-s': control address ws://127.0.0.1:7001 is in use"
            f" (errno {errno.EADDRINUSE})",
            "fednode: node 'node-s' failed: RuntimeError: boom (--debug shows the traceback)"]

    def test_debug_prints_the_traceback_first(self, capsys: pytest.CaptureFixture[str]) -> None:
        try:
            raise ExceptionGroup("outer", [ValueError("bad")])
        except ExceptionGroup as group:
            with pytest.raises(SystemExit):
                _cli._exit_for(group, "node-s", debug=True)
        err = capsys.readouterr().err
        assert "Traceback" in err and "ValueError: bad" in err
        assert err.splitlines()[-1] == "fednode: node 'node-s' failed: ValueError: bad"

    def test_an_interrupt_exits_130(self, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit) as exited:
            _cli._exit_for(BaseExceptionGroup("outer", [KeyboardInterrupt()]), "node-s", debug=False)
        assert exited.value.code == 130
        assert capsys.readouterr().err == "fednode: interrupted\n"

    def test_client_commands_name_each_cause(self) -> None:
        target = _commands.Target(base="http://127.0.0.1:7101")
        group = ExceptionGroup("outer", [RuntimeError("first"), ExceptionGroup("inner", [ValueError("second")])])
        assert _commands._explain(group, target, None, "tools/list") == \
            "tools/list failed: RuntimeError: first; ValueError: second"

    def test_client_commands_take_an_interrupt_out_of_its_group(self, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
        def interrupted(*args: object) -> None:
            raise BaseExceptionGroup("task group", [KeyboardInterrupt()])

        monkeypatch.setattr(_commands.trio, "run", interrupted)
        target = _commands.Target(base="http://127.0.0.1:7101")
        with pytest.raises(SystemExit) as exited:
            _commands._run_client(target, 1.0, False, "tools/list", _commands._list_tools)
        assert exited.value.code == 130
        assert capsys.readouterr().err == "fednode: interrupted\n"


def test_the_command_makes_garbage_collection_rarer_and_the_library_does_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``fednode run`` (and ``fednode mcp``) set GC_THRESHOLDS before the node starts; importing and
    embedding fednode leaves the interpreter's settings alone."""
    import gc

    before = gc.get_threshold()
    seen: list[tuple[int, int, int]] = []
    monkeypatch.setattr(_cli.trio, "run", lambda *args: seen.append(gc.get_threshold()))
    monkeypatch.setattr(_cli, "configure_logging", lambda *args: None)
    monkeypatch.setenv("TEST_SECRET", SECRET)
    try:
        assert before != _cli.GC_THRESHOLDS  # the library (imported by this test) changed nothing
        _cli._run_node(str(write_config(tmp_path)), "json", "info", False, None)
    finally:
        gc.set_threshold(*before)
    assert seen == [_cli.GC_THRESHOLDS]
