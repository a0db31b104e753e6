"""The command line's log set-up: one format on stderr, library records included, secrets-free events."""

from __future__ import annotations

import io
import json
import logging

import structlog

from fednode._config._logging import configure_logging


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


    def test_own_exceptions_keep_their_traceback(self) -> None:
        stream = io.StringIO()
        try:
            configure_logging("json", "info", stream)
            try:
                raise KeyError("lost")
            except KeyError:
                structlog.get_logger("fednode").error("edge.forward_failed", exc_info=True)
            events = [json.loads(line) for line in stream.getvalue().splitlines()]
        finally:
            structlog.reset_defaults()
            logging.getLogger().handlers.clear()
        assert events[0]["event"] == "edge.forward_failed" and "KeyError: 'lost'" in events[0]["exception"]

    def test_a_client_hanging_up_is_not_an_error(self) -> None:
        from starlette.requests import ClientDisconnect

        for level, expected in (("info", 0), ("debug", 2)):
            stream = io.StringIO()
            try:
                configure_logging("json", level, stream)
                for error in (ClientDisconnect(), ExceptionGroup("handler", [ClientDisconnect()])):
                    try:
                        raise error
                    except BaseException:
                        logging.getLogger("fednode.edge.http").exception("Error in ASGI Framework")
                lines = [json.loads(line) for line in stream.getvalue().splitlines()]
            finally:
                structlog.reset_defaults()
                logging.getLogger().handlers.clear()
            assert len(lines) == expected and all(line["level"] == "debug" for line in lines)
