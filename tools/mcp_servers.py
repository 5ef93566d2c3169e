"""Operator-configured MCP servers: the ``--mcp-config`` file, and connections kept open.

The file has the shape Claude Desktop and other MCP hosts use::

    {"mcpServers": {
        "files": {"command": "npx",
                  "args": ["-y", "@modelcontextprotocol/server-filesystem", "/srv"],
                  "env": {"DEBUG": "0"}},
        "search": {"url": "https://mcp.example.com/mcp", "headers": {"X-Key": "..."}}
    }}

An entry with ``command`` is a stdio server (``args``, ``env``, ``cwd`` optional); one with
``url`` is an HTTP server (``headers`` optional; ``"type": "sse"`` forces the SSE transport).
Other keys some hosts write (``disabled``, ``autoApprove``...) are ignored, but ``disabled:
true`` leaves the server out.

:class:`ConfiguredServers` starts every server once, keeps its connection and tool list, and
restarts a server whose connection ends (a stdio process that dies), with a growing pause
between attempts. These servers are the operator's: trusted, so the SSRF rule does not apply.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup

from .mcp_client import (
    HttpTarget,
    McpConnection,
    McpLimits,
    McpResult,
    McpTarget,
    McpToolInfo,
    McpUnavailable,
    ProtocolError,
    StdioTarget,
    connect,
)

log = logging.getLogger("exloop.tools.mcp")

#: A server label: what ``mcp_call.server_label`` shows (OpenAI's label rule).
LABEL = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: Pauses between restarts of a server that keeps failing, in seconds.
RESTART_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
_HTTP_TYPES = {"http", "streamable-http", "streamableHttp", "streamable_http"}


class ConfigError(ValueError):
    """The MCP configuration file is missing, malformed, or names an unusable server."""


def load_config(path: Path) -> dict[str, McpTarget]:
    """The servers of an ``mcpServers`` file, by label; raises :class:`ConfigError`."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the MCP config {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"the MCP config {path} is not valid JSON: {exc}") from exc
    servers = document.get("mcpServers") if isinstance(document, dict) else None
    if not isinstance(servers, dict):
        raise ConfigError(f'the MCP config {path} needs an object "mcpServers"')
    targets: dict[str, McpTarget] = {}
    for label, entry in servers.items():
        where = f'{path}: mcpServers["{label}"]'
        if not LABEL.match(label):
            raise ConfigError(f"{where}: use 1 to 64 letters, digits, '_' or '-' as the name")
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be an object")
        if entry.get("disabled") is True:
            continue
        targets[label] = _target(entry, where)
    return targets


def _target(entry: dict[str, Any], where: str) -> McpTarget:
    kind = entry.get("type") or entry.get("transport")
    if "command" in entry:
        command, args, env = entry["command"], entry.get("args", []), entry.get("env")
        if not isinstance(command, str) or not command:
            raise ConfigError(f"{where}.command must be a non-empty string")
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise ConfigError(f"{where}.args must be a list of strings")
        cwd = entry.get("cwd")
        if cwd is not None and not isinstance(cwd, str):
            raise ConfigError(f"{where}.cwd must be a string")
        return StdioTarget(command, tuple(args), _strings(env, f"{where}.env"), cwd)
    if "url" in entry:
        url = entry["url"]
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}.url must be an http or https URL")
        headers = _strings(entry.get("headers"), f"{where}.headers") or {}
        if kind == "sse":
            return HttpTarget(url, headers, "sse")
        if kind is not None and kind not in _HTTP_TYPES:
            raise ConfigError(f"{where}.type {kind!r} is not one of sse, http, streamable-http")
        return HttpTarget(url, headers, "streamable-http" if kind else "auto")
    raise ConfigError(f'{where} needs a "command" (stdio server) or a "url" (HTTP server)')


def _strings(value: Any, where: str) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ConfigError(f"{where} must map strings to strings")
    return dict(value)


@dataclass(frozen=True, slots=True)
class _Live:
    connection: McpConnection
    tools: tuple[McpToolInfo, ...]


class ConfiguredServers:
    """The operator's MCP servers, connected for the server's lifetime.

    Use as an async context manager around serving: entering starts every server and waits
    (up to ``limits.connect_timeout`` and a bit) for the first connections, so the first
    requests see their tools; leaving stops them.
    """

    def __init__(self, targets: Mapping[str, McpTarget], limits: McpLimits) -> None:
        self._targets = dict(targets)
        self._limits = limits
        self._live: dict[str, _Live] = {}
        self._tg: TaskGroup | None = None
        #: How many times each server has been (re)started; for logs and tests.
        self.starts: dict[str, int] = dict.fromkeys(self._targets, 0)

    def __bool__(self) -> bool:
        return bool(self._targets)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self._targets)

    def tools(self) -> dict[str, tuple[McpToolInfo, ...]]:
        """The tools of every server that is connected now, by server label."""
        return {label: live.tools for label, live in self._live.items()}

    async def call(self, label: str, name: str, arguments: Mapping[str, Any]) -> McpResult:
        """Call a tool; a server that is down (restarting) is an error result."""
        live = self._live.get(label)
        if live is None:
            message = f"The MCP server '{label}' is not connected (it is restarting)."
            return McpResult(error=ProtocolError(-32000, message))
        return await live.connection.call_tool(name, arguments)

    async def __aenter__(self) -> ConfiguredServers:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        ready = [anyio.Event() for _ in self._targets]
        for (label, target), event in zip(self._targets.items(), ready, strict=True):
            self._tg.start_soon(self._keep, label, target, event)
        with anyio.move_on_after(self._limits.connect_timeout + 5):
            for event in ready:
                await event.wait()
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        return await self._tg.__aexit__(*exc_info)

    async def _keep(self, label: str, target: McpTarget, ready: anyio.Event) -> None:
        """Connect, list, hold until the connection ends; again, pausing longer each time
        it fails in a row."""
        failures = 0
        while True:
            self.starts[label] += 1
            try:
                async with connect(target, self._limits) as connection:
                    tools = tuple(await connection.list_tools())
                    self._live[label] = _Live(connection, tools)
                    failures = 0
                    ready.set()
                    log.info("MCP server '%s' connected with %d tools", label, len(tools))
                    await connection.closed.wait()
                    log.warning("MCP server '%s' went away; restarting it", label)
            except McpUnavailable as exc:
                log.warning("MCP server '%s' is unavailable: %s", label, exc)
            except Exception:
                log.exception("MCP server '%s' failed", label)
            finally:
                self._live.pop(label, None)
            ready.set()
            delay = RESTART_DELAYS[min(failures, len(RESTART_DELAYS) - 1)]
            failures += 1
            await anyio.sleep(delay)
