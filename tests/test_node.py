"""Nodes over real loopback WebSockets: connecting, supervision, faults and hostile input."""

from __future__ import annotations

import errno
import json
from typing import Any

import pytest
import structlog
import trio
import trio.testing
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

import fednode
from fednode._peers import _wire as wire

from conftest import mesh, node_config, peer
from helpers import BlackholeProxy, fd_count, next_frame, raw_peer, task_count


async def same_link(a: fednode.Node, b: fednode.Node) -> None:
    """Wait until node-a and node-b each hold a link to the other, and both are ends of one connection."""
    with trio.fail_after(30):
        while True:
            a_link, b_link = a.supervisor(b.id).link, b.supervisor(a.id).link  # type: ignore[union-attr]
            if a_link is not None and b_link is not None and a_link.is_up and b_link.is_up \
                    and a_link.ws.local.port == b_link.ws.remote.port:  # type: ignore[union-attr]
                return
            await trio.sleep(0.01)


class TestConnect:
    """Two and three nodes connect, authenticate and answer each other's requests."""

    async def test_three_nodes(self) -> None:
        with trio.fail_after(60):
            async with mesh("node-a", "node-b", "node-c") as nodes:
                for node_id, node in nodes.items():
                    others = sorted(set(nodes) - {node_id})
                    assert node.connected_peers() == others
                    for other in others:
                        info = await node.request(other, "node/info", timeout=30)
                        assert info["id"] == other and node_id in info["peers"]
                        assert await node.request(other, "echo", [node_id, other], timeout=30) == [node_id, other]
                    # The first ping goes out as the link comes up; its pong gives the RTT.
                    while any(status.rtt is None for status in node.peer_states().values()):
                        await trio.sleep(0.01)
                    for status in node.peer_states().values():
                        assert status.state is fednode.PeerState.UP and status.rtt is not None
                        assert status.last_seen is not None and status.last_seen <= trio.current_time()

    async def test_configured_peers_connect_from_config(self) -> None:
        """Peers listed in the configuration are dialed at start-up; dial-in-only peers are accepted."""
        with trio.fail_after(60):
            async with fednode.open_node(node_config("node-b", peers=[{"id": "node-a"}])) as b:
                config = node_config("node-a", peers=[{"id": "node-b", "control": b.control_url}])
                async with fednode.open_node(config) as a:
                    await a.wait_connected("node-b", timeout=30)
                    await b.wait_connected("node-a", timeout=30)
                    assert a.peer_states()["node-b"].direction == "outbound"
                    assert b.peer_states()["node-a"].direction == "inbound"

    async def test_custom_handlers(self) -> None:
        with trio.fail_after(60):
            async with mesh("node-a", "node-b") as nodes:
                seen: list[Any] = []

                async def add(params: Any, context: fednode.RequestContext) -> Any:
                    seen.append(context.peer_id)
                    return params["x"] + params["y"]

                async def note(params: Any, context: fednode.RequestContext) -> None:
                    seen.append(params)

                nodes["node-b"].register_handler("math/add", add)
                nodes["node-b"].register_notification_handler("hey", note)
                assert await nodes["node-a"].request("node-b", "math/add", {"x": 2, "y": 3}) == 5
                await nodes["node-a"].notify("node-b", "hey", {"n": 1})
                with trio.fail_after(30):
                    while len(seen) < 2:
                        await trio.sleep(0.01)
                assert seen == ["node-a", {"n": 1}]


class TestRegistration:
    """register_peer / remove_peer start and end exactly one supervisor and leave nothing behind."""

    async def test_register_remove_cycles_leave_no_task_or_socket(self) -> None:
        with trio.fail_after(300):  # 200 links up and down: a busy machine takes its time
            async with fednode.open_node(node_config("node-a")) as a, \
                    fednode.open_node(node_config("node-b", peers=[{"id": "node-a"}])) as b:
                await trio.testing.wait_all_tasks_blocked()
                tasks_before, fds_before = task_count(), fd_count()
                for _ in range(200):
                    await a.register_peer(peer(b))
                    assert a.connected_peers() == ["node-b"]
                    await a.remove_peer("node-b")
                    assert a.peer_states() == {}
                with trio.fail_after(30):
                    while b.connected_peers():
                        await trio.sleep(0.01)
                await trio.testing.wait_all_tasks_blocked()
                assert task_count() == tasks_before
                assert fd_count() == fds_before
                assert b.peer_states()["node-a"].reconnects == 199

    async def test_removal_sends_a_normal_close(self) -> None:
        with trio.fail_after(60):
            async with mesh("node-a", "node-b") as nodes:
                await nodes["node-a"].remove_peer("node-b")
                b = nodes["node-b"]
                with trio.fail_after(30):
                    while b.connected_peers():
                        await trio.sleep(0.01)
                assert b.peer_states()["node-a"].last_error == "connection closed (1000: peer removed)"
                with pytest.raises(fednode.UnknownPeerError):
                    await nodes["node-a"].remove_peer("node-b")

    async def test_registering_again_replaces_and_keeps_one_link(self) -> None:
        with trio.fail_after(60):
            async with mesh("node-a", "node-b") as nodes:
                a, b = nodes["node-a"], nodes["node-b"]
                first = a.supervisor("node-b")
                await a.register_peer(peer(b))
                assert a.supervisor("node-b") is not first and first is not None and first.finished.is_set()
                a_link = a.supervisor("node-b").link  # type: ignore[union-attr]
                assert a_link is not None
                # node-b takes the new link in place of the old one: both ends of one connection.
                await same_link(a, b)
                assert await a.request("node-b", "echo", 1) == 1 and await b.request("node-a", "echo", 2) == 2
                assert a.supervisor("node-b").link is a_link  # type: ignore[union-attr]
                assert a.connected_peers() == ["node-b"] and b.connected_peers() == ["node-a"]

    async def test_unreachable_peer(self) -> None:
        with trio.fail_after(60):
            async with fednode.open_node(node_config("node-a")) as a:
                dead = fednode.PeerConfig(id="node-z", control="ws://127.0.0.1:9")
                with pytest.raises(fednode.PeerConnectError, match="cannot connect"):
                    await a.register_peer(dead, keep_retrying=False)
                assert a.peer_states() == {}
                with pytest.raises(fednode.PeerConnectError):
                    await a.register_peer(dead)
                assert a.peer_states()["node-z"].state in (fednode.PeerState.BACKOFF, fednode.PeerState.CONNECTING)
                with pytest.raises(fednode.PeerUnavailableError, match="no live link"):
                    await a.request("node-z", "echo")
                with pytest.raises(fednode.UnknownPeerError):
                    await a.request("node-q", "echo")
                with pytest.raises(ValueError, match="own id"):
                    await a.register_peer(fednode.PeerConfig(id="node-a"))


class TestSimultaneousDial:
    """When two nodes dial each other at once, exactly one link survives, the same on both sides."""

    async def test_one_link_survives(self) -> None:
        with trio.fail_after(60):
            async with fednode.open_node(node_config("node-a")) as a, \
                    fednode.open_node(node_config("node-b")) as b:
                for _ in range(15):
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(a.register_peer, peer(b))
                        nursery.start_soon(b.register_peer, peer(a))
                    await same_link(a, b)
                    a_link = a.supervisor("node-b").link  # type: ignore[union-attr]
                    b_link = b.supervisor("node-a").link  # type: ignore[union-attr]
                    assert a_link is not None and b_link is not None
                    assert a_link.dialer == b_link.dialer == "node-a"
                    ups = (a.supervisor("node-b").links_up, b.supervisor("node-a").links_up)  # type: ignore[union-attr]
                    # The link works both ways, and is still the one both kept (no flapping).
                    assert await a.request("node-b", "echo", 1) == 1 and await b.request("node-a", "echo", 2) == 2
                    assert a.supervisor("node-b").link is a_link  # type: ignore[union-attr]
                    assert b.supervisor("node-a").link is b_link  # type: ignore[union-attr]
                    assert ups == (a.supervisor("node-b").links_up,  # type: ignore[union-attr]
                                   b.supervisor("node-a").links_up)  # type: ignore[union-attr]
                    await a.remove_peer("node-b")
                    await b.remove_peer("node-a")


class TestFaults:
    """Dead links are detected within the heartbeat timeout and reconnected; requests never hang."""

    async def test_silent_link_death_detected_and_healed(self) -> None:
        with trio.fail_after(90):
            # node-b's own heartbeat is the default (30 s), slower than node-a's, so it is node-a's
            # watchdog that notices the silence (otherwise node-b may give up first and the proxy
            # would pass on its TCP close). The exact timing is tested under MockClock (test_link).
            b_config = node_config("node-b", peers=[{"id": "node-a"}])
            a_config = node_config("node-a", heartbeat={"interval": "0.5s", "timeout": "5s"})
            async with fednode.open_node(b_config) as b, \
                    fednode.open_node(a_config) as a, trio.open_nursery() as nursery:
                proxy = BlackholeProxy(int(b.control_url.rsplit(":", 1)[1]))
                await nursery.start(proxy.serve)
                await a.register_peer(fednode.PeerConfig(id="node-b", control=proxy.url))
                assert await a.request("node-b", "echo", 1) == 1
                proxy.blackhole = True
                with trio.fail_after(30):  # 5 s, unless the machine is very busy; far below node-b's 30 s
                    while "node-b" in a.connected_peers():
                        await trio.sleep(0.01)
                assert "heartbeat timeout" in (a.peer_states()["node-b"].last_error or "")
                proxy.blackhole = False
                await a.wait_connected("node-b", timeout=30)
                assert await a.request("node-b", "echo", 2) == 2
                assert a.peer_states()["node-b"].reconnects >= 1
                nursery.cancel_scope.cancel()

    async def test_request_fails_at_once_when_the_link_drops(self) -> None:
        with trio.fail_after(60):
            async with mesh("node-a", "node-b") as nodes:
                a, b = nodes["node-a"], nodes["node-b"]
                arrived = trio.Event()

                async def hang(params: Any, context: fednode.RequestContext) -> Any:
                    arrived.set()
                    await trio.sleep_forever()

                b.register_handler("hang", hang)

                async def drop_when_in_flight() -> None:
                    await arrived.wait()
                    await b.remove_peer("node-a")

                # "At once": long before the request's own 600 s deadline (or the 30 s heartbeat timeout).
                with trio.fail_after(20):
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(drop_when_in_flight)
                        with pytest.raises(fednode.LinkClosedError):
                            await a.request("node-b", "hang", timeout=600)


class TestHostileInput:
    """Nothing a peer or stranger sends crashes the node or bypasses authentication."""

    async def test_oversized_frame_closes_1009(self) -> None:
        with trio.fail_after(60):
            async with fednode.open_node(node_config("node-a", peers=[{"id": "node-b"}])) as a:
                async with raw_peer(a, "node-b") as ws:
                    await ws.send_message("x" * (a.config.link.max_message_size + 1))
                    with pytest.raises(ConnectionClosed) as info:
                        while True:
                            await ws.get_message()
                    assert info.value.reason is not None and info.value.reason.code == 1009
                async with raw_peer(a, "node-b") as ws:  # the node is still fine
                    await ws.send_message(wire.encode(wire.Request(id=1, method="echo", params="fine")))
                    assert await next_frame(ws) == wire.Response(id=1, result="fine")

    async def test_garbage_frames_get_errors_then_disconnect(self) -> None:
        with trio.fail_after(60):
            async with fednode.open_node(node_config("node-a", peers=[{"id": "node-b"}])) as a:
                limit = a.config.link.max_protocol_errors
                async with raw_peer(a, "node-b") as ws:
                    for i in range(limit):
                        await ws.send_message(["{", "[]", '{"type":"x"}', "\u0000", "null"][i % 5])
                        reply = await next_frame(ws)
                        assert isinstance(reply, wire.Error)
                    with pytest.raises(ConnectionClosed) as info:
                        await next_frame(ws)
                    assert info.value.reason is not None and info.value.reason.code == 1008
                async with raw_peer(a, "node-b") as ws:
                    await ws.send_message(wire.encode(wire.Request(id=2, method="echo", params=3)))
                    assert await next_frame(ws) == wire.Response(id=2, result=3)

    async def test_first_frame_must_be_hello(self) -> None:
        with trio.fail_after(60):
            async with fednode.open_node(node_config("node-a", peers=[{"id": "node-b"}])) as a:
                async with raw_peer(a, "node-b", hello=False) as ws:
                    await ws.send_message(json.dumps({"type": "request", "id": 1, "method": "echo"}))
                    with pytest.raises(ConnectionClosed) as info:
                        await ws.get_message()
                    assert info.value.reason is not None and info.value.reason.code == 1002
                assert a.connected_peers() == []

    async def test_frames_before_authentication(self) -> None:
        with trio.fail_after(60):
            # Short enough to wait out once (a frame without a request line), long enough for the
            # authenticated connection at the end even on a busy machine.
            config = node_config("node-a", peers=[{"id": "node-b"}], link={"handshake_timeout": "5s"})
            async with fednode.open_node(config) as a:
                port = int(a.control_url.rsplit(":", 1)[1])
                # Raw bytes that are not HTTP at all, and a WebSocket frame without any upgrade.
                junks = (b"\x16\x03\x01garbage\r\n\r\n", b"\x81\x85abcd\x01\x02\x03\x04\x05", b"GET / HTTP/1.1\r\n\r\n")
                for junk in junks:
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                    await stream.send_all(junk)
                    with trio.fail_after(30):
                        while await stream.receive_some(65536):
                            pass  # read until the node closes the connection
                    await stream.aclose()
                # An upgrade without credentials is refused in the handshake.
                with pytest.raises(ConnectionRejected) as info:
                    async with open_websocket_url(a.control_url):
                        pass
                assert info.value.status_code == 401 and info.value.body == b"missing"
                assert a.refused["missing"] == 1
                # ...and the node still works.
                async with raw_peer(a, "node-b") as ws:
                    await ws.send_message(wire.encode(wire.Request(id=5, method="echo", params="ok")))
                    assert await next_frame(ws) == wire.Response(id=5, result="ok")

    async def test_wrong_path_is_404(self) -> None:
        with trio.fail_after(60):
            async with fednode.open_node(node_config("node-a")) as a:
                with pytest.raises(ConnectionRejected) as info:
                    async with open_websocket_url(a.control_url + "/elsewhere"):
                        pass
                assert info.value.status_code == 404


class TestHandshakeDeadline:
    """A connection that does not finish its handshake in time is dropped at the deadline."""

    async def test_silent_connection_dropped_at_exact_deadline(self, autojump_clock: trio.testing.MockClock) -> None:
        async with fednode.open_node(node_config("node-a", link={"handshake_timeout": "5s"})) as a:
            client, server = trio.testing.memory_stream_pair()
            start = trio.current_time()
            with structlog.testing.capture_logs() as logs:
                await a._listener.handle_connection(server)
            assert trio.current_time() - start == pytest.approx(5.0)
            assert [e["event"] for e in logs] == ["handshake.timeout"]
            assert await client.receive_some(100) == b""  # closed by the node
            assert a.refused["handshake_timeout"] == 1

    async def test_partial_upgrade_dropped_at_deadline(self, autojump_clock: trio.testing.MockClock) -> None:
        async with fednode.open_node(node_config("node-a", link={"handshake_timeout": "3s"})) as a:
            client, server = trio.testing.memory_stream_pair()
            await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")  # never finished
            start = trio.current_time()
            await a._listener.handle_connection(server)
            assert trio.current_time() - start == pytest.approx(3.0)

    async def test_real_socket_dropped(self) -> None:
        with trio.fail_after(30):  # the upper bound is a safety net; the exact deadline: see above
            async with fednode.open_node(node_config("node-a", link={"handshake_timeout": "0.3s"})) as a:
                start = trio.current_time()  # before connecting, so the node's clock starts later
                stream = await trio.open_tcp_stream("127.0.0.1", int(a.control_url.rsplit(":", 1)[1]))
                assert await stream.receive_some(100) == b""
                assert trio.current_time() - start >= 0.3 - 1e-9
                assert a.refused["handshake_timeout"] == 1
                await stream.aclose()


class TestStartup:
    """A configured peer that dials in while the node is starting is never refused."""

    async def test_no_refusal_while_starting(self) -> None:
        with trio.fail_after(60):
            probe = trio.socket.socket()
            await probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
            probe.close()
            fast = {"initial": "0.005s", "max": "0.01s"}
            config_a = node_config("node-a", peers=[{"id": "node-b", "control": f"ws://127.0.0.1:{port}"}],
                                   backoff=fast)
            async with fednode.open_node(config_a) as a:
                while a.peer_states()["node-b"].last_error is None:  # dialing node-b's address, refused
                    await trio.sleep(0.01)
                config_b = node_config("node-b", peers=[{"id": "node-a"}], node={"control": f"ws://127.0.0.1:{port}"})
                with structlog.testing.capture_logs() as logs:
                    async with fednode.open_node(config_b) as b:
                        await b.wait_connected("node-a", timeout=30)
                        await a.wait_connected("node-b", timeout=30)
                assert [e for e in logs if e["event"] == "auth.refused"] == []
                assert b.refused == {}


class TestStartErrors:
    """What open_node raises reaches the caller as it was raised, never as a group of one."""

    @pytest.mark.parametrize("role", ["control", "data"])
    async def test_address_in_use_is_a_bind_error_naming_it(self, role: str) -> None:
        with trio.fail_after(30):
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            port = listeners[0].socket.getsockname()[1]
            url = f"ws://127.0.0.1:{port}" if role == "control" else f"http://127.0.0.1:{port}"
            try:
                with pytest.raises(fednode.BindError) as caught:
                    async with fednode.open_node(node_config("node-a", node={role: url})):
                        pytest.fail("the node started on an address in use")
            finally:
                await listeners[0].aclose()
        error = caught.value
        assert (error.role, error.url, error.errno, error.in_use) == (role, url, errno.EADDRINUSE, True)
        assert str(error) == f"{role} address {url} is in use (errno {errno.EADDRINUSE})"
        assert isinstance(error.__cause__, OSError)

    async def test_serve_raises_the_bind_error_from_start(self) -> None:
        with trio.fail_after(30):
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
            try:
                async with trio.open_nursery() as nursery:
                    with pytest.raises(fednode.BindError, match=r"data address .* is in use"):
                        await nursery.start(fednode.serve, node_config("node-a", node={"data": url}))
            finally:
                await listeners[0].aclose()

    async def test_an_error_in_the_block_is_not_wrapped(self) -> None:
        with trio.fail_after(30), pytest.raises(KeyError) as caught:
            async with fednode.open_node(node_config("node-a")):
                raise KeyError("mine")
        assert caught.value.args == ("mine",)
        assert caught.value.__context__ is None  # not chained to the group it was taken out of

    async def test_cancellation_still_ends_the_block(self) -> None:
        with trio.fail_after(30):
            with trio.move_on_after(0.2) as scope:
                async with fednode.open_node(node_config("node-a")):
                    await trio.sleep_forever()
            assert scope.cancelled_caught


class TestPeerRestart:
    """A peer that restarts is redialed quickly, whatever its backoff had reached before the link came up."""

    async def test_restarted_peer_is_found_again_at_once(self) -> None:
        backoff = {"initial": "0.2s", "max": "60s", "reset_after": "10s"}
        with trio.fail_after(60):
            async with fednode.open_node(node_config("node-a", backoff=backoff), jitter=lambda cap: cap) as a:
                async with fednode.open_node(node_config("node-b", peers=[{"id": "node-a"}])) as b:
                    await a.register_peer(peer(b))
                    supervisor = a.supervisor("node-b")
                    assert supervisor is not None
                    # As after a long outage before this link came up: the next delay would be the 60 s max.
                    supervisor.backoff.attempt = 20
                    control = b.control_url
                while a.connected_peers():  # node-b has stopped, with a close frame node-a has seen
                    await trio.sleep(0.01)
                restarted = node_config("node-b", peers=[{"id": "node-a"}], node={"control": control})
                async with fednode.open_node(restarted):
                    with trio.fail_after(20):  # the first redial comes 0.2 s after the link went down
                        await a.wait_connected("node-b", timeout=20)
                assert a.peer_states()["node-b"].reconnects == 1
