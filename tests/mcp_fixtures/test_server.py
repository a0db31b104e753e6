"""An MCP test server built with the official SDK's lowlevel ``Server``, for fednode's upstream tests.

Run it as a subprocess::

    python tests/mcp_fixtures/test_server.py [--name NAME] [--legacy-only] [--many N] [--page-size N]
                                             [--stubborn] [--spawn-child] [--leak-stdout]
                                             [--exit-after SECONDS] [--noise] [--refuse-log-level]
                                             [--http PORT] [--freezable]
                                             [--slow-start SECONDS] [--description-file PATH]

It speaks both protocol eras (the SDK picks the era from the client's first request) over stdio, or
Streamable HTTP on 127.0.0.1 with ``--http`` (it then prints ``url <URL>`` on stdout once listening;
there, calls of the tools ``http_500`` and ``http_html`` get an HTTP 500 and an HTML page).

The lowlevel ``Server`` is used instead of ``MCPServer`` because ``MCPServer`` never paginates its
lists and fixes the handshake-era ``listChanged`` capabilities to false; this fixture paginates every
list (``--page-size``, default 4) so that a client's cursor handling is always exercised.

Tools: ``add(a, b)`` (text and structured output), ``echo(text)``, ``fail()`` (an ``isError``
result), ``slow(seconds, marker?, release?)`` (sleeps; writes ``started`` to ``<marker>.started``
at once, then ``cancelled`` or ``completed`` to ``marker``; ends early once the file ``release`` exists),
``progress(steps)`` (one progress notification per step), ``grow()`` (registers a new tool at run
time and announces it with ``tools/list_changed``), ``pid()``, ``task_status()`` (sends a
``notifications/tasks/status`` on the request's stream), ``meta()`` (the request's ``_meta``
keys), ``roots_only()`` (listed first, and callable, only for a client that declared ``roots``);
``--many N`` adds ``extra_0`` .. ``extra_<N-1>``. Prompt ``greet(name)``; resource ``test://static``;
template ``test://items/{id}``.

Options that make it misbehave on purpose:

- ``--legacy-only``: answer ``server/discover`` with -32601 (method not found) the way a server
  from before 2026-07-28 does, so only the ``initialize`` handshake works. The SDK's dual-era loop
  would otherwise lock the connection into the modern era on that first request, so the refusal is
  made in front of it, on the raw message streams.
- ``--stubborn``: ignore SIGTERM and keep running after stdin closes (only SIGKILL ends it).
- ``--spawn-child``: start a ``sleep`` grandchild in the server's process group and report its pid
  on stderr as ``grandchild <pid>``; it outlives the server unless the client cleans up the group.
- ``--leak-stdout``: like ``--spawn-child``, but the grandchild inherits the server's stdout, so
  the pipe stays open after the server exits.
- ``--exit-after SECONDS``: exit abruptly that long after starting.
- ``--noise``: before serving, write a line that is not UTF-8 and a line that is not JSON on stdout.
- ``--refuse-log-level``: declare the ``logging`` capability, yet answer every ``logging/setLevel``
  with -32602.
- ``--freezable``: add a tool ``freeze()`` that blocks the whole process (alive, but it reads and
  answers nothing more, pings included) until it is killed.

``--legacy-only`` with ``--http`` answers requests of the 2026-07-28 era with HTTP 400, as a server
from before that era does.
- ``--description-file PATH``: give ``echo`` the description in that file, read anew at each list (a
  server changing a tool's definition under its clients: a "rug pull"); ``grow()`` makes clients list again.
- ``--slow-start SECONDS``: answer ``server/discover``, ``initialize`` and the first page of each
  list only that long after receiving them (a server starting up on a busy machine); stdio only.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import trio
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.stdio import stdio_server
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ToolsListChanged
from mcp.shared.exceptions import MCPError
from mcp.shared.message import ServerMessageMetadata, SessionMessage
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

Ctx = ServerRequestContext[Any]


def _tool(name: str, description: str, properties: dict[str, Any], required: list[str] | None = None,
          output: dict[str, Any] | None = None) -> types.Tool:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return types.Tool(name=name, description=description, input_schema=schema, output_schema=output)


def _text(text: str) -> list[types.ContentBlock]:
    return [types.TextContent(type="text", text=text)]


#: Listed (and callable) only for clients that declare the ``roots`` capability, as some servers do.
ROOTS_TOOL = _tool("roots_only", "Listed only to clients that declare roots.", {})


def _declares_roots(ctx: Ctx) -> bool:
    """Whether the client of this request declared ``roots`` (per request at 2026-07-28, else at initialize)."""
    if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
        meta = (ctx.params or {}).get("_meta") or {}
        declared = meta.get("io.modelcontextprotocol/clientCapabilities")
        return isinstance(declared, dict) and declared.get("roots") is not None
    declared_caps = ctx.session.client_capabilities
    return declared_caps is not None and declared_caps.roots is not None


class Fixture:
    """The server's state: the tool list grows at run time."""

    def __init__(self, name: str, many: int, page_size: int, refuse_log_level: bool = False,
                 freezable: bool = False, description_file: str | None = None) -> None:
        self.name = name
        self.description_file = description_file
        self.page_size = page_size
        self.bus = InMemorySubscriptionBus()
        self.tools: list[types.Tool] = [
            _tool("add", "Add two numbers.", {"a": {"type": "number"}, "b": {"type": "number"}}, ["a", "b"],
                  output={"type": "object", "properties": {"result": {"type": "number"}}, "required": ["result"]}),
            _tool("echo", "Echo the text back.", {"text": {"type": "string"}}, ["text"]),
            _tool("fail", "Always fails (an isError result).", {}),
            _tool("slow", "Sleep; writes 'cancelled' or 'completed' to marker; ends early once release exists.",
                  {"seconds": {"type": "number"}, "marker": {"type": "string"}, "release": {"type": "string"}},
                  ["seconds"]),
            _tool("progress", "Report progress once per step.", {"steps": {"type": "integer"}}, ["steps"]),
            _tool("grow", "Register a new tool and announce it.", {}),
            _tool("pid", "This server's process id.", {}),
            _tool("meta", "The _meta keys of this request, and its progress token.", {}),
            _tool("ask", "Ask the client a question (elicitation, as a legacy server does).",
                  {"question": {"type": "string"}}, ["question"]),
            _tool("task_status", "Send a task status notification on this request's stream.", {}),
        ]
        self.tools += [_tool(f"extra_{i}", f"Extra tool {i}.", {}) for i in range(many)]
        if freezable:
            self.tools.append(_tool("freeze", "Block the whole process: it stops reading and answering.", {}))
        self.grown = 0
        self.server: Server[Any] = Server(
            name,
            version="1.0.0",
            instructions="fednode test fixture",
            on_list_tools=self.list_tools,
            on_call_tool=self.call_tool,
            on_list_prompts=self.list_prompts,
            on_get_prompt=self.get_prompt,
            on_list_resources=self.list_resources,
            on_list_resource_templates=self.list_resource_templates,
            on_read_resource=self.read_resource,
            on_subscriptions_listen=ListenHandler(self.bus),
        )
        if refuse_log_level:  # registering the method makes the SDK declare the logging capability
            self.server.add_request_handler("logging/setLevel", types.SetLevelRequestParams, self.refuse_level)

    async def refuse_level(self, ctx: Ctx, params: types.SetLevelRequestParams) -> types.EmptyResult:
        raise MCPError(types.INVALID_PARAMS, f"this server keeps its own log level, not {params.level!r}")

    def page(self, items: list[Any], params: types.PaginatedRequestParams | None) -> tuple[list[Any], str | None]:
        cursor = params.cursor if params is not None else None
        try:
            start = int(cursor) if cursor is not None else 0
        except ValueError:
            raise MCPError(types.INVALID_PARAMS, f"bad cursor {cursor!r}") from None
        end = start + self.page_size
        return items[start:end], (str(end) if end < len(items) else None)

    async def list_tools(self, ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        listed = self.tools
        if self.description_file is not None:
            description = (await anyio.Path(self.description_file).read_text(encoding="utf-8")).strip()
            listed = [tool.model_copy(update={"description": description}) if tool.name == "echo" else tool
                      for tool in listed]
        tools, cursor = self.page(([ROOTS_TOOL] if _declares_roots(ctx) else []) + listed, params)
        return types.ListToolsResult(tools=tools, next_cursor=cursor)

    async def call_tool(self, ctx: Ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
        args = params.arguments or {}
        match params.name:
            case "add":
                total = args["a"] + args["b"]
                return types.CallToolResult(content=_text(str(total)), structured_content={"result": total})
            case "echo":
                return types.CallToolResult(content=_text(str(args["text"])), _meta={"fixture/echoed": True})
            case "ask":
                # The legacy way: a request to the client in the middle of the call.
                request = types.ElicitRequest.model_validate({"method": "elicitation/create", "params": {
                    "message": str(args["question"]),
                    "requestedSchema": {"type": "object", "properties": {"answer": {"type": "string"}}}}},
                    by_name=False)
                answer = await ctx.session.send_request(
                    request, types.ElicitResult, metadata=ServerMessageMetadata(related_request_id=ctx.request_id))
                return types.CallToolResult(content=_text(f"{answer.action}: {json.dumps(answer.content)}"))
            case "fail":
                return types.CallToolResult(content=_text("it failed"), is_error=True)
            case "slow":
                return await self.slow(float(args["seconds"]), args.get("marker"), args.get("release"))
            case "progress":
                steps = int(args["steps"])
                for step in range(1, steps + 1):
                    await ctx.session.report_progress(step, steps, f"step {step}")
                    await anyio.sleep(0.01)
                return types.CallToolResult(content=_text(f"{steps} steps"))
            case "grow":
                self.grown += 1
                name = f"grown_{self.grown}"
                self.tools.append(_tool(name, "Added at run time.", {}))
                if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
                    await self.bus.publish(ToolsListChanged())  # 2026: only listen streams carry it
                else:
                    await ctx.session.send_tool_list_changed()
                return types.CallToolResult(content=_text(name))
            case "freeze" if any(tool.name == "freeze" for tool in self.tools):
                # Synchronous on purpose: the event loop stops, so stdin is no longer read.
                time.sleep(3600)  # noqa: ASYNC251
                return types.CallToolResult(content=_text("thawed"))
            case "pid":
                return types.CallToolResult(content=_text(str(os.getpid())))
            case "task_status":
                stamp = "2026-01-01T00:00:00Z"
                await ctx.session.send_notification(types.TaskStatusNotification(
                    params=types.TaskStatusNotificationParams(task_id="fixture-task-1", status="working",
                                                              created_at=stamp, last_updated_at=stamp, ttl=None)),
                    related_request_id=ctx.request_id)
                return types.CallToolResult(content=_text("sent"))
            case "roots_only" if _declares_roots(ctx):
                return types.CallToolResult(content=_text("roots declared"))
            case "meta":
                meta = (ctx.params or {}).get("_meta") or {}
                return types.CallToolResult(content=_text(", ".join(sorted(meta))), structured_content={
                    "keys": sorted(meta), "progressToken": meta.get("progressToken"),
                    "traceparent": meta.get("traceparent"),
                    "capabilities": meta.get("io.modelcontextprotocol/clientCapabilities")})
            case name if any(tool.name == name for tool in self.tools):
                return types.CallToolResult(content=_text(name))
        raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {params.name}", data={"tool": params.name})

    async def slow(self, seconds: float, marker: str | None, release: str | None) -> types.CallToolResult:
        if marker:
            # A positive signal for tests: the call has reached the server (and may now be cancelled).
            Path(f"{marker}.started").write_text("started")  # noqa: ASYNC240 - a tiny local file
        try:
            with anyio.move_on_after(seconds):
                while not (release and Path(release).exists()):  # noqa: ASYNC240 - a tiny local file
                    await anyio.sleep(0.02)
        except anyio.get_cancelled_exc_class():
            if marker:
                # Synchronous on purpose: any await here would be cancelled at once.
                Path(marker).write_text("cancelled")  # noqa: ASYNC240
            raise
        if marker:
            Path(marker).write_text("completed")  # noqa: ASYNC240 - a tiny local file
        return types.CallToolResult(content=_text(f"slept {seconds}"))

    async def list_prompts(self, ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListPromptsResult:
        prompts, cursor = self.page([types.Prompt(
            name="greet", description="Greet someone.",
            arguments=[types.PromptArgument(name="name", description="Who", required=True)])], params)
        return types.ListPromptsResult(prompts=prompts, next_cursor=cursor)

    async def get_prompt(self, ctx: Ctx, params: types.GetPromptRequestParams) -> types.GetPromptResult:
        if params.name != "greet":
            raise MCPError(types.INVALID_PARAMS, f"Unknown prompt: {params.name}")
        who = (params.arguments or {}).get("name", "world")
        return types.GetPromptResult(description="A greeting", messages=[
            types.PromptMessage(role="user", content=types.TextContent(type="text", text=f"Hello, {who}!"))])

    async def list_resources(self, ctx: Ctx,
                             params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
        resources, cursor = self.page([types.Resource(uri="test://static", name="static", mime_type="text/plain")],
                                      params)
        return types.ListResourcesResult(resources=resources, next_cursor=cursor)

    async def list_resource_templates(self, ctx: Ctx,
                                      params: types.PaginatedRequestParams | None) -> types.ListResourceTemplatesResult:
        templates, cursor = self.page([types.ResourceTemplate(uri_template="test://items/{id}", name="item",
                                                              mime_type="text/plain")], params)
        return types.ListResourceTemplatesResult(resource_templates=templates, next_cursor=cursor)

    async def read_resource(self, ctx: Ctx, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        uri = str(params.uri)
        if uri == "test://static":
            text = "static content"
        elif uri.startswith("test://items/"):
            text = f"item {uri.removeprefix('test://items/')}"
        else:
            # An application-defined code: a client must get it back unchanged.
            raise MCPError(404, f"Unknown resource: {uri}", data={"uri": uri})
        # _meta names this server: which of two servers with the same URI answered.
        return types.ReadResourceResult(contents=[types.TextResourceContents(
            uri=uri, text=text, mime_type="text/plain", _meta={"fixture/name": self.name})])

    def init_options(self) -> Any:
        return self.server.create_initialization_options(
            NotificationOptions(prompts_changed=True, resources_changed=True, tools_changed=True))


#: The requests that ``--slow-start`` holds back: the handshake and the first page of each list.
_START_UP = frozenset({"server/discover", "initialize", "tools/list", "prompts/list", "resources/list",
                       "resources/templates/list"})


async def _front(source: Any, sink: Any, write: Any, legacy_only: bool, slow_start: float) -> None:
    """Relay client messages to the server, in order. ``legacy_only``: answer ``server/discover``
    with -32601 ourselves. ``slow_start``: hold start-up requests back that many seconds first."""
    async with sink:
        async for item in source:
            message = item.message if isinstance(item, SessionMessage) else None
            if (slow_start and isinstance(message, types.JSONRPCRequest) and message.method in _START_UP
                    and not (message.params or {}).get("cursor")):
                await anyio.sleep(slow_start)
            if legacy_only and isinstance(message, types.JSONRPCRequest) and message.method == "server/discover":
                error = types.ErrorData(code=types.METHOD_NOT_FOUND, message="Method not found")
                try:
                    await write.send(SessionMessage(types.JSONRPCError(jsonrpc="2.0", id=message.id, error=error)))
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    return
                continue
            await sink.send(item)


async def serve_stdio(fixture: Fixture, legacy_only: bool, stubborn: bool, slow_start: float) -> None:
    async with stdio_server() as (read, write):
        if legacy_only or slow_start:
            sink, relayed = anyio.create_memory_object_stream[Any](0)
            async with anyio.create_task_group() as tg:
                tg.start_soon(_front, read, sink, write, legacy_only, slow_start)
                await fixture.server.run(relayed, write, fixture.init_options())
        else:
            await fixture.server.run(read, write, fixture.init_options())
    if stubborn:
        await trio.sleep_forever()  # stdin is closed; only SIGKILL ends us now


def _http_faults(app: Any) -> Any:
    """Answer a call of tool ``http_500`` with HTTP 500, and of ``http_html`` with an HTML page
    (what a broken server or a proxy in front of it does); everything else reaches ``app``."""

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await app(scope, receive, send)
            return
        body, more, messages = b"", True, []
        while more:
            message = await receive()
            messages.append(message)
            body += message.get("body", b"")
            more = message.get("more_body", False)
        fault = next((f for f in ("http_500", "http_html") if f'"name":"{f}"' in body.decode(errors="replace")), None)
        if fault is not None:
            status, kind = (500, b"text/plain") if fault == "http_500" else (200, b"text/html")
            await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", kind)]})
            await send({"type": "http.response.body", "body": b"<html>nope</html>"})
            return

        async def replay() -> Any:
            return messages.pop(0) if messages else await receive()

        await app(scope, replay, send)

    return wrapped


def _legacy_http(app: Any) -> Any:
    """Refuse requests of the 2026-07-28 era with HTTP 400, as a Streamable HTTP server from before
    that era does (an unsupported ``MCP-Protocol-Version``); everything else reaches ``app``."""

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        headers = dict(scope.get("headers") or ()) if scope["type"] == "http" else {}
        version = headers.get(b"mcp-protocol-version", b"").decode(errors="replace")
        if scope["type"] == "http" and version in MODERN_PROTOCOL_VERSIONS:
            body = json.dumps({"jsonrpc": "2.0", "id": "server-error", "error": {
                "code": types.INVALID_REQUEST, "message": f"Bad Request: Unsupported protocol version: {version}"}})
            await send({"type": "http.response.start", "status": 400,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body.encode()})
            return
        await app(scope, receive, send)

    return wrapped


async def serve_http(fixture: Fixture, port: int, legacy_only: bool = False) -> None:
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.errorlog = None
    app = _http_faults(fixture.server.streamable_http_app(json_response=False))
    if legacy_only:
        app = _legacy_http(app)
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, app, config)
        print(f"url {binds[0]}/mcp", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="fixture")
    parser.add_argument("--legacy-only", action="store_true")
    parser.add_argument("--many", type=int, default=0)
    parser.add_argument("--page-size", type=int, default=4)
    parser.add_argument("--stubborn", action="store_true")
    parser.add_argument("--spawn-child", action="store_true")
    parser.add_argument("--leak-stdout", action="store_true")
    parser.add_argument("--exit-after", type=float, default=None, metavar="SECONDS")
    parser.add_argument("--noise", action="store_true")
    parser.add_argument("--refuse-log-level", action="store_true")
    parser.add_argument("--http", type=int, default=None, metavar="PORT")
    parser.add_argument("--freezable", action="store_true")
    parser.add_argument("--slow-start", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--description-file", default=None, metavar="PATH")
    args = parser.parse_args()

    print(f"fixture {args.name} starting", file=sys.stderr, flush=True)
    if args.stubborn:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.spawn_child:
        child = subprocess.Popen(["sleep", "60"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        print(f"grandchild {child.pid}", file=sys.stderr, flush=True)
    if args.leak_stdout:
        child = subprocess.Popen(["sleep", "60"], stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"grandchild {child.pid}", file=sys.stderr, flush=True)
    if args.exit_after is not None:
        threading.Timer(args.exit_after, os._exit, (3,)).start()
    if args.noise:
        sys.stdout.buffer.write(b"\xff\xfe not utf-8 \xc3\x28\n this is not JSON\n")
        sys.stdout.buffer.flush()
    fixture = Fixture(args.name, args.many, args.page_size, args.refuse_log_level, args.freezable,
                      args.description_file)
    if args.http is not None:
        trio.run(serve_http, fixture, args.http, args.legacy_only)
    else:
        trio.run(serve_stdio, fixture, args.legacy_only, args.stubborn, args.slow_start)


if __name__ == "__main__":
    main()
