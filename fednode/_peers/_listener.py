"""The listener for inbound peers: TCP (or TLS) accept, authenticated handshake, hand-off.

Each accepted connection gets one deadline for the whole handshake (HTTP upgrade, token check,
hello). An authenticated link is handed to its peer's supervisor; this connection's task stays
alive only to keep trio-websocket's reader running until the link ends.

Connections that have not yet presented a valid token are strangers, and strangers can be made at
will: :class:`HandshakeSlots` bounds how many handshakes are pending so that holding sockets open
cannot lock a real peer out (a newcomer evicts the longest-waiting stranger instead of being
refused), and :class:`ThrottledLog` bounds how many log lines strangers can cause.
"""

from __future__ import annotations

import collections
import ipaddress
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import trio
from trio_websocket import ConnectionClosed, wrap_server_stream

from .._config._config import TLSConfig
from .._config._logging import ThrottledLog
from .._errors import FednodeError
from ._handshake import Handshake, accept
from ._peering import PeerDirectory

#: Handshakes pending at once, at most. Beyond it a newcomer evicts the longest-waiting connection
#: that has not authenticated yet (a real peer needs milliseconds; a socket held open by an attacker
#: is the one that has waited longest), and is refused only if every pending one has authenticated.
MAX_PENDING_HANDSHAKES = 256

#: Pending handshakes not yet authenticated from one address (an IPv4 address or an IPv6 /64), at
#: most. Beyond it a newcomer from that address evicts that address's longest-waiting one, so one
#: address can neither take more than its share of the slots nor evict anyone else's handshakes.
MAX_PENDING_PER_ADDRESS = 32


def _remote_of(stream: trio.abc.Stream) -> str:
    sock_stream = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if isinstance(sock_stream, trio.SocketStream):
        try:
            host, port = sock_stream.socket.getpeername()[:2]
            return f"{host}:{port}"
        except OSError:
            return "unknown"
    return "memory"


def address_of(remote: str) -> str:
    """The address ``remote`` (``host:port``) is counted under: the IPv4 address, or the IPv6 /64.

    One host is usually given a whole IPv6 /64, so counting single IPv6 addresses would give it
    millions of shares. Anything that is not an IP address (memory streams) is its own address.
    """
    host = remote.rsplit(":", 1)[0] if ":" in remote else remote
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass(eq=False)
class PendingHandshake:
    """One connection in its handshake: its slot, and the scope that ends the handshake when cancelled."""

    address: str
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    authenticated: bool = False
    #: Why it was evicted (``address_limit`` or ``total_limit``), or None.
    evicted: str | None = None


class HandshakeSlots:
    """Which connections may hold a pending-handshake slot: bounded in total and per address.

    Strangers (connections that have not presented a valid token) are kept oldest first, in total and
    per address. A newcomer takes the slot of the oldest stranger from its own address when that
    address is at ``per_address``, else of the oldest stranger anywhere when all ``limit`` slots are
    taken; the evicted handshake's scope is cancelled. A connection that has authenticated can no
    longer be evicted (it is a configured peer finishing its hello), so when every slot is held by
    one the newcomer is refused. No I/O here: :class:`Listener` acts on the answers.
    """

    def __init__(self, limit: int = MAX_PENDING_HANDSHAKES, per_address: int = MAX_PENDING_PER_ADDRESS) -> None:
        self.limit = limit
        self.per_address = per_address
        # dicts as ordered sets: insertion order is arrival order, so the first one is the oldest
        self._strangers: dict[PendingHandshake, None] = {}
        self._by_address: dict[str, dict[PendingHandshake, None]] = collections.defaultdict(dict)
        self._authenticated = 0

    def __len__(self) -> int:
        return len(self._strangers) + self._authenticated

    def admit(self, address: str) -> PendingHandshake | None:
        """A slot for a new connection from ``address`` (evicting another if need be), or None: refuse it."""
        same_address = self._by_address.get(address)
        if same_address is not None and len(same_address) >= self.per_address:
            self._evict(next(iter(same_address)), "address_limit")
        elif len(self) >= self.limit:
            if not self._strangers:
                return None
            self._evict(next(iter(self._strangers)), "total_limit")
        pending = PendingHandshake(address)
        self._strangers[pending] = None
        self._by_address[address][pending] = None
        return pending

    def authenticated(self, pending: PendingHandshake) -> None:
        """``pending`` presented a valid token: it keeps its slot until it ends, whatever arrives."""
        if pending in self._strangers:
            self._forget(pending)
            pending.authenticated = True
            self._authenticated += 1

    def release(self, pending: PendingHandshake) -> None:
        """``pending``'s handshake ended (however): free its slot, if it still holds one."""
        if pending in self._strangers:
            self._forget(pending)
        elif pending.authenticated:
            pending.authenticated = False
            self._authenticated -= 1

    def _evict(self, pending: PendingHandshake, reason: str) -> None:
        self._forget(pending)
        pending.evicted = reason
        pending.scope.cancel()

    def _forget(self, pending: PendingHandshake) -> None:
        del self._strangers[pending]
        same_address = self._by_address[pending.address]
        del same_address[pending]
        if not same_address:
            del self._by_address[pending.address]


class Listener:
    """Accepts inbound peer connections on the node's control address.

    Args:
        control: the control URL to listen on (``ws://`` or ``wss://``; port 0 picks one).
        tls: the ``[tls]`` section (``cert`` and ``key`` serve ``wss://``).
        handshake: how to authenticate the peers that connect (this node's id, keys and limits).
        peers: whether the node is closing, which peers are registered, and whose supervisor takes a link.
        logger: the node's logger.
    """

    def __init__(self, *, control: str, tls: TLSConfig, handshake: Handshake, peers: PeerDirectory,
                 logger: Any) -> None:
        self.control = control
        self.path = urlsplit(control).path or "/"
        self.tls = tls
        self.handshake = handshake
        self.peers = peers
        self.port: int | None = None
        self.slots = HandshakeSlots()
        #: Lines about connections that did not become links: anyone can cause them, so they are limited.
        self.log = ThrottledLog(logger)

    @property
    def pending(self) -> int:
        """Handshakes in progress now."""
        return len(self.slots)

    def _ssl_context(self) -> ssl.SSLContext | None:
        tls = self.tls
        if not self.control.startswith("wss://"):
            return None
        assert tls.cert is not None and tls.key is not None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(tls.cert), str(tls.key))
        return context

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind the control address and accept connections until cancelled.

        Returns (through ``task_status``) the bound port, so port 0 can be used.
        """
        url = urlsplit(self.control)
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
        pending = self.slots.admit(address_of(remote))
        if pending is None:
            self.log.warning("listener.too_many_handshakes", remote=remote, limit=self.slots.limit)
            await trio.aclose_forcefully(stream)
            return
        try:
            await self._handle(stream, remote, pending)
        except Exception as exc:  # nothing a remote party sends may crash the listener
            self.log.error("listener.connection_failed", key=type(exc).__name__, remote=remote,
                           error=repr(exc)[:300])
        finally:
            self.slots.release(pending)  # already done unless _handle failed before its handshake
            await trio.aclose_forcefully(stream)

    async def _handle(self, stream: trio.abc.Stream, remote: str, pending: PendingHandshake) -> None:
        timeout = self.handshake.limits.handshake_timeout
        accepted = None
        try:
            async with trio.open_nursery() as connection_tasks:
                try:
                    # The slot's scope is the handshake's deadline, and what an eviction cancels.
                    pending.scope.deadline = trio.current_time() + timeout
                    with pending.scope:
                        try:
                            request = await wrap_server_stream(
                                connection_tasks, stream, max_message_size=self.handshake.limits.max_message_size)
                            accepted = await accept(self.handshake, request, remote, path=self.path,
                                                    peers=self.peers, log=self.log,
                                                    on_authenticated=lambda: self.slots.authenticated(pending))
                        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError,
                                FednodeError) as exc:
                            self.log.info("handshake.failed", key=type(exc).__name__, remote=remote,
                                          error=type(exc).__name__)
                finally:
                    self.slots.release(pending)
                if pending.scope.cancelled_caught and pending.evicted is not None:
                    self.handshake.count_refused("handshake_evicted")
                    self.log.warning("handshake.evicted", key=pending.evicted, remote=remote,
                                     reason=pending.evicted)
                elif pending.scope.cancelled_caught:
                    self.handshake.count_refused("handshake_timeout")
                    self.log.warning("handshake.timeout", remote=remote, timeout=timeout)
                if accepted is not None:
                    ws, peer_id = accepted
                    supervisor = self.peers.supervisor(peer_id)
                    if supervisor is not None:
                        await supervisor.adopt(ws)
                connection_tasks.cancel_scope.cancel()
        except* (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError) as group:
            if accepted is not None:
                raise
            # trio-websocket's reader task raises these when it cannot even answer a malformed request
            # (its sender has gone already): a failed handshake like any other, not a listener fault.
            name = type(group.exceptions[0]).__name__
            self.log.info("handshake.failed", key=name, remote=remote, error=name)
