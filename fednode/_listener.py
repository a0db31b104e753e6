"""The listener for inbound peers: TCP (or TLS) accept, authenticated handshake, hand-off.

Each accepted connection gets one deadline for the whole handshake (HTTP upgrade, token check,
hello). An authenticated link is handed to its peer's supervisor; this connection's task stays
alive only to keep trio-websocket's reader running until the link ends.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import trio
from trio_websocket import ConnectionClosed, wrap_server_stream

from ._errors import FednodeError
from ._handshake import accept

if TYPE_CHECKING:
    from ._node import Node

#: Connections still in their handshake beyond this many are closed at once (a cheap flood guard).
MAX_PENDING_HANDSHAKES = 256


def _remote_of(stream: trio.abc.Stream) -> str:
    sock_stream = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if isinstance(sock_stream, trio.SocketStream):
        try:
            host, port = sock_stream.socket.getpeername()[:2]
            return f"{host}:{port}"
        except OSError:
            return "unknown"
    return "memory"


class Listener:
    """Accepts inbound peer connections on the node's control address."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.port: int | None = None
        self.pending = 0

    def _ssl_context(self) -> ssl.SSLContext | None:
        tls = self.node.config.tls
        if not self.node.config.control.startswith("wss://"):
            return None
        assert tls.cert is not None and tls.key is not None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(tls.cert), str(tls.key))
        return context

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind the control address and accept connections until cancelled.

        Returns (through ``task_status``) the bound port, so port 0 can be used.
        """
        url = urlsplit(self.node.config.control)
        host = url.hostname
        port = url.port if url.port is not None else (443 if url.scheme == "wss" else 80)
        socket_listeners = await trio.open_tcp_listeners(port, host=host)
        self.port = socket_listeners[0].socket.getsockname()[1]
        context = self._ssl_context()
        listeners: list[trio.abc.Listener[trio.abc.Stream]] = (
            [trio.SSLListener(sl, context, https_compatible=True) for sl in socket_listeners]
            if context else list(socket_listeners))
        task_status.started(self.port)
        await trio.serve_listeners(self.handle_connection, listeners)

    async def handle_connection(self, stream: trio.abc.Stream) -> None:
        """Run one inbound connection from its first byte to the end of its link. Never raises."""
        remote = _remote_of(stream)
        if self.pending >= MAX_PENDING_HANDSHAKES:
            self.node.log.warning("listener.too_many_handshakes", remote=remote, limit=MAX_PENDING_HANDSHAKES)
            await trio.aclose_forcefully(stream)
            return
        try:
            await self._handle(stream, remote)
        except Exception as exc:  # nothing a remote party sends may crash the listener
            self.node.log.error("listener.connection_failed", remote=remote, error=repr(exc)[:300])
        finally:
            await trio.aclose_forcefully(stream)

    async def _handle(self, stream: trio.abc.Stream, remote: str) -> None:
        timeout = self.node.config.link.handshake_timeout
        async with trio.open_nursery() as connection_tasks:
            accepted = None
            self.pending += 1
            try:
                with trio.move_on_after(timeout) as deadline:
                    try:
                        request = await wrap_server_stream(
                            connection_tasks, stream, max_message_size=self.node.config.link.max_message_size)
                        accepted = await accept(self.node, request, remote)
                    except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError,
                            FednodeError) as exc:
                        self.node.log.info("handshake.failed", remote=remote, error=type(exc).__name__)
            finally:
                self.pending -= 1
            if deadline.cancelled_caught:
                self.node.count_refused("handshake_timeout")
                self.node.log.warning("handshake.timeout", remote=remote, timeout=timeout)
            if accepted is not None:
                ws, peer_id = accepted
                supervisor = self.node.supervisor(peer_id)
                if supervisor is not None:
                    await supervisor.adopt(ws)
            connection_tasks.cancel_scope.cancel()
