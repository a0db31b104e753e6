"""The transports of attached MCP servers, and the process side of a stdio server.

The SDK's ``stdio_client`` starts the server in a new session (so its pid is also its process group
id) and on exit closes its stdin, waits 2 s, SIGTERMs the group, waits 2 s and SIGKILLs it, all
shielded from cancellation. Three things are missing and :class:`StdioProcess` adds them. The pid
is not exposed: the command runs under a ``/bin/sh`` shim that reports ``$$`` on stderr and then
``exec``s the server, so the pid is the server's own. Its stderr would be shared with ours: it goes
to a pipe whose lines are logged, tagged ``server=<id>``. And when the server exits promptly once
its stdin closes, descendants left in its process group are never signalled: the group is swept
(SIGTERM, a grace period, SIGKILL) after the transport has closed.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack, suppress
from typing import Any, TextIO

import httpx2
import trio
from mcp.client import Transport
from mcp.client._memory import InMemoryTransport
from mcp.client.stdio import StdioServerParameters, get_default_environment, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.inbound import MCP_METHOD_HEADER

from .._config._config import ServerConfig
from .._errors import SessionFailed

# How long to wait for the shim's pid line before going on without a pid.
_PID_WAIT = 5.0
# Grace between SIGTERM and SIGKILL when sweeping a server's leftover process group.
_GROUP_GRACE = 2.0
# Time for the last stderr lines to be read once the process is gone.
_STDERR_FLUSH = 0.5
# Bound on what a misbehaving server can make us log.
_STDERR_LINE_LIMIT = 4000

# ``$$`` is the shell's pid; ``exec`` keeps it, so it is the server's pid (and process group id).
_PID_MARKER = "fednode-upstream-pid="
_PID_SHIM = f'echo "{_PID_MARKER}$$" >&2; exec "$0" "$@"'


class _ParseFailureFilter(logging.Filter):
    """Drops the SDK stdio reader's own report of an unparsable line (a traceback, and no server id):
    fednode logs each such line itself, tagged with the server and rate-limited."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "Failed to parse JSONRPC message from server"


logging.getLogger("mcp.client.stdio").addFilter(_ParseFailureFilter())


async def open_transport(config: ServerConfig, *, in_process: Any, process: StdioProcess, stack: AsyncExitStack,
                         aux: trio.Nursery, log: Any) -> tuple[Transport, TextIO | None]:
    """The SDK transport for one connection to a server (not yet entered), and a file to close once it is.

    An in-process SDK server object (``in_process``), a Streamable HTTP ``config.url``, or a stdio
    ``config.command`` run by ``process`` (which then reads its stderr in ``aux`` and sweeps its
    process group when ``stack`` closes).

    Raises:
        SessionFailed: the command cannot be started.
    """
    process.begin()
    if in_process is not None:
        return InMemoryTransport(in_process), None
    if config.url is not None:
        async def log_status(response: httpx2.Response) -> None:
            # The SDK turns an HTTP error status into a bare JSON-RPC error: the node's log says which.
            if response.status_code >= 400:
                fields = {"status": response.status_code, "method": response.request.method,
                          "content_type": response.headers.get("content-type", "")[:100]}
                probe = response.request.headers.get(MCP_METHOD_HEADER) == "server/discover"
                if response.status_code < 500 and probe:
                    # The era probe: a legacy server refusing server/discover (400, 404, 405) is expected.
                    log.debug("upstream.http_status", probe=True, **fields)
                else:
                    log.warning("upstream.http_status", **fields)

        # No read timeout: every forwarded request has its own deadline, listen streams are
        # quiet for as long as nothing changes, and one failed read ends the whole transport.
        client = httpx2.AsyncClient(headers=dict(config.headers), timeout=httpx2.Timeout(30.0, read=None),
                                    event_hooks={"response": [log_status]})
        await stack.enter_async_context(client)
        return streamable_http_client(config.url, http_client=client), None
    return process.transport(stack, aux)


class StdioProcess:
    """The process side of a stdio server's connections: its pid, its stderr, its process group.

    Args:
        config: the server's configuration (``command``, ``args``, ``env``, ``cwd``).
        log: the server's logger (stderr lines are logged as ``upstream.stderr``).

    Attributes:
        pid: the process id of the server while it runs (reported by the shim), else None.
    """

    def __init__(self, config: ServerConfig, *, log: Any) -> None:
        self._config = config
        self.log = log
        self.pid: int | None = None
        self._stderr_done = trio.Event()
        self._pid_seen = trio.Event()

    def begin(self) -> None:
        """A new connection attempt: no stderr to wait for until :meth:`transport` starts a reader."""
        self._pid_seen = trio.Event()
        self._stderr_done = trio.Event()
        self._stderr_done.set()

    def transport(self, stack: AsyncExitStack, aux: trio.Nursery) -> tuple[Transport, TextIO | None]:
        """The stdio transport; starts the stderr reader in ``aux`` and arranges the sweep on ``stack``."""
        config = self._config
        assert config.command is not None
        extra_env = dict(config.env)
        problem = command_problem(config.command, get_default_environment() | extra_env, config.cwd)
        if problem is not None:
            raise SessionFailed(problem)
        command, args = config.command, list(config.args)
        if os.name != "posix":  # no shim, no pipe reader: stderr is shared with ours (never our stdout)
            params = StdioServerParameters(command=command, args=args, env=extra_env or None, cwd=config.cwd,
                                           encoding_error_handler="replace")
            return stdio_client(params, errlog=sys.stderr), None
        read_fd, write_fd = os.pipe()
        self._stderr_done = trio.Event()
        aux.start_soon(self._read_stderr, trio.lowlevel.FdStream(read_fd))
        errlog = os.fdopen(write_fd, "w")
        stack.callback(errlog.close)  # in case the transport is never entered
        # Registered before the transport is entered, so it runs after the transport has closed.
        stack.push_async_callback(self._sweep_process_group)
        # "replace": a line that is not UTF-8 becomes one unparsable message, logged; with the SDK's
        # default ("strict") the reader would stop for good while the server looked up.
        params = StdioServerParameters(command="/bin/sh", args=["-c", _PID_SHIM, command, *args],
                                       env=extra_env or None, cwd=config.cwd, encoding_error_handler="replace")
        return stdio_client(params, errlog=errlog), errlog

    async def wait_pid(self) -> None:
        """Wait (a bounded time) for the shim to report the server's pid."""
        if self._config.command is not None and self.pid is None and os.name == "posix":
            with trio.move_on_after(_PID_WAIT):
                await self._pid_seen.wait()

    async def flush_stderr(self) -> None:
        """The process is gone: give its last stderr lines a moment to be read (shielded)."""
        with trio.move_on_after(_STDERR_FLUSH, shield=True):
            await self._stderr_done.wait()

    async def watch_exit(self, pid: int, on_exit: Callable[[], None]) -> None:
        """Call ``on_exit`` when process ``pid`` exits, even while something else holds its stdout.

        A descendant that inherited the server's stdout keeps the pipe open after the server is
        gone, so the end of stdout alone would leave a dead server looking up until a call fails.
        Waits on a pidfd (Linux): it becomes readable when the process exits, without reaping it.
        """
        try:
            fd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            return  # no pidfd here: the end of stdout remains the sign
        try:
            await trio.lowlevel.wait_readable(fd)
        finally:
            os.close(fd)
        on_exit()

    async def _read_stderr(self, stream: trio.lowlevel.FdStream) -> None:
        """Log the server's stderr line by line; the shim's first line is the pid."""
        buffer = b""
        try:
            async with stream:
                while chunk := await stream.receive_some(65536):
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        self._stderr_line(line)
                    if len(buffer) > _STDERR_LINE_LIMIT:
                        self._stderr_line(buffer)
                        buffer = b""
                if buffer:
                    self._stderr_line(buffer)
        except (trio.ClosedResourceError, trio.BrokenResourceError, OSError):
            pass
        finally:
            self._pid_seen.set()
            self._stderr_done.set()

    def _stderr_line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        if not self._pid_seen.is_set():
            self._pid_seen.set()
            if text.startswith(_PID_MARKER) and text[len(_PID_MARKER):].isdigit():
                self.pid = int(text[len(_PID_MARKER):])
                return
        if len(text) > _STDERR_LINE_LIMIT:
            text = text[:_STDERR_LINE_LIMIT] + "..."
        self.log.info("upstream.stderr", line=text)

    async def _sweep_process_group(self) -> None:
        """Terminate whatever is left of the server's process group (descendants that outlived it)."""
        pgid, self.pid = self.pid, None
        if pgid is None:
            return
        with trio.CancelScope(shield=True):
            if not _group_alive(pgid):
                return
            self.log.info("upstream.sweep", pgid=pgid)
            _signal_group(pgid, signal.SIGTERM)
            with trio.move_on_after(_GROUP_GRACE):
                while _group_alive(pgid):  # noqa: ASYNC110 - nothing to wait on but the kernel's table
                    await trio.sleep(0.02)
                return
            _signal_group(pgid, signal.SIGKILL)


def command_problem(command: str, env: Mapping[str, str], cwd: str | None) -> str | None:
    """Why ``command`` cannot be started, or None (the shim would only report it on stderr)."""
    if cwd is not None and not os.path.isdir(cwd):
        return f"working directory {cwd!r} does not exist"
    if "/" in command:
        path = command if os.path.isabs(command) else os.path.join(cwd or os.getcwd(), command)
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return f"command {command!r} is not an executable file"
        return None
    if shutil.which(command, path=env.get("PATH", os.defpath)) is None:
        return f"command {command!r} not found on PATH"
    return None


def _group_alive(pgid: int) -> bool:
    """Whether the process group still has a member that is not a zombie."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # a member we may not signal (or a zombie on some systems): look closer
    # Orphaned zombies stay in the group until init reaps them, which some container inits do
    # late or never; on Linux, look past them instead of waiting out the grace period.
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as file:
                fields = file.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # After the command name: state, ppid, pgrp, ...
        if len(fields) > 2 and fields[2] == str(pgid).encode() and fields[0] not in (b"Z", b"X"):
            return True
    return False


def _signal_group(pgid: int, signum: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)
