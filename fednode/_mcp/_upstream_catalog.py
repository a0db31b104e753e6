"""Reading an attached server's catalog (tools, prompts, resources, templates) and keeping it fresh.

:class:`CatalogReader` reads every page of each list the server offers, re-reads the lists the
server says have changed (``list_changed`` notifications, which a 2026-07-28 server sends only on a
``subscriptions/listen`` stream this reader keeps open), and hands each new catalog to its owner.
A storm of changes costs a bounded share of the CPU; one broken list leaves the others usable.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs
import trio
from mcp.shared.dispatcher import CallOptions
from mcp.shared.exceptions import MCPError

from .._errors import CONNECTION_CLOSED, BadResult
from ._upstream_conn import Connection, header_maps

# kind -> (list method, result key, capability that offers it)
LISTS: dict[str, tuple[str, str, str]] = {
    "tools": ("tools/list", "tools", "tools"),
    "prompts": ("prompts/list", "prompts", "prompts"),
    "resources": ("resources/list", "resources", "resources"),
    "resource_templates": ("resources/templates/list", "resourceTemplates", "resources"),
}
#: list_changed notification -> the kinds of list it concerns
LIST_CHANGED: dict[str, tuple[str, ...]] = {
    "notifications/tools/list_changed": ("tools",),
    "notifications/prompts/list_changed": ("prompts",),
    # Templates have no notification of their own; a resource list change may concern them too.
    "notifications/resources/list_changed": ("resources", "resource_templates"),
}
# capability -> the ``subscriptions/listen`` filter key asking for its list_changed notifications
_LISTEN_KEYS = {"tools": "toolsListChanged", "prompts": "promptsListChanged", "resources": "resourcesListChanged"}

# How long to wait for a listen stream's acknowledgement before reading the catalog anyway.
_ACK_WAIT = 5.0
# Pause before re-opening a listen stream the server ended, so a server that ends every stream at
# once cannot make us spin.
_RELISTEN_DELAY = 1.0
# Bounds on what a misbehaving server can make us do.
_REFRESH_GAP = 1.0  # seconds between the starts of two catalog re-reads, at least
_MAX_PAGES = 1000


@attrs.frozen
class ServerCatalog:
    """What a server offers: its definitions exactly as it sent them (raw dicts, every page)."""

    tools: tuple[dict[str, Any], ...] = ()
    prompts: tuple[dict[str, Any], ...] = ()
    resources: tuple[dict[str, Any], ...] = ()
    resource_templates: tuple[dict[str, Any], ...] = ()


class CatalogReader:
    """Reads one server's catalog over its current connection and publishes every change.

    Args:
        on_catalog: called with each new catalog, or None when it is withdrawn (must not block;
            its exceptions are logged, never raised here).
        timeout: the deadline of each of the reader's own requests.
        log: the server's logger.

    Attributes:
        catalog: the catalog as last read (kept across connections until :meth:`withdraw`).
    """

    def __init__(self, on_catalog: Callable[[ServerCatalog | None], None], *, timeout: float, log: Any) -> None:
        self.catalog = ServerCatalog()
        self._on_catalog = on_catalog
        self._timeout = timeout
        self.log = log

    async def read(self, conn: Connection, kinds: set[str] | None = None, *, fresh: bool = False) -> None:
        """(Re)read some lists (default: all), then publish the catalog. ``fresh``: start from an empty one."""
        updates: dict[str, tuple[dict[str, Any], ...]] = {}
        for kind, (method, key, capability) in LISTS.items():
            if kinds is not None and kind not in kinds:
                continue
            if conn.capabilities.get(capability) is None:
                updates[kind] = ()
                continue
            try:
                updates[kind] = await self._list_all(conn, method, key)
            except MCPError as exc:
                if exc.code == CONNECTION_CLOSED or conn.is_lost():
                    raise
                # One broken list must not make the rest of the server unusable.
                self.log.warning("upstream.list_failed", method=method, code=exc.code, error=exc.message[:300])
            except BadResult as exc:
                self.log.warning("upstream.list_failed", method=method, error=str(exc))
        base = ServerCatalog() if fresh else self.catalog
        self.catalog = attrs.evolve(base, **updates)
        if conn.http and conn.modern and "tools" in updates:
            conn.header_maps = header_maps(self.catalog.tools)
        self.log.debug("upstream.catalog", lists=sorted(updates), tools=len(self.catalog.tools))
        self._publish(self.catalog)

    def withdraw(self) -> None:
        """Empty the catalog and tell the owner it is gone (the server stopped answering)."""
        self.catalog = ServerCatalog()
        self._publish(None)

    async def refresh_loop(self, conn: Connection) -> None:
        """Re-read the lists the server says have changed, until cancelled.

        The first change is read at once; a server announcing changes faster than that waits: the
        next read starts no sooner than ``_REFRESH_GAP`` (or four times the last read's duration)
        after the last one began, so a storm of ``list_changed`` costs a bounded share of the CPU.
        """
        last_start, last_took = -math.inf, 0.0
        while True:
            await conn.changed.wait()
            await trio.sleep_until(last_start + max(_REFRESH_GAP, 4 * last_took))
            conn.changed = trio.Event()
            kinds, conn.dirty = conn.dirty, set()
            self.log.info("upstream.list_changed", lists=sorted(kinds))
            last_start = trio.current_time()
            await self.read(conn, kinds)
            last_took = trio.current_time() - last_start

    async def start_listen(self, conn: Connection, nursery: trio.Nursery) -> None:
        """Modern servers announce list changes only on a ``subscriptions/listen`` stream: open one in ``nursery``.

        Returns once the stream is acknowledged (or after a bound), so no change can fall between
        the stream's start and the catalog read that follows.
        """
        wanted = {key: True for capability, key in _LISTEN_KEYS.items()
                  if isinstance(offer := conn.capabilities.get(capability), dict) and offer.get("listChanged")}
        if not wanted:
            return
        nursery.start_soon(self._listen, conn, wanted)
        with trio.move_on_after(_ACK_WAIT):
            await conn.listen_acked.wait()

    def _publish(self, catalog: ServerCatalog | None) -> None:
        try:
            self._on_catalog(catalog)
        except Exception as exc:  # a bug in the callback must not take the server down
            self.log.error("upstream.on_catalog_failed", error=repr(exc)[:300])

    async def _request(self, conn: Connection, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """One of fednode's own requests: envelope, headers and deadline added."""
        if conn.modern:
            params = {**params, "_meta": conn.own_meta()}
        opts: CallOptions = {"request_id": conn.next_id(), "timeout": self._timeout}
        if conn.http:
            opts["headers"] = conn.headers_for(method, params)
        return await conn.dispatcher.send_raw_request(method, params, opts)

    async def _list_all(self, conn: Connection, method: str, key: str) -> tuple[dict[str, Any], ...]:
        """Every page of one list, following ``nextCursor``."""
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        seen: set[str] = set()
        for _ in range(_MAX_PAGES):
            result = await self._request(conn, method, {"cursor": cursor} if cursor is not None else {})
            page = result.get(key)
            if not isinstance(page, list):
                raise BadResult(f"the {method} result has no {key!r} list")
            items.extend(item for item in page if isinstance(item, dict))
            next_cursor = result.get("nextCursor")
            if not isinstance(next_cursor, str) or not next_cursor:
                return tuple(items)
            if next_cursor in seen:
                self.log.warning("upstream.pagination_loop", method=method, cursor=next_cursor[:100])
                return tuple(items)
            seen.add(next_cursor)
            cursor = next_cursor
        self.log.warning("upstream.too_many_pages", method=method, pages=_MAX_PAGES)
        return tuple(items)

    async def _listen(self, conn: Connection, wanted: dict[str, bool]) -> None:
        first = True
        while not conn.is_lost():
            try:
                # No deadline: the stream is meant to stay open; cancelling it sends the cancel.
                params: dict[str, Any] = {"notifications": wanted, "_meta": conn.own_meta()}
                opts: CallOptions = {"request_id": conn.next_id("listen-")}
                if conn.http:
                    opts["headers"] = conn.headers_for("subscriptions/listen", params)
                if not first:
                    conn.listen_acked = trio.Event()
                    conn.mark_dirty(tuple(LISTS))  # anything may have changed while no stream was open
                await conn.dispatcher.send_raw_request("subscriptions/listen", params, opts)
                self.log.info("upstream.listen_ended")
            except MCPError as exc:
                if conn.is_lost():
                    return
                if exc.code != CONNECTION_CLOSED:
                    self.log.warning("upstream.listen_failed", code=exc.code, error=exc.message[:300])
                    conn.listen_acked.set()
                    return
                self.log.info("upstream.listen_lost", error=exc.message[:300])
            first = False
            await trio.sleep(_RELISTEN_DELAY)
