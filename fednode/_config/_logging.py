"""structlog set-up for the command line (JSON lines or console on stderr), and rate-limited lines.

Libraries underneath (the MCP SDK, Starlette) log through the standard library; their warnings and
errors are rendered by the same renderer, so stderr stays one format (one JSON object per line).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, TextIO

import structlog
import trio

LEVELS = ("debug", "info", "warning", "error")


def configure_logging(fmt: str = "json", level: str = "info", stream: TextIO | None = None) -> None:
    """Send fednode's log events to ``stream`` (default stderr) as JSON lines or console text."""
    output = stream or sys.stderr
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False))
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    # JSON lines carry a traceback as text (the console renderer formats exceptions itself).
    exceptions: list[structlog.typing.Processor] = [structlog.processors.format_exc_info] if fmt == "json" else []
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            *exceptions,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=output),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(output)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer],
        foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name, timestamper],
    ))
    handler.addFilter(_ClientGoneFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Other libraries' chatter stays out unless it is a warning or worse (or fednode runs at debug).
    root.setLevel(logging.DEBUG if level == "debug" else logging.WARNING)


class _ClientGoneFilter(logging.Filter):
    """A client that hung up in the middle of its request is not the node's error: the edge's server and the
    SDK report each one as an error with a traceback, so a burst of them floods the log. They become
    debug records (shown only at ``--log-level debug``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or not _only_client_disconnects(exc):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


def _only_client_disconnects(exc: BaseException) -> bool:
    from starlette.requests import ClientDisconnect

    if isinstance(exc, BaseExceptionGroup):
        return all(_only_client_disconnects(inner) for inner in exc.exceptions)
    return isinstance(exc, ClientDisconnect)


class ThrottledLog:
    """Log lines that outsiders can cause, limited per reason: a short burst, then one line per interval.

    Every stranger who connects to the control port can make the node log something (a refused token,
    a dropped connection); unlimited, that is a way to fill the operator's disk and bury what matters.
    Each key (the event and why it happened, never who caused it, so the keys stay few) has a bucket
    of ``burst`` lines that refills at one line per ``interval``. A line written after some were held
    back carries ``suppressed=N``: N more lines of the same key were not written since the previous one.
    Whatever is counted elsewhere (the refused-authentication metrics) is counted in full regardless.

    Args:
        logger: the structlog logger the lines go to.
        burst: lines per key written at once before the limit applies (a misconfigured peer's first
            retries come quickly and are all worth seeing).
        interval: seconds per line per key once the burst is spent.
        clock: the time source (Trio's clock by default, so ``MockClock`` drives it in tests).
    """

    def __init__(self, logger: Any, *, burst: int = 10, interval: float = 1.0,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self.logger = logger
        self.burst = burst
        self.interval = interval
        self._clock = clock
        # key -> (lines available, time they were counted at, lines suppressed since the last one written)
        self._buckets: dict[tuple[str, str], tuple[float, float, int]] = {}

    def admit(self, event: str, key: str = "") -> int | None:
        """Take one line for ``(event, key)``: None if it must be suppressed, else how many were before it."""
        now = self._clock()
        available, since, suppressed = self._buckets.get((event, key), (float(self.burst), now, 0))
        available = min(float(self.burst), available + (now - since) / self.interval)
        if available < 1.0:
            self._buckets[(event, key)] = (available, now, suppressed + 1)
            return None
        self._buckets[(event, key)] = (available - 1.0, now, 0)
        return suppressed

    def info(self, event: str, *, key: str = "", **fields: Any) -> None:
        """Write an info line unless ``(event, key)`` is over its limit."""
        self._write("info", event, key, fields)

    def warning(self, event: str, *, key: str = "", **fields: Any) -> None:
        """Write a warning unless ``(event, key)`` is over its limit."""
        self._write("warning", event, key, fields)

    def error(self, event: str, *, key: str = "", **fields: Any) -> None:
        """Write an error line unless ``(event, key)`` is over its limit."""
        self._write("error", event, key, fields)

    def _write(self, level: str, event: str, key: str, fields: dict[str, Any]) -> None:
        suppressed = self.admit(event, key)
        if suppressed is None:
            return
        if suppressed:
            fields["suppressed"] = suppressed
        getattr(self.logger, level)(event, **fields)
