"""The MCP conformance suite's server fixture, built with the official SDK's lowlevel ``Server``.

Run it as a subprocess::

    python tests/mcp_fixtures/conformance_server.py             # stdio
    python tests/mcp_fixtures/conformance_server.py --http PORT  # Streamable HTTP on 127.0.0.1

With ``--http`` it prints ``url <URL>`` on stdout once listening (port 0 picks a free port).

It implements what the server scenarios of ``@modelcontextprotocol/conformance`` (0.2.0-alpha.12)
expect, for both protocol eras (the SDK picks the era from the client's first request):

- tools ``test_simple_text``, ``test_image_content``, ``test_audio_content``,
  ``test_embedded_resource``, ``test_multiple_content_types``, ``test_error_handling``,
  ``test_tool_with_progress``, ``test_tool_with_logging`` / ``test_logging_tool``,
  ``test_sampling``, ``test_elicitation``, ``test_elicitation_sep1034_defaults``,
  ``test_elicitation_sep1330_enums``, ``test_reconnection`` (closes its SSE stream mid-call),
  ``json_schema_2020_12_tool``, ``test_headers`` (an ``x-mcp-header`` parameter),
  ``test_missing_capability``, ``test_streaming_elicitation``, ``test_trigger_tool_change``,
  ``test_trigger_prompt_change`` and the ``test_input_required_result_*`` family (SEP-2322
  multi round-trip, with an HMAC-sealed ``requestState``);
- the tasks extension (``io.modelcontextprotocol/tasks``, SEP-2663): tools ``greet``,
  ``slow_compute``, ``failing_job``, ``protocol_error_job``, ``confirm_delete``, ``multi_input``,
  ``test_tool_with_task`` and the methods ``tasks/get``, ``tasks/update``, ``tasks/cancel``;
- prompts ``test_simple_prompt``, ``test_prompt_with_arguments``,
  ``test_prompt_with_embedded_resource``, ``test_prompt_with_image``,
  ``test_input_required_result_prompt``; completion for prompt arguments;
- resources ``test://static-text``, ``test://static-binary``, ``test://watched-resource``, the
  template ``test://template/{id}/data``; -32602 with ``data.uri`` for unknown URIs;
- legacy ``logging/setLevel`` and ``resources/(un)subscribe``; 2026 ``subscriptions/listen``.

Where a tool needs input from the client, a 2026-07-28 client gets an ``input_required`` result
and retries; a legacy client is asked over the request's back channel instead.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import io
import json
import secrets
import sys
import uuid
import warnings
import wave
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import anyio
import mcp_types as types
import trio
from mcp.server.caching import CacheHint
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.models import InitializationOptions
from mcp.server.stdio import stdio_server
from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, PromptsListChanged, ToolsListChanged
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp.shared.message import ServerMessageMetadata
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ConfigDict

warnings.filterwarnings("ignore", category=MCPDeprecationWarning)

Ctx = ServerRequestContext[Any]

TASKS_EXTENSION = "io.modelcontextprotocol/tasks"
HEADER_MISMATCH = -32020
MISSING_CAPABILITY = -32021

# A 1x1 red pixel PNG.
PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==")


def _wav() -> str:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\x00\x00" * 80)  # 10 ms of silence
    return base64.b64encode(buffer.getvalue()).decode("ascii")


WAV = _wav()

JSON_SCHEMA_2020_12 = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {"address": {"$anchor": "addressDef", "type": "object",
                          "properties": {"street": {"type": "string"}, "city": {"type": "string"}}}},
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}

SEP1034_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "Name", "default": "John Doe"},
        "age": {"type": "integer", "description": "Age", "default": 30},
        "score": {"type": "number", "description": "Score", "default": 95.5},
        "status": {"type": "string", "description": "Status", "enum": ["active", "inactive", "pending"],
                   "default": "active"},
        "verified": {"type": "boolean", "description": "Verified", "default": True},
    },
}

SEP1330_SCHEMA = {
    "type": "object",
    "properties": {
        "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
        "titledSingle": {"type": "string", "oneOf": [{"const": "value1", "title": "First Option"},
                                                     {"const": "value2", "title": "Second Option"},
                                                     {"const": "value3", "title": "Third Option"}]},
        "legacyEnum": {"type": "string", "enum": ["opt1", "opt2", "opt3"],
                       "enumNames": ["Option One", "Option Two", "Option Three"]},
        "untitledMulti": {"type": "array", "items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
        "titledMulti": {"type": "array", "items": {"anyOf": [{"const": "value1", "title": "First Choice"},
                                                             {"const": "value2", "title": "Second Choice"},
                                                             {"const": "value3", "title": "Third Choice"}]}},
    },
}


def _tool(name: str, description: str, properties: dict[str, Any] | None = None, required: list[str] | None = None,
          *, task_support: str | None = None, schema: dict[str, Any] | None = None) -> types.Tool:
    if schema is None:
        schema = {"type": "object", "properties": properties or {}}
        if required:
            schema["required"] = required
    execution = types.ToolExecution(task_support=task_support) if task_support else None  # type: ignore[arg-type]
    # The 2026-07-28 Tool drops `execution`; the tasks extension's declaration also rides `_meta`.
    meta = {TASKS_EXTENSION: {"taskSupport": task_support}} if task_support else None
    return types.Tool(name=name, description=description, input_schema=schema, execution=execution, _meta=meta)


def _text(text: str) -> list[types.ContentBlock]:
    return [types.TextContent(type="text", text=text)]


def _elicit(message: str, properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return {"method": "elicitation/create", "params": {"message": message, "requestedSchema": schema}}


def _sample(text: str, max_tokens: int = 100) -> dict[str, Any]:
    return {"method": "sampling/createMessage",
            "params": {"messages": [{"role": "user", "content": {"type": "text", "text": text}}],
                       "maxTokens": max_tokens}}


ROOTS_REQUEST: dict[str, Any] = {"method": "roots/list", "params": {}}

# What each kind of input request needs from the client, and the result type its answer must have.
_INPUT_KINDS: dict[str, tuple[str, type[types.Result]]] = {
    "elicitation/create": ("elicitation", types.ElicitResult),
    "sampling/createMessage": ("sampling", types.CreateMessageResult),
    "roots/list": ("roots", types.ListRootsResult),
}

TOOLS: list[types.Tool] = [
    # First on purpose: header-validation scenarios call the first listed tool with no arguments.
    _tool("test_simple_text", "Returns a simple text response."),
    _tool("test_image_content", "Returns an image."),
    _tool("test_audio_content", "Returns an audio clip."),
    _tool("test_embedded_resource", "Returns an embedded resource."),
    _tool("test_multiple_content_types", "Returns text, an image and an embedded resource."),
    _tool("test_tool_with_logging", "Sends three log messages while it runs."),
    _tool("test_logging_tool", "Sends three log messages while it runs."),
    _tool("test_error_handling", "Always reports a tool error."),
    _tool("test_tool_with_progress", "Reports progress 0, 50, 100 of 100."),
    _tool("test_sampling", "Asks the client's LLM.", {"prompt": {"type": "string"}}, ["prompt"]),
    _tool("test_elicitation", "Asks the user.", {"message": {"type": "string"}}, ["message"]),
    _tool("test_elicitation_sep1034_defaults", "Elicitation with defaults for every primitive type."),
    _tool("test_elicitation_sep1330_enums", "Elicitation with every enum variant."),
    _tool("test_reconnection", "Closes its SSE stream mid-call, then answers (client resumes with Last-Event-ID)."),
    _tool("json_schema_2020_12_tool", "Tool with JSON Schema 2020-12 features", schema=JSON_SCHEMA_2020_12),
    _tool("test_headers", "Echoes a parameter mirrored into the Mcp-Param-Region header.",
          {"region": {"type": "string", "x-mcp-header": "Region"}}, ["region"]),
    _tool("test_missing_capability", "Needs the client's sampling capability."),
    _tool("test_streaming_elicitation", "Needs input from the user (never as a request on the response stream)."),
    _tool("test_trigger_tool_change", "Adds or removes test_dynamic_tool and announces the change."),
    _tool("test_trigger_prompt_change", "Adds or removes test_dynamic_prompt and announces the change."),
    _tool("test_input_required_result_elicitation", "Multi round-trip: one elicitation."),
    _tool("test_input_required_result_sampling", "Multi round-trip: one sampling request."),
    _tool("test_input_required_result_list_roots", "Multi round-trip: one roots/list request."),
    _tool("test_input_required_result_request_state", "Multi round-trip with requestState."),
    _tool("test_input_required_result_multiple_inputs", "Multi round-trip: elicitation, sampling and roots."),
    _tool("test_input_required_result_multi_round", "Multi round-trip over two rounds."),
    _tool("test_input_required_result_tampered_state", "Multi round-trip with an integrity-protected state."),
    _tool("test_input_required_result_capabilities", "Asks only for what the client declared."),
    # The tasks extension (SEP-2663).
    _tool("greet", "Says hello (sync only).", {"name": {"type": "string"}}, ["name"]),
    _tool("slow_compute", "Sleeps `seconds`, then answers; runs as a task when the client supports tasks.",
          {"seconds": {"type": "number"}, "label": {"type": "string"}}, ["seconds"], task_support="optional"),
    _tool("failing_job", "Reports a tool error after a moment (task required).", task_support="required"),
    _tool("protocol_error_job", "Fails with a protocol error (task).", task_support="optional"),
    _tool("confirm_delete", "Asks for confirmation, then deletes (task).", {"filename": {"type": "string"}},
          ["filename"], task_support="optional"),
    _tool("multi_input", "Asks two questions at once (task).", task_support="optional"),
    _tool("test_tool_with_task", "Gathers a name by multi round-trip, then continues as a task.",
          task_support="required"),
]

DYNAMIC_TOOL = _tool("test_dynamic_tool", "Added by test_trigger_tool_change.")
DYNAMIC_PROMPT = types.Prompt(name="test_dynamic_prompt", description="Added by test_trigger_prompt_change.")

PROMPTS: list[types.Prompt] = [
    types.Prompt(name="test_simple_prompt", description="A simple prompt without arguments."),
    types.Prompt(name="test_prompt_with_arguments", description="A prompt with two arguments.", arguments=[
        types.PromptArgument(name="arg1", description="First test argument", required=True),
        types.PromptArgument(name="arg2", description="Second test argument", required=True)]),
    types.Prompt(name="test_prompt_with_embedded_resource", description="A prompt embedding a resource.",
                 arguments=[types.PromptArgument(name="resourceUri", description="URI to embed", required=True)]),
    types.Prompt(name="test_prompt_with_image", description="A prompt with an image."),
    types.Prompt(name="test_input_required_result_prompt", description="A prompt that needs the user's context."),
]

RESOURCES: list[types.Resource] = [
    types.Resource(uri="test://static-text", name="static-text", description="A static text resource.",
                   mime_type="text/plain"),
    types.Resource(uri="test://static-binary", name="static-binary", description="A static binary resource.",
                   mime_type="image/png"),
    types.Resource(uri="test://watched-resource", name="watched-resource", description="A resource to subscribe to.",
                   mime_type="text/plain"),
]

TEMPLATES: list[types.ResourceTemplate] = [
    types.ResourceTemplate(uri_template="test://template/{id}/data", name="template",
                           description="A templated resource.", mime_type="application/json"),
]

COMPLETIONS = {"arg1": ["paris", "park", "party"], "arg2": ["world", "wonder", "work"]}


class _InputRequired(Exception):
    """Raised by a tool that needs input: becomes an ``input_required`` result (2026-07-28)."""

    def __init__(self, requests: dict[str, dict[str, Any]], state: dict[str, Any] | None = None) -> None:
        super().__init__(sorted(requests))
        self.requests = requests
        self.state = state


class _TaskParams(types.RequestParams):
    model_config = ConfigDict(extra="allow")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Task:
    """A task of the tasks extension: created by a tool call, observed with ``tasks/get``."""

    id: str
    ttl_ms: int = 300_000
    poll_ms: int = 200
    status: str = "working"
    created: str = field(default_factory=_now)
    updated: str = field(default_factory=_now)
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)
    answers: dict[str, Any] = field(default_factory=dict)
    answered: anyio.Event = field(default_factory=anyio.Event)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)

    def set(self, status: str) -> None:
        self.status = status
        self.updated = _now()

    def wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"taskId": self.id, "status": self.status, "createdAt": self.created,
                               "lastUpdatedAt": self.updated, "ttlMs": self.ttl_ms, "pollIntervalMs": self.poll_ms}
        if self.status == "input_required":
            out["inputRequests"] = dict(self.pending)
        if self.status == "completed" and self.result is not None:
            out["result"] = self.result
        if self.status == "failed" and self.error is not None:
            out["error"] = self.error
        return out

    async def ask(self, requests: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Park the task in ``input_required`` until every request is answered (``tasks/update``)."""
        keyed = {f"{name}-{uuid.uuid4().hex[:8]}": request for name, request in requests.items()}
        self.pending.update(keyed)
        self.set("input_required")
        while any(key in self.pending for key in keyed):
            self.answered = anyio.Event()
            await self.answered.wait()
        self.set("working")
        return {key.rsplit("-", 1)[0]: self.answers.pop(key) for key in keyed}


class MemoryEventStore(EventStore):
    """Keeps every SSE event so a client can resume a stream with ``Last-Event-ID``."""

    def __init__(self) -> None:
        self.events: list[tuple[EventId, StreamId, types.JSONRPCMessage | None]] = []

    async def store_event(self, stream_id: StreamId, message: types.JSONRPCMessage | None) -> EventId:
        event_id = uuid.uuid4().hex
        self.events.append((event_id, stream_id, message))
        del self.events[:-1000]
        return event_id

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        index = next((i for i, (event_id, _, _) in enumerate(self.events) if event_id == last_event_id), None)
        if index is None:
            return None
        stream_id = self.events[index][1]
        for event_id, stream, message in self.events[index + 1:]:
            if stream == stream_id and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream_id


class _FixtureServer(Server[Any]):
    # The SDK builds the legacy InitializeResult from create_initialization_options() with no
    # arguments on HTTP; this fixture does announce list changes.
    def create_initialization_options(self, notification_options: NotificationOptions | None = None,
                                      experimental_capabilities: dict[str, dict[str, Any]] | None = None,
                                      extensions: dict[str, dict[str, Any]] | None = None) -> InitializationOptions:
        if notification_options is None:
            notification_options = NotificationOptions(prompts_changed=True, resources_changed=True,
                                                       tools_changed=True)
        return super().create_initialization_options(notification_options, experimental_capabilities, extensions)


class Fixture:
    def __init__(self) -> None:
        self.key = secrets.token_bytes(32)
        self.bus = InMemorySubscriptionBus()
        self.tools = list(TOOLS)
        self.prompts = list(PROMPTS)
        self.tasks: dict[str, Task] = {}
        self.task_group: anyio.abc.TaskGroup | None = None
        self.log_levels: dict[int, str] = {}
        self.subscriptions: dict[int, set[str]] = {}
        hint = CacheHint(ttl_ms=0, scope="private")
        self.server = _FixtureServer(
            "fednode-conformance-fixture",
            version="1.0.0",
            instructions="Conformance suite fixture for fednode's tests.",
            lifespan=self.lifespan,
            cache_hints={"tools/list": hint, "prompts/list": hint, "resources/list": hint,
                         "resources/templates/list": hint, "resources/read": hint},
            get_tool_input_schema=self.input_schema,
            on_list_tools=self.list_tools,
            on_call_tool=self.call_tool,
            on_list_prompts=self.list_prompts,
            on_get_prompt=self.get_prompt,
            on_list_resources=self.list_resources,
            on_list_resource_templates=self.list_resource_templates,
            on_read_resource=self.read_resource,
            on_subscribe_resource=self.subscribe,
            on_unsubscribe_resource=self.unsubscribe,
            on_subscriptions_listen=ListenHandler(self.bus),
            on_completion=self.complete,
            on_set_logging_level=self.set_level,
        )
        self.server.extensions = {TASKS_EXTENSION: {}}
        for method in ("tasks/get", "tasks/update", "tasks/cancel"):
            self.server.add_request_handler(method, _TaskParams, self.task_method)

    @asynccontextmanager
    async def lifespan(self, server: Server[Any]) -> AsyncIterator[dict[str, Any]]:
        async with anyio.create_task_group() as group:
            self.task_group = group
            yield {}
            group.cancel_scope.cancel()

    # -- helpers --------------------------------------------------------------------------------

    @staticmethod
    def modern(ctx: Ctx) -> bool:
        return ctx.protocol_version in MODERN_PROTOCOL_VERSIONS

    @staticmethod
    def capabilities(ctx: Ctx) -> dict[str, Any]:
        caps = ctx.session.client_capabilities
        return caps.model_dump(by_alias=True, mode="json", exclude_none=True) if caps is not None else {}

    def has_tasks(self, ctx: Ctx) -> bool:
        extensions = self.capabilities(ctx).get("extensions")
        return self.modern(ctx) and isinstance(extensions, dict) and TASKS_EXTENSION in extensions

    @staticmethod
    def connection_key(ctx: Ctx) -> int:
        return id(getattr(ctx.session, "_connection", ctx.session))

    def seal(self, state: dict[str, Any]) -> str:
        payload = base64.urlsafe_b64encode(json.dumps(state, sort_keys=True).encode()).decode()
        tag = hmac.new(self.key, payload.encode(), hashlib.sha256).hexdigest()
        return f"{payload}.{tag}"

    def unseal(self, token: object, tool: str) -> dict[str, Any] | None:
        if token is None:
            return None
        if isinstance(token, str) and "." in token:
            payload, _, tag = token.rpartition(".")
            expected = hmac.new(self.key, payload.encode(), hashlib.sha256).hexdigest()
            if hmac.compare_digest(tag, expected):
                state = json.loads(base64.urlsafe_b64decode(payload.encode()))
                if isinstance(state, dict) and state.get("tool") == tool:
                    return state
        raise MCPError(types.INVALID_PARAMS, "Invalid requestState: integrity check failed")

    def input_responses(self, ctx: Ctx) -> dict[str, Any]:
        raw = (ctx.params or {}).get("inputResponses")
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise MCPError(types.INVALID_PARAMS, "inputResponses must be an object")
        return raw

    async def gather(self, ctx: Ctx, requests: dict[str, dict[str, Any]],
                     state: dict[str, Any] | None = None) -> dict[str, Any]:
        """The client's answers to ``requests`` (keyed like them).

        A 2026-07-28 client is asked by raising :class:`_InputRequired` for what its retry did not
        answer yet (answers to other keys are ignored); a legacy client is asked over the request's
        back channel. The client must have declared each capability asked for (-32021 otherwise).
        """
        declared = self.capabilities(ctx)
        for request in requests.values():
            capability = _INPUT_KINDS[request["method"]][0]
            if capability not in declared:
                raise MCPError(MISSING_CAPABILITY, f"This tool needs the client's {capability} capability",
                               {"requiredCapabilities": {capability: {}}})
        if not self.modern(ctx):
            return {key: await self.ask_back(ctx, request) for key, request in requests.items()}
        given = self.input_responses(ctx)
        answers: dict[str, Any] = {}
        for key, request in requests.items():
            if key not in given:
                continue
            result_type = _INPUT_KINDS[request["method"]][1]
            try:
                answers[key] = result_type.model_validate(given[key], by_name=False).model_dump(
                    by_alias=True, mode="json", exclude_none=True)
            except ValueError:
                raise MCPError(types.INVALID_PARAMS, f"inputResponses[{key!r}] is not a valid answer") from None
        missing = {key: request for key, request in requests.items() if key not in answers}
        if missing:
            raise _InputRequired(missing, state)
        return answers

    async def ask_back(self, ctx: Ctx, request: dict[str, Any]) -> dict[str, Any]:
        request_types: dict[str, type[types.Request[Any, Any]]] = {
            "elicitation/create": types.ElicitRequest, "sampling/createMessage": types.CreateMessageRequest,
            "roots/list": types.ListRootsRequest}
        model: Any = request_types[request["method"]].model_validate(request, by_name=False)
        result_type = _INPUT_KINDS[request["method"]][1]
        result = await ctx.session.send_request(model, result_type,
                                                metadata=ServerMessageMetadata(related_request_id=ctx.request_id))
        return result.model_dump(by_alias=True, mode="json", exclude_none=True)

    def input_required(self, exc: _InputRequired) -> types.InputRequiredResult:
        state = self.seal(exc.state) if exc.state is not None else None
        return types.InputRequiredResult.model_validate(
            {"resultType": "input_required", "inputRequests": exc.requests,
             **({"requestState": state} if state is not None else {})}, by_name=False)

    async def log(self, ctx: Ctx, level: types.LoggingLevel, message: str) -> None:
        if not self.modern(ctx):
            order = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"]
            wanted = self.log_levels.get(self.connection_key(ctx), "debug")
            if order.index(level) < order.index(wanted):
                return
        # On 2026-07-28 the SDK sends only what this request's _meta logLevel opted into.
        await ctx.session.send_log_message(level, message, logger="conformance",
                                           related_request_id=ctx.request_id)

    # -- tools ----------------------------------------------------------------------------------

    def input_schema(self, name: str) -> Mapping[str, Any] | None:
        tool = next((tool for tool in self.tools if tool.name == name), None)
        return tool.input_schema if tool is not None else None

    async def list_tools(self, ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=self.tools)

    async def call_tool(self, ctx: Ctx, params: types.CallToolRequestParams) -> Any:
        try:
            return await self.run_tool(ctx, params.name, params.arguments or {})
        except _InputRequired as exc:
            return self.input_required(exc)

    async def run_tool(self, ctx: Ctx, name: str, args: dict[str, Any]) -> Any:
        match name:
            case "test_simple_text":
                return types.CallToolResult(content=_text("This is a simple text response for testing."))
            case "test_image_content":
                return types.CallToolResult(content=[types.ImageContent(type="image", data=PNG,
                                                                        mime_type="image/png")])
            case "test_audio_content":
                return types.CallToolResult(content=[types.AudioContent(type="audio", data=WAV,
                                                                        mime_type="audio/wav")])
            case "test_embedded_resource":
                return types.CallToolResult(content=[types.EmbeddedResource(
                    type="resource", resource=types.TextResourceContents(
                        uri="test://embedded-resource", mime_type="text/plain",
                        text="This is an embedded resource content."))])
            case "test_multiple_content_types":
                return types.CallToolResult(content=[
                    types.TextContent(type="text", text="Multiple content types test:"),
                    types.ImageContent(type="image", data=PNG, mime_type="image/png"),
                    types.EmbeddedResource(type="resource", resource=types.TextResourceContents(
                        uri="test://mixed-content-resource", mime_type="application/json",
                        text=json.dumps({"test": "data", "value": 123})))])
            case "test_tool_with_logging" | "test_logging_tool":
                await self.log(ctx, "info", "Tool execution started")
                await anyio.sleep(0.05)
                await self.log(ctx, "info", "Tool processing data")
                await anyio.sleep(0.05)
                await self.log(ctx, "info", "Tool execution completed")
                return types.CallToolResult(content=_text("Tool with logging executed successfully"))
            case "test_error_handling":
                return types.CallToolResult(content=_text("This tool intentionally returns an error for testing"),
                                            is_error=True)
            case "test_tool_with_progress":
                for step, progress in enumerate((0, 50, 100)):
                    if step:
                        await anyio.sleep(0.05)
                    await ctx.session.report_progress(progress, 100, f"{progress}%")
                return types.CallToolResult(content=_text("Tool with progress executed successfully"))
            case "test_sampling":
                answer = (await self.gather(ctx, {"answer": _sample(str(args.get("prompt", "")))}))["answer"]
                text = answer.get("content", {}).get("text", "") if isinstance(answer.get("content"), dict) else ""
                return types.CallToolResult(content=_text(f"LLM response: {text}"))
            case "test_elicitation":
                answer = (await self.gather(ctx, {"answer": _elicit(str(args.get("message", "")), {
                    "username": {"type": "string", "description": "User's response"},
                    "email": {"type": "string", "description": "User's email address"}},
                    ["username", "email"])}))["answer"]
                return types.CallToolResult(content=_text(
                    f"User response: action={answer.get('action')}, content={json.dumps(answer.get('content'))}"))
            case "test_elicitation_sep1034_defaults" | "test_elicitation_sep1330_enums":
                schema = SEP1034_SCHEMA if name.endswith("defaults") else SEP1330_SCHEMA
                request = {"method": "elicitation/create",
                           "params": {"message": "Please review and update the form fields",
                                      "requestedSchema": schema}}
                answer = (await self.gather(ctx, {"answer": request}))["answer"]
                return types.CallToolResult(content=_text(
                    f"Elicitation completed: action={answer.get('action')}, "
                    f"content={json.dumps(answer.get('content'))}"))
            case "test_reconnection":
                if ctx.close_sse_stream is not None:
                    await anyio.sleep(0.1)  # let the priming event (id, retry) reach the client first
                    await ctx.close_sse_stream()
                await anyio.sleep(0.3)
                return types.CallToolResult(content=_text("Reconnection test completed"))
            case "json_schema_2020_12_tool":
                return types.CallToolResult(content=_text(f"Received: {json.dumps(args, sort_keys=True)}"))
            case "test_headers":
                return types.CallToolResult(content=_text(f"region={args.get('region')}"))
            case "test_missing_capability":
                answer = (await self.gather(ctx, {"answer": _sample("Say something")}))["answer"]
                return types.CallToolResult(content=_text(f"Sampled: {json.dumps(answer.get('content'))}"))
            case "test_streaming_elicitation":
                await ctx.session.report_progress(0, 1, "asking")
                answer = (await self.gather(ctx, {"answer": _elicit("What is your name?", {
                    "name": {"type": "string"}}, ["name"])}))["answer"]
                return types.CallToolResult(content=_text(f"Got: {json.dumps(answer.get('content'))}"))
            case "test_trigger_tool_change":
                # A real change every time (added, then removed, ...), so a client that compares
                # lists (a proxy's catalog) sees one too.
                if DYNAMIC_TOOL in self.tools:
                    self.tools.remove(DYNAMIC_TOOL)
                else:
                    self.tools.append(DYNAMIC_TOOL)
                if self.modern(ctx):
                    await self.bus.publish(ToolsListChanged())
                else:
                    await ctx.session.send_tool_list_changed()
                return types.CallToolResult(content=_text("Tool list changed"))
            case "test_trigger_prompt_change":
                if DYNAMIC_PROMPT in self.prompts:
                    self.prompts.remove(DYNAMIC_PROMPT)
                else:
                    self.prompts.append(DYNAMIC_PROMPT)
                if self.modern(ctx):
                    await self.bus.publish(PromptsListChanged())
                else:
                    await ctx.session.send_prompt_list_changed()
                return types.CallToolResult(content=_text("Prompt list changed"))
            case "test_input_required_result_elicitation":
                answer = (await self.gather(ctx, {"user_name": _elicit("What is your name?", {
                    "name": {"type": "string"}}, ["name"])}))["user_name"]
                return types.CallToolResult(content=_text(f"Hello, {(answer.get('content') or {}).get('name')}!"))
            case "test_input_required_result_sampling":
                answer = (await self.gather(ctx, {"capital_question": _sample("What is the capital of France?")}))
                content = answer["capital_question"].get("content")
                return types.CallToolResult(content=_text(f"The model said: {json.dumps(content)}"))
            case "test_input_required_result_list_roots":
                roots = (await self.gather(ctx, {"client_roots": ROOTS_REQUEST}))["client_roots"].get("roots", [])
                return types.CallToolResult(content=_text(
                    "Roots: " + ", ".join(str(root.get("uri")) for root in roots)))
            case "test_input_required_result_request_state" | "test_input_required_result_tampered_state":
                state = self.unseal((ctx.params or {}).get("requestState"), name)
                await self.gather(ctx, {"confirm": _elicit("Please confirm", {"ok": {"type": "boolean"}}, ["ok"])},
                                  state={"tool": name, "round": 1, "nonce": secrets.token_hex(8)})
                if state is None and self.modern(ctx):
                    raise MCPError(types.INVALID_PARAMS, "requestState is required with inputResponses")
                return types.CallToolResult(content=_text("Confirmed: state-ok"))
            case "test_input_required_result_multiple_inputs":
                state = self.unseal((ctx.params or {}).get("requestState"), name)
                answers = await self.gather(ctx, {
                    "user_name": _elicit("What is your name?", {"name": {"type": "string"}}, ["name"]),
                    "greeting": _sample("Generate a greeting", 50),
                    "client_roots": ROOTS_REQUEST,
                }, state={"tool": name, "round": 1})
                del state
                return types.CallToolResult(content=_text(
                    f"Name: {(answers['user_name'].get('content') or {}).get('name')}; "
                    f"greeting: {json.dumps(answers['greeting'].get('content'))}; "
                    f"roots: {len(answers['client_roots'].get('roots', []))}"))
            case "test_input_required_result_multi_round":
                return await self.multi_round(ctx, name)
            case "test_input_required_result_capabilities":
                declared = self.capabilities(ctx)
                wanted = {"elicitation": ("user_name", _elicit("What is your name?", {"name": {"type": "string"}})),
                          "sampling": ("greeting", _sample("Generate a greeting", 50)),
                          "roots": ("client_roots", ROOTS_REQUEST)}
                requests = dict(request for capability, request in wanted.items() if capability in declared)
                if not requests:
                    raise MCPError(MISSING_CAPABILITY, "This tool needs elicitation, sampling or roots",
                                   {"requiredCapabilities": {"sampling": {}}})
                answers = await self.gather(ctx, requests)
                return types.CallToolResult(content=_text(f"Answered: {', '.join(sorted(answers))}"))
            case "greet":
                return types.CallToolResult(content=_text(f"Hello, {args.get('name', 'World')}!"))
            case "slow_compute" | "failing_job" | "protocol_error_job" | "confirm_delete" | "multi_input":
                return await self.maybe_task(ctx, name, args)
            case "test_tool_with_task":
                if not self.has_tasks(ctx):
                    raise self.task_required()
                answer = (await self.gather(ctx, {"user_name": _elicit("What is your name?", {
                    "name": {"type": "string"}}, ["name"])}))["user_name"]
                who = " ".join(str(value) for value in (answer.get("content") or {}).values())
                return self.start_task(lambda task: self.finish_greeting(task, who))
            case "test_dynamic_tool" if DYNAMIC_TOOL in self.tools:
                return types.CallToolResult(content=_text("dynamic"))
        raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {name}", {"tool": name})

    async def multi_round(self, ctx: Ctx, name: str) -> types.CallToolResult:
        step1 = {"step1": _elicit("Step 1: What is your name?", {"name": {"type": "string"}}, ["name"])}
        step2 = {"step2": _elicit("Step 2: What is your favorite color?", {"color": {"type": "string"}}, ["color"])}
        if not self.modern(ctx):  # a legacy client is simply asked twice
            who = ((await self.gather(ctx, step1))["step1"].get("content") or {}).get("name")
            color = ((await self.gather(ctx, step2))["step2"].get("content") or {}).get("color")
            return types.CallToolResult(content=_text(f"{who} likes {color}"))
        state = self.unseal((ctx.params or {}).get("requestState"), name)
        if state is None or state.get("round") == 1:
            first = await self.gather(ctx, step1, state={"tool": name, "round": 1})
            who = (first["step1"].get("content") or {}).get("name")
            raise _InputRequired(step2, {"tool": name, "round": 2, "name": who})
        color = ((await self.gather(ctx, step2, state=state))["step2"].get("content") or {}).get("color")
        return types.CallToolResult(content=_text(f"{state.get('name')} likes {color}"))

    # -- tasks ------------------------------------------------------------------------------------

    @staticmethod
    def task_required() -> MCPError:
        return MCPError(MISSING_CAPABILITY, f"This tool runs only as a task: declare {TASKS_EXTENSION}",
                        {"requiredCapabilities": {"extensions": {TASKS_EXTENSION: {}}}})

    async def maybe_task(self, ctx: Ctx, name: str, args: dict[str, Any]) -> Any:
        if name == "failing_job" and not self.has_tasks(ctx):
            raise self.task_required()
        if not self.has_tasks(ctx):  # task support optional: run synchronously
            if name == "slow_compute":
                await anyio.sleep(float(args.get("seconds", 0)))
                return types.CallToolResult(content=_text(f"computed {args.get('label', '')}".strip()))
            if name == "protocol_error_job":
                raise MCPError(types.INTERNAL_ERROR, "protocol_error_job failed")
            if name == "confirm_delete":
                answer = (await self.gather(ctx, {"confirm": _elicit(f"Delete {args.get('filename')}?", {
                    "confirm": {"type": "boolean"}}, ["confirm"])}))["confirm"]
                return types.CallToolResult(content=_text(f"confirm_delete: {answer.get('action')}"))
            if name == "multi_input":
                answers = await self.gather(ctx, {
                    "first": _elicit("First name?", {"name": {"type": "string"}}),
                    "second": _elicit("Confirm?", {"confirm": {"type": "boolean"}})})
                return types.CallToolResult(content=_text(f"multi_input: {len(answers)} answers"))
        return self.start_task(lambda task: self.task_body(task, name, args))

    def start_task(self, body: Any) -> dict[str, Any]:
        assert self.task_group is not None
        task = Task(id=f"task-{uuid.uuid4().hex}")
        self.tasks[task.id] = task
        self.task_group.start_soon(self.run_task, task, body)
        return {"resultType": "task", **task.wire()}

    async def run_task(self, task: Task, body: Any) -> None:
        with task.scope:
            try:
                task.result = await body(task)
                task.set("completed")
            except MCPError as exc:
                task.error = {"code": exc.code, "message": exc.message,
                              **({"data": exc.data} if exc.data is not None else {})}
                task.set("failed")
            except Exception as exc:
                task.error = {"code": types.INTERNAL_ERROR, "message": f"{type(exc).__name__}: {exc}"}
                task.set("failed")
        if task.scope.cancel_called and task.status not in ("completed", "failed"):
            task.set("cancelled")

    async def task_body(self, task: Task, name: str, args: dict[str, Any]) -> dict[str, Any]:
        if name == "slow_compute":
            await anyio.sleep(float(args.get("seconds", 0)))
            return {"content": [{"type": "text", "text": f"computed {args.get('label', '')}".strip()}]}
        if name == "failing_job":
            await anyio.sleep(0.5)
            return {"content": [{"type": "text", "text": "failing_job failed"}], "isError": True}
        if name == "protocol_error_job":
            await anyio.sleep(0.1)
            raise MCPError(types.INTERNAL_ERROR, "protocol_error_job crashed")
        if name == "confirm_delete":
            answers = await task.ask({"confirm": _elicit(f"Delete {args.get('filename')}?", {
                "confirm": {"type": "boolean"}}, ["confirm"])})
            return {"content": [{"type": "text", "text": f"deleted {args.get('filename')}: "
                                                         f"{answers['confirm'].get('action')}"}]}
        if name == "multi_input":
            answers = await task.ask({
                "first": _elicit("What is your name?", {"name": {"type": "string"}}),
                "second": _elicit("Please confirm", {"confirm": {"type": "boolean"}})})
            return {"content": [{"type": "text", "text": f"multi_input: {sorted(answers)}"}]}
        raise MCPError(types.INVALID_PARAMS, f"Unknown task tool: {name}")

    @staticmethod
    async def finish_greeting(task: Task, who: str) -> dict[str, Any]:
        await anyio.sleep(0.2)
        return {"content": [{"type": "text", "text": f"Hello, {who}! (from a task)"}]}

    async def task_method(self, ctx: Ctx, params: _TaskParams) -> dict[str, Any]:
        if not self.has_tasks(ctx):
            raise MCPError(MISSING_CAPABILITY, f"{ctx.method} needs the {TASKS_EXTENSION} extension",
                           {"requiredCapabilities": {"extensions": {TASKS_EXTENSION: {}}}})
        raw = dict(ctx.params or {})
        task_id = raw.get("taskId")
        request = ctx.request
        headers = getattr(request, "headers", None)
        if headers is not None and headers.get("mcp-name", "").strip() != (task_id or ""):
            raise MCPError(HEADER_MISMATCH, "Mcp-Name header does not match params.taskId")
        task = self.tasks.get(task_id) if isinstance(task_id, str) else None
        if task is None:
            raise MCPError(types.INVALID_PARAMS, f"Unknown task: {task_id}", {"taskId": task_id})
        if ctx.method == "tasks/get":
            return {"resultType": "complete", **task.wire()}
        if ctx.method == "tasks/cancel":
            if task.status in ("working", "input_required"):
                task.scope.cancel()
                task.set("cancelled")
            return {"resultType": "complete"}
        responses = raw.get("inputResponses")
        if not isinstance(responses, dict):
            raise MCPError(types.INVALID_PARAMS, "inputResponses must be an object")
        for key, answer in responses.items():
            if key in task.pending and not isinstance(answer, dict):
                raise MCPError(types.INVALID_PARAMS, f"inputResponses[{key!r}] must be an object")
            if key in task.pending:  # answers to keys never asked for are ignored
                task.pending.pop(key)
                task.answers[key] = answer
        task.answered.set()
        return {"resultType": "complete"}

    # -- prompts --------------------------------------------------------------------------------

    async def list_prompts(self, ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListPromptsResult:
        return types.ListPromptsResult(prompts=self.prompts)

    async def get_prompt(self, ctx: Ctx, params: types.GetPromptRequestParams) -> Any:
        args = params.arguments or {}
        user: Literal["user"] = "user"
        match params.name:
            case "test_simple_prompt":
                messages = [types.PromptMessage(role=user, content=types.TextContent(
                    type="text", text="This is a simple prompt for testing."))]
            case "test_prompt_with_arguments":
                messages = [types.PromptMessage(role=user, content=types.TextContent(
                    type="text", text=f"Prompt with arguments: arg1='{args.get('arg1')}', arg2='{args.get('arg2')}'"))]
            case "test_prompt_with_embedded_resource":
                uri = args.get("resourceUri", "test://example-resource")
                messages = [
                    types.PromptMessage(role=user, content=types.EmbeddedResource(
                        type="resource", resource=types.TextResourceContents(
                            uri=uri, mime_type="text/plain", text="Embedded resource content for testing."))),
                    types.PromptMessage(role=user, content=types.TextContent(
                        type="text", text="Please process the embedded resource above."))]
            case "test_prompt_with_image":
                messages = [
                    types.PromptMessage(role=user, content=types.ImageContent(type="image", data=PNG,
                                                                              mime_type="image/png")),
                    types.PromptMessage(role=user, content=types.TextContent(
                        type="text", text="Please analyze the image above."))]
            case "test_input_required_result_prompt":
                try:
                    answer = (await self.gather(ctx, {"user_context": _elicit(
                        "What context should the prompt use?", {"context": {"type": "string"}}, ["context"])}))
                except _InputRequired as exc:
                    return self.input_required(exc)
                context = (answer["user_context"].get("content") or {}).get("context")
                messages = [types.PromptMessage(role=user, content=types.TextContent(
                    type="text", text=f"Use this context: {context}"))]
            case "test_dynamic_prompt" if DYNAMIC_PROMPT in self.prompts:
                messages = [types.PromptMessage(role=user, content=types.TextContent(type="text", text="dynamic"))]
            case _:
                raise MCPError(types.INVALID_PARAMS, f"Unknown prompt: {params.name}", {"name": params.name})
        return types.GetPromptResult(description=params.name, messages=messages)

    async def complete(self, ctx: Ctx, params: types.CompleteRequestParams) -> types.CompleteResult:
        values: list[str] = []
        if isinstance(params.ref, types.PromptReference):
            prefix = params.argument.value
            values = [value for value in COMPLETIONS.get(params.argument.name, []) if value.startswith(prefix)]
        return types.CompleteResult(completion=types.Completion(values=values, total=len(values), has_more=False))

    # -- resources ------------------------------------------------------------------------------

    async def list_resources(self, ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
        return types.ListResourcesResult(resources=RESOURCES)

    async def list_resource_templates(self, ctx: Ctx,
                                      params: types.PaginatedRequestParams | None) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(resource_templates=TEMPLATES)

    async def read_resource(self, ctx: Ctx, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        uri = str(params.uri)
        contents: types.TextResourceContents | types.BlobResourceContents
        if uri == "test://static-text":
            contents = types.TextResourceContents(uri=uri, mime_type="text/plain",
                                                  text="This is the content of the static text resource.")
        elif uri == "test://static-binary":
            contents = types.BlobResourceContents(uri=uri, mime_type="image/png", blob=PNG)
        elif uri == "test://watched-resource":
            contents = types.TextResourceContents(uri=uri, mime_type="text/plain", text="Watched resource content.")
        elif uri.startswith("test://template/") and uri.endswith("/data") and len(uri) > len("test://template//data"):
            item = uri.removeprefix("test://template/").removesuffix("/data")
            contents = types.TextResourceContents(uri=uri, mime_type="application/json", text=json.dumps(
                {"id": item, "templateTest": True, "data": f"Data for ID: {item}"}, separators=(",", ":")))
        else:
            raise MCPError(types.INVALID_PARAMS, "Resource not found", {"uri": uri})
        return types.ReadResourceResult(contents=[contents])

    async def subscribe(self, ctx: Ctx, params: types.SubscribeRequestParams) -> types.EmptyResult:
        self.subscriptions.setdefault(self.connection_key(ctx), set()).add(str(params.uri))
        return types.EmptyResult()

    async def unsubscribe(self, ctx: Ctx, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        self.subscriptions.get(self.connection_key(ctx), set()).discard(str(params.uri))
        return types.EmptyResult()

    async def set_level(self, ctx: Ctx, params: types.SetLevelRequestParams) -> types.EmptyResult:
        self.log_levels[self.connection_key(ctx)] = params.level
        return types.EmptyResult()


async def serve_stdio(fixture: Fixture) -> None:
    async with stdio_server() as (read, write):
        await fixture.server.run(read, write, fixture.server.create_initialization_options())


async def serve_http(fixture: Fixture, port: int) -> None:
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.errorlog = None
    app = fixture.server.streamable_http_app(host="127.0.0.1", event_store=MemoryEventStore(), retry_interval=500)
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, app, config)
        print(f"url {binds[0]}/mcp", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", type=int, default=None, metavar="PORT",
                        help="serve Streamable HTTP on 127.0.0.1:PORT (0: any free port) instead of stdio")
    args = parser.parse_args()
    fixture = Fixture()
    try:
        if args.http is not None:
            trio.run(serve_http, fixture, args.http)
        else:
            trio.run(serve_stdio, fixture)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
