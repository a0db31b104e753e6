"""Two nodes on loopback connect, authenticate and exchange requests."""

import fednode

from conftest import mesh


async def test_two_nodes_echo_and_info() -> None:
    async with mesh("node-a", "node-b") as nodes:
        a, b = nodes["node-a"], nodes["node-b"]
        assert a.connected_peers() == ["node-b"]
        assert b.connected_peers() == ["node-a"]
        assert await a.request("node-b", "echo", {"x": [1, 2]}) == {"x": [1, 2]}
        info = await b.request("node-a", "node/info")
        assert info["id"] == "node-a" and info["peers"] == ["node-b"]
        states = a.peer_states()
        assert states["node-b"].state is fednode.PeerState.UP
        assert states["node-b"].direction == "outbound"
        assert b.peer_states()["node-a"].direction == "inbound"
