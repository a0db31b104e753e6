"""Era detection: which MCP protocol an attached server speaks, found by the handshake.

Follows the SDK's ``mode="auto"`` rule: probe ``server/discover`` with the 2026-07-28 envelope; any
JSON-RPC error (except -32022 naming only modern versions we do not speak), or a result that
advertises no modern version, means a legacy server, which gets ``initialize`` and
``notifications/initialized``. A connection held for one client session is legacy by definition
and goes straight to ``initialize`` with that client's capabilities.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mcp.shared.dispatcher import CallOptions
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import MCP_METHOD_HEADER, MCP_PROTOCOL_VERSION_HEADER
from mcp_types import (
    CLIENT_CAPABILITIES_META_KEY,
    CLIENT_INFO_META_KEY,
    PROTOCOL_VERSION_META_KEY,
    SERVER_INFO_META_KEY,
    UNSUPPORTED_PROTOCOL_VERSION,
)
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION

from .._errors import SessionFailed
from ._upstream_conn import CLIENT_INFO, MODERN_ERA, Connection, SessionHooks, own_capabilities

# The SDK's own probe bound: a legacy server that ignores unknown requests costs this much once.
# Not the server's ``timeout``, which bounds forwarded requests, not the start-up.
_DISCOVER_TIMEOUT = 10.0


async def handshake(conn: Connection, *, session: SessionHooks | None, timeout: float, log: Any) -> dict[str, Any]:
    """Find the server's era and return its ``server_info``; sets ``conn``'s era and capabilities.

    ``server_info`` is the ``initialize`` result (legacy) or the ``server/discover`` result with
    ``serverInfo`` lifted from its ``_meta`` stamp (modern), as the server sent them.

    Raises:
        SessionFailed: the server refused both, or speaks no version fednode speaks.
    """
    if session is not None:
        try:
            return await _initialize(conn, session, timeout)
        except MCPError as exc:
            raise SessionFailed(f"initialize failed with error {exc.code}: {exc.message}"[:300]) from None
    for attempt in range(2):
        try:
            result = await _discover(conn)
        except MCPError as exc:
            supported = _supported_versions(exc) if exc.code == UNSUPPORTED_PROTOCOL_VERSION else None
            if supported is not None and not any(v in HANDSHAKE_PROTOCOL_VERSIONS for v in supported):
                raise SessionFailed(f"the server speaks only protocol versions {supported}") from None
            log.debug("upstream.discover_refused", code=exc.code, error=exc.message[:200])
        else:
            versions = result.get("supportedVersions")
            if isinstance(versions, list) and MODERN_ERA in versions:
                return _adopt_modern(conn, result)
            # It answers discover yet offers no modern version: a legacy advertisement.
        try:
            return await _initialize(conn, None, timeout)
        except MCPError as exc:
            # -32022 naming a modern version: our probe timed out here but locked the
            # connection into the modern era there; probe once more.
            supported = _supported_versions(exc) if exc.code == UNSUPPORTED_PROTOCOL_VERSION else None
            if attempt == 0 and supported is not None and MODERN_ERA in supported:
                continue
            raise SessionFailed(f"initialize failed with error {exc.code}: {exc.message}"[:300]) from None
    raise SessionFailed("the server refused both server/discover and initialize")


async def _discover(conn: Connection) -> dict[str, Any]:
    meta = {PROTOCOL_VERSION_META_KEY: MODERN_ERA, CLIENT_INFO_META_KEY: dict(CLIENT_INFO),
            CLIENT_CAPABILITIES_META_KEY: {}}
    # The spec forbids cancelling the negotiation requests.
    opts: CallOptions = {"request_id": conn.next_id(), "cancel_on_abandon": False,
                         "timeout": _DISCOVER_TIMEOUT,
                         "headers": {MCP_PROTOCOL_VERSION_HEADER: MODERN_ERA, MCP_METHOD_HEADER: "server/discover"}}
    return await conn.dispatcher.send_raw_request("server/discover", {"_meta": meta}, opts)


def _adopt_modern(conn: Connection, result: dict[str, Any]) -> dict[str, Any]:
    conn.era = MODERN_ERA
    conn.modern = True
    capabilities = result.get("capabilities")
    conn.capabilities = capabilities if isinstance(capabilities, dict) else {}
    info = dict(result)
    meta = result.get("_meta")
    if isinstance(meta, Mapping) and SERVER_INFO_META_KEY in meta:
        info["serverInfo"] = meta[SERVER_INFO_META_KEY]
    return info


async def _initialize(conn: Connection, session: SessionHooks | None, timeout: float) -> dict[str, Any]:
    # Without a session (shared by stateless 2026-07-28 clients) fednode can still relay a
    # legacy server's questions to the one call in flight (see _parking): say so. It also
    # makes the server list what it offers only to clients with these capabilities.
    capabilities = dict(session.capabilities) if session is not None else own_capabilities()
    client_info = dict(session.client_info or CLIENT_INFO) if session is not None else dict(CLIENT_INFO)
    params = {"protocolVersion": LATEST_HANDSHAKE_VERSION, "capabilities": capabilities, "clientInfo": client_info}
    opts: CallOptions = {"request_id": conn.next_id(), "cancel_on_abandon": False, "timeout": timeout}
    result = await conn.dispatcher.send_raw_request("initialize", params, opts)
    version = result.get("protocolVersion")
    if not isinstance(version, str) or version not in HANDSHAKE_PROTOCOL_VERSIONS:
        raise SessionFailed(f"the server chose protocol version {version!r}, which fednode does not speak")
    await conn.dispatcher.notify("notifications/initialized", None,
                                 {"headers": {MCP_PROTOCOL_VERSION_HEADER: version}})
    conn.era = version
    offered = result.get("capabilities")
    conn.capabilities = offered if isinstance(offered, dict) else {}
    return dict(result)


def _supported_versions(exc: MCPError) -> list[str] | None:
    """The ``supported`` list of a -32022 error's data, if it has one."""
    data = exc.data
    if isinstance(data, Mapping) and isinstance(supported := data.get("supported"), list):
        return [v for v in supported if isinstance(v, str)]
    return None
