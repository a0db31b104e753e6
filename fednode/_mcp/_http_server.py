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
* bounds against slow or hostile clients: a connection idle for :data:`KEEP_ALIVE` seconds, or
  whose request head takes longer than :data:`HEAD_TIMEOUT` once started, is closed; a head over
  :data:`MAX_HEAD` bytes is answered 431, a body over :data:`MAX_BODY` bytes 413, malformed HTTP 400.

It does not do HTTP/2, websockets or trailers; the edge needs none of them.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import h11
import trio

__all__ = ["HEAD_TIMEOUT", "KEEP_ALIVE", "MAX_BODY", "MAX_HEAD", "serve_http"]

ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[dict[str, Any]]],
                    Callable[[dict[str, Any]], Awaitable[None]]], Awaitable[None]]

#: Seconds a keep-alive connection may sit idle between requests (and before its first one): longer than
#: the common clients keep an idle connection (httpx: 5 s), so that they, not the server, close it.
KEEP_ALIVE = 15.0
#: Seconds a request head may take to arrive once its first byte has.
HEAD_TIMEOUT = 10.0
#: Bytes a request head (request line and headers) may take.
MAX_HEAD = 32 * 1024
#: Bytes a request body may take (the SDK refuses MCP messages over 4 MiB itself).
MAX_BODY = 16 * 1024 * 1024
#: Bytes of a pipelined next request read ahead while a response is still being served.
_READ_AHEAD = 64 * 1024
_READ_SIZE = 64 * 1024
#: Bytes of an unread request body drained to keep the connection open (beyond: it is closed).
_DRAIN = 64 * 1024
#: Seconds a refused request's connection lingers, reading, before it is closed.
_LINGER = 1.0

_log = logging.getLogger("fednode.edge.http")
_ASGI = {"version": "3.0", "spec_version": "2.3"}


class _TooLarge(Exception):
    """The request body went over :data:`MAX_BODY`."""


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
        await connection.wait_gone()
        return {"type": "http.disconnect"}

    async def _body_part(self) -> dict[str, Any]:
        h11_conn = self.connection.h11
        if h11_conn.they_are_waiting_for_100_continue:
            await self.connection.write(h11_conn.send(h11.InformationalResponse(status_code=100, headers=[])))
        while True:
            event = await self.connection.next_event()
            if isinstance(event, h11.Data):
                self.body_bytes += len(event.data)
                if self.body_bytes > MAX_BODY:
                    raise _TooLarge
                return {"type": "http.request", "body": bytes(event.data), "more_body": True}
            if isinstance(event, h11.EndOfMessage):
                self.body_done = True
                return {"type": "http.request", "body": b"", "more_body": False}
            # ConnectionClosed (or anything else) in the middle of a body: the client has gone.
            self.body_done = True
            self.connection.gone.set()
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
                data = h11_conn.send(h11.Response(status_code=status, headers=headers))
                self.headers_sent = True
            if body and not self.head:
                data += h11_conn.send(h11.Data(data=body))
            if not more:
                data += h11_conn.send(h11.EndOfMessage())
                self.complete = True
            if data and not self.connection.gone.is_set():
                await self.connection.write(data)


class _Connection:
    """One client connection: reads requests with h11 and runs the app for each, one at a time."""

    def __init__(self, server: _Server, stream: trio.abc.Stream, client: tuple[str, int] | None,
                 local: tuple[str, int] | None) -> None:
        self.server = server
        self.stream = stream
        self.client = client
        self.local = local
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.gone = trio.Event()
        self._reading = False

    async def write(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.gone.set()

    async def _read(self) -> None:
        try:
            data = await self.stream.receive_some(_READ_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            self.gone.set()
        self.h11.receive_data(bytes(data))

    async def next_event(self) -> Any:
        """The next h11 event, reading as needed (an h11 ConnectionClosed at end of input)."""
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            if self.gone.is_set():
                return h11.ConnectionClosed()
            await self._read()

    async def wait_gone(self) -> None:
        """Return once the client has closed the connection (reading ahead a bounded pipelined request)."""
        if self._reading:
            await self.gone.wait()
            return
        self._reading = True
        try:
            while not self.gone.is_set():
                if len(self.h11.trailing_data[0]) > _READ_AHEAD:
                    await self.gone.wait()
                    return
                await self._read()
        finally:
            self._reading = False

    async def run(self) -> None:
        while True:
            request = await self._next_request()
            if request is None:
                return
            await self._serve(request)
            if self.h11.our_state is not h11.DONE or self.gone.is_set() or not await self._drain():
                return
            self.h11.start_next_cycle()

    async def _next_request(self) -> h11.Request | None:
        """The next request's head within the idle and head timeouts; None when the connection should close."""
        with trio.move_on_after(KEEP_ALIVE) as timer:
            begun = False
            try:
                while True:
                    event = self.h11.next_event()
                    if isinstance(event, h11.Request):
                        # h11 bounds a head still arriving; one that came whole in a read is measured here.
                        if len(event.target) + sum(len(name) + len(value) + 4 for name, value in event.headers) \
                                > MAX_HEAD:
                            await self._refuse(431)
                            return None
                        return event
                    if event is not h11.NEED_DATA or self.gone.is_set():
                        return None  # ConnectionClosed, or PAUSED after a close
                    if not begun and self.h11.trailing_data[0]:
                        # The head has begun: from now on it has HEAD_TIMEOUT to arrive whole.
                        begun = True
                        timer.deadline = trio.current_time() + HEAD_TIMEOUT
                    await self._read()
            except h11.RemoteProtocolError as exc:
                await self._refuse(exc.error_status_hint)
                return None
        return None

    async def _refuse(self, status: int) -> None:
        """Answer ``status`` and end the connection, reading a little of what the client still sends so
        that closing with it unread does not reset the connection before the client reads the answer."""
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        reason = b"Request Header Fields Too Large" if status == 431 else b""
        data = self.h11.send(h11.Response(status_code=status, reason=reason, headers=[
            (b"content-length", b"0"), (b"connection", b"close")]))
        with trio.move_on_after(_LINGER):
            await self.write(data + self.h11.send(h11.EndOfMessage()))
            send_eof = getattr(self.stream, "send_eof", None)
            if send_eof is not None and not self.gone.is_set():
                await send_eof()
                drained = 0
                while drained < _DRAIN * 4:
                    chunk = await self.stream.receive_some(_READ_SIZE)
                    if not chunk:
                        break
                    drained += len(chunk)

    async def _drain(self) -> bool:
        """Read what is left of a request body the app did not read; False when the connection must close."""
        drained = 0
        with trio.move_on_after(HEAD_TIMEOUT):
            while self.h11.their_state is h11.SEND_BODY:
                event = await self.next_event()
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
        }

    async def _serve(self, request: h11.Request) -> None:
        exchange = _Exchange(self, request)
        try:
            await self.server.app(self._scope(request), exchange.receive, exchange.send)
        except _TooLarge:
            if not exchange.headers_sent:
                await self._refuse(413)
            return
        except h11.RemoteProtocolError as exc:
            if not exchange.headers_sent:
                await self._refuse(exc.error_status_hint)
            return
        except Exception:
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
            await connection.run()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away (or a TLS handshake failed)
        finally:
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
