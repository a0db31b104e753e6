"""The client edge under attack: hostile or broken clients over real sockets on 127.0.0.1."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import trio
from test_http_server import App, running

from fednode._mcp._http_server import WRITE_TIMEOUT


class BigApp(App):
    """``/big`` answers with :attr:`size` bytes in 1 MiB pieces; ``finished`` once its last send returned."""

    size = 64 * 1024 * 1024

    def __init__(self) -> None:
        super().__init__()
        self.finished = trio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/big":
            await super().__call__(scope, receive, send)
            return
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(self.size).encode())]})
        piece = b"x" * (1024 * 1024)
        for _ in range(self.size // len(piece)):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        self.finished.set()


async def test_a_client_that_never_reads_its_answer_is_dropped(autojump_clock: trio.testing.MockClock) -> None:
    """A large answer to a client that takes none of it: once the socket takes nothing for
    WRITE_TIMEOUT seconds, the connection is given up (the app's sends return, nothing is held)."""
    app = BigApp()
    with trio.fail_after(10 * WRITE_TIMEOUT):
        async with running(app) as port:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            started = trio.current_time()
            await stream.send_all(b"GET /big HTTP/1.1\r\nHost: h\r\n\r\n")
            await app.finished.wait()
            assert trio.current_time() - started == pytest.approx(WRITE_TIMEOUT, abs=0.01)
            await stream.aclose()
