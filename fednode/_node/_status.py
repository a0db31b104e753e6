"""The JSON document served at ``{data}/status`` (and shown by ``fednode status``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .._federation._federation import Federation
from .._mcp._upstream import UpstreamServer
from .._peers._supervisor import PeerStatus
from .._version import __version__
from ._reload import ReloadResult


class NodeView(Protocol):
    """What the status document and the metrics read from the node (the node satisfies this)."""

    @property
    def id(self) -> str:
        """This node's id."""

    @property
    def started_at(self) -> float:
        """When the node started (trio clock)."""

    @property
    def control_url(self) -> str:
        """The control URL peers dial."""

    @property
    def data_url(self) -> str:
        """The data (client-facing) URL."""

    @property
    def reload_count(self) -> int:
        """Reloads applied so far."""

    @property
    def last_reload(self) -> ReloadResult | None:
        """The last reload's outcome, if any."""

    @property
    def refused(self) -> Mapping[str, int]:
        """Refused peer authentications, by reason."""

    @property
    def federation(self) -> Federation:
        """The node's federation (routes, catalog)."""

    def peer_states(self) -> dict[str, PeerStatus]:
        """Each registered peer's status."""

    def servers(self) -> dict[str, UpstreamServer]:
        """The attached servers."""

    def in_flight(self) -> int:
        """Forwarded requests being handled or passed on here."""


def node_status(node: NodeView) -> dict[str, Any]:
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
                   "conflicts": list(node.federation.conflicts),
                   "refused": dict(sorted(node.federation.routes_refused.items())),
                   "held_back": node.federation.names.held_back_status()},
        "in_flight": node.in_flight(),
    }


def status_routes(status: Callable[[], dict[str, Any]], metrics: Callable[[], bytes], content_type: str) -> list[Route]:
    """The data port's ``GET /status`` (the JSON of ``status()``) and ``GET /metrics`` (``metrics()``, served as
    ``content_type``)."""

    async def status_endpoint(request: Request) -> Response:
        return JSONResponse(status())

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics(), media_type=content_type)

    return [Route("/status", status_endpoint, methods=["GET"]), Route("/metrics", metrics_endpoint, methods=["GET"])]
