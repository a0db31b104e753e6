"""Both sides of the authenticated link handshake.

Dialer: HTTP upgrade carrying ``Authorization: Bearer <token for the peer>``; the listener answers
101 with ``X-Fednode-Token: <token for the dialer>`` (or 401/403 and no WebSocket). The dialer
verifies that token before it sends anything. Then each side sends one ``hello`` frame (dialer
first) naming itself and the protocol version. The whole exchange runs under one deadline
(``[link] handshake_timeout``) on each side.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

import attrs
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    WebSocketRequest,
    wrap_client_stream,
)

from .._config._auth import FORBIDDEN_REASONS, AuthManager, AuthReason
from .._config._config import LinkConfig, PeerConfig, TLSConfig
from .._config._logging import ThrottledLog
from .._errors import AuthError, HandshakeFailed, ProtocolError
from . import _wire as wire
from ._link import CLOSE_POLICY, CLOSE_PROTOCOL_ERROR
from ._peering import PeerDirectory

TOKEN_HEADER = b"x-fednode-token"
SOFTWARE = "fednode"


@attrs.frozen
class Handshake:
    """What both sides of the handshake need, given once by the node and shared by every link.

    Attributes:
        local_id: this node's id (named in the hello it sends).
        auth: mints this node's tokens and verifies the peers' (updated in place by a reload).
        limits: the ``[link]`` section (``handshake_timeout``, ``max_message_size``).
        tls: the ``[tls]`` section (``ca`` is trusted when dialing wss:// peers).
        count_refused: counts one refused authentication by its reason (shown by the metrics).
    """

    local_id: str
    auth: AuthManager
    limits: LinkConfig
    tls: TLSConfig
    count_refused: Callable[[str], None]


def header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    """All values of header ``name`` (case-insensitive)."""
    return [value for key, value in headers if key.lower() == name]


def bearer_token(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """The token of a single ``Authorization: Bearer`` header, or None."""
    values = header(headers, b"authorization")
    if len(values) != 1:
        return None
    scheme, _, token = values[0].strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    try:
        return token.strip().decode("ascii") or None
    except UnicodeDecodeError:
        return None


async def close_quietly(ws: WebSocketConnection, code: int, reason: str, timeout: float = 1.0) -> None:
    """Send a close frame and wait (bounded, shielded) for the close to complete."""
    with trio.CancelScope(shield=True), trio.move_on_after(timeout):
        await ws.aclose(code, reason)


def check_hello(frame: str | bytes, expected_node: str) -> wire.Hello:
    """Validate the peer's first frame.

    Raises:
        ProtocolError: it is not a hello from ``expected_node`` speaking our version.
    """
    message = wire.decode(frame)
    if not isinstance(message, wire.Hello):
        raise ProtocolError(f"expected a hello frame first, got {message.TYPE!r}")
    if message.node != expected_node:
        raise ProtocolError(f"hello names node {message.node[:64]!r}, but the token was issued by {expected_node!r}")
    if message.version != wire.PROTOCOL_VERSION:
        raise ProtocolError(f"peer speaks protocol version {message.version}, this node speaks {wire.PROTOCOL_VERSION}")
    return message


def client_ssl_context(tls: TLSConfig) -> ssl.SSLContext:
    """The TLS context used to dial wss:// peers (trusting ``[tls] ca`` when set)."""
    ca = tls.ca
    return ssl.create_default_context(cafile=str(ca) if ca else None)


async def _close_on_exit(stream: trio.abc.Stream) -> None:
    """Own the dialed stream: close it when the connection's nursery ends, however it ends."""
    try:
        await trio.sleep_forever()
    finally:
        await trio.aclose_forcefully(stream)


async def _open_stream(tls: TLSConfig, url: str) -> tuple[trio.abc.Stream, str, str]:
    """TCP connect (and TLS handshake for wss://) to ``url``; returns (stream, host header, path)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
    if secure:
        # The TLS handshake runs here, not lazily inside trio-websocket, so that a certificate
        # problem fails the dial at once with its real reason instead of at the deadline.
        ssl_stream = trio.SSLStream(stream, client_ssl_context(tls), server_hostname=host, https_compatible=True)
        try:
            await ssl_stream.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        stream = ssl_stream
    host_header = host if port == (443 if secure else 80) else f"{host}:{port}"
    if ":" in host:
        host_header = f"[{host}]" + host_header[len(host):]
    return stream, host_header, parts.path or "/"


async def dial(handshake: Handshake, peer: PeerConfig, nursery: trio.Nursery) -> WebSocketConnection:
    """Connect to ``peer``, authenticate both ways and exchange hellos.

    The WebSocket's background tasks run in ``nursery``; cancel it to drop the connection. A refusal
    (HTTP 401/403) surfaces from that nursery as ``trio_websocket.ConnectionRejected``.

    Raises:
        HandshakeFailed: with a one-line reason (unreachable, TLS, timed out, bad token, bad hello...).
    """
    assert peer.control is not None
    timeout = handshake.limits.handshake_timeout
    token = handshake.auth.create_token(peer.id)
    try:
        with trio.fail_after(timeout):
            stream, host_header, path = await _open_stream(handshake.tls, peer.control)
            nursery.start_soon(_close_on_exit, stream)
            ws = await wrap_client_stream(
                nursery, stream, host_header, path,  # type: ignore[arg-type]
                extra_headers=[(b"authorization", b"Bearer " + token.encode())],
                max_message_size=handshake.limits.max_message_size,
            )
            replies = header(ws.handshake_headers, TOKEN_HEADER)
            try:
                handshake.auth.verify_token(replies[0].decode("ascii") if len(replies) == 1 else None,
                                       expected_issuer=peer.id)
            except (AuthError, UnicodeDecodeError) as exc:
                reason = exc.reason if isinstance(exc, AuthError) else AuthReason.GARBAGE.value
                handshake.count_refused(reason)
                await close_quietly(ws, CLOSE_POLICY, "authentication failed")
                raise HandshakeFailed(f"peer's proof of identity refused: {exc}") from None
            await ws.send_message(wire.encode(wire.Hello(node=handshake.local_id, software=SOFTWARE)))
            try:
                check_hello(await ws.get_message(), peer.id)
            except ProtocolError as exc:
                await close_quietly(ws, CLOSE_PROTOCOL_ERROR, "bad hello")
                raise HandshakeFailed(f"bad hello from peer: {exc}") from None
        return ws
    except trio.TooSlowError:
        raise HandshakeFailed(f"handshake not complete within {timeout:g}s") from None
    except HandshakeError as exc:
        raise HandshakeFailed(f"WebSocket handshake failed: {type(exc).__name__}") from None
    except ConnectionClosed as exc:
        code = exc.reason.code if exc.reason else "?"
        raise HandshakeFailed(f"connection closed during handshake ({code})") from None
    except trio.BrokenResourceError as exc:
        cause = exc.__cause__ or exc
        raise HandshakeFailed(f"cannot connect to {peer.control}: {cause}") from None
    except OSError as exc:
        raise HandshakeFailed(f"cannot connect to {peer.control}: {exc}") from None


def describe_rejection(exc: ConnectionRejected, auth: AuthManager, peer: PeerConfig) -> str:
    """One line for a refused upgrade: what the refusal means in words, then the status and reason sent.

    The body is the peer's text, so only a reason fednode sends is interpreted; anything else is shown
    as it came, shortened, printable characters only. Never contains a token or secret (a kid names a
    key without revealing it).
    """
    body = "".join(c for c in (exc.body or b"")[:200].decode("utf-8", "replace") if c.isprintable()).strip()
    sent = f"HTTP {exc.status_code}" + (f" {body[:100]}" if body else "")
    meaning = _refusal_meaning(exc.status_code, body, auth, peer)
    return f"{meaning} (refused with {sent})" if meaning else f"refused by peer: {sent}"


def _refusal_meaning(status: int, body: str, auth: AuthManager, peer: PeerConfig) -> str | None:
    """Why ``peer`` refused this node's dial, for an operator; None for a reason fednode does not send."""
    who = f"peer {peer.id!r}"
    kid = auth.signing_kid(peer.id) or "none"
    eddsa = auth.config.algorithm == "EdDSA"
    if status == 404:
        return f"{peer.control} is not a fednode control endpoint (check the control URL of {who}, path included)"
    if status == 503:
        return f"{who} is shutting down"
    try:
        reason = AuthReason(body)
    except ValueError:
        return None
    clocks = "the two hosts' clocks differ by more than [auth] leeway (check their time synchronisation)"
    meanings = {
        AuthReason.UNKNOWN_KID: (
            f"{who} does not know this node's public key (kid {kid}): give it this node's public key"
            f" (in its [[peers]] entry for {auth.node_id!r})" if eddsa else
            f"{who} does not know this node's key (kid {kid}): the shared secret differs"),
        AuthReason.BAD_SIGNATURE: (
            f"{who} could not verify this node's signature (kid {kid}): it holds another key under that kid"),
        AuthReason.WRONG_ALGORITHM: (
            f"{who} does not accept {auth.config.algorithm} tokens: set the same [auth] algorithm on both"),
        AuthReason.EXPIRED: f"{who} found this node's token expired: {clocks}",
        AuthReason.ISSUED_IN_FUTURE: f"{who} found this node's token issued in the future: {clocks}",
        AuthReason.TOO_LONG_LIVED: (
            f"{who} found this node's token too long-lived: {clocks}, or [auth] token_ttl is too long"),
        AuthReason.WRONG_AUDIENCE: (
            f"the node at {peer.control} is not {peer.id!r} (check the control URL of {who})"),
        AuthReason.UNKNOWN_ISSUER: f"{who} does not have this node ({auth.node_id!r}) among its [[peers]]",
        AuthReason.REPLAY: f"{who} had seen this node's token before (a replay)",
    }
    return meanings.get(reason, f"{who} could not accept this node's token ({reason.value})")


async def accept(handshake: Handshake, request: WebSocketRequest, remote: str, *, path: str,
                 peers: PeerDirectory, log: ThrottledLog,
                 on_authenticated: Callable[[], None] | None = None) -> tuple[WebSocketConnection, str] | None:
    """Authenticate an inbound request; on success accept it and exchange hellos.

    Args:
        path: the control endpoint's HTTP path; any other is answered 404.
        peers: whether the node is closing (503) and which peers are registered.
        log: where refusals are logged (limited: strangers can cause them at will; every refusal is
            still counted by ``handshake.count_refused``).
        on_authenticated: called once the token has been verified, before the hellos.

    Returns:
        ``(ws, peer_id)``, or None when the request was refused (already answered and logged).
    """
    if peers.closing:
        await request.reject(503, body=b"node is shutting down")
        return None
    if request.path.split("?", 1)[0] != path:
        await request.reject(404, body=b"not a fednode control endpoint")
        return None
    try:
        claims = handshake.auth.verify_token(bearer_token(request.headers))
    except AuthError as exc:
        handshake.count_refused(exc.reason)
        log.warning("auth.refused", key=exc.reason, reason=exc.reason, detail=exc.detail, remote=remote)
        status = 403 if exc.reason in {r.value for r in FORBIDDEN_REASONS} else 401
        await request.reject(status, extra_headers=[(b"content-type", b"text/plain")],
                             body=exc.reason.encode())
        return None
    peer_id = claims.issuer
    if not peers.has_peer(peer_id):  # removed between verification and now
        await request.reject(403, body=AuthReason.UNKNOWN_ISSUER.value.encode())
        return None
    if on_authenticated is not None:
        on_authenticated()
    reply = handshake.auth.create_token(peer_id)
    ws = await request.accept(extra_headers=[(TOKEN_HEADER, reply.encode())])
    try:
        check_hello(await ws.get_message(), peer_id)
    except ProtocolError as exc:
        log.warning("handshake.bad_hello", key=peer_id, peer=peer_id, remote=remote, error=str(exc))
        await close_quietly(ws, CLOSE_PROTOCOL_ERROR, "bad hello")
        return None
    await ws.send_message(wire.encode(wire.Hello(node=handshake.local_id, software=SOFTWARE)))
    return ws, peer_id

