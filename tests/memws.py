"""WebSocket pairs over in-memory streams, so link logic runs under MockClock without real I/O."""

from __future__ import annotations

import trio
import trio.testing
from trio_websocket import WebSocketConnection, wrap_client_stream, wrap_server_stream


async def ws_pair(nursery: trio.Nursery, *, max_message_size: int = 1024 * 1024,
                  message_queue_size: int = 1) -> tuple[WebSocketConnection, WebSocketConnection]:
    """A connected (client, server) WebSocket pair whose background tasks run in ``nursery``."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    server: list[WebSocketConnection] = []
    accepted = trio.Event()

    async def accept() -> None:
        request = await wrap_server_stream(nursery, server_stream, message_queue_size=message_queue_size,
                                           max_message_size=max_message_size)
        server.append(await request.accept())
        accepted.set()

    nursery.start_soon(accept)
    client = await wrap_client_stream(nursery, client_stream, "127.0.0.1", "/",
                                      message_queue_size=message_queue_size, max_message_size=max_message_size)
    await accepted.wait()
    return client, server[0]
