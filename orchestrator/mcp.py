"""MCP tools in a response: remote servers the request names, and the operator's own.

A response's :class:`McpToolset` is opened when its run starts. For each ``mcp`` tool of the
request it lists the server's tools into an ``mcp_list_tools`` item, unless the conversation
already holds one for that ``server_label`` (a later turn does not list again, as OpenAI's API
does not); ``allowed_tools`` filters the list. The operator's servers (``--mcp-config``) add
their tools without a listing item. Every tool becomes a built-in tool (:class:`McpTool`):
the model sees its input schema as a function's parameters, so its arguments are generated
under the call grammar and are valid by construction (a schema the grammar cannot enforce
falls back to any JSON object).

While the model writes a call, the step writes an ``mcp_call`` item (or, when the server's
``require_approval`` asks for it, an ``mcp_approval_request`` that ends the response; see
:class:`~.builtin.McpRoute`); running the call finishes that item with the output or the
error, which the model reads either way.

A remote server is connected on first use and stays connected for the rest of the response,
inside the toolset's task group, so cancelling the response cancels a call in flight.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup, TaskStatus

from exloop.engine.protocol import ToolSpec
from exloop.tools import mcp_client as client
from exloop.tools.mcp_client import (
    HttpTarget,
    McpConnection,
    McpLimits,
    McpResult,
    McpToolInfo,
    McpUnavailable,
)
from exloop.tools.mcp_servers import ConfiguredServers

from .builtin import BuiltinCall, McpRoute
from .items import (
    Item,
    McpApprovalRequest,
    McpApprovalResponse,
    McpCallError,
    McpHttpError,
    McpListTools,
    McpListToolsTool,
    McpProtocolError,
    McpToolExecutionError,
)
from .output import OutputWriter
from .spec import McpServerSpec

#: Characters of a tool description shown to the model.
MAX_DESCRIPTION_CHARS = 2000
#: Bytes of JSON an input schema may take to be enforced; a larger one becomes any object.
MAX_SCHEMA_BYTES = 32_000


@dataclass(frozen=True, slots=True)
class McpSettings:
    """How responses reach MCP servers (the CLI's flags)."""

    limits: McpLimits = field(default_factory=McpLimits)
    #: ``--fetch-allow-private``: remote servers may be on private and loopback addresses.
    allow_private: bool = False
    #: The operator's servers (``--mcp-config``), connected for the server's lifetime.
    configured: ConfiguredServers | None = None


class _Server(Protocol):
    @property
    def label(self) -> str: ...

    async def call(self, name: str, arguments: Mapping[str, Any]) -> McpResult: ...


class McpTool:
    """One MCP tool as a built-in tool of a response."""

    def __init__(
        self, server: _Server, info: McpToolInfo, name: str, *, approval: bool, strict: bool
    ) -> None:
        self._server = server
        self._info = info
        self._name = name
        self._strict = strict
        self.route = McpRoute(server.label, info.name, approval)

    @property
    def spec(self) -> ToolSpec:
        schema = self._info.input_schema if self._strict else {"type": "object"}
        description = (self._info.description or "")[:MAX_DESCRIPTION_CHARS] or None
        return ToolSpec(self._name, description, schema, self._strict)

    async def run(self, call: BuiltinCall, writer: OutputWriter) -> str:
        try:
            result = await self._server.call(self._info.name, call.arguments)
        except anyio.get_cancelled_exc_class():
            writer.finish_mcp_call(call.call_id, status="incomplete")
            raise
        if result.error is not None:
            writer.finish_mcp_call(call.call_id, error=_error(result.error), status="failed")
        else:
            writer.finish_mcp_call(call.call_id, output=result.output)
        return result.text


class _Remote:
    """A server the request names: connected on first use, for the rest of the response."""

    def __init__(self, spec: McpServerSpec, settings: McpSettings, tg: TaskGroup) -> None:
        self.label = spec.label
        self._target = HttpTarget(spec.url, spec.headers)
        self._settings = settings
        self._tg = tg
        self._lock = anyio.Lock()
        self._connection: McpConnection | McpUnavailable | None = None
        self._closing = anyio.Event()

    async def connection(self) -> McpConnection:
        async with self._lock:
            if self._connection is None:
                self._connection = await self._tg.start(self._hold)
        if isinstance(self._connection, McpUnavailable):
            raise self._connection
        return self._connection

    async def _hold(
        self, *, task_status: TaskStatus[McpConnection | McpUnavailable] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Own the connection (its task groups live in this task) until the toolset closes."""
        settings = self._settings
        try:
            async with client.connect(
                self._target, settings.limits, guarded=not settings.allow_private
            ) as connection:
                task_status.started(connection)
                await self._closing.wait()
        except McpUnavailable as exc:
            task_status.started(exc)

    def close(self) -> None:
        self._closing.set()

    async def list_tools(self) -> list[McpToolInfo]:
        return await (await self.connection()).list_tools()

    async def call(self, name: str, arguments: Mapping[str, Any]) -> McpResult:
        try:
            connection = await self.connection()
        except McpUnavailable as exc:
            return McpResult(error=client.ProtocolError(-32000, str(exc)))
        return await connection.call_tool(name, arguments)


@dataclass(frozen=True, slots=True)
class _Configured:
    label: str
    servers: ConfiguredServers

    async def call(self, name: str, arguments: Mapping[str, Any]) -> McpResult:
        return await self.servers.call(self.label, name, arguments)


class McpToolset:
    """The MCP servers of one response. Use as an async context manager around the run."""

    def __init__(
        self,
        settings: McpSettings | None,
        servers: Sequence[McpServerSpec],
        enforceable: Callable[[ToolSpec], Awaitable[bool]],
    ) -> None:
        self._settings = settings or McpSettings()
        self._specs = tuple(servers)
        self._enforceable = enforceable
        self._tg: TaskGroup | None = None
        self._remotes: list[_Remote] = []

    async def __aenter__(self) -> McpToolset:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None
        for remote in self._remotes:
            remote.close()
        try:
            return await self._tg.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            # The run's own error (an engine failure...) leaves as itself, not in a group:
            # the connection tasks end quietly.
            if exc is not None and list(group.exceptions) == [exc]:
                raise exc from None
            raise

    async def open(
        self, writer: OutputWriter, history: Sequence[Item], taken: set[str]
    ) -> list[McpTool]:
        """The tools of every server, listing those the conversation has not listed yet."""
        assert self._tg is not None
        listed = _listings(history)
        pending: list[tuple[_Remote, int]] = []
        found: dict[str, list[McpToolInfo]] = {}
        for spec in self._specs:
            remote = _Remote(spec, self._settings, self._tg)
            self._remotes.append(remote)
            if spec.label in listed:
                found[spec.label] = [_info(tool) for tool in listed[spec.label].tools]
            else:
                pending.append((remote, writer.open_mcp_list_tools(spec.label)))

        async def list_one(remote: _Remote, index: int) -> None:
            spec = next(s for s in self._specs if s.label == remote.label)
            try:
                infos = [i for i in await remote.list_tools() if _allowed(spec, i)]
            except McpUnavailable as exc:
                writer.close_mcp_list_tools(index, [], str(exc))
                return
            found[remote.label] = infos
            writer.close_mcp_list_tools(index, [_listed(i) for i in infos])

        async with anyio.create_task_group() as tg:
            for remote, index in pending:
                tg.start_soon(list_one, remote, index)

        candidates: list[tuple[_Server, McpToolInfo, bool]] = []
        for spec, remote in zip(self._specs, self._remotes, strict=True):
            for info in found.get(spec.label, []):
                if _allowed(spec, info):
                    approval = spec.approval.needed(info.name, info.read_only)
                    candidates.append((remote, info, approval))
        configured = self._settings.configured
        if configured is not None:
            for label, infos in configured.tools().items():
                server: _Server = _Configured(label, configured)
                candidates.extend((server, info, False) for info in infos)
        return await self._tools(candidates, taken)

    async def _tools(
        self, candidates: list[tuple[_Server, McpToolInfo, bool]], taken: set[str]
    ) -> list[McpTool]:
        named: list[tuple[_Server, McpToolInfo, bool, str]] = []
        for server, info, approval in candidates:
            name = info.name if info.name not in taken else f"{server.label}_{info.name}"[:64]
            if name in taken:
                continue  # a second server with the same label-and-name: unreachable anyway
            taken.add(name)
            named.append((server, info, approval, name))

        if not named:
            return []
        # The engine compiles each grammar off the event loop, within its budget.
        strict = [
            _enforceable_size(info) and await self._enforceable(_strict_spec(name, info))
            for _, info, _, name in named
        ]
        return [
            McpTool(server, info, name, approval=approval, strict=ok)
            for (server, info, approval, name), ok in zip(named, strict, strict=True)
        ]


def approval_requests(items: Sequence[Item]) -> dict[str, McpApprovalRequest]:
    """The approval requests among ``items``, by id."""
    return {item.id: item for item in items if isinstance(item, McpApprovalRequest)}


def approved(
    history: Sequence[Item], inputs: Sequence[Item]
) -> list[tuple[McpApprovalRequest, McpApprovalResponse]]:
    """The calls this response's input approves, each with its request (checked to exist
    when the response was created)."""
    requests = approval_requests(history)
    return [
        (requests[item.approval_request_id], item)
        for item in inputs
        if isinstance(item, McpApprovalResponse)
        and item.approve
        and item.approval_request_id in requests
    ]


def _listings(history: Sequence[Item]) -> dict[str, McpListTools]:
    """The latest successful listing of each server in the conversation."""
    return {
        item.server_label: item
        for item in history
        if isinstance(item, McpListTools) and item.error is None
    }


def _allowed(spec: McpServerSpec, info: McpToolInfo) -> bool:
    return spec.allowed is None or spec.allowed.matches(info.name, info.read_only)


def _info(tool: McpListToolsTool) -> McpToolInfo:
    return McpToolInfo(tool.name, tool.description, dict(tool.input_schema), tool.annotations)


def _listed(info: McpToolInfo) -> McpListToolsTool:
    return McpListToolsTool(info.name, info.input_schema, info.description, info.annotations)


def _strict_spec(name: str, info: McpToolInfo) -> ToolSpec:
    return ToolSpec(name, None, info.input_schema, True)


def _enforceable_size(info: McpToolInfo) -> bool:
    schema = info.input_schema
    if schema.get("type", "object") != "object":
        return False
    return len(json.dumps(schema)) <= MAX_SCHEMA_BYTES


def _error(error: client.McpCallError) -> McpCallError:
    match error:
        case client.ProtocolError(code=code, message=message):
            return McpProtocolError(code, message)
        case client.ExecutionError(content=content):
            return McpToolExecutionError(content)
        case client.HttpError(code=code, message=message):
            return McpHttpError(code, message)
