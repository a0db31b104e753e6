"""How the client commands show answers to people: the tables of ``fednode tools`` and ``fednode status``
and a tool result of ``fednode call``.

Pure functions of the JSON the node answered (``--json`` prints that JSON instead); nothing here
talks to a node or exits.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["DESCRIPTION_WIDTH", "format_held", "format_result", "format_status", "format_table", "format_tools"]

#: Width of the description column of ``fednode tools``.
DESCRIPTION_WIDTH = 72
#: Characters of a held definition's changed field shown by ``fednode pins list`` (``--json``: all of it).
NOW_WIDTH = 200


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """Left-aligned columns separated by two spaces; ``None`` shows as ``-``; no trailing blanks.

    A value spanning several lines (an error message, say) is folded onto one.
    """
    cells = [[str(h) for h in headers]] + [["-" if v is None else " ".join(str(v).split()) for v in row]
                                           for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in cells]


def _first_line(text: str | None, width: int) -> str:
    lines = (text or "").strip().splitlines()
    line = lines[0].strip() if lines else ""
    if len(line) > width or len(lines) > 1:
        line = line[: width - 3].rstrip() + "..."
    return line


def format_tools(tools: Sequence[Mapping[str, Any]]) -> str:
    """The ``fednode tools`` table: name and the first line of the description."""
    if not tools:
        return "no tools"
    rows = [(tool.get("name", "?"), _first_line(tool.get("description"), DESCRIPTION_WIDTH)) for tool in tools]
    return "\n".join(format_table(("NAME", "DESCRIPTION"), rows))


def _summarise_block(block: Mapping[str, Any]) -> str:
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text", ""))
    if kind in ("image", "audio"):
        decoded = len(str(block.get("data", ""))) * 3 // 4  # base64
        return f"[{kind}: {block.get('mimeType', 'unknown type')}, about {decoded} bytes]"
    if kind == "resource_link":
        name = f" ({block['name']})" if block.get("name") else ""
        return f"[resource link: {block.get('uri', '?')}{name}]"
    if kind == "resource":
        resource = block.get("resource") or {}
        mime = f", {resource['mimeType']}" if resource.get("mimeType") else ""
        length = f", {len(resource['text'])} characters" if "text" in resource else ""
        return f"[embedded resource: {resource.get('uri', '?')}{mime}{length}]"
    return f"[{kind} content]"


def format_result(result: Mapping[str, Any]) -> str:
    """A tool result for people: text as text, other content summarised, structured content as JSON."""
    parts = [_summarise_block(block) for block in result.get("content") or []]
    if result.get("structuredContent") is not None:
        parts.append(json.dumps(result["structuredContent"], indent=2))
    return "\n".join(parts)


def _seconds(value: object) -> str:
    if not isinstance(value, int | float):
        return "-"
    seconds = float(value)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def _ago(value: object) -> str:
    return "-" if not isinstance(value, int | float) else f"{_seconds(value)} ago"


def _rtt(value: object) -> str:
    return "-" if not isinstance(value, int | float) else f"{float(value):.2f} ms"


def format_status(status: Mapping[str, Any]) -> str:
    """The ``fednode status`` report: node header, peers, servers, routes, conflicts, in-flight requests."""
    node = status.get("node") or {}
    reload = node.get("reload") or {}
    last = reload.get("last")
    reload_text = f"reloads {reload.get('count', 0)}"
    if isinstance(last, Mapping):
        outcome = "ok" if last.get("ok") else f"failed: {last.get('error') or 'unknown error'}"
        summary = f", {last['summary']}" if last.get("summary") else ""
        reload_text += f" (last {_ago(last.get('ago_s'))}: {outcome}{summary})"
    lines = [f"node {node.get('id', '?')}  version {node.get('version', '?')}  up {_seconds(node.get('uptime_s'))}"
             f"  {reload_text}",
             f"control {node.get('control') or '-'}  data {node.get('data') or '-'}", ""]

    peers = status.get("peers") or []
    lines.append(f"peers: {len(peers)}")
    if peers:
        rows: list[tuple[object, ...]] = [
            (p.get("id"), p.get("state"), p.get("direction"), _rtt(p.get("rtt_ms")), _ago(p.get("last_seen_s")),
             p.get("reconnects", 0), p.get("control"), p.get("last_error")) for p in peers]
        lines += ["  " + line for line in format_table(
            ("ID", "STATE", "DIRECTION", "RTT", "LAST SEEN", "RECONNECTS", "CONTROL", "LAST ERROR"), rows)]
    lines.append("")

    servers = status.get("servers") or []
    lines.append(f"servers: {len(servers)}")
    if servers:
        rows = [(s.get("id"), s.get("state"), s.get("era"), s.get("restarts", 0), s.get("tools", 0),
                 s.get("prompts", 0), s.get("resources", 0), s.get("resource_templates", 0), s.get("last_error"))
                for s in servers]
        lines += ["  " + line for line in format_table(
            ("ID", "STATE", "ERA", "RESTARTS", "TOOLS", "PROMPTS", "RESOURCES", "TEMPLATES", "LAST ERROR"), rows)]
    lines.append("")

    routes = status.get("routes") or {}
    by_origin = routes.get("by_origin") or {}
    lines.append(f"routes: {routes.get('total', 0)}")
    if by_origin:
        lines += ["  " + line for line in format_table(("ORIGIN", "ROUTES"), sorted(by_origin.items()))]
    conflicts = routes.get("conflicts") or []
    lines.append(f"conflicts: {len(conflicts)}")
    lines += [f"  - {conflict}" for conflict in conflicts]
    lines.append(f"in flight: {status.get('in_flight', 0)}")
    pins = status.get("pins")
    if isinstance(pins, Mapping):
        lines.append(_held_lines(pins, f"pins: {pins.get('total', 0)}"))
    return "\n".join(lines)


def _held_lines(pins: Mapping[str, Any], head: str) -> str:
    held = pins.get("held") or []
    lines = [f"{head}, held: {len(held)}"]
    if held:
        rows = [(h.get("kind", "?")[:-1], h.get("name"), h.get("server"), h.get("origin"),
                 ", ".join(h.get("changed") or [])) for h in held]
        lines += ["  " + line for line in format_table(("KIND", "NAME", "SERVER", "ORIGIN", "CHANGED"), rows)]
        for h in held:  # what accepting would pin (``fednode pins list`` has the definitions)
            definition = h.get("definition")
            if isinstance(definition, Mapping):
                for field in h.get("changed") or []:
                    value = " ".join(json.dumps(definition.get(field), ensure_ascii=False).split())
                    shown = value if len(value) <= NOW_WIDTH else value[:NOW_WIDTH - 3] + "..."
                    lines.append(f"  {h.get('name')} {field} now: {shown}")
        lines.append("  accept with: fednode pins accept NAME (or --all)")
    return "\n".join(lines)


def format_held(answer: Mapping[str, Any]) -> str:
    """The ``fednode pins list`` report: where pins are kept, how many, and the held items."""
    where = answer.get("file") or "memory only (no [node] state_dir)"
    return _held_lines(answer, f"pins: {answer.get('pins', 0)} in {where}")
