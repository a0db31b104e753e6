"""Configuration reload, planned without I/O: what changed between the running and the new configuration.

:meth:`fednode.Node.reload` loads the new configuration, asks :func:`plan_reload` what to do, applies
the plan (peers and servers removed, re-registered or added one at a time) and reports a
:class:`ReloadResult`.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import attrs
import trio

from .._config._auth import AuthManager
from .._config._config import NodeConfig, PeerConfig, ServerConfig, load_config
from .._errors import ConfigError, FednodeError

#: Sections a reload cannot change on a running node (they take effect at the next start).
RESTART_ONLY = ("control", "data", "tls", "heartbeat", "backoff", "link", "shutdown_grace", "state_dir")


@attrs.frozen
class ReloadResult:
    """What a configuration reload did (see :meth:`Node.reload`).

    Attributes:
        ok: False when the new configuration was refused (nothing was changed).
        error: why it was refused.
        summary: one line saying what changed.
        at: trio clock time of the reload.
        peers_added, peers_removed, peers_changed, servers_added, servers_removed, servers_changed:
            the ids concerned (changed ones were re-registered or restarted).
        peers_retuned: peers whose ``rate``, ``callers`` or ``pin`` alone changed (applied at once; their
            links stay up).
        servers_retuned: servers whose ``callers`` or ``pin`` alone changed (advertised again; not restarted).
        auth_changed: the ``[auth]`` keys or rules changed (used for new links from now on).
        restart_needed: changed sections that only take effect when the node is restarted.
    """

    ok: bool
    at: float
    error: str | None = None
    summary: str = ""
    peers_added: tuple[str, ...] = ()
    peers_removed: tuple[str, ...] = ()
    peers_changed: tuple[str, ...] = ()
    servers_added: tuple[str, ...] = ()
    servers_removed: tuple[str, ...] = ()
    servers_changed: tuple[str, ...] = ()
    peers_retuned: tuple[str, ...] = ()
    servers_retuned: tuple[str, ...] = ()
    auth_changed: bool = False
    restart_needed: tuple[str, ...] = ()


@attrs.frozen
class ReloadPlan:
    """What a reload from one configuration to another must do.

    Attributes:
        effective: the configuration to run with: the new one, but the sections in
            :data:`RESTART_ONLY` kept as they are until the next start.
        peers_added, peers_removed, peers_changed, servers_added, servers_removed, servers_changed:
            the ids concerned, sorted.
        peers_retuned: peers whose ``rate``, ``callers`` or ``pin`` alone changed, sorted (not in ``peers_changed``).
        servers_retuned: servers whose ``callers`` or ``pin`` alone changed, sorted (not in ``servers_changed``).
        restart_needed: the sections that changed but only take effect at the next start.
        mcp_changed, clients_changed, nodes_changed: whether ``[mcp]`` / ``[clients]`` / ``[[nodes]]``
            changed (they apply at once).
    """

    effective: NodeConfig
    peers_added: tuple[str, ...]
    peers_removed: tuple[str, ...]
    peers_changed: tuple[str, ...]
    servers_added: tuple[str, ...]
    servers_removed: tuple[str, ...]
    servers_changed: tuple[str, ...]
    peers_retuned: tuple[str, ...]
    restart_needed: tuple[str, ...]
    mcp_changed: bool
    clients_changed: bool
    nodes_changed: bool = False
    servers_retuned: tuple[str, ...] = ()

    def result(self, *, auth_changed: bool, at: float) -> ReloadResult:
        """The outcome once the plan is applied, with a one-line summary such as ``peers +c; servers ~two``."""
        parts = [f"{what} {sign}{','.join(ids)}" for what, sign, ids in (
            ("peers", "+", self.peers_added), ("peers", "-", self.peers_removed), ("peers", "~", self.peers_changed),
            ("servers", "+", self.servers_added), ("servers", "-", self.servers_removed),
            ("servers", "~", self.servers_changed), ("peer rates", "~", self.peers_retuned),
            ("server callers", "~", self.servers_retuned)) if ids]
        parts += [f"{name} changed" for name, changed in (
            ("auth", auth_changed), ("nodes", self.nodes_changed), ("mcp", self.mcp_changed),
            ("clients", self.clients_changed)) if changed]
        if self.restart_needed:
            parts.append(f"restart needed for: {', '.join(self.restart_needed)}")
        return ReloadResult(
            ok=True, at=at, summary="; ".join(parts) or "no changes",
            peers_added=self.peers_added, peers_removed=self.peers_removed, peers_changed=self.peers_changed,
            servers_added=self.servers_added, servers_removed=self.servers_removed,
            servers_changed=self.servers_changed, peers_retuned=self.peers_retuned,
            servers_retuned=self.servers_retuned, auth_changed=auth_changed,
            restart_needed=self.restart_needed)


def plan_reload(old: NodeConfig, new: NodeConfig) -> ReloadPlan:
    """Compare the running configuration with a new one (of the same node id)."""
    peers = _differences(old.peers, new.peers)
    servers = _differences(old.servers, new.servers)
    before = {peer.id: peer for peer in old.peers}
    after = {peer.id: peer for peer in new.peers}
    # A peer whose rate, callers or pin alone changed keeps its link: they apply to its next request
    # (pin: to its routes, checked again at once).
    retuned = tuple(i for i in peers[2] if attrs.evolve(before[i], rate=after[i].rate, callers=after[i].callers,
                                                        pin=after[i].pin) == after[i])
    # A server whose callers or pin alone changed keeps running: its routes are advertised (checked) again.
    old_servers, new_servers = {s.id: s for s in old.servers}, {s.id: s for s in new.servers}
    servers_retuned = tuple(i for i in servers[2] if attrs.evolve(
        old_servers[i], callers=new_servers[i].callers, pin=new_servers[i].pin) == new_servers[i])
    return ReloadPlan(
        effective=attrs.evolve(new, **{name: getattr(old, name) for name in RESTART_ONLY}),
        peers_added=peers[0], peers_removed=peers[1], peers_changed=tuple(i for i in peers[2] if i not in retuned),
        peers_retuned=retuned,
        servers_added=servers[0], servers_removed=servers[1],
        servers_changed=tuple(i for i in servers[2] if i not in servers_retuned), servers_retuned=servers_retuned,
        restart_needed=tuple(name for name in RESTART_ONLY if getattr(old, name) != getattr(new, name)),
        mcp_changed=old.mcp != new.mcp, clients_changed=old.clients != new.clients,
        nodes_changed=old.nodes != new.nodes)


def _differences(old: tuple[PeerConfig, ...] | tuple[ServerConfig, ...],
                 new: tuple[PeerConfig, ...] | tuple[ServerConfig, ...],
                 ) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Ids (sorted) of the entries added, removed and changed from ``old`` to ``new``."""
    before, after = {entry.id: entry for entry in old}, {entry.id: entry for entry in new}
    return (tuple(sorted(after.keys() - before.keys())), tuple(sorted(before.keys() - after.keys())),
            tuple(sorted(i for i in before.keys() & after.keys() if before[i] != after[i])))


def read_new_config(source: NodeConfig | str | os.PathLike[str], node_id: str) -> tuple[NodeConfig | None, str | None]:
    """The configuration a reload of node ``node_id`` applies (from a file, or given), or why it is refused."""
    if isinstance(source, NodeConfig):
        new = source
    else:
        try:
            new = load_config(source)
        except ConfigError as exc:
            return None, str(exc)
    if new.id != node_id:
        return None, f"the new configuration is for node {new.id!r}, not {node_id!r} (node ids never change)"
    return new, None


class Reloadable(Protocol):
    """What a reload changes on a node (the node satisfies this)."""

    id: str
    config: NodeConfig
    log: Any
    auth: AuthManager
    edge: Any
    peers: Any
    attached: Any
    audit: Any
    federation: Any

    def has_peer(self, peer_id: str) -> bool: ...

    async def remove_peer(self, peer_id: str) -> None: ...

    async def register_peer(self, peer: PeerConfig, *, wait: bool = True, keep_retrying: bool = True) -> None: ...

    async def remove_server(self, server_id: str) -> None: ...

    async def add_server(self, config: ServerConfig, *, wait: bool = True, timeout: float = 30.0,
                         server: Any = None) -> None: ...


async def reload_node(node: Reloadable, source: NodeConfig | str | os.PathLike[str]) -> ReloadResult:
    """Load ``source`` and apply it to ``node`` (see :meth:`fednode.Node.reload`); log the outcome."""
    new, error = read_new_config(source, node.id)
    if new is None:
        node.log.error("node.reload_refused", error=error)
        return ReloadResult(ok=False, at=trio.current_time(), error=error,
                            summary="refused; the running configuration stays")
    try:
        # Reopened on every reload, for logrotate (SIGHUP): the file may have been moved away.
        await node.audit.reopen(new.audit.path)
    except FednodeError as exc:
        node.log.error("node.reload_refused", error=str(exc))
        return ReloadResult(ok=False, at=trio.current_time(), error=str(exc),
                            summary="refused; the running configuration stays")
    try:
        result = await _apply(node, new)
    except (FednodeError, ValueError) as exc:  # e.g. the node began to shut down meanwhile
        node.log.error("node.reload_failed", error=str(exc))
        return ReloadResult(ok=False, at=trio.current_time(), error=f"reload stopped part-way: {exc}",
                            summary="failed part-way; see the error")
    node.log.info("node.reloaded", summary=result.summary)
    return result


async def _apply(node: Reloadable, new: NodeConfig) -> ReloadResult:
    plan = plan_reload(node.config, new)
    node.config = plan.effective
    before = node.auth.fingerprint()
    node.auth.update(new.auth)
    auth_changed = node.auth.fingerprint() != before
    node.edge.set_clients(new.clients)
    new_peers = {peer.id: peer for peer in new.peers}
    node.peers.retune(new_peers[peer_id] for peer_id in plan.peers_retuned)  # their links stay up
    for peer_id in plan.peers_removed:
        if node.has_peer(peer_id):
            await node.remove_peer(peer_id)
    for peer_id in [*plan.peers_changed, *plan.peers_added]:
        await node.register_peer(new_peers[peer_id], wait=False)
    new_servers = {server.id: server for server in new.servers}
    for server_id in plan.servers_removed:
        if server_id in node.attached.upstreams:
            await node.remove_server(server_id)
    for server_id in [*plan.servers_changed, *plan.servers_added]:
        await node.add_server(new_servers[server_id], wait=False)
    for server_id in plan.servers_retuned:
        node.attached.retune(new_servers[server_id])
    if plan.servers_retuned or plan.peers_retuned:  # (a peer's pin: its routes checked again)
        node.federation.local_changed()
    return plan.result(auth_changed=auth_changed, at=trio.current_time())
