"""Example MCP server "notes" (stdio): a small in-memory notebook with tools, a resource and a prompt.

Run: ``python -m fednode.examples.notes``. Built with the official MCP SDK's ``MCPServer``.
"""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

server = MCPServer("notes", instructions="Keeps short notes for the duration of the process.")
_notes: list[str] = []


@server.tool()
def add_note(text: str) -> str:
    """Store a note; returns its number."""
    _notes.append(text)
    return f"note {len(_notes)} stored"


@server.tool()
def word_count(text: str) -> int:
    """Count the words in a text."""
    return len(text.split())


@server.resource("notes://all")
def all_notes() -> str:
    """Every note stored so far, one per line."""
    return "\n".join(_notes) or "(no notes yet)"


@server.resource("notes://{number}")
def one_note(number: str) -> str:
    """One note by its number (1-based)."""
    index = int(number) - 1
    if not 0 <= index < len(_notes):
        raise ValueError(f"no note {number}")
    return _notes[index]


@server.prompt()
def summarize() -> str:
    """Ask for a summary of the stored notes."""
    return "Summarize the notes in notes://all in three bullet points."


if __name__ == "__main__":
    server.run()
