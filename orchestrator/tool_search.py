"""Server-side tool search: the built-in ``tool_search`` tool over a request's deferred tools.

A request with a ``tool_search`` tool whose ``execution`` is ``server`` (or unset) lets the
model search its deferred tools (``defer_loading: true``, left out of the prompt). exloop ranks
them against the model's query with the BM25 of :mod:`exloop.tools.rank`, each tool scored on
its name (split into words), its description, its namespace's name and description, and its
parameters' names and descriptions. The best few that share a word with the query are loaded:
the response gets a ``tool_search_call`` and a ``tool_search_output`` item listing them, the
model reads their names and descriptions, and from the next step on they are in its prompt and
callable.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from exloop.engine.protocol import ToolSpec
from exloop.tools.rank import Chunk, rank_chunks

from .builtin import BuiltinCall
from .items import ToolSearchCall, ToolSearchOutput, new_id
from .output import OutputWriter
from .tool_defs import LoadedTool, NamespaceTool, ToolSearchTool
from .toolset import (
    TOOL_SEARCH,
    TOOL_SEARCH_DESCRIPTION,
    TOOL_SEARCH_PARAMETERS,
    Entry,
    describe_loaded,
)

#: Tools one search loads at most.
MAX_LOADED = 5

_SEPARATORS = re.compile(r"[._\-]+")


class ToolSearch:
    """``tool_search(query)``: load the deferred tools that best match the query."""

    def __init__(
        self, tool: ToolSearchTool, deferred: Sequence[Entry], question: str | None = None
    ) -> None:
        self._description = tool.description
        self._question = question
        self._deferred = tuple(deferred)
        self._chunks = [
            Chunk(i, 0, _SEPARATORS.sub(" ", entry.spec.name), _searchable(entry.spec))
            for i, entry in enumerate(self._deferred)
        ]

    @property
    def spec(self) -> ToolSpec:
        description = self._description or (
            f"{TOOL_SEARCH_DESCRIPTION} {len(self._deferred)} tools can be found this way."
        )
        return ToolSpec(TOOL_SEARCH, description, TOOL_SEARCH_PARAMETERS, strict=True)

    async def run(self, call: BuiltinCall, writer: OutputWriter) -> str:
        arguments = dict(call.arguments)
        pending = ToolSearchCall(
            arguments, "server", call.call_id, new_id("tsc"), status="in_progress"
        )
        index = writer.open_item(pending)
        query = arguments.get("query")
        tools = self.search(query if isinstance(query, str) else "")
        writer.close_item(
            index, ToolSearchCall(arguments, "server", call.call_id, pending.id, "completed")
        )
        writer.add_item(ToolSearchOutput(tools, "server", call.call_id, new_id("tso"), "completed"))
        writer.meter.telemetry.tool_call("tool_search", "completed")
        return describe_loaded(tools)

    def search(self, query: str) -> list[LoadedTool]:
        """The definitions of the best matches, namespaced tools grouped in their namespace."""
        ranked = [r for r in rank_chunks(query, self._chunks) if r.score > 0][:MAX_LOADED]
        if not ranked and self._question:
            ranked = [r for r in rank_chunks(self._question, self._chunks) if r.score > 0]
            ranked = ranked[:MAX_LOADED]
        found = [self._deferred[r.chunk.source] for r in ranked]
        return _grouped(entry.source for entry in found if entry.source is not None)


def _searchable(spec: ToolSpec) -> str:
    """The text a tool is found by, besides its name."""
    parts = [spec.description or ""]
    properties = spec.parameters.get("properties")
    if isinstance(properties, Mapping):
        for key, value in properties.items():
            parts.append(_SEPARATORS.sub(" ", str(key)))
            if isinstance(value, Mapping) and isinstance(value.get("description"), str):
                parts.append(value["description"])
    return "\n".join(parts)


def _grouped(sources: Iterable[Any]) -> list[LoadedTool]:
    """Tools in rank order, the members of one namespace gathered where it first appears."""
    tools: list[LoadedTool] = []
    spaces: dict[str, NamespaceTool] = {}
    for source in sources:
        if not isinstance(source, NamespaceTool):
            tools.append(source)
            continue
        space = spaces.get(source.name)
        if space is None:
            space = spaces[source.name] = NamespaceTool(source.name, source.description, [])
            tools.append(space)
        space.tools.extend(source.tools)
    return tools
