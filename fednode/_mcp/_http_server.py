"""A small HTTP/1.1 server for the client edge: h11 on Trio, serving one ASGI app.

The edge's HTTP traffic is small JSON-RPC requests on keep-alive connections and a few long SSE
streams. A general ASGI server (hypercorn) spent about 0.5 ms of CPU on each such request before
the app saw it (its protocol layers, a task per request, its timers); this one parses with h11 in
the connection's own task, hands the app ``receive`` and ``send`` that read and write the socket
directly, and spawns nothing per request. What it does:

* HTTP/1.1 and 1.0 with keep-alive, chunked or sized bodies both ways, ``Expect: 100-continue``,
  HEAD; HTTPS when given an SSL context (HTTP/1.1 only, offered by ALPN);
* the ASGI 3 ``http`` and ``lifespan`` protocols: ``receive`` gives the body, then waits for the
  client to go away (``http.disconnect``); an app that never reads the body has it drained;
* bounds against slow or hostile clients: a connection idle for :data:`KEEP_ALIVE` seconds, whose
  request head takes longer than :data:`HEAD_TIMEOUT` once started, whose body stalls that long (or
  takes over :data:`BODY_TIMEOUT` in all) while the app waits for it, or that takes nothing of its
  answer for :data:`WRITE_TIMEOUT` seconds, is closed; beyond :data:`MAX_CONNECTIONS`, the one idle
  longest is; a head over :data:`MAX_HEAD` bytes is answered 431, a body over :data:`MAX_BODY` bytes
  413, malformed HTTP (a body framed both by length and by chunks included) 400.

It does not do HTTP/2, websockets or trailers; the edge needs none of them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import h11
import trio

from .._errors import BodyTooLarge

__all__ = ["BODY_TIMEOUT", "HEAD_TIMEOUT", "KEEP_ALIVE", "MAX_BODY", "MAX_CONNECTIONS", "MAX_HEAD", "WRITE_TIMEOUT",
           "Watch", "serve_http"]

ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[dict[str, Any]]],
                    Callable[[dict[str, Any]], Awaitable[None]]], Awaitable[None]]

#: Seconds a keep-alive connection may sit idle between requests (and before its first one): longer than
#: the common clients keep an idle connection (httpx: 5 s), so that they, not the server, close it.
KEEP_ALIVE = 15.0
#: Seconds a request head may take to arrive once its first byte has.
HEAD_TIMEOUT = 10.0
#: Seconds a request body may take in all (one trickled in a byte at a time never stalls for
#: :data:`HEAD_TIMEOUT`): at 70 KB/s, enough for the 4 MiB the SDK takes of an MCP message.
BODY_TIMEOUT = 60.0
#: Seconds a write may wait for the client to take the next :data:`_READ_SIZE` bytes of an answer; a
#: client that takes nothing for that long (never reads its answer) is given up as gone.
WRITE_TIMEOUT = 30.0
#: Bytes a request head (request line and headers) may take.
MAX_HEAD = 32 * 1024
#: Bytes a request body may take (the SDK refuses MCP messages over 4 MiB itself).
MAX_BODY = 16 * 1024 * 1024


def _half_the_descriptors() -> int:
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return 4096
    return 4096 if soft == resource.RLIM_INFINITY else max(64, soft // 2)


#: Connections served at once: half the process's file descriptors (the rest are the node's: its
#: peers, its servers' pipes). A new connection beyond closes the one idle longest, or, when every
#: one is serving a request, is closed itself: many idle clients cannot starve the node of descriptors.
MAX_CONNECTIONS = _half_the_descriptors()
#: Bytes of a pipelined next request read ahead while a response is still being served.
_READ_AHEAD = 64 * 1024
_READ_SIZE = 64 * 1024
#: Bytes of an unread request body drained to keep the connection open (beyond: it is closed).
_DRAIN = 64 * 1024
#: Seconds a refused request's connection lingers, reading, before it is closed.
_LINGER = 1.0

_log = logging.getLogger("fednode.edge.http")
_ASGI = {"version": "3.0", "spec_version": "2.3"}


class _Exchange:
    """One request and its response on a connection: the ``receive`` and ``send`` the app is given."""

    def __init__(self, connection: _Connection, request: h11.Request) -> None:
        self.connection = connection
        self.head = request.method == b"HEAD"
        self.body_done = False
        self.body_bytes = 0
        self.started: tuple[int, list[tuple[bytes, bytes]]] | None = None
        self.headers_sent = False
        self.complete = False
        self._send_lock = trio.StrictFIFOLock()

    async def receive(self) -> dict[str, Any]:
        connection = self.connection
        if connection.gone.is_set():
            return {"type": "http.disconnect"}
        if not self.body_done:
            return await self._body_part()
        await connection.gone.wait()
        return {"type": "http.disconnect"}

    async def _body_part(self) -> dict[str, Any]:
        h11_conn = self.connection.h11
        if h11_conn.they_are_waiting_for_100_continue:
            await self.connection.write(h11_conn.send(h11.InformationalResponse(status_code=100, headers=[])))
        while True:
            try:
                event = await self.connection.next_event()
            except h11.RemoteProtocolError:
                if not self.connection.gone.is_set():
                    raise  # a malformed body: answered 400 (see _Connection._serve)
                event = None  # the client left in the middle of its body
            if isinstance(event, h11.Data):
                self.body_bytes += len(event.data)
                if self.body_bytes > MAX_BODY:
                    raise BodyTooLarge
                return {"type": "http.request", "body": bytes(event.data), "more_body": True}
            if isinstance(event, h11.EndOfMessage):
                self.body_done = True
                return {"type": "http.request", "body": b"", "more_body": False}
            # ConnectionClosed (or anything else) in the middle of a body: the client has gone.
            self.body_done = True
            return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.started is not None:
                raise RuntimeError("http.response.start sent twice")
            headers = [(bytes(name), bytes(value)) for name, value in message.get("headers", ())]
            self.started = (int(message["status"]), headers)
            return
        if kind != "http.response.body" or self.complete:
            return
        if self.started is None:
            raise RuntimeError("http.response.body sent before http.response.start")
        h11_conn = self.connection.h11
        body = message.get("body", b"")
        more = bool(message.get("more_body", False))
        async with self._send_lock:
            data = b""
            if not self.headers_sent:
                status, headers = self.started
                if h11_conn.they_are_waiting_for_100_continue:
                    # Answered before the body was asked for: the client may send it or not, so what
                    # comes next could be either; the connection closes after this answer.
                    headers = [*headers, (b"connection", b"close")]
                data = h11_conn.send(h11.Response(status_code=status, headers=headers))
                self.headers_sent = True
            if body and not self.head:
                data += h11_conn.send(h11.Data(data=body))
            if not more:
                data += h11_conn.send(h11.EndOfMessage())
                self.complete = True
            if data and not self.connection.gone.is_set():
                await self.connection.write(data)


class Watch:
    """What an app may ask of the connection while its request is in flight (ASGI extension
    ``fednode.watch`` in the request's scope): work the connection's reader does anyway, so the app
    needs no task of its own to watch for the client leaving or to keep a quiet stream alive."""

    __slots__ = ("_connection",)

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection

    @property
    def gone(self) -> bool:
        """The client has gone away."""
        return self._connection.gone.is_set()

    def cancel_on_disconnect(self, scope: trio.CancelScope) -> None:
        """Cancel ``scope`` if the client goes away before the request's answer is complete."""
        self._connection.on_gone = scope
        if self._connection.gone.is_set():
            scope.cancel()

    def every(self, interval: float, callback: Callable[[], Awaitable[None]]) -> None:
        """Await ``callback`` every ``interval`` seconds until the request's answer is complete."""
        connection = self._connection
        connection.pinger = (interval, callback)
        connection.ping_at = trio.current_time() + interval
        connection.retime()


class _Connection:
    """One client connection: its reader task reads the socket (and keeps its timeouts); the
    connection's own task runs the app for each request, one at a time."""

    def __init__(self, server: _Server, stream: trio.abc.Stream, client: tuple[str, int] | None,
                 local: tuple[str, int] | None) -> None:
        self.server = server
        self.stream = stream
        self.client = client
        self.local = local
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.gone = trio.Event()
        #: a request is being served (from its head to the end of its answer)
        self.busy = False
        #: what the request in flight asked for (see Watch)
        self.on_gone: trio.CancelScope | None = None
        self.pinger: tuple[float, Callable[[], Awaitable[None]]] | None = None
        self.ping_at = math.inf
        self._since = trio.current_time()  # idle since (or the head began at, once data is buffered)
        self._head_begun = False
        self._last_read = self._since
        self._discard = False  # a refused request: what else comes is read and dropped
        self._arrived = trio.lowlevel.ParkingLot()  # the serving task waits here for data
        self._room = trio.lowlevel.ParkingLot()  # the reader waits here while too much is buffered
        self._timer: trio.CancelScope | None = None
        self._parked = False  # the reader waits for room (see read_loop)
        self._wanted: float | None = None  # the serving task waits for data since
        self._writing_since: float | None = None  # a write (a piece of one) waits for the socket since
        self._body_asked = math.inf  # the request's app first waited for its body at

    async def write(self, data: bytes) -> None:
        # In pieces, each timed (by the reader, see _write_stalled: a cancel scope per write would cost
        # more than the rest of a small request's writing): a slow reader that takes data is served,
        # one that takes none would otherwise hold the answer, the app and the connection for ever.
        try:
            if len(data) <= _READ_SIZE:
                self._writing_since = trio.current_time()
                await self.stream.send_all(data)
            else:
                view = memoryview(data)
                for start in range(0, len(view), _READ_SIZE):
                    self._writing_since = trio.current_time()
                    await self.stream.send_all(view[start:start + _READ_SIZE])
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._lost()
        finally:
            self._writing_since = None

    def _write_stalled(self, now: float) -> bool:
        """Whether a write has waited WRITE_TIMEOUT for the client to take anything; if so, it is
        ended (the socket closed under it) and the client given up as gone."""
        since = self._writing_since
        if since is None or now < since + WRITE_TIMEOUT:
            return False
        _log.info("edge.http_write_timeout")
        self._lost()
        stream = self.stream.transport_stream if isinstance(self.stream, trio.SSLStream) else self.stream
        sock = getattr(stream, "socket", None)
        if sock is not None:
            sock.close()  # wakes the write waiting on it (ClosedResourceError)
        return True

    def close(self) -> None:
        """End the connection (an idle one: its serving task sees the end and returns)."""
        self._lost()

    def _lost(self) -> None:
        """The client is gone (or the connection is being closed): wake whoever waits for it."""
        if not self.gone.is_set():
            self.gone.set()
            if self.on_gone is not None:
                self.on_gone.cancel()
        self._arrived.unpark_all()

    def _deadline(self) -> float:
        if self._parked or self.busy:
            # A write cannot tell the reader it began: while busy, it looks every WRITE_TIMEOUT.
            since = self._writing_since
            deadline = min(self.ping_at, (since if since is not None else trio.current_time()) + WRITE_TIMEOUT)
            if not self._parked and self.h11.their_state is h11.SEND_BODY and self._wanted is not None:
                # The app waits for a body still arriving: HEAD_TIMEOUT between reads, BODY_TIMEOUT in
                # all, counted from when the app asked (the app's own delays are not the client's).
                return min(deadline, max(self._last_read, self._wanted) + HEAD_TIMEOUT,
                           self._body_asked + BODY_TIMEOUT)
            return deadline
        if self._head_begun:
            return self._since + HEAD_TIMEOUT
        return self._since + KEEP_ALIVE

    def retime(self) -> None:
        """The reader's deadline follows the state (idle, a head arriving, a request in flight)."""
        if self._timer is not None:
            self._timer.deadline = self._deadline()

    async def read_loop(self) -> None:
        """Read the socket into h11 until the client goes or a timeout closes the connection."""
        while not self.gone.is_set():
            # Enough read ahead: wait for the serving task to make room as it takes events (pinging
            # a quiet answer meanwhile: the client is not slow, the request in front of its next is).
            self._parked = len(self.h11.trailing_data[0]) > _READ_AHEAD and not self._discard
            data: bytes | bytearray | None = None
            with trio.CancelScope(deadline=self._deadline()) as timer:
                self._timer = timer
                try:
                    if self._parked:
                        await self._room.park()
                    else:
                        data = await self.stream.receive_some(_READ_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
            self._timer, parked, self._parked = None, self._parked, False
            if timer.cancelled_caught:
                now = trio.current_time()
                if self.busy and self.pinger is not None and now >= self.ping_at:
                    interval, callback = self.pinger
                    self.ping_at = now + interval
                    with trio.move_on_after(WRITE_TIMEOUT) as pinging:  # this task cannot time its own write
                        try:
                            await callback()
                        except Exception:
                            _log.exception("edge.http_ping_failed")
                    if pinging.cancelled_caught:
                        self._lost()
                        return
                    continue
                if self._write_stalled(now):
                    return
                if parked or now < self._deadline():
                    continue  # the state moved on while reading (a body ended): a later deadline
                self._lost()  # idle too long, or a head or body too slow
                return
            if data is None:
                continue  # room was made
            self._last_read = trio.current_time()
            if self.gone.is_set():
                return
            if not data:
                self.h11.receive_data(b"")
                self._lost()
                return
            if self._discard:
                continue
            self.h11.receive_data(bytes(data))
            if not self.busy and not self._head_begun:
                self._head_begun = True
                self._since = trio.current_time()
            self._arrived.unpark_all()

    async def next_event(self) -> Any:
        """The next h11 event, waiting for the reader as needed (an h11 ConnectionClosed once gone)."""
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                self._room.unpark_all()
                return event
            if self.gone.is_set():
                return h11.ConnectionClosed()
            if self.busy:  # the app waits for its body: the body timeouts run (see _deadline)
                self._wanted = trio.current_time()
                self._body_asked = min(self._body_asked, self._wanted)
                self.retime()
            try:
                await self._arrived.park()
            finally:
                self._wanted = None

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.read_loop)
            try:
                await self._serve_all()
            finally:
                nursery.cancel_scope.cancel()

    async def _serve_all(self) -> None:
        while True:
            request = await self._next_request()
            if request is None:
                return
            self.busy, self._head_begun, self._body_asked = True, False, math.inf
            self.retime()
            await self._serve(request)
            if self.h11.our_state is not h11.DONE or self.gone.is_set() or not await self._drain():
                return
            self.h11.start_next_cycle()
            self.busy, self.on_gone, self.pinger, self.ping_at = False, None, None, math.inf
            self.server.idle_again(self)
            self._head_begun = bool(self.h11.trailing_data[0])  # a pipelined request, read ahead
            self._since = trio.current_time()
            self.retime()

    async def _next_request(self) -> h11.Request | None:
        """The next request's head (the reader keeps the idle and head timeouts); None to close."""
        try:
            event = await self.next_event()
        except h11.RemoteProtocolError as exc:
            await self._refuse(exc.error_status_hint)
            return None
        if not isinstance(event, h11.Request):
            return None  # ConnectionClosed
        # h11 bounds a head still arriving; one that came whole in a read is measured here.
        if len(event.target) + sum(len(name) + len(value) + 4 for name, value in event.headers) > MAX_HEAD:
            await self._refuse(431)
            return None
        names = {name for name, _ in event.headers}
        if b"content-length" in names and b"transfer-encoding" in names:
            # Framed two ways (h11 goes by the chunks): a proxy in front may go by the length, and read
            # what follows differently; refused, and the connection closed (RFC 9112, 6.1).
            await self._refuse(400)
            return None
        return event

    async def _refuse(self, status: int) -> None:
        """Answer ``status`` and end the connection, reading (and dropping) a little of what the client
        still sends, so that closing with it unread does not reset the connection before the client
        has read the answer."""
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE) or self.gone.is_set():
            return
        self._discard = True
        self._room.unpark_all()
        reason = b"Request Header Fields Too Large" if status == 431 else b""
        data = self.h11.send(h11.Response(status_code=status, reason=reason, headers=[
            (b"content-length", b"0"), (b"connection", b"close")]))
        with trio.move_on_after(_LINGER):
            await self.write(data + self.h11.send(h11.EndOfMessage()))
            send_eof = getattr(self.stream, "send_eof", None)
            if send_eof is not None and not self.gone.is_set():
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await send_eof()
                await self.gone.wait()

    async def _drain(self) -> bool:
        """Read what is left of a request body the app did not read; False when the connection must close."""
        if self.h11.their_state is h11.DONE:
            return True  # the app read it all (the usual case: no timer needed)
        drained = 0
        with trio.move_on_after(HEAD_TIMEOUT):
            while self.h11.their_state is h11.SEND_BODY:
                try:
                    event = await self.next_event()
                except h11.RemoteProtocolError:
                    return False  # cut short or badly chunked: nothing more can be read of it
                if isinstance(event, h11.Data):
                    drained += len(event.data)
                    if drained > _DRAIN:
                        return False
                elif not isinstance(event, h11.EndOfMessage):
                    return False
        return self.h11.their_state is h11.DONE

    def _scope(self, request: h11.Request) -> dict[str, Any]:
        target = bytes(request.target)
        raw_path, _, query = target.partition(b"?")
        return {
            "type": "http",
            "asgi": _ASGI,
            "http_version": request.http_version.decode("ascii"),
            "method": request.method.decode("ascii"),
            "scheme": self.server.scheme,
            "path": _unquote(raw_path),
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": [(bytes(name), bytes(value)) for name, value in request.headers],
            "client": self.client,
            "server": self.local,
            "state": dict(self.server.lifespan_state),
            "extensions": {"fednode.watch": Watch(self)},
        }

    async def _serve(self, request: h11.Request) -> None:
        exchange = _Exchange(self, request)
        try:
            await self.server.app(self._scope(request), exchange.receive, exchange.send)
        except BodyTooLarge:
            if not exchange.headers_sent:
                await self._refuse(413)
            return
        except h11.RemoteProtocolError as exc:
            if not exchange.headers_sent:
                await self._refuse(exc.error_status_hint)
            return
        except Exception:
            if self.gone.is_set():  # failed for its client's going (a body cut short): not the node's error
                _log.debug("edge.http_app_failed_client_gone", exc_info=True)
            else:
                _log.exception("edge.http_app_failed")
        if not exchange.complete and not self.gone.is_set():
            if exchange.headers_sent:
                return  # a response cut short: the connection closes (run sees our state)
            exchange.started = (500, [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"21")])
            await exchange.send({"type": "http.response.body", "body": b"Internal Server Error"})


def _unquote(raw: bytes) -> str:
    if b"%" not in raw:
        return raw.decode("latin-1")
    from urllib.parse import unquote_to_bytes

    return unquote_to_bytes(raw).decode("latin-1")


class _Server:
    def __init__(self, app: ASGIApp, scheme: str) -> None:
        self.app = app
        self.scheme = scheme
        self.lifespan_state: dict[str, Any] = {}
        #: the open connections, the one idle longest first
        self.connections: dict[_Connection, None] = {}

    def idle_again(self, connection: _Connection) -> None:
        """``connection`` finished a request: now the one idle the shortest."""
        if self.connections.pop(connection, False) is None:
            self.connections[connection] = None

    def _make_room(self) -> bool:
        """Close the connection idle longest for a new one (False: none is idle)."""
        idle = next((connection for connection in self.connections if not connection.busy), None)
        if idle is None:
            return False
        del self.connections[idle]
        idle.close()
        return True

    async def connection(self, stream: trio.abc.Stream) -> None:
        socket_stream = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
        sock = getattr(socket_stream, "socket", None)
        client = local = None
        if sock is not None:
            try:
                client, local = tuple(sock.getpeername()[:2]), tuple(sock.getsockname()[:2])
            except OSError:
                return  # gone before it was served
        connection = _Connection(self, stream, client, local)
        try:
            if len(self.connections) >= MAX_CONNECTIONS and not self._make_room():
                return  # every connection is serving: this one waits for none of them
            self.connections[connection] = None
            await connection.run()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away (or a TLS handshake failed)
        except Exception:
            # What one connection did must never end the server (and every other connection with it).
            _log.exception("edge.http_connection_failed")
        finally:
            self.connections.pop(connection, None)
            await trio.aclose_forcefully(stream)

    async def lifespan(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the app's lifespan: started once it has started up, and until cancelled."""
        started = False
        asked = False

        async def receive() -> dict[str, Any]:
            nonlocal asked
            if not asked:
                asked = True
                return {"type": "lifespan.startup"}
            await trio.sleep_forever()  # shutdown is cancellation: the node stops everything at once
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "lifespan.startup.complete":
                started = True
                task_status.started()
            elif message["type"] == "lifespan.startup.failed":
                raise RuntimeError(f"the ASGI app failed to start: {message.get('message', '')}")

        scope = {"type": "lifespan", "asgi": _ASGI, "state": self.lifespan_state}
        await self.app(scope, receive, send)
        if not started:
            task_status.started()  # an app without a lifespan: nothing to wait for
            await trio.sleep_forever()


async def serve_http(app: ASGIApp, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None,
                     task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``app`` on ``host``:``port`` (HTTPS with ``ssl_context``) until cancelled.

    The app's lifespan starts up first; ``task_status.started(port)`` then reports the bound port
    (useful with port 0). Cancelling the task stops everything at once, open streams included.

    Raises:
        OSError: the address could not be bound.
    """
    server = _Server(app, "https" if ssl_context is not None else "http")
    async with trio.open_nursery() as nursery:
        await nursery.start(server.lifespan)
        listeners: list[Any] = await trio.open_tcp_listeners(port, host=host)
        if ssl_context is not None:
            listeners = [trio.SSLListener(listener, ssl_context, https_compatible=True) for listener in listeners]
        bound = listeners[0].socket.getsockname()[1] if ssl_context is None \
            else listeners[0].transport_listener.socket.getsockname()[1]
        await nursery.start(trio.serve_listeners, server.connection, listeners)
        task_status.started(int(bound))
