"""A small stdio MCP server "files" for the export/import glob tests: read_a, read_b, read_secret, delete."""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

server = MCPServer("files")


@server.tool()
def read_a() -> str:
    """Read file a."""
    return "contents of a"


@server.tool()
def read_b() -> str:
    """Read file b."""
    return "contents of b"


@server.tool()
def read_secret() -> str:
    """Read the secret file."""
    return "the secret"


@server.tool()
def delete(path: str) -> str:
    """Delete a file."""
    return f"deleted {path}"


@server.resource("file:///readme")
def readme() -> str:
    """The readme."""
    return "read me"


if __name__ == "__main__":
    server.run()
