"""The command line's log set-up: one format on stderr, library records included, secrets-free events."""

from __future__ import annotations

import io
import json
import logging

import structlog

from fednode._logging import configure_logging


class TestLogFormat:
    """Every line on the log stream is one JSON object, whoever logged it."""

    def test_library_errors_become_json_lines(self) -> None:
        stream = io.StringIO()
        try:
            configure_logging("json", "info", stream)
            try:
                raise ValueError("boom")
            except ValueError:
                logging.getLogger("mcp.server.streamable_http").exception("Error handling POST request")
            logging.getLogger("hypercorn.access").info("library chatter stays out")
            structlog.get_logger("fednode").info("node.started", node="node-x")
            events = [json.loads(line) for line in stream.getvalue().splitlines()]
        finally:
            structlog.reset_defaults()
            logging.getLogger().handlers.clear()
        assert [(e["event"], e["level"]) for e in events] == [
            ("Error handling POST request", "error"), ("node.started", "info")]
        assert events[0]["logger"] == "mcp.server.streamable_http" and "ValueError: boom" in events[0]["exception"]
        assert events[1]["node"] == "node-x" and "timestamp" in events[1]
