"""Connections to MCP servers through the official ``mcp`` SDK: list tools, call one.

What the SDK returns (pydantic models, exception groups, JSON-RPC error codes) is turned into
the small types here once, so nothing above this module sees the SDK:

* :func:`connect` opens a connection to an HTTP server (streamable HTTP, falling back to the
  older SSE transport for servers that only speak it) or to a stdio server (a subprocess), or
  raises :class:`McpUnavailable` with a message for the model.
* :meth:`McpConnection.list_tools` gives :class:`McpToolInfo`\\ s, at most ``max_tools``.
* :meth:`McpConnection.call_tool` never raises but for cancellation: a tool that fails, a
  protocol error, a timeout or a lost connection is an :class:`McpResult` with an error, and an
  output longer than ``max_output_chars`` is cut, saying so.

Every wait is bounded (:class:`McpLimits`); a cancelled call cancels its request, which the
SDK passes on to the server. Servers a request names are reached through
:class:`~.mcp_transport.GuardedTransport` (the SSRF rule); operator-configured ones are trusted.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, TypeAlias

import anyio
import httpx2
import mcp_types
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._stream_protocols import ReadStream, WriteStream
from mcp.shared.message import SessionMessage

from .errors import ToolError
from .mcp_transport import GuardedTransport

log = logging.getLogger("exloop.tools.mcp")


#: Seconds an HTTP read may wait beyond the call timeout.
READ_MARGIN = 30.0


@dataclass(frozen=True, slots=True)
class HttpTarget:
    """An MCP server at a URL. ``transport`` "auto" tries streamable HTTP, then SSE."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    transport: Literal["auto", "streamable-http", "sse"] = "auto"


@dataclass(frozen=True, slots=True)
class StdioTarget:
    """An MCP server the client starts as a subprocess and talks to over stdin/stdout."""

    command: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] | None = None
    cwd: str | None = None


McpTarget: TypeAlias = HttpTarget | StdioTarget


@dataclass(frozen=True, slots=True)
class McpLimits:
    """Bounds on one connection. Timeouts are in seconds."""

    #: Connecting and the protocol handshake (and each HTTP connect).
    connect_timeout: float = 10.0
    #: One ``tools/list`` or ``tools/call`` (and each HTTP read).
    call_timeout: float = 60.0
    #: Characters of a tool's output the model reads; the rest is cut.
    max_output_chars: int = 20_000
    #: Bytes one HTTP response from a server a request names may carry.
    max_response_bytes: int = 8_000_000
    #: Tools taken from one server's listing; the rest are ignored.
    max_tools: int = 128


@dataclass(frozen=True, slots=True)
class McpToolInfo:
    """A tool as the server lists it."""

    name: str
    description: str | None
    input_schema: dict[str, Any]
    #: MCP's ToolAnnotations as sent (``readOnlyHint``, ``destructiveHint``, ...).
    annotations: dict[str, Any] | None = None

    @property
    def read_only(self) -> bool:
        return bool(self.annotations and self.annotations.get("readOnlyHint") is True)


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """A JSON-RPC error (unknown tool, bad arguments, timeout, lost connection...)."""

    code: int
    message: str


@dataclass(frozen=True, slots=True)
class ExecutionError:
    """The tool ran and reported an error (``isError``); ``content`` is its content blocks."""

    content: list[dict[str, Any]]
    message: str


@dataclass(frozen=True, slots=True)
class HttpError:
    """The server answered a request with an HTTP error status."""

    code: int
    message: str


McpCallError: TypeAlias = ProtocolError | ExecutionError | HttpError


@dataclass(frozen=True, slots=True)
class McpResult:
    """A tool call's result: its output text, or an error."""

    output: str | None = None
    error: McpCallError | None = None

    @property
    def text(self) -> str:
        """What the model reads."""
        if self.error is not None:
            return f"Error: {self.error.message}"
        return self.output or ""


class McpUnavailable(ToolError):
    """The server could not be reached, refused the handshake, or could not list its tools."""


class McpConnection:
    """One open connection (use :func:`connect`). Calls may run concurrently."""

    def __init__(self, client: Client, limits: McpLimits, closed: anyio.Event) -> None:
        self._client = client
        self._limits = limits
        #: Set when the server's side of the connection ends (a stdio server exits...).
        self.closed = closed

    async def list_tools(self) -> list[McpToolInfo]:
        """The server's tools, following pagination up to ``max_tools``."""
        tools: list[McpToolInfo] = []
        cursor: str | None = None
        try:
            with anyio.fail_after(self._limits.call_timeout):
                while len(tools) < self._limits.max_tools:
                    page = await self._client.list_tools(cursor=cursor)
                    tools.extend(_tool_info(tool) for tool in page.tools)
                    cursor = page.next_cursor
                    if cursor is None:
                        break
        except TimeoutError:
            raise McpUnavailable(
                f"Listing the tools took longer than {self._limits.call_timeout:g} s."
            ) from None
        except Exception as exc:
            raise McpUnavailable(f"Could not list the tools: {describe(exc)}") from exc
        return tools[: self._limits.max_tools]

    async def call_tool(self, name: str, arguments: Mapping[str, Any]) -> McpResult:
        limit = self._limits.call_timeout
        try:
            with anyio.fail_after(limit):
                result = await self._client.call_tool(
                    name, dict(arguments), read_timeout_seconds=limit
                )
        except TimeoutError:
            message = f"The tool did not answer within {limit:g} s."
            return McpResult(error=ProtocolError(mcp_types.REQUEST_TIMEOUT, message))
        except MCPError as exc:
            return McpResult(error=ProtocolError(exc.code, exc.message))
        except httpx2.HTTPStatusError as exc:
            status = exc.response.status_code
            return McpResult(error=HttpError(status, f"The server answered HTTP {status}."))
        except Exception as exc:  # noqa: BLE001 (a broken server is an error the model reads)
            return McpResult(error=ProtocolError(mcp_types.INTERNAL_ERROR, describe(exc)))
        return self._result(result)

    def _result(self, result: mcp_types.CallToolResult) -> McpResult:
        text = _content_text(result)
        cap = self._limits.max_output_chars
        if len(text) > cap:
            text = (
                f"{text[:cap]}\n[Output truncated: the first {cap} of {len(text)} characters "
                "are shown.]"
            )
        if result.is_error:
            blocks = [block.model_dump(mode="json", exclude_none=True) for block in result.content]
            return McpResult(error=ExecutionError(blocks, text or "The tool failed."))
        return McpResult(output=text)


@asynccontextmanager
async def connect(
    target: McpTarget, limits: McpLimits, *, guarded: bool = False
) -> AsyncIterator[McpConnection]:
    """An open connection to ``target``, closed on exit; raises :class:`McpUnavailable`.

    ``guarded`` applies the SSRF rule to an HTTP target (servers a request names).
    """
    attempts: list[tuple[str, _Opener]]
    if isinstance(target, StdioTarget):
        attempts = [("stdio", partial(_stdio, target))]
    else:
        transports = (
            ["streamable-http", "sse"] if target.transport == "auto" else [target.transport]
        )
        attempts = [(kind, _http_opener(kind, target, limits, guarded)) for kind in transports]
    failures: list[str] = []
    for kind, open_transport in attempts:
        stack = AsyncExitStack()
        closed = anyio.Event()
        client = Client(
            _Watched(open_transport(), closed),
            read_timeout_seconds=limits.connect_timeout,
            cache=None,
        )
        try:
            # Bounded by the handshake's read timeout and the HTTP connect timeout (a cancel
            # scope cannot wrap it: the client's task groups outlive this block).
            await stack.enter_async_context(client)
        except Exception as exc:
            failures.append(f"{kind}: {describe(exc)}" if len(attempts) > 1 else describe(exc))
            if not _worth_another_transport(exc):
                break
            continue
        try:
            yield McpConnection(client, limits, closed)
        except BaseException:
            await stack.__aexit__(*sys.exc_info())
            raise
        try:
            await stack.aclose()
        except Exception as exc:  # noqa: BLE001 (the work is done; a messy goodbye is no failure)
            log.info("closing the MCP connection failed: %s", describe(exc))
        return
    raise McpUnavailable(f"Could not connect to the MCP server: {'; '.join(failures)}")


_Streams: TypeAlias = tuple[ReadStream[SessionMessage | Exception], WriteStream[SessionMessage]]
_Opener: TypeAlias = Callable[[], AbstractAsyncContextManager[_Streams]]


def _stdio(target: StdioTarget) -> AbstractAsyncContextManager[_Streams]:
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(
        command=target.command,
        args=list(target.args),
        env=dict(target.env) if target.env is not None else None,
        cwd=target.cwd,
    )
    return stdio_client(params)


def _http_opener(kind: str, target: HttpTarget, limits: McpLimits, guarded: bool) -> _Opener:
    def http_client(
        headers: dict[str, str] | None = None,
        timeout: httpx2.Timeout | None = None,
        auth: httpx2.Auth | None = None,
    ) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(
            transport=GuardedTransport(
                guarded=guarded, max_response_bytes=limits.max_response_bytes
            ),
            headers={**dict(target.headers), **(headers or {})},
            # Reads wait longer than a call may take, so the call's own timeout ends it first
            # (a read timeout would break the whole connection).
            timeout=httpx2.Timeout(
                limits.call_timeout + READ_MARGIN, connect=limits.connect_timeout
            ),
            auth=auth,
            trust_env=False,
        )

    def open_transport() -> AbstractAsyncContextManager[_Streams]:
        if kind == "sse":
            return sse_client(
                target.url,
                timeout=limits.connect_timeout,
                sse_read_timeout=limits.call_timeout,
                httpx_client_factory=http_client,
            )
        return _owned_client_transport(target.url, http_client())

    return open_transport


@asynccontextmanager
async def _owned_client_transport(url: str, client: httpx2.AsyncClient) -> AsyncIterator[_Streams]:
    """Streamable HTTP over ``client``, which closes with the transport."""
    async with client, streamable_http_client(url, http_client=client) as streams:
        yield streams


class _Watched:
    """A transport whose read side sets ``closed`` when the server's side ends."""

    def __init__(self, inner: AbstractAsyncContextManager[_Streams], closed: anyio.Event) -> None:
        self._inner = inner
        self._closed = closed

    async def __aenter__(self) -> _Streams:
        read, write = await self._inner.__aenter__()
        return _WatchedReadStream(read, self._closed), write

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        self._closed.set()
        result: bool | None = await self._inner.__aexit__(*exc_info)
        return result


class _WatchedReadStream:
    """Forwards a read stream; sets ``closed`` at its end."""

    def __init__(self, inner: ReadStream[SessionMessage | Exception], closed: anyio.Event) -> None:
        self._inner = inner
        self._closed = closed

    async def receive(self) -> SessionMessage | Exception:
        try:
            return await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self._closed.set()
            raise

    async def aclose(self) -> None:
        await self._inner.aclose()

    def __aiter__(self) -> _WatchedReadStream:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        try:
            return await self.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None

    async def __aenter__(self) -> _WatchedReadStream:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()


def _worth_another_transport(exc: BaseException) -> bool:
    """A server that answered, but not in streamable HTTP, may speak SSE; one that could not
    be reached (or was refused by the SSRF rule) will not answer that either."""
    leaf = _leaf(exc)
    return not isinstance(leaf, (httpx2.ConnectError, httpx2.TimeoutException, TimeoutError))


def _leaf(exc: BaseException) -> BaseException:
    """The first exception inside (nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def describe(exc: BaseException) -> str:
    """A one-line reason for an SDK or transport failure, for the model and the logs."""
    leaf = _leaf(exc)
    if isinstance(leaf, TimeoutError):
        return "the server did not answer in time"
    if isinstance(leaf, MCPError):
        return f"{leaf.message} (MCP error {leaf.code})"
    if isinstance(leaf, httpx2.HTTPStatusError):
        return f"the server answered HTTP {leaf.response.status_code}"
    if isinstance(leaf, httpx2.ConnectError) and isinstance(leaf.__cause__, ToolError):
        return str(leaf.__cause__)
    return str(leaf) or type(leaf).__name__


def _tool_info(tool: mcp_types.Tool) -> McpToolInfo:
    schema = tool.input_schema if isinstance(tool.input_schema, dict) else {}
    annotations = (
        tool.annotations.model_dump(mode="json", by_alias=True, exclude_none=True)
        if tool.annotations is not None
        else None
    )
    return McpToolInfo(tool.name, tool.description, dict(schema), annotations)


def _content_text(result: mcp_types.CallToolResult) -> str:
    """The result as text: text blocks joined; other blocks named; structured content as
    JSON when there is nothing else."""
    parts: list[str] = []
    for block in result.content:
        match block:
            case mcp_types.TextContent(text=text):
                parts.append(text)
            case mcp_types.ImageContent(mime_type=mime) | mcp_types.AudioContent(mime_type=mime):
                parts.append(f"[{block.type} ({mime}) not shown]")
            case mcp_types.ResourceLink(uri=uri):
                parts.append(f"[resource link: {uri}]")
            case mcp_types.EmbeddedResource(resource=resource):
                body = getattr(resource, "text", None)
                parts.append(body if isinstance(body, str) else f"[resource: {resource.uri}]")
            case _:
                parts.append(f"[{getattr(block, 'type', 'content')} not shown]")
    if not parts and result.structured_content is not None:
        return json.dumps(result.structured_content, ensure_ascii=False)
    return "\n".join(parts)
