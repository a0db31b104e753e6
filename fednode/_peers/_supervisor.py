"""The per-peer supervisor: connect, authenticate, run the link, back off, repeat.

Each supervisor owns a cancel scope. Registering a peer starts one in the node's nursery; removing
the peer cancels that scope, which closes its link (normal close frame) and ends every task it
started. Inbound links from the peer are handed to the same supervisor and run in its nursery, so
"one peer, one supervisor, at most one live link" holds whichever side dialed.

A supervisor does not know the node: it is given the handshake, its links' settings and method
table, its ``[backoff]`` section, and a :class:`~fednode._peers._peering.LinkEvents` sink it reports to.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import attrs
import trio
from trio_websocket import ConnectionRejected, WebSocketConnection

from .._config._config import BackoffConfig, PeerConfig
from .._errors import HandshakeFailed, PeerConnectError, leaves
from ._backoff import Backoff
from ._handshake import Handshake, close_quietly, describe_rejection, dial
from ._link import CLOSE_DUPLICATE, CLOSE_GOING_AWAY, Direction, Handlers, Link, LinkSettings
from ._peering import LinkEvents


class PeerState(enum.StrEnum):
    """Where a peer's supervisor is in its loop."""

    CONNECTING = "connecting"  #: dialing and authenticating
    UP = "up"  #: a live link
    BACKOFF = "backoff"  #: waiting before the next attempt
    WAITING = "waiting"  #: no control URL: waiting for the peer to dial in


@attrs.frozen
class PeerStatus:
    """A snapshot of one peer, as returned by the node's ``peer_states()``."""

    id: str
    state: PeerState
    direction: str | None
    rtt: float | None
    reconnects: int
    last_error: str | None
    control: str | None
    last_seen: float | None = None  #: trio clock time of the last frame received on the live link


class PeerSupervisor:
    """Keeps one peer connected. Created and started by the node's ``register_peer()``.

    Args:
        peer: the peer to keep connected.
        handshake: how to dial and authenticate (this node's id, keys and limits).
        settings: what each of the peer's links runs with.
        handlers: the method table the links dispatch to.
        events: told when the link comes up or starts to go down, and of every change of state.
        backoff: the ``[backoff]`` section: how long to wait between attempts.
        logger: the node's logger (bound here to the peer).
        jitter: backoff jitter function, for tests; default full jitter.
    """

    def __init__(self, peer: PeerConfig, *, handshake: Handshake, settings: LinkSettings, handlers: Handlers,
                 events: LinkEvents, backoff: BackoffConfig, logger: Any,
                 jitter: Callable[[float], float] | None = None) -> None:
        self.peer = peer
        self.handshake = handshake
        self.settings = settings
        self.handlers = handlers
        self.events = events
        self.logger = logger
        self.scope = trio.CancelScope()
        self.state = PeerState.CONNECTING if peer.control else PeerState.WAITING
        self.link: Link | None = None
        self.links_up = 0
        self.last_error: str | None = None
        self.first_attempt = trio.Event()
        self.first_error: PeerConnectError | None = None
        self.finished = trio.Event()
        self.backoff = Backoff(backoff, jitter) if jitter else Backoff(backoff)
        self.log = logger.bind(peer=peer.id)
        self._nursery: trio.Nursery | None = None
        self._link_gone = trio.Event()
        self._link_gone.set()
        self.stopping = False

    def has_link(self) -> bool:
        """Whether a link (inbound or outbound) is installed right now."""
        return self.link is not None

    def status(self) -> PeerStatus:
        """This peer's state right now."""
        link = self.link
        return PeerStatus(
            id=self.peer.id,
            state=self.state,
            direction=link.direction.value if link is not None else None,
            rtt=link.rtt if link is not None else None,
            reconnects=max(0, self.links_up - 1),
            last_error=self.last_error,
            control=self.peer.control,
            last_seen=link.last_seen if link is not None else None,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Supervise the peer until cancelled (see the node's ``remove_peer()``)."""
        try:
            with self.scope:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    task_status.started()
                    if self.peer.control:
                        await self._dial_loop()
                    else:
                        self._resolve_first(None)
                        await trio.sleep_forever()
        finally:
            self._nursery = None
            self.link = None
            self._resolve_first(PeerConnectError(self.peer.id, f"peer {self.peer.id!r} was removed"))
            self.finished.set()

    def _resolve_first(self, error: PeerConnectError | None) -> None:
        if not self.first_attempt.is_set():
            self.first_error = error
            self.first_attempt.set()

    # -- outbound ---------------------------------------------------------------------------

    async def _dial_loop(self) -> None:
        while True:
            while self.link is not None:
                await self._link_gone.wait()
            if self.stopping:
                await trio.sleep_forever()  # removal or shutdown is under way: no new dial
            self.state = PeerState.CONNECTING
            error = await self._attempt()
            if error is not None:
                self.last_error = error
                self.log.warning("peer.connect_failed", error=error)
                self._resolve_first(PeerConnectError(
                    self.peer.id, f"cannot connect to peer {self.peer.id!r} at {self.peer.control}: {error}"))
            if self.has_link() or self.stopping:
                continue  # an inbound link came up meanwhile, or ours lost a simultaneous dial
            delay = self.backoff.next_delay()
            self.state = PeerState.BACKOFF
            self.log.info("peer.backoff", delay=round(delay, 3), attempt=self.backoff.attempt)
            await trio.sleep(delay)

    async def _attempt(self) -> str | None:
        """One dial; runs the link if it comes up. Returns an error text if the dial failed."""
        self.log.info("peer.connecting", url=self.peer.control)
        error: str | None = None
        try:
            async with trio.open_nursery() as connection_tasks:
                try:
                    ws = await dial(self.handshake, self.peer, connection_tasks)
                except HandshakeFailed as exc:
                    error = str(exc)
                else:
                    await self._take(ws, Direction.OUTBOUND)
                connection_tasks.cancel_scope.cancel()
        except* ConnectionRejected as group:
            rejection = next(leaves(group))  # the groups may be nested: the refusal itself is a leaf
            assert isinstance(rejection, ConnectionRejected)
            error = describe_rejection(rejection, self.handshake.auth, self.peer)
        except* Exception as group:  # a bug or an unforeseen library error must not kill the node
            cause = next(leaves(group))
            self.log.error("peer.unexpected_error", error=repr(cause)[:300])
            error = f"unexpected error: {type(cause).__name__}"
        return error

    # -- inbound ----------------------------------------------------------------------------

    async def adopt(self, ws: WebSocketConnection) -> None:
        """Run an authenticated inbound link under this supervisor; return when it has ended.

        Called from the listener's connection task, which keeps the WebSocket's reader alive.
        """
        nursery = self._nursery
        if nursery is None or self.stopping:
            await close_quietly(ws, CLOSE_GOING_AWAY, "peer is being removed")
            return
        ended = trio.Event()

        async def run_inbound() -> None:
            try:
                await self._take(ws, Direction.INBOUND)
            finally:
                ended.set()

        try:
            nursery.start_soon(run_inbound)
        except RuntimeError:  # the supervisor is shutting down
            await close_quietly(ws, CLOSE_GOING_AWAY, "peer is being removed")
            return
        try:
            await ended.wait()
        finally:
            # If the listener is cancelled first (shutdown), let the link send its close frame.
            with trio.CancelScope(shield=True), trio.move_on_after(self.settings.shutdown_grace + 1):
                await ended.wait()

    # -- links ------------------------------------------------------------------------------

    async def _take(self, ws: WebSocketConnection, direction: Direction) -> None:
        link = Link(ws, local_id=self.handshake.local_id, peer_id=self.peer.id, direction=direction,
                    settings=self.settings, handlers=self.handlers, logger=self.logger, on_end=self._link_ending)
        if not self._install(link):
            self.log.info("link.duplicate", direction=direction.value,
                          kept=self.link.direction.value if self.link else None)
            await link.reject(CLOSE_DUPLICATE, "duplicate link")
            self._resolve_first(None)  # the peer is connected, through the link that was kept
            return
        self._resolve_first(None)
        self.state = PeerState.UP
        self.links_up += 1
        self.log.info("link.up", direction=direction.value, reconnects=max(0, self.links_up - 1))
        self.events.link_changed(self.peer.id, True)
        reason = "unknown"
        try:
            reason = await link.run()
        finally:
            uptime = trio.current_time() - link.started_at
            if self.link is link:
                self.link = None
                self._link_gone.set()
            self.backoff.link_ended(uptime)
            self.log.info("link.down", direction=direction.value, reason=link.end_reason or reason,
                          uptime=round(uptime, 3))
            self.events.notify_change()

    def _link_ending(self, link: Link) -> None:
        """Called by a link the moment it starts to end, so status never shows a dead link as up."""
        if self.link is link:
            self.state = PeerState.CONNECTING if self.peer.control else PeerState.WAITING
            reason = link.end_reason or "link ended"
            if not reason.startswith("closed locally"):
                self.last_error = reason
            self.events.link_changed(self.peer.id, False)

    def _install(self, link: Link) -> bool:
        """Make ``link`` the peer's link, or refuse it; both nodes reach the same choice.

        Between two live links dialed by different nodes, the one dialed by the node with the
        smaller id survives. A newer link dialed by the same node replaces the older one (that
        node evidently lost the old one: it restarted, or the link died on its side first).
        """
        current = self.link
        if current is not None and current.is_up:
            preferred = min(self.handshake.local_id, self.peer.id)
            if link.dialer != current.dialer and current.dialer == preferred:
                return False
            current.stop(CLOSE_DUPLICATE, "replaced by a newer link")
        self.link = link
        self._link_gone = trio.Event()
        return True

    async def stop_link(self, code: int, reason: str) -> None:
        """Stop dialing and accepting, close the live link with ``code``, and wait until it has ended.

        Callers bound the wait (``shutdown_grace``) and then cancel :attr:`scope`.
        """
        self.stopping = True
        link = self.link
        if link is not None:
            link.stop(code, reason)
            await link.ended.wait()

