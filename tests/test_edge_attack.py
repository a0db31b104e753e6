"""The client edge under attack: hostile or broken clients over real sockets on 127.0.0.1."""

from __future__ import annotations

import functools
import json
import re
import socket
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx2
import pytest
import trio
from test_edge import FakeForwarder, running_edge
from test_edge_fast import AskingForwarder, GatedForwarder, modern_request, served
from test_http_server import App, exchange, running
from test_tls import self_signed

from fednode._mcp import _http_server
from fednode._mcp._edge_fast import PING_INTERVAL
from fednode._mcp._http_server import BODY_TIMEOUT, HEAD_TIMEOUT, KEEP_ALIVE, WRITE_TIMEOUT, serve_http

LEGACY = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
VERSION = "2025-11-25"


class BigApp(App):
    """``/big`` answers with :attr:`size` bytes in 1 MiB pieces; ``finished`` once its last send returned."""

    size = 64 * 1024 * 1024

    def __init__(self) -> None:
        super().__init__()
        self.finished = trio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/big":
            await super().__call__(scope, receive, send)
            return
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(self.size).encode())]})
        piece = b"x" * (1024 * 1024)
        for _ in range(self.size // len(piece)):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        self.finished.set()


@pytest.mark.parametrize("tls", [False, True])
async def test_a_client_that_never_reads_its_answer_is_dropped(
        tls: bool, tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """A large answer to a client that takes none of it: once the socket takes nothing for
    WRITE_TIMEOUT seconds, the connection is given up (the app's sends return, nothing is held)."""
    app = BigApp()
    server_context = client_context = None
    if tls:
        cert, key = self_signed(tmp_path, "edge")
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_context.load_cert_chain(cert, key)
        client_context = ssl.create_default_context(cafile=str(cert))
    with trio.fail_after(10 * WRITE_TIMEOUT):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(functools.partial(serve_http, app, "127.0.0.1", 0, ssl_context=server_context))
            sock = await trio.open_tcp_stream("127.0.0.1", port)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stream: trio.abc.Stream = sock
            if client_context is not None:
                stream = trio.SSLStream(sock, client_context, server_hostname="127.0.0.1")
            await stream.send_all(b"GET /big HTTP/1.1\r\nHost: h\r\n\r\n")
            started = trio.current_time()
            await app.finished.wait()
            assert trio.current_time() - started == pytest.approx(WRITE_TIMEOUT, abs=0.01)
            await trio.aclose_forcefully(stream)
            nursery.cancel_scope.cancel()


async def open_legacy(http: httpx2.AsyncClient, url: str) -> str:
    """A new legacy session (initialized): its id."""
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}
    opened = await http.post(url, content=json.dumps(init), headers=LEGACY)
    session = str(opened.headers["mcp-session-id"])
    await http.post(url, content=json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}),
                    headers=LEGACY | {"Mcp-Session-Id": session, "MCP-Protocol-Version": VERSION})
    return session


async def answer_ids(stream: trio.SocketStream, count: int) -> list[int]:
    """The JSON-RPC ids of the next ``count`` sized JSON answers on ``stream``, in order."""
    ids: list[int] = []
    received = b""
    while len(ids) < count:
        chunk = await stream.receive_some(65536)
        assert chunk, "the connection closed"
        received += chunk
        head, sep, rest = received.partition(b"\r\n\r\n")
        while sep and b"content-length: " in head:
            length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
            if len(rest) < length:
                break
            ids.append(json.loads(rest[:length])["id"])
            received = rest[length:]
            head, sep, rest = received.partition(b"\r\n\r\n")
    return ids


def post(body: Any, headers: Iterable[tuple[str, str]]) -> bytes:
    """A POST to /mcp of ``body`` (JSON, or bytes as they are) with exactly ``headers`` (duplicates kept)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return f"POST /mcp HTTP/1.1\r\n{head}Content-Length: {len(data)}\r\n\r\n".encode() + data


def host(port: int) -> tuple[str, str]:
    """The Host header of a request to the edge on ``port``."""
    return "Host", f"127.0.0.1:{port}"


async def raw_post(port: int, body: Any, headers: list[tuple[str, str]]) -> bytes:
    """POST ``body`` to /mcp with exactly ``headers`` on a connection of its own; the answer."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        return await exchange(stream, post(body, [*headers, ("Connection", "close")]))
    finally:
        await stream.aclose()


async def test_duplicate_headers_are_read_as_the_sdk_reads_them() -> None:
    """The SDK (Starlette) reads the first of a repeated header: a forbidden Host or Origin first, an
    allowed one after it, is the SDK's to refuse, and the fast path must not serve it; a repeated
    session id is the first one's request."""
    forwarder = FakeForwarder()
    with trio.fail_after(60):
        async with running_edge(forwarder) as (edge, url):
            port = int(url.rsplit(":", 1)[1].split("/")[0])
            body, headers = modern_request("tools/call", {"name": "echo", "arguments": {"text": "x"}}, "echo")
            plain = list(headers.items())
            good = host(port)
            fine = await raw_post(port, body, [good, *plain])
            assert fine.startswith(b"HTTP/1.1 200 ") and served(edge) == 1
            rebound = await raw_post(port, body, [("Host", "evil.example"), good, *plain])
            assert rebound.startswith(b"HTTP/1.1 400 ")  # h11 refuses a repeated Host itself
            foreign = await raw_post(port, body, [good, ("Origin", "http://evil.example"),
                                                  ("Origin", f"http://127.0.0.1:{port}"), *plain])
            assert foreign.startswith(b"HTTP/1.1 403 "), foreign
            assert served(edge) == 1 and len(forwarder.calls) == 1
            async with httpx2.AsyncClient() as http:
                first, second = await open_legacy(http, url), await open_legacy(http, url)
            call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "echo", "arguments": {}}}
            both = await raw_post(port, call, [good, *LEGACY.items(), ("MCP-Protocol-Version", VERSION),
                                               ("Mcp-Session-Id", first), ("Mcp-Session-Id", second)])
            assert f"mcp-session-id: {first}\r\n".encode() in both
            assert forwarder.calls[-1][2].session_key in (None, first)


async def test_odd_json_rpc_on_the_fast_path_is_left_to_the_sdk() -> None:
    """JSON the fast path cannot take (an unhashable method or id, JSON bombs) goes to the SDK, which
    answers it; nothing fails with a 500."""
    forwarder = FakeForwarder()
    with trio.fail_after(60):
        async with running_edge(forwarder) as (edge, url):
            port = int(url.rsplit(":", 1)[1].split("/")[0])
            async with httpx2.AsyncClient() as http:
                session = await open_legacy(http, url)
            here = host(port)
            legacy = [here, *LEGACY.items(), ("MCP-Protocol-Version", VERSION), ("Mcp-Session-Id", session)]
            _, modern = modern_request("tools/call", {"name": "echo"}, "echo")
            deep = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"a":' + \
                b"[" * 100_000 + b"]" * 100_000 + b"}}}"
            huge = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"a":' + \
                b"9" * 100_000 + b"}}}"
            for body, headers in [
                ({"jsonrpc": "2.0", "id": 1, "method": ["tools/call"], "params": {}}, legacy),
                ({"jsonrpc": "2.0", "id": [1], "result": {}}, legacy),
                ({"jsonrpc": "2.0", "id": {"a": 1}, "error": {"code": 1, "message": "x"}}, legacy),
                ({"jsonrpc": "2.0", "id": 1, "method": {"a": 1}, "params": {}}, [here, *modern.items()]),
                (deep, legacy), (huge, legacy), (deep, [here, *modern.items()]),
            ]:
                answer = await raw_post(port, body, headers)
                assert answer.startswith(b"HTTP/1.1 ") and not answer.startswith(b"HTTP/1.1 500 "), (body, answer)
            assert served(edge) == 0 and forwarder.calls == []


async def test_a_request_with_both_content_length_and_chunked_is_refused() -> None:
    """Framed both ways (the request smuggling ambiguity): 400 and the connection closes (RFC 9112,
    6.1), so whatever the two framings disagree about is never read as a next request."""
    app = App()
    with trio.fail_after(30):
        async with running(app) as port:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            answer = await exchange(stream, b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 30\r\n"
                                            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                                            b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 400 ") and b"connection: close" in answer
            assert app.requests == []


async def test_a_body_trickled_in_closes_the_connection(autojump_clock: trio.testing.MockClock) -> None:
    """A byte of body every few seconds never stalls for HEAD_TIMEOUT, yet a body may take only
    BODY_TIMEOUT seconds in all (else one client holds a connection, and its app, for ever)."""
    app = App()
    with trio.fail_after(10 * BODY_TIMEOUT):
        async with running(app) as port:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000\r\n\r\n")
            started = trio.current_time()
            closed = False
            for _ in range(1000):
                await stream.send_all(b"a")
                with trio.move_on_after(HEAD_TIMEOUT - 1):
                    closed = await stream.receive_some(10) == b""
                if closed:
                    break
            assert closed and trio.current_time() - started == pytest.approx(BODY_TIMEOUT, abs=0.01)
    assert app.requests == []


async def test_an_answer_before_the_continue_closes_the_connection(autojump_clock: trio.testing.MockClock) -> None:
    """An app answers an ``Expect: 100-continue`` request without reading its body: the client may now
    send the body or not, so the connection cannot tell a next request from that body; it closes at
    once (Connection: close) rather than reading either as the other."""
    app = App()
    async with running(app) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        answer = await exchange(stream, b"POST /unread HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n"
                                        b"Content-Length: 5\r\n\r\n")
        started = trio.current_time()
        assert answer.startswith(b"HTTP/1.1 200 ") and b"connection: close" in answer.lower()
        assert await stream.receive_some(10) == b""
        assert trio.current_time() == started


async def test_another_session_cannot_answer_or_cancel_a_question() -> None:
    """A legacy request served here asks its client (``fednode-N``): another session's client POSTing
    an answer to that id, or a ``notifications/cancelled`` for the request, reaches neither, nor does
    an answer with headers the SDK refuses; the asking session's own answer does."""
    forwarder = AskingForwarder()
    forwarder.catalog["tools"].append({"name": "ask", "inputSchema": {"type": "object"}})
    with trio.fail_after(60):
        async with running_edge(forwarder) as (edge, url):
            port = int(url.rsplit(":", 1)[1].split("/")[0])
            here = host(port)
            async with httpx2.AsyncClient() as http:
                mine, theirs = await open_legacy(http, url), await open_legacy(http, url)

            def headers(session: str) -> list[tuple[str, str]]:
                return [here, *LEGACY.items(), ("MCP-Protocol-Version", VERSION), ("Mcp-Session-Id", session)]

            stream = await trio.open_tcp_stream("127.0.0.1", port)
            call = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "ask", "arguments": {}}}
            await stream.send_all(post(call, headers(mine)))
            received, questions = b"", []
            while not questions:  # the question's event, after whatever comes first (a priming event)
                received += await stream.receive_some(65536)
                questions = re.findall(rb"data: (\{[^\r\n]*elicitation/create[^\r\n]*)\r?\n", received)
            question = json.loads(questions[0])
            assert question["method"] == "elicitation/create" and question["id"].startswith("fednode-")
            answer = {"jsonrpc": "2.0", "id": question["id"],
                      "result": {"action": "accept", "content": {"name": "eve"}}}
            cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 5}}
            for forged in (answer, cancel):
                await raw_post(port, forged, headers(theirs))
            # the right session, headers the SDK refuses (a version of no era): the SDK's to refuse
            assert list(edge.fast._asks) == [(mine, question["id"])] and (mine, 5) in edge.fast._inflight
            wrong = [*headers(mine)[:-2], ("MCP-Protocol-Version", "1999-01-01"), ("Mcp-Session-Id", mine)]
            for forged in (answer, cancel):
                assert (await raw_post(port, forged, wrong)).startswith(b"HTTP/1.1 400 ")
            assert list(edge.fast._asks) == [(mine, question["id"])] and (mine, 5) in edge.fast._inflight
            answer["result"]["content"] = {"name": "ada"}
            assert (await raw_post(port, answer, headers(mine))).startswith(b"HTTP/1.1 202 ")
            while b'"id":5' not in received:
                received += await stream.receive_some(65536)
            assert b'\\"ada\\"' in received and b'\\"eve\\"' not in received
            await stream.aclose()


async def test_tls_handshakes_that_never_finish_are_closed(tmp_path: Path,
                                                          autojump_clock: trio.testing.MockClock) -> None:
    """HTTPS: a client that connects and says nothing, or starts a handshake and stalls, is closed
    after KEEP_ALIVE seconds like any idle connection; a real client is served meanwhile."""
    cert, key = self_signed(tmp_path, "edge")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    app = App()
    with trio.fail_after(10 * KEEP_ALIVE):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(functools.partial(serve_http, app, "127.0.0.1", 0, ssl_context=context))
            started = trio.current_time()
            silent = await trio.open_tcp_stream("127.0.0.1", port)
            stalled = await trio.open_tcp_stream("127.0.0.1", port)
            await stalled.send_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello's first bytes
            client = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", port),
                                    ssl.create_default_context(cafile=str(cert)), server_hostname="127.0.0.1")
            answer = await exchange(client, b"GET /ok HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 200 ")
            for stream in (silent, stalled):
                assert await stream.receive_some(10) == b""
                assert trio.current_time() - started == pytest.approx(KEEP_ALIVE, abs=0.01)
            nursery.cancel_scope.cancel()


async def test_pipelined_requests_behind_a_slow_one_are_answered_in_order() -> None:
    """A slow call, then many requests (more than the server reads ahead) in one write: each is
    answered once, in order, on the one connection, once the slow one is."""
    forwarder = GatedForwarder()
    forwarder.catalog["tools"].append({"name": "gated", "inputSchema": {"type": "object"}})
    with trio.fail_after(60):
        async with running_edge(forwarder) as (edge, url):
            port = int(url.rsplit(":", 1)[1].split("/")[0])
            requests = b""
            for number in range(1, 402):
                body, headers = modern_request("tools/call", {"name": "gated" if number == 1 else "echo",
                                                              "arguments": {"text": "x" * 200}},
                                               "gated" if number == 1 else "echo", request_id=number)
                requests += post(body, [host(port), *headers.items()])
            assert len(requests) > 2 * _http_server._READ_AHEAD
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream.send_all, requests)  # the kernel's buffers do not take it all
                await forwarder.gated.wait()
                forwarder.gate.set()
                ids = await answer_ids(stream, 401)
            assert ids == list(range(1, 402)) and served(edge) == 401
            await stream.aclose()


async def test_a_new_connection_beyond_the_maximum_closes_the_one_idle_longest(
        monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock) -> None:
    """Idle connections cannot take all the node's descriptors: beyond MAX_CONNECTIONS, a new one
    closes the one idle longest at once; when every one is serving a request, the new one is closed."""
    monkeypatch.setattr(_http_server, "MAX_CONNECTIONS", 3)
    app = App()
    with trio.fail_after(KEEP_ALIVE / 2):  # mock time: nothing here waits for a timeout
        async with running(app) as port:
            oldest = await trio.open_tcp_stream("127.0.0.1", port)
            idle = await trio.open_tcp_stream("127.0.0.1", port)
            used = await trio.open_tcp_stream("127.0.0.1", port)
            assert (await exchange(idle, b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
            assert (await exchange(used, b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
            new = await trio.open_tcp_stream("127.0.0.1", port)
            assert (await exchange(new, b"GET /c HTTP/1.1\r\nHost: h\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
            assert await oldest.receive_some(10) == b""  # idle since it opened: the longest
            newer = await trio.open_tcp_stream("127.0.0.1", port)
            assert (await exchange(newer, b"GET /d HTTP/1.1\r\nHost: h\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
            assert await idle.receive_some(10) == b""  # idle since /a: longer than the others
            # every connection serving a request (a stream): the next one is closed at once
            for stream in (used, new, newer):
                await stream.send_all(b"GET /stream HTTP/1.1\r\nHost: h\r\n\r\n")
                assert (await stream.receive_some(65536)).startswith(b"HTTP/1.1 200 ")
            refused = await trio.open_tcp_stream("127.0.0.1", port)
            try:
                answer = await exchange(refused, b"GET /e HTTP/1.1\r\nHost: h\r\n\r\n")
            except trio.BrokenResourceError:  # reset: closed before it could send
                answer = b""
            assert answer == b""
    assert [scope["path"] for scope, _ in app.requests] == ["/a", "/b", "/c", "/d", "/stream", "/stream", "/stream"]


async def test_head_on_mcp_and_a_half_closed_request() -> None:
    """HEAD on /mcp is answered with a head only, and the connection goes on; a client that half-closes
    after its request has gone as far as the edge can tell: its call is cancelled, its connection closed."""
    forwarder = FakeForwarder()
    with trio.fail_after(60):
        async with running_edge(forwarder) as (edge, url):
            port = int(url.rsplit(":", 1)[1].split("/")[0])
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(f"HEAD /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                head += await stream.receive_some(65536)
            assert head.startswith(b"HTTP/1.1 405 ") and head.endswith(b"\r\n\r\n")  # and no body after it
            healthy = await exchange(stream, f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            assert healthy.startswith(b"HTTP/1.1 200 ") and healthy.endswith(b"ok")
            body, headers = modern_request("tools/call", {"name": "slow"}, "slow")
            await stream.send_all(post(body, [host(port), *headers.items()]))
            await forwarder.slow_started.wait()
            await stream.send_eof()
            await forwarder.slow_cancelled.wait()
            assert await stream.receive_some(65536) == b""
            assert served(edge) == 1


async def test_a_quiet_request_is_pinged_with_pipelined_requests_behind_it(
        autojump_clock: trio.testing.MockClock) -> None:
    """The server reads only so far ahead of the request it serves; waiting for room, its reader still
    pings that request's quiet answer (PING_INTERVAL), as it does when nothing is pipelined."""
    forwarder = FakeForwarder()
    async with running_edge(forwarder) as (edge, url):
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        body, headers = modern_request("tools/call", {"name": "slow"}, "slow")
        behind = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        behind *= 2 * _http_server._READ_AHEAD // len(behind)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(post(body, [host(port), *headers.items()]) + behind)
        await forwarder.slow_started.wait()
        started = trio.current_time()
        received = b""
        with trio.fail_after(2 * PING_INTERVAL):
            while b": ping" not in received:
                received += await stream.receive_some(65536)
        assert trio.current_time() - started == pytest.approx(PING_INTERVAL, abs=0.1)
        await stream.aclose()
        await forwarder.slow_cancelled.wait()
        assert served(edge) == 1


@pytest.mark.parametrize("rest", [b"abc", b"zz\r\nnot a chunk\r\n"])
async def test_a_broken_unread_body_ends_only_its_connection(rest: bytes, caplog: pytest.LogCaptureFixture) -> None:
    """The app answers without reading the body; what is left of it is cut short (the client closes)
    or badly chunked: that connection ends, as expected (no error logged), and the server goes on."""
    app = App()
    framing = b"Content-Length: 10" if rest == b"abc" else b"Transfer-Encoding: chunked"
    with trio.fail_after(30):
        async with running(app) as port:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            answer = await exchange(stream, b"POST /unread HTTP/1.1\r\nHost: h\r\n" + framing + b"\r\n\r\n" + rest)
            assert answer.startswith(b"HTTP/1.1 200 ")
            await stream.send_eof()
            assert await stream.receive_some(10) == b""  # that connection has ended
            other = await trio.open_tcp_stream("127.0.0.1", port)
            assert (await exchange(other, b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
    assert not [record for record in caplog.records if record.levelname == "ERROR"]


class SlowApp(App):
    """``/later`` reads its body only after :data:`LATER` seconds (an authentication that must fetch keys)."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/later":
            await trio.sleep(LATER)
        await super().__call__(scope, receive, send)


LATER = BODY_TIMEOUT + HEAD_TIMEOUT


async def test_an_app_slow_to_read_a_body_the_client_sent_keeps_its_connection(
        autojump_clock: trio.testing.MockClock) -> None:
    """The body timeouts measure the client, not the app: a whole body sent at once, read by the app
    only later, is answered; a body stalled while the app waits for it still ends the connection."""
    app = SlowApp()
    with trio.fail_after(10 * LATER):
        async with running(app) as port:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            answer = await exchange(stream, b"POST /later HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello")
            assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"got hello")
            await stream.send_all(b"POST /later HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nhel")
            started = trio.current_time()
            assert await stream.receive_some(10) == b""  # the app waits for the rest: the client stalls
            assert trio.current_time() - started == pytest.approx(LATER + HEAD_TIMEOUT, abs=0.01)



async def test_an_app_failing_because_its_client_left_logs_no_error(
        caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock) -> None:
    """The client leaves mid-body before the app reads it: the app fails at ``http.disconnect`` (as
    Starlette's ``ClientDisconnect`` does): that is the client's going, not an error of the node (no
    traceback at ERROR, which any client could cause at will); an app failing for itself still is one."""
    app = SlowApp()
    with trio.fail_after(10 * LATER):
        async with running(app) as port:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"POST /later HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nhel")
            await stream.send_eof()
            assert await stream.receive_some(10) == b""  # the app failed (it wanted a body) and it ended
            assert not [record for record in caplog.records if record.levelname == "ERROR"]
            failing = await trio.open_tcp_stream("127.0.0.1", port)
            assert (await exchange(failing, b"GET /fail HTTP/1.1\r\nHost: h\r\n\r\n")).startswith(b"HTTP/1.1 500 ")
    assert [record.getMessage() for record in caplog.records if record.levelname == "ERROR"] == ["edge.http_app_failed"]


async def test_concurrent_clients_each_get_their_own_answers() -> None:
    """Many connections at once, each with several requests pipelined: every answer goes to the
    connection that asked, in the order asked."""
    forwarder = FakeForwarder()
    got: dict[int, list[int]] = {}
    with trio.fail_after(60):
        async with running_edge(forwarder) as (edge, url):
            port = int(url.rsplit(":", 1)[1].split("/")[0])

            async def one(client: int) -> None:
                requests = b""
                for k in range(5):
                    body, headers = modern_request("tools/call", {"name": "echo", "arguments": {"text": "x"}}, "echo",
                                                   request_id=client * 100 + k)
                    requests += post(body, [host(port), *headers.items()])
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.send_all(requests)
                got[client] = await answer_ids(stream, 5)
                await stream.aclose()

            async with trio.open_nursery() as nursery:
                for client in range(40):
                    nursery.start_soon(one, client)
    assert got == {client: [client * 100 + k for k in range(5)] for client in range(40)}
    assert served(edge) == 200


async def test_a_client_gone_before_its_body_was_whole_is_not_answered(caplog: pytest.LogCaptureFixture) -> None:
    """A POST whose client leaves mid-body: there is no one to answer, so the SDK is not asked to (it
    would open a session for nothing and log an error, with a traceback, for each such client)."""
    forwarder = FakeForwarder()
    with trio.fail_after(60):
        async with running_edge(forwarder) as (edge, url):
            port = int(url.rsplit(":", 1)[1].split("/")[0])
            for version in ([], [("MCP-Protocol-Version", VERSION)]):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.send_all(f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode()
                                      + "".join(f"{name}: {value}\r\n" for name, value in
                                                [*LEGACY.items(), *version]).encode()
                                      + b'Content-Length: 100\r\n\r\n{"jsonrpc":')
                await stream.send_eof()
                assert await stream.receive_some(65536) == b""
            assert edge.server.session_manager._server_instances == {}
    assert not [record for record in caplog.records if record.levelname == "ERROR"]
