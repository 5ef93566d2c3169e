"""Built-in tools: tools the server runs itself inside the tool loop.

A built-in tool shows the model an ordinary function definition; when the model calls it,
the loop runs it (all of a round's calls concurrently) instead of returning the call to the
client. The tool writes its own output items (e.g. ``web_search_call``) through the writer
and returns the text the model reads next. A failure is text the model sees, not an error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeAlias, runtime_checkable

from exloop.engine.protocol import ToolSpec

from .items import UrlCitation
from .output import OutputWriter
from .spec import RunSpec


@dataclass(frozen=True, slots=True)
class BuiltinCall:
    """One call of a built-in tool, its arguments decoded from the model's JSON."""

    call_id: str
    name: str
    arguments: Mapping[str, object]


class BuiltinTool(Protocol):
    """A tool the server runs."""

    @property
    def spec(self) -> ToolSpec: ...

    async def run(self, call: BuiltinCall, writer: OutputWriter) -> str:
        """Run the call, writing its output items; return the result text for the model."""
        ...


@dataclass(frozen=True, slots=True)
class McpRoute:
    """Where the call of an MCP tool goes while the model writes it: an ``mcp_call`` item on
    ``server_label`` (run when the step ends), or, when ``needs_approval``, an
    ``mcp_approval_request`` that the client answers in its next request."""

    server_label: str
    tool_name: str
    needs_approval: bool


@runtime_checkable
class Routed(Protocol):
    """A built-in tool whose calls are written as MCP items as they are generated."""

    @property
    def route(self) -> McpRoute: ...


@runtime_checkable
class Citing(Protocol):
    """A built-in tool that keeps the sources the model read and can cite them."""

    def cite(self, text: str) -> list[UrlCitation]:
        """The ``url_citation`` annotations of the final answer ``text``."""
        ...


#: Makes the built-in tools one run may use, from its spec. The CLI wires the real ones (web
#: search with the configured provider); tests may pass scripted ones.
BuiltinFactory: TypeAlias = Callable[[RunSpec], list[BuiltinTool]]


class CallBudget:
    """``max_tool_calls``: how many built-in calls one response may run, over every built-in
    tool together (web search, page reads, and any tool a :class:`BuiltinRegistry` holds).

    The tool loop takes one unit for each built-in call before running it, so every kind of
    built-in tool counts through here; a call that finds the budget spent is not run.
    """

    def __init__(self, limit: int | None) -> None:
        self._limit = limit
        self._used = 0

    @property
    def spent(self) -> bool:
        return self._limit is not None and self._used >= self._limit

    def take(self) -> bool:
        """Count one call; False (counting nothing) when the budget is spent."""
        if self.spent:
            return False
        self._used += 1
        return True

    def refusal(self) -> str:
        """What the model reads in place of the result of a call over the budget."""
        return (
            f"Not run: this response may make at most {self._limit} built-in tool calls, and "
            "they are used up. Answer with the information you already have."
        )


class BuiltinRegistry:
    """The built-in tools enabled for one response, by name."""

    def __init__(self, tools: list[BuiltinTool] | None = None) -> None:
        self._tools: dict[str, BuiltinTool] = {tool.spec.name: tool for tool in tools or []}

    def __bool__(self) -> bool:
        return bool(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def get(self, name: str) -> BuiltinTool:
        return self._tools[name]

    def extend(self, tools: Sequence[BuiltinTool]) -> None:
        """Add tools found when the run starts (an MCP server's, once listed)."""
        self._tools.update((tool.spec.name, tool) for tool in tools)

    def route(self, name: str) -> McpRoute | None:
        """The MCP route of the tool ``name``, if it is an MCP tool."""
        tool = self._tools.get(name)
        return tool.route if isinstance(tool, Routed) else None

    def mcp_specs(self, server_label: str, tool_name: str | None) -> tuple[ToolSpec, ...]:
        """The specs of ``server_label``'s tools (only ``tool_name`` when given)."""
        return tuple(
            tool.spec
            for tool in self._tools.values()
            if isinstance(tool, Routed)
            and tool.route.server_label == server_label
            and (tool_name is None or tool.route.tool_name == tool_name)
        )

    def find_mcp(self, server_label: str, tool_name: str) -> BuiltinTool | None:
        """The built-in tool that runs ``tool_name`` on ``server_label``."""
        for tool in self._tools.values():
            if isinstance(tool, Routed) and tool.route == McpRoute(
                server_label, tool_name, tool.route.needs_approval
            ):
                return tool
        return None

    @property
    def specs(self) -> tuple[ToolSpec, ...]:
        return tuple(tool.spec for tool in self._tools.values())

    def annotate(self, text: str) -> list[UrlCitation]:
        """Citations for the final answer, from the tools that keep sources, in text order."""
        citing = [tool for tool in self._tools.values() if isinstance(tool, Citing)]
        found = [citation for tool in citing for citation in tool.cite(text)]
        return sorted(found, key=lambda c: (c.start_index, c.end_index))
