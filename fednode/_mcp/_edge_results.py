"""The envelope of the results the client edge answers itself, and the cursors of its list pages.

The edge answers forwarded and listed methods without the SDK's result models (which would drop
fields the node must pass through unchanged), so it gives each result the envelope its client's
era requires here, touching nothing else.
"""

from __future__ import annotations

import base64
import binascii
from functools import cache
from types import UnionType
from typing import Any, get_args

import mcp_types
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError
from mcp_types import methods as mcp_methods
from mcp_types.version import KNOWN_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel

from .._errors import INTERNAL_ERROR, INVALID_PARAMS

__all__ = ["decode_cursor", "encode_cursor", "shape_result"]


def shape_result(server: Server[Any], method: str, version: str, result: dict[str, Any]) -> dict[str, Any]:
    """Give a raw result the envelope its client's era requires, touching nothing else.

    2026-07-28: ``resultType`` (required; ``"complete"`` unless given), ``ttlMs``/``cacheScope``
    on cacheable results (required; 0 / private unless given), and the SDK's ``serverInfo``
    ``_meta`` stamp when the result carries none. Legacy: keys that only a later revision
    defines for the method (``resultType``, ``ttlMs``, ...) are dropped, as the SDK's own
    client does; an ``input_required`` result cannot be delivered at all.
    """
    shaped = dict(result)
    if version in MODERN_PROTOCOL_VERSIONS:
        input_required = mcp_methods.is_input_required(shaped)
        shaped.setdefault("resultType", "complete")
        if method in mcp_methods.CACHEABLE_METHODS and not input_required:
            shaped.setdefault("ttlMs", 0)
            shaped.setdefault("cacheScope", "private")
        meta = shaped.get("_meta")
        if meta is None:
            shaped["_meta"] = {mcp_types.SERVER_INFO_META_KEY: server.server_info_stamp}
        elif isinstance(meta, dict) and meta.get(mcp_types.SERVER_INFO_META_KEY) is None:
            shaped["_meta"] = {**meta, mcp_types.SERVER_INFO_META_KEY: server.server_info_stamp}
        return shaped
    if mcp_methods.is_input_required(shaped):
        raise MCPError(INTERNAL_ERROR,
                       f"{method} needs input from the client, which a {version} client cannot be asked for", None)
    for key in _later_revision_fields(method, version) & shaped.keys():
        del shaped[key]
    return shaped


@cache
def _later_revision_fields(method: str, version: str) -> frozenset[str]:
    # Result keys that a revision after `version` defines for `method` and `version` does not.
    current = mcp_methods.SERVER_RESULTS.get((method, version))
    if current is None or version not in KNOWN_PROTOCOL_VERSIONS:
        return frozenset()
    later: set[str] = set()
    for revision in KNOWN_PROTOCOL_VERSIONS[KNOWN_PROTOCOL_VERSIONS.index(version) + 1:]:
        row = mcp_methods.SERVER_RESULTS.get((method, revision))
        if row is not None:
            later |= _wire_fields(row)
    return frozenset(later - _wire_fields(current))


def _wire_fields(target: type[BaseModel] | UnionType) -> set[str]:
    members: tuple[Any, ...] = get_args(target) if isinstance(target, UnionType) else (target,)
    return {field.alias or name
            for model in members if isinstance(model, type) and issubclass(model, BaseModel)
            for name, field in model.model_fields.items()}


def encode_cursor(kind: str, offset: int) -> str:
    """The cursor of the page of ``kind`` that starts at ``offset`` (opaque to clients)."""
    return base64.urlsafe_b64encode(f"{kind}:{offset}".encode()).decode("ascii")


def decode_cursor(kind: str, cursor: object) -> int:
    """The offset a cursor from :func:`encode_cursor` stands for; -32602 for anything else."""
    if isinstance(cursor, str):
        try:
            cursor_kind, _, offset = base64.urlsafe_b64decode(cursor.encode("ascii")).decode("ascii").partition(":")
            if cursor_kind == kind and offset.isdigit():
                return int(offset)
        except (ValueError, binascii.Error):
            pass
    raise MCPError(INVALID_PARAMS, "Invalid cursor", None)

