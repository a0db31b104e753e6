"""The registered peers of one node: one supervisor task each, added and removed at runtime.

Task tree::

    nursery (the node's)
    └── peer <id>            one PeerSupervisor.run each: dial / adopt, handshake, link, backoff
        └── the link: reader, writer, heartbeat, request tasks

Removing a peer closes its link with a normal close frame (bounded by ``shutdown_grace``), then
cancels its supervisor's scope.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import trio

from .._config._auth import AuthManager
from .._config._config import BackoffConfig, PeerConfig
from .._errors import PeerConnectError, UnknownPeerError
from ._handshake import Handshake
from ._link import CLOSE_NORMAL, Handlers, LinkSettings
from ._ratelimit import PeerRates
from ._supervisor import PeerStatus, PeerSupervisor


class PeerRegistry:
    """The peers of one node, each run by a :class:`PeerSupervisor` in ``nursery``.

    It is the listener's :class:`~._peering.PeerDirectory` (inbound links are handed to the
    registered peer's supervisor) and the supervisors' :class:`~._peering.LinkEvents`, passing
    each link change on to ``on_link``.

    Args:
        local_id: this node's id (a peer may not have it).
        nursery: where the supervisors run.
        handshake, settings, handlers: what each link is built with.
        on_link: called with ``(peer_id, up)`` when a peer's link comes up or starts to go down.
        auth: keeps each registered peer's keys (tokens of unknown peers are refused).
        backoff: the ``[backoff]`` section (redials).
        shutdown_grace: how long a peer being removed gets to answer the close frame.
        log: the node's logger.
        jitter: backoff jitter (tests); default full jitter.
        on_limited: called with a peer's id for each of its requests refused over its ``rate``.
    """

    def __init__(self, local_id: str, nursery: trio.Nursery, *, handshake: Handshake, settings: LinkSettings,
                 handlers: Handlers, on_link: Callable[[str, bool], None], auth: AuthManager, backoff: BackoffConfig,
                 shutdown_grace: float, log: Any, jitter: Callable[[float], float] | None = None,
                 on_limited: Callable[[str], None] | None = None) -> None:
        self._local_id = local_id
        self._nursery = nursery
        self._handshake = handshake
        self._settings = settings
        self._handlers = handlers
        self._on_link = on_link
        self._auth = auth
        self._backoff = backoff
        self.shutdown_grace = shutdown_grace
        self._log = log
        self._jitter = jitter
        #: each registered peer's ``rate``, on the requests it sends (see :meth:`admit`)
        self.rates = PeerRates(lambda peer_id: (p.rate if (p := self.peer_config(peer_id)) else None), on_limited)
        self._supervisors: dict[str, PeerSupervisor] = {}
        self._lock = trio.Lock()
        self._changed = trio.Event()
        self._closing = False

    # -- the listener's view (PeerDirectory) -----------------------------------------------------

    @property
    def closing(self) -> bool:
        """True once :meth:`close` was called: no peer is added and inbound links are refused."""
        return self._closing

    def has_peer(self, peer_id: str) -> bool:
        return peer_id in self._supervisors

    def supervisor(self, peer_id: str) -> PeerSupervisor | None:
        return self._supervisors.get(peer_id)

    # -- the supervisors' view (LinkEvents) ------------------------------------------------------

    def link_changed(self, peer_id: str, up: bool) -> None:
        self._on_link(peer_id, up)
        self.notify_change()

    def notify_change(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- registering --------------------------------------------------------------------------------

    async def register(self, peer: PeerConfig, *, wait: bool, keep_retrying: bool) -> None:
        """Add a peer (replacing one with the same id); see :meth:`fednode.Node.register_peer`."""
        if peer.id == self._local_id:
            raise ValueError(f"peer id {peer.id!r} is this node's own id")
        if self._closing:
            raise PeerConnectError(peer.id, f"node {self._local_id!r} is shutting down; cannot add peer {peer.id!r}")
        async with self._lock:
            if peer.id in self._supervisors:
                await self._remove(peer.id, "peer replaced")
            supervisor = PeerSupervisor(peer, handshake=self._handshake, settings=self._settings,
                                        handlers=self._handlers, events=self, backoff=self._backoff,
                                        logger=self._log, jitter=self._jitter)
            self._auth.set_peer(peer)
            self._supervisors[peer.id] = supervisor
            self._peers_changed()
            await self._nursery.start(self._supervise, supervisor)
        if wait and peer.control:
            await supervisor.first_attempt.wait()
            if supervisor.first_error is not None:
                if not keep_retrying and self._supervisors.get(peer.id) is supervisor:
                    await self.remove(peer.id)
                raise supervisor.first_error

    async def _supervise(self, supervisor: PeerSupervisor, *,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await supervisor.run(task_status=task_status)
        finally:
            if self._supervisors.get(supervisor.peer.id) is supervisor:
                del self._supervisors[supervisor.peer.id]
                self._auth.drop_peer(supervisor.peer.id)
                self._peers_changed()

    def _peers_changed(self) -> None:
        self.rates.keep(self._supervisors)  # a removed peer's bucket goes with it

    def admit(self, peer_id: str) -> float:
        """Take a token for a request from ``peer_id`` (a link's :attr:`Handlers.admit`): 0.0 to serve
        it, else the seconds until its ``rate`` allows one more."""
        return self.rates.take(peer_id, trio.current_time())

    def retune(self, peers: Iterable[PeerConfig]) -> None:
        """Replace registered peers' configurations where only their ``rate`` changed: the links stay,
        and the new rates apply from now on."""
        for peer in peers:
            supervisor = self._supervisors.get(peer.id)
            if supervisor is not None:
                supervisor.peer = peer
                self.rates.retune(peer.id, trio.current_time())

    async def remove(self, peer_id: str) -> None:
        """Remove a peer: close its link with a normal close frame and end its supervisor.

        Raises:
            UnknownPeerError: no such peer is registered.
        """
        async with self._lock:
            await self._remove(peer_id, "peer removed")

    async def _remove(self, peer_id: str, reason: str) -> None:
        supervisor = self._supervisors.pop(peer_id, None)
        if supervisor is None:
            raise UnknownPeerError(peer_id, f"no peer {peer_id!r} is registered")
        self._auth.drop_peer(peer_id)
        self._peers_changed()
        with trio.CancelScope(shield=True):
            with trio.move_on_after(self.shutdown_grace):
                await supervisor.stop_link(CLOSE_NORMAL, reason)
            supervisor.scope.cancel()
            await supervisor.finished.wait()
        self._log.info("peer.removed", peer=peer_id, reason=reason)

    async def close(self, reason: str) -> None:
        """Refuse new peers and links from now on, and close every link with a normal close frame
        (all at once, bounded by ``shutdown_grace``). The supervisors end with their nursery."""
        self._closing = True
        with trio.move_on_after(self.shutdown_grace):
            async with trio.open_nursery() as closers:
                for supervisor in list(self._supervisors.values()):
                    closers.start_soon(supervisor.stop_link, CLOSE_NORMAL, reason)

    # -- looking --------------------------------------------------------------------------------------

    def peer_config(self, peer_id: str) -> PeerConfig | None:
        supervisor = self._supervisors.get(peer_id)
        return supervisor.peer if supervisor is not None else None

    def peer_ids(self) -> list[str]:
        return sorted(self._supervisors)

    def connected_peers(self) -> list[str]:
        return sorted(pid for pid, s in self._supervisors.items() if s.link is not None and s.link.is_up)

    def states(self) -> dict[str, PeerStatus]:
        return {pid: s.status() for pid, s in sorted(self._supervisors.items())}

    def passing_on(self) -> int:
        """Requests this node's links are passing on to other nodes right now."""
        return sum(s.link.passing_on for s in self._supervisors.values() if s.link is not None)

    async def wait_connected(self, peer_ids: tuple[str, ...], timeout: float) -> None:
        """See :meth:`fednode.Node.wait_connected`."""
        wanted = set(peer_ids or self._supervisors)
        with trio.fail_after(timeout):
            while not wanted <= set(self.connected_peers()):
                await self._changed.wait()
