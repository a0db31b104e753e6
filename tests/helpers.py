"""Test tools that speak to a node from outside: a raw authenticated peer, a TCP proxy, task counts."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from trio_websocket import WebSocketConnection, connect_websocket_url

import fednode
from fednode._config._signing import Keyring
from fednode._errors import HandshakeFailed
from fednode._federation._route_proof import Proof, RouteProofs
from fednode._federation._routes import route_from_wire
from fednode._peers import _wire as wire
from fednode._peers._handshake import Handshake

from conftest import SECRET


def token_from(issuer: str, audience: str, secret: str = SECRET) -> str:
    """A valid link token from ``issuer`` to ``audience`` under ``secret`` (the shared test secret by default)."""
    config = fednode.NodeConfig.from_mapping({"node": {"id": issuer}, "auth": {"secret": secret},
                                              "peers": [{"id": audience}]})
    manager = fednode.AuthManager(issuer, config.auth, {p.id: p for p in config.peers})
    return manager.create_token(audience)


def keyring(node_id: str, secret: str = SECRET) -> Keyring:
    """The keyring of a node whose ``[auth]`` secret is ``secret`` (and no peers or [[nodes]])."""
    auth = fednode.AuthConfig(secrets=(fednode.Secret(secret),))
    return Keyring(node_id, auth=lambda: auth, peer=lambda _peer_id: None, nodes=lambda: ())


def signed(route: dict[str, Any], to: str, *, secrets: dict[str, str] | None = None, version: int | None = None,
           expires: int | None = None) -> dict[str, Any]:
    """``route`` (as on the wire) as its path would send it to ``to``: the digest of its catalog, and
    each hop's attestation with its secret (``secrets[hop]``, else the shared test secret)."""
    route = {key: value for key, value in route.items() if key != "proof"}
    parsed = route_from_wire(route)
    path = parsed.path
    proofs = RouteProofs(path[0], keyring(path[0], (secrets or {}).get(path[0], SECRET)))
    digest = parsed.signed_digest()
    proof = proofs.local_proof(parsed.server, digest, parsed.prefix)
    proof = Proof(version=proof.version if version is None else version,
                  expires=proof.expires if expires is None else expires)
    for index, hop in enumerate(path):
        hop_proofs = RouteProofs(hop, keyring(hop, (secrets or {}).get(hop, SECRET)))
        next_hop = path[index + 1] if index + 1 < len(path) else to
        proof = hop_proofs.attest(parsed.origin, parsed.server, parsed.prefix, digest, proof, path[:index + 1],
                                  next_hop)
    return {**route, "digest": digest, "proof": proof.to_wire()}


@asynccontextmanager
async def raw_peer(node: fednode.Node, as_id: str, *, hello: bool = True, max_message_size: int = 16 * 1024 * 1024,
                   secret: str = SECRET) -> AsyncIterator[WebSocketConnection]:
    """A hand-driven WebSocket that authenticates to ``node`` as peer ``as_id`` with ``secret`` (and sends hello)."""
    async with trio.open_nursery() as nursery:
        ws = await connect_websocket_url(
            nursery, node.control_url,
            extra_headers=[(b"authorization", f"Bearer {token_from(as_id, node.id, secret)}".encode())],
            max_message_size=max_message_size)
        if hello:
            await ws.send_message(wire.encode(wire.Hello(node=as_id)))
            assert isinstance(wire.decode(await ws.get_message()), wire.Hello)
        try:
            yield ws
        finally:
            with trio.move_on_after(1):
                await ws.aclose()
            nursery.cancel_scope.cancel()


async def next_frame(ws: WebSocketConnection) -> wire.Message:
    """The next frame that is not a heartbeat (pings are answered) or a route advertisement."""
    while True:
        message = wire.decode(await ws.get_message())
        if isinstance(message, wire.Ping):
            await ws.send_message(wire.encode(wire.Pong(seq=message.seq)))
        elif isinstance(message, wire.Notification) and message.method == "fed/routes":
            continue
        elif not isinstance(message, wire.Pong):
            return message


class BlackholeProxy:
    """A loopback TCP proxy that can silently drop all traffic while keeping connections open."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.blackhole = False
        self.connections = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        self.connections += 1
        try:
            server = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        except OSError:
            await client.aclose()
            return
        async with client, server, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, client, server, nursery.cancel_scope)
            nursery.start_soon(self._pump, server, client, nursery.cancel_scope)

    async def _pump(self, source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope) -> None:
        try:
            while data := await source.receive_some(65536):
                if not self.blackhole:
                    await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()


def task_count() -> int:
    """Number of live Trio tasks in this run."""
    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(child) for nursery in task.child_nurseries for child in nursery.child_tasks)
    return walk(trio.lowlevel.current_root_task())


def fd_count() -> int:
    """Number of open file descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))


def refusing_dial(attempts: list[float]) -> Any:
    """A stand-in for the supervisor's ``dial`` that records each attempt's (virtual) time and is refused."""
    async def dial(handshake: Handshake, peer: fednode.PeerConfig, nursery: trio.Nursery) -> Any:
        attempts.append(trio.current_time())
        raise HandshakeFailed("refused by peer: HTTP 401 bad_signature")
    return dial
