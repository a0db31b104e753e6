"""The edge's HTTP/1.1 server (fednode._mcp._http_server), spoken to over raw sockets on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from fednode._errors import sole_leaf
from fednode._mcp import _http_server
from fednode._mcp._http_server import HEAD_TIMEOUT, KEEP_ALIVE, serve_http


class App:
    """An ASGI app that records what it is given and answers by path."""

    def __init__(self) -> None:
        self.started = False
        self.requests: list[tuple[dict[str, Any], bytes]] = []
        self.disconnected = trio.Event()
        self.streaming = trio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            assert (await receive())["type"] == "lifespan.startup"
            self.started = True
            await send({"type": "lifespan.startup.complete"})
            await receive()
            return
        assert self.started, "a request arrived before the lifespan started"
        body = b""
        if scope["path"] != "/unread":
            while True:
                message = await receive()
                assert message["type"] == "http.request"
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
        self.requests.append((scope, body))
        if scope["path"] == "/fail":
            raise RuntimeError("the app failed")
        if scope["path"] == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"first", "more_body": True})
            self.streaming.set()
            assert (await receive())["type"] == "http.disconnect"
            self.disconnected.set()
            return
        answer = b"got " + body
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(answer)).encode()), (b"x-path", scope["path"].encode())]})
        await send({"type": "http.response.body", "body": answer})


@asynccontextmanager
async def running(app: App) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, app, "127.0.0.1", 0)
        yield port
        nursery.cancel_scope.cancel()


async def exchange(stream: trio.SocketStream, request: bytes) -> bytes:
    """Send ``request`` and read one response (its head and a sized body, or up to the connection's end)."""
    await stream.send_all(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lengths = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    length = lengths[0] if lengths else None
    while length is not None and len(body) < length:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        body += chunk
    if length is None:
        while chunk := await stream.receive_some(65536):
            body += chunk
    return head + b"\r\n\r\n" + body


async def test_keep_alive_bodies_and_scope() -> None:
    app = App()
    with trio.fail_after(30):
        async with running(app) as port:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            first = await exchange(stream, b"POST /a%20b?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello")
            assert first.startswith(b"HTTP/1.1 200 ") and first.endswith(b"got hello")
            assert b"x-path: /a b" in first
            # chunked, on the same connection
            second = await exchange(stream, b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                                            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
            assert second.endswith(b"got abcde")
            await stream.aclose()
    scope = app.requests[0][0]
    assert (scope["method"], scope["path"], scope["raw_path"], scope["query_string"]) == \
        ("POST", "/a b", b"/a%20b", b"x=1")
    assert scope["scheme"] == "http" and scope["http_version"] == "1.1"
    assert scope["client"][0] == "127.0.0.1" and scope["server"] == ("127.0.0.1", port)
    assert (b"host", b"h") in scope["headers"]


async def test_http_1_0_closes_and_expect_continue() -> None:
    app = App()
    with trio.fail_after(30):
        async with running(app) as port:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            answer = await exchange(stream, b"POST /x HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi")
            assert answer.endswith(b"got hi")
            assert await stream.receive_some(10) == b""  # closed after an HTTP/1.0 exchange
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"POST /y HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
            interim = await stream.receive_some(65536)
            assert interim.startswith(b"HTTP/1.1 100 ")
            await stream.send_all(b"abc")
            rest = await stream.receive_some(65536)
            assert rest.endswith(b"got abc")


async def test_bad_requests_get_their_status(monkeypatch: pytest.MonkeyPatch) -> None:
    app = App()
    monkeypatch.setattr(_http_server, "MAX_BODY", 10)
    with trio.fail_after(30):
        async with running(app) as port:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            assert (await exchange(stream, b"NOT HTTP\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            huge = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * (_http_server.MAX_HEAD + 10) + b"\r\n\r\n"
            assert (await exchange(stream, huge)).startswith(b"HTTP/1.1 431 ")
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            big = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 20\r\n\r\n" + b"b" * 20
            assert (await exchange(stream, big)).startswith(b"HTTP/1.1 413 ")
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            failed = await exchange(stream, b"GET /fail HTTP/1.1\r\nHost: h\r\n\r\n")
            assert failed.startswith(b"HTTP/1.1 500 ") and failed.endswith(b"Internal Server Error")
            # the connection stays usable after the app's failure was answered
            assert (await exchange(stream, b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
    assert not any(scope["path"] == "/" for scope, _ in app.requests)  # refused before the app


async def test_unread_body_is_drained_for_the_next_request() -> None:
    app = App()
    with trio.fail_after(30):
        async with running(app) as port:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            first = await exchange(stream, b"POST /unread HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nskip")
            assert first.endswith(b"got ")
            second = await exchange(stream, b"POST /next HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nok")
            assert second.endswith(b"got ok")


async def test_a_client_that_leaves_is_seen_by_a_streaming_app() -> None:
    app = App()
    with trio.fail_after(30):
        async with running(app) as port:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"GET /stream HTTP/1.1\r\nHost: h\r\n\r\n")
            await app.streaming.wait()
            head = await stream.receive_some(65536)
            assert head.startswith(b"HTTP/1.1 200 ") and b"transfer-encoding: chunked" in head.lower()
            await stream.aclose()
            await app.disconnected.wait()


async def test_idle_and_slow_connections_are_closed(autojump_clock: trio.testing.MockClock) -> None:
    app = App()
    async with running(app) as port:
        idle = await trio.open_tcp_stream("127.0.0.1", port)
        started = trio.current_time()
        assert await idle.receive_some(10) == b""
        assert trio.current_time() - started == pytest.approx(KEEP_ALIVE, abs=0.01)
        slow = await trio.open_tcp_stream("127.0.0.1", port)
        await slow.send_all(b"GET / HTTP/1.1\r\n")  # a head that never ends
        started = trio.current_time()
        assert await slow.receive_some(10) == b""
        assert trio.current_time() - started == pytest.approx(HEAD_TIMEOUT, abs=0.01)
    assert app.requests == []


async def test_an_app_without_a_lifespan_is_served_and_a_failing_one_stops_the_server() -> None:
    async def bare(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return  # no lifespan support
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def broken(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_http, bare, "127.0.0.1", 0)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            answer = await exchange(stream, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 204 ")
            nursery.cancel_scope.cancel()
        with pytest.raises(BaseException) as failed:
            async with trio.open_nursery() as nursery:
                await nursery.start(serve_http, broken, "127.0.0.1", 0)
        assert "failed to start: no database" in str(sole_leaf(failed.value))


async def test_a_stalled_body_closes_the_connection(autojump_clock: trio.testing.MockClock) -> None:
    app = App()
    with trio.fail_after(3 * HEAD_TIMEOUT):
        async with running(app) as port:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
            started = trio.current_time()
            assert await stream.receive_some(10) == b""
            assert trio.current_time() - started == pytest.approx(HEAD_TIMEOUT, abs=0.01)
    assert app.requests == []  # the app never got a whole body


async def test_a_client_leaving_mid_body_is_a_disconnect_for_the_app() -> None:
    seen: list[str] = []
    done = trio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            return
        try:
            while (message := await receive())["type"] == "http.request":
                seen.append(message["type"])
            seen.append(message["type"])
        finally:
            done.set()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_http, app, "127.0.0.1", 0)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
            while not seen:
                await trio.sleep(0.01)
            await stream.aclose()
            await done.wait()
            nursery.cancel_scope.cancel()
    assert seen[-1] == "http.disconnect"
