"""A request's headers as the SDK's checks read them (the edge's fast path runs those checks itself)."""

from __future__ import annotations

__all__ = ["RequestHeaders"]


class RequestHeaders:
    """``get`` by lowercase name (the first of a repeated header, as Starlette's ``Headers.get``: the
    fast path must read a request as the SDK would), ``items`` in order, ``as_dict`` (first values)."""

    __slots__ = ("_map", "_pairs")

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._pairs = [(name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in raw]
        self._map = dict(reversed(self._pairs))

    def get(self, key: str, default: str | None = None) -> str | None:
        return self._map.get(key, default)

    def items(self) -> list[tuple[str, str]]:
        return self._pairs

    def as_dict(self) -> dict[str, str]:
        return self._map
