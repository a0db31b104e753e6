"""Example MCP server "clock" (stdio): the time in a time zone, and date arithmetic.

Run: ``python -m fednode.examples.clock``. Built with the official MCP SDK's ``MCPServer``.
"""

from __future__ import annotations

import datetime
import zoneinfo

from mcp.server.mcpserver import MCPServer

server = MCPServer("clock", instructions="Tells the time anywhere and counts days between dates.")


@server.tool()
def now(timezone: str = "UTC") -> str:
    """The current date and time in an IANA time zone (e.g. Europe/Paris)."""
    try:
        zone = zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {timezone!r}") from None
    return datetime.datetime.now(zone).isoformat(timespec="seconds")


@server.tool()
def days_between(start: str, end: str) -> int:
    """Whole days from one ISO date (YYYY-MM-DD) to another."""
    return (datetime.date.fromisoformat(end) - datetime.date.fromisoformat(start)).days


@server.prompt()
def meeting(city: str) -> str:
    """Ask for a good meeting time with someone in a city."""
    return f"Use the clock tools to find a meeting time that suits someone in {city}."


if __name__ == "__main__":
    server.run()
