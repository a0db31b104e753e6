"""structlog set-up for the command line: JSON lines (or console) on stderr.

Libraries underneath (the MCP SDK, hypercorn) log through the standard library; their warnings and
errors are rendered by the same renderer, so stderr stays one format (one JSON object per line).
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

LEVELS = ("debug", "info", "warning", "error")


def configure_logging(fmt: str = "json", level: str = "info", stream: TextIO | None = None) -> None:
    """Send fednode's log events to ``stream`` (default stderr) as JSON lines or console text."""
    output = stream or sys.stderr
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False))
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
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
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Other libraries' chatter stays out unless it is a warning or worse (or fednode runs at debug).
    root.setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
