"""Prometheus metrics of one node (``{data}/metrics``), through prometheus-client.

Each node has its own registry, so several nodes embedded in one process never mix their figures.
Event figures (heartbeat RTT, forwarded requests and their latency, reloads) are recorded as they
happen; state figures (peers by state, reconnects, refused authentications, in-flight requests,
catalog sizes, server restarts) are read from the node at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import trio
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ._supervisor import PeerState
from ._version import __version__

if TYPE_CHECKING:
    from ._node import Node

#: Content type of :meth:`NodeMetrics.render`'s output.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Methods that get their own label value; anything else a peer names is counted as "other".
METHODS = frozenset({"tools/call", "prompts/get", "resources/read", "completion/complete", "tasks/get",
                     "tasks/update", "tasks/cancel", "resources/subscribe", "resources/unsubscribe"})

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_RTT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
UPSTREAM_STATES = ("starting", "up", "backoff", "stopped")


class NodeMetrics:
    """The metrics of ``node``; :meth:`render` gives the Prometheus text format."""

    def __init__(self, node: Node) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.rtt = Histogram("fednode_heartbeat_rtt_seconds", "Heartbeat round-trip time on peer links.",
                             buckets=_RTT_BUCKETS, registry=self.registry)
        self.forwarded = Counter("fednode_forwarded_requests", "MCP requests forwarded by this node, by where "
                                 "they came from (client or peer), method and outcome.",
                                 ["source", "method", "outcome"], registry=self.registry)
        self.latency = Histogram("fednode_forward_duration_seconds", "Time to answer a forwarded MCP request.",
                                 ["source", "method"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.reloads = Counter("fednode_reloads", "Configuration reloads, by outcome (ok or refused).",
                               ["outcome"], registry=self.registry)
        self.registry.register(_StateCollector(node))
        self._children: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}

    def observe_rtt(self, peer_id: str, rtt: float) -> None:
        """Record one heartbeat round trip."""
        self.rtt.observe(rtt)

    def observe_forward(self, source: str, method: str, outcome: str, seconds: float) -> None:
        """Record one forwarded request (``source`` is ``client`` or ``peer``)."""
        key = (source, method if method in METHODS else "other", outcome)
        children = self._children.get(key)
        if children is None:  # labels() costs a lock and validation: once per label set, not per request
            children = self._children[key] = (self.forwarded.labels(*key), self.latency.labels(*key[:2]))
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class _StateCollector(Collector):
    def __init__(self, node: Node) -> None:
        self.node = node

    def describe(self) -> list[Metric]:
        return []  # generated at scrape time only (their label sets change with the federation)

    def collect(self) -> Iterator[Metric]:
        node = self.node
        info = GaugeMetricFamily("fednode_info", "This node's id and software version.", labels=["node", "version"])
        info.add_metric([node.id, __version__], 1)
        yield info
        uptime = GaugeMetricFamily("fednode_uptime_seconds", "Seconds since the node started.")
        uptime.add_metric([], trio.current_time() - node.started_at)
        yield uptime

        peers = node.peer_states()
        by_state = GaugeMetricFamily("fednode_peers", "Registered peers by state.", labels=["state"])
        for state in PeerState:
            by_state.add_metric([state.value], sum(1 for p in peers.values() if p.state is state))
        yield by_state
        reconnects = CounterMetricFamily("fednode_link_reconnects", "Links to a peer established after the first.",
                                         labels=["peer"])
        for peer_id, status in peers.items():
            reconnects.add_metric([peer_id], status.reconnects)
        yield reconnects
        refused = CounterMetricFamily("fednode_auth_refused", "Refused peer authentications, by reason.",
                                      labels=["reason"])
        for reason, count in sorted(node.refused.items()):
            refused.add_metric([reason], count)
        yield refused

        in_flight = GaugeMetricFamily("fednode_requests_in_flight",
                                      "Forwarded MCP requests being handled or passed on by this node.")
        in_flight.add_metric([], node.in_flight())
        yield in_flight
        catalog = GaugeMetricFamily("fednode_catalog_items", "Items in the federated catalog, by kind.",
                                    labels=["kind"])
        for kind, entries in node.federation.entries.items():
            catalog.add_metric([kind], len(entries))
        yield catalog
        routes = GaugeMetricFamily("fednode_routes", "Attached servers reachable from here, by owning node.",
                                   labels=["origin"])
        for origin, count in sorted(node.federation.routes_by_origin().items()):
            routes.add_metric([origin], count)
        yield routes
        conflicts = GaugeMetricFamily("fednode_catalog_conflicts", "Exposed names claimed by more than one server.")
        conflicts.add_metric([], len(node.federation.conflicts))
        yield conflicts

        servers = node.servers()
        server_states = GaugeMetricFamily("fednode_servers", "Attached MCP servers by state.", labels=["state"])
        for server_state in UPSTREAM_STATES:
            server_states.add_metric([server_state], sum(1 for s in servers.values() if s.state == server_state))
        yield server_states
        restarts = CounterMetricFamily("fednode_server_restarts", "Restarts of attached MCP servers.",
                                       labels=["server"])
        for server_id, upstream in servers.items():
            restarts.add_metric([server_id], upstream.restarts)
        yield restarts
