"""Prometheus metrics of one node (``{data}/metrics``), through prometheus-client.

Each node has its own registry, so several nodes embedded in one process never mix their figures.
Event figures (heartbeat RTT, forwarded requests and their latency, reloads) are recorded as they
happen; state figures (peers by state, reconnects, refused authentications, in-flight requests,
catalog sizes, server restarts) are read from the node at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import trio
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .._peers._supervisor import PeerState
from .._version import __version__
from ._status import NodeView

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

    def __init__(self, node: NodeView) -> None:
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
        # Labels stay bounded: peer ids are configured, parties are peers or "(local)"; client tokens
        # and addresses are never labels.
        self.rate_limited = Counter("fednode_rate_limited", "Requests (or HTTP connections) refused over a rate "
                                    "or connection limit, by limit (peer, client, connections) and peer.",
                                    ["limit", "peer"], registry=self.registry)
        self.share_refused = Counter("fednode_share_refused", "Requests refused with -32004 for lack of a fair "
                                     "share, by pool (link, node), reason (share, server) and party (peer or local).",
                                     ["pool", "reason", "party"], registry=self.registry)
        self.client_refused = Counter("fednode_client_refused", "HTTP requests of MCP clients refused by their "
                                      "authentication, by reason (missing, token, expired, audience, issuer, "
                                      "unknown_key, algorithm, signature, scope, keys_unavailable...).",
                                      ["reason"], registry=self.registry)
        self.audit_lines = Counter("fednode_audit_lines", "Audit log lines, by outcome: written, or dropped "
                                   "(the buffer was full or the file could not be written).",
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

    def observe_limited(self, limit: str, peer: str = "") -> None:
        """Record one request (or connection) refused over ``limit`` (``peer``, ``client`` or ``connections``)."""
        self.rate_limited.labels(limit, peer).inc()

    def observe_client_refused(self, reason: str) -> None:
        """Record one HTTP request refused by client authentication (a short, bounded ``reason``)."""
        self.client_refused.labels(reason).inc()

    def observe_refused(self, pool: str, reason: str, party: str) -> None:
        """Record one request refused for lack of a fair share (see :mod:`fednode._peers._shares`)."""
        self.share_refused.labels(pool, reason, party).inc()

    def observe_audit(self, outcome: str, lines: int) -> None:
        """Record audit log lines ``written`` or ``dropped``."""
        self.audit_lines.labels(outcome).inc(lines)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class _StateCollector(Collector):
    def __init__(self, node: NodeView) -> None:
        self.node = node

    def describe(self) -> list[Metric]:
        return []  # generated at scrape time only (their label sets change with the federation)

    def collect(self) -> Iterator[Metric]:
        node = self.node
        yield _family(GaugeMetricFamily, "fednode_info", "This node's id and software version.",
                      ["node", "version"], [((node.id, __version__), 1)])
        yield _family(GaugeMetricFamily, "fednode_uptime_seconds", "Seconds since the node started.",
                      [], [((), trio.current_time() - node.started_at)])

        peers = node.peer_states()
        yield _family(GaugeMetricFamily, "fednode_peers", "Registered peers by state.", ["state"],
                      [((state.value,), sum(1 for p in peers.values() if p.state is state)) for state in PeerState])
        yield _family(CounterMetricFamily, "fednode_link_reconnects", "Links to a peer established after the first.",
                      ["peer"], [((peer_id,), status.reconnects) for peer_id, status in peers.items()])
        yield _family(CounterMetricFamily, "fednode_auth_refused", "Refused peer authentications, by reason.",
                      ["reason"], [((reason,), count) for reason, count in sorted(node.refused.items())])

        federation = node.federation
        yield _family(GaugeMetricFamily, "fednode_requests_in_flight",
                      "Forwarded MCP requests being handled or passed on by this node.", [], [((), node.in_flight())])
        yield _family(GaugeMetricFamily, "fednode_catalog_items", "Items in the federated catalog, by kind.",
                      ["kind"], [((kind,), len(entries)) for kind, entries in federation.entries.items()])
        yield _family(GaugeMetricFamily, "fednode_routes", "Attached servers reachable from here, by owning node.",
                      ["origin"], [((origin,), n) for origin, n in sorted(federation.routes_by_origin().items())])
        yield _family(CounterMetricFamily, "fednode_routes_refused", "Routes refused because their origin or path "
                      "could not be verified (or their frame was malformed), by reason.", ["reason"],
                      [((reason,), count) for reason, count in sorted(federation.routes_refused.items())])
        yield _family(GaugeMetricFamily, "fednode_catalog_conflicts", "Exposed names claimed by more than one server.",
                      [], [((), len(federation.conflicts))])

        servers = node.servers()
        yield _family(GaugeMetricFamily, "fednode_servers", "Attached MCP servers by state.", ["state"],
                      [((state,), sum(1 for s in servers.values() if s.state == state)) for state in UPSTREAM_STATES])
        yield _family(CounterMetricFamily, "fednode_server_restarts", "Restarts of attached MCP servers.",
                      ["server"], [((server_id,), upstream.restarts) for server_id, upstream in servers.items()])


def _family(kind: type[GaugeMetricFamily] | type[CounterMetricFamily], name: str, documentation: str,
            labels: list[str], samples: Iterable[tuple[tuple[str, ...], float]]) -> Metric:
    """A metric family of ``kind`` with one sample per ``(label values, value)``."""
    family = kind(name, documentation, labels=labels)
    for values, value in samples:
        family.add_metric(list(values), value)
    return family
