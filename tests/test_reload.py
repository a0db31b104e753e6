"""Reload planning without a running node: what changes, what waits for a restart, the summary line."""

from __future__ import annotations

import attrs

import fednode
from fednode._node._reload import plan_reload

from conftest import SECRET, node_config


def test_a_plan_names_every_difference_and_keeps_restart_only_sections() -> None:
    old = node_config("node-a", peers=[{"id": "b"}, {"id": "c"}, {"id": "d"}],
                      mcp={"request_timeout": "5s"})
    new = node_config("node-a", peers=[{"id": "b"}, {"id": "c", "transit": False}, {"id": "e"}],
                      mcp={"request_timeout": "7s"}, heartbeat={"interval": "1s", "timeout": "9s"})
    plan = plan_reload(old, new)
    assert (plan.peers_added, plan.peers_removed, plan.peers_changed) == (("e",), ("d",), ("c",))
    assert plan.servers_added == plan.servers_removed == plan.servers_changed == ()
    assert plan.restart_needed == ("heartbeat",)
    assert plan.effective.heartbeat == old.heartbeat  # kept until the next start
    assert plan.effective.mcp == new.mcp and plan.effective.peers == new.peers  # applied at once
    result = plan.result(auth_changed=True, at=12.5)
    assert result.ok and result.at == 12.5 and result.auth_changed
    assert result.summary == "peers +e; peers -d; peers ~c; auth changed; mcp changed; restart needed for: heartbeat"


def test_no_difference_is_no_change() -> None:
    config = node_config("node-a", peers=[{"id": "b"}])
    plan = plan_reload(config, config)
    assert plan.result(auth_changed=False, at=0.0).summary == "no changes"
    assert plan.effective == config


def test_nodes_keys_apply_at_once() -> None:
    old = node_config("node-a")
    new = attrs.evolve(old, nodes=(fednode.NodeKeys(id="node-c", secrets=(fednode.Secret(SECRET),)),))
    plan = plan_reload(old, new)
    assert plan.effective.nodes == new.nodes and not plan.restart_needed
    assert plan.result(auth_changed=False, at=0.0).summary == "nodes changed"


def test_a_new_rate_alone_keeps_the_peers_link() -> None:
    old = node_config("node-a", peers=[{"id": "b"}, {"id": "c"}], clients={"rate": "10/s"})
    new = node_config("node-a", peers=[{"id": "b", "rate": "5/s"}, {"id": "c", "rate": "5/s", "transit": False}],
                      clients={"rate": "20/s", "max_connections": 3})
    plan = plan_reload(old, new)
    assert (plan.peers_changed, plan.peers_retuned) == (("c",), ("b",))
    assert plan.clients_changed and plan.effective.clients == new.clients
    result = plan.result(auth_changed=False, at=1.0)
    assert result.peers_retuned == ("b",)
    assert result.summary == "peers ~c; peer rates ~b; clients changed"
