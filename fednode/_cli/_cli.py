"""The ``fednode`` command: thin wrappers over the library."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import NoReturn

import click
import trio

from .._config._config import NodeConfig
from .._config._describe import describe
from .._config._logging import LEVELS, configure_logging
from .._errors import BindError, FednodeError, StateError, leaves
from .._node._node import Node, open_node
from .._version import __version__
from ._commands import EXIT_INTERRUPTED, config_file_options, config_path_from, debug_option, fail, register
from ._commands import load_config_or_exit as _load_or_exit
from ._pins import pins

#: The garbage collector's thresholds in a ``fednode run`` / ``fednode mcp`` process (see
#: :func:`tune_gc`). A node holds large, long-lived catalogs (a peer may make it hold 20,000
#: definitions); with the interpreter's defaults (700, 10, 10) the collections that walk them
#: stall the event loop while such a peer's route updates arrive: a client's p95 rose to about 3x
#: its quiet p95, against about 1.3-1.7x with these (``scripts/attack --quick --phases quiet,routes``).
GC_THRESHOLDS = (50_000, 50, 1000)


def tune_gc() -> None:
    """Make the garbage collector's passes rarer, for a process that is one node (see :data:`GC_THRESHOLDS`).

    Only the command does this: a program embedding a node keeps its own settings.
    """
    gc.set_threshold(*GC_THRESHOLDS)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fednode")
def main() -> None:
    """fednode: a peer-to-peer federation node for the Model Context Protocol."""


@main.command()
@config_file_options
@click.option("--log-format", type=click.Choice(["json", "console"]), default="json", show_default=True,
              help="JSON lines or human-readable lines, on stderr.")
@click.option("--log-level", type=click.Choice(LEVELS), default="info", show_default=True)
@debug_option
def run(config_path: str | None, config_file: str | None, log_format: str, log_level: str, debug: bool) -> None:
    """Run a node until SIGINT or SIGTERM (a second signal exits at once); SIGHUP reloads FILE.

    FILE is the configuration (or --config FILE, or $FEDNODE_CONFIG). Exits 0 after a clean
    shutdown, 2 for a bad configuration (nothing is started), 1 when the node cannot start
    (e.g. its control or data address is in use) or fails.
    """
    _run_node(config_path_from(config_path, config_file), log_format, log_level, debug, None)


def _run_node(config_path: str, log_format: str, log_level: str, debug: bool,
              body: Callable[[Node], Awaitable[None]] | None) -> None:
    """Load the configuration (exit 2 if bad), run the node until ``body`` returns (forever if None)
    or a signal arrives (a second signal exits at once), and exit 1 if it cannot start or fails.
    SIGHUP reloads the configuration file."""
    configure_logging(log_format, log_level)
    config = _load_or_exit(config_path)
    tune_gc()
    try:
        trio.run(_until_signal, config, body, config_path)
    except SystemExit:
        raise
    except BaseException as exc:  # whatever it is, the user gets its causes, not an exception group
        _exit_for(exc, config.id, debug)


def _exit_for(exc: BaseException, node_id: str, debug: bool) -> NoReturn:
    """Exit 1 (130 if interrupted) with one line per cause of ``exc`` (the groups Trio wraps it in
    are unwrapped), and the whole traceback with --debug."""
    if debug:
        traceback.print_exception(exc)
    causes = list(leaves(exc))
    if any(isinstance(cause, KeyboardInterrupt) for cause in causes):
        fail("interrupted", EXIT_INTERRUPTED)
    lines = []
    for cause in causes:
        if isinstance(cause, BindError | StateError):
            lines.append(f"cannot start node {node_id!r}: {cause}")
        elif isinstance(cause, FednodeError | OSError):
            lines.append(f"node {node_id!r} failed: {cause}")
        else:  # a bug: say what it was; --debug shows where
            hint = "" if debug else " (--debug shows the traceback)"
            lines.append(f"node {node_id!r} failed: {type(cause).__name__}: {cause}{hint}")
    for line in lines[:-1]:
        click.echo(f"fednode: {' '.join(line.splitlines())}", err=True)
    fail(lines[-1] if lines else f"node {node_id!r} failed: {type(exc).__name__}")


async def _until_signal(config: NodeConfig, body: Callable[[Node], Awaitable[None]] | None,
                        config_path: str) -> None:
    hangup = (signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()
    # Reload requests: a bounded queue, so a burst of SIGHUPs becomes at most one more reload.
    reload_send, reload_recv = trio.open_memory_channel[None](1)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, *hangup) as signals:
        async with trio.open_nursery() as nursery:
            node_scope = trio.CancelScope()

            async def watch_signals() -> None:
                received = 0
                async for signum in signals:
                    if hangup and signum == signal.SIGHUP:
                        with contextlib.suppress(trio.WouldBlock):
                            reload_send.send_nowait(None)
                        continue
                    received += 1
                    if received == 1:
                        node_scope.cancel()
                    else:
                        # The operator insists: skip the grace period.
                        sys.stderr.flush()
                        os._exit(128 + signum)

            async def reloader(node: Node) -> None:
                async for _ in reload_recv:
                    await node.reload(config_path)

            nursery.start_soon(watch_signals)
            with node_scope:
                async with open_node(config) as node, trio.open_nursery() as inner:
                    if hangup:
                        inner.start_soon(reloader, node)
                    if body is None:
                        await trio.sleep_forever()
                    else:
                        await body(node)
                    inner.cancel_scope.cancel()
            nursery.cancel_scope.cancel()


@main.command("mcp")
@config_file_options
@click.option("--log-format", type=click.Choice(["json", "console"]), default="json", show_default=True)
@click.option("--log-level", type=click.Choice(LEVELS), default="warning", show_default=True)
@debug_option
def mcp(config_path: str | None, config_file: str | None, log_format: str, log_level: str,
        debug: bool) -> None:
    """Run the node in-process and serve one MCP client on stdin/stdout (for desktop MCP hosts).

    FILE is the configuration (or --config FILE, or $FEDNODE_CONFIG: launchers such as the MCP
    Inspector keep --config for themselves). The node also peers and serves HTTP as with
    `fednode run`. Logs go to stderr only. Ends when the client closes stdin (or on SIGINT/SIGTERM).
    """
    _run_node(config_path_from(config_path, config_file), log_format, log_level, debug, _serve_stdio)


async def _serve_stdio(node: Node) -> None:
    await node.serve_mcp_stdio()


@main.command("check-config")
@config_file_options
def check_config(config_path: str | None, config_file: str | None) -> None:
    """Validate a configuration file and print a summary of the node and its peers (exit 2 if invalid).

    FILE is the configuration (or --config FILE, or $FEDNODE_CONFIG).
    """
    config = _load_or_exit(config_path_from(config_path, config_file))
    click.echo(describe(config))
    click.echo("configuration OK")


register(main)
main.add_command(pins)
