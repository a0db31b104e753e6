"""The JSON document served at ``{data}/status`` (and shown by ``fednode status``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from ._version import __version__

if TYPE_CHECKING:
    from ._node import Node


def node_status(node: Node) -> dict[str, Any]:
    """A snapshot of ``node``: itself, its peers, attached servers, routes and in-flight requests."""
    now = trio.current_time()
    peers = []
    for peer_id, status in node.peer_states().items():
        peers.append({
            "id": peer_id,
            "state": status.state.value,
            "direction": status.direction,
            "rtt_ms": round(status.rtt * 1000, 3) if status.rtt is not None else None,
            "last_seen_s": round(now - status.last_seen, 3) if status.last_seen is not None else None,
            "reconnects": status.reconnects,
            "last_error": status.last_error,
            "control": status.control,
        })
    servers = []
    for server_id, upstream in node.servers().items():
        catalog = upstream.catalog
        servers.append({
            "id": server_id,
            "state": upstream.state,
            "era": upstream.era,
            "restarts": upstream.restarts,
            "last_error": upstream.last_error,
            "tools": len(catalog.tools),
            "prompts": len(catalog.prompts),
            "resources": len(catalog.resources),
            "resource_templates": len(catalog.resource_templates),
        })
    by_origin = node.federation.routes_by_origin()
    last = node.last_reload
    return {
        "node": {
            "id": node.id,
            "version": __version__,
            "uptime_s": round(now - node.started_at, 3),
            "control": node.control_url,
            "data": node.data_url,
            "reload": {
                "count": node.reload_count,
                "last": None if last is None else {
                    "ok": last.ok, "error": last.error, "summary": last.summary,
                    "ago_s": round(now - last.at, 3)},
            },
        },
        "peers": peers,
        "servers": servers,
        "routes": {"total": sum(by_origin.values()), "by_origin": dict(sorted(by_origin.items())),
                   "conflicts": list(node.federation.conflicts)},
        "in_flight": node.in_flight(),
    }
