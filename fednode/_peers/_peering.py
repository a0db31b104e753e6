"""What the peers layer calls on the layer above it, as small protocols the node satisfies.

The handshake, the listener and the supervisors never see the node: each is given, when built,
the one or two of these it calls (and its own configuration sections). Keeping them this small
says exactly what a lower part may ask of the node, and lets tests stand in for it.
"""

from __future__ import annotations

from typing import Protocol

from trio_websocket import WebSocketConnection


class LinkAdopter(Protocol):
    """Takes an authenticated inbound link over (a peer's supervisor)."""

    async def adopt(self, ws: WebSocketConnection) -> None:
        """Run the link; return when it has ended."""


class PeerDirectory(Protocol):
    """Which peers are registered, for the listener and the accepting side of the handshake."""

    @property
    def closing(self) -> bool:
        """True once shutdown has begun: inbound connections are refused."""

    def has_peer(self, peer_id: str) -> bool:
        """Whether ``peer_id`` is registered (it may be removed between verification and hello)."""

    def supervisor(self, peer_id: str) -> LinkAdopter | None:
        """Where an authenticated inbound link from ``peer_id`` is handed, if the peer is registered."""


class LinkEvents(Protocol):
    """Where a supervisor reports its peer's link coming and going."""

    def link_changed(self, peer_id: str, up: bool) -> None:
        """The link to ``peer_id`` came up, or started to go down."""

    def notify_change(self) -> None:
        """Some peer's state changed (wakes whoever waits for peers to connect)."""
