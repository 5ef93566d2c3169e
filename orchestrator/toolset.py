"""The client tools one response offers the model, step by step.

Definitions come from the request's ``tools`` and from the conversation: an
``additional_tools`` item adds tools from its place on, and a ``tool_search_output`` item
loads tools, typically deferred ones (``defer_loading: true``), which stay out of the prompt
until a search loads them. Each definition becomes a :class:`~exloop.engine.protocol.ToolSpec`
as the model sees it: a namespace's tools are named ``namespace.tool`` and described with
their namespace, a custom tool is freeform, a client-run ``tool_search`` tool is a function.
A call the model makes is mapped back, by that name, to a :class:`ToolTarget`: the kind of
item it becomes and the tool's own name and namespace.

Every definition a response may meet is checked once, when the response is created
(:meth:`ToolCatalog.build`): their call grammar is compiled once, all together; only if that
fails is each compiled alone, to find the culprits. A strict function whose schema llguidance
cannot compile, or a custom tool whose grammar does not compile, is a 400 naming the field; a
non-strict function whose schema does not compile is still offered, its arguments then any
JSON object. A grammar too complex to compile (past the compile budget) is a 400 naming its
definition's field when it is found (or is the only one), else ``tools``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeAlias

from exloop.engine.errors import GrammarTooComplex, InvalidGrammar
from exloop.engine.protocol import FreeformInput, ToolSpec

from .items import AdditionalTools, Item, ToolSearchOutput
from .tool_defs import (
    ClientTool,
    CustomGrammar,
    CustomTool,
    FunctionTool,
    LoadedTool,
    NamespaceTool,
    ToolSearchTool,
)

#: The name the model calls a tool search by.
TOOL_SEARCH = "tool_search"
TOOL_SEARCH_DESCRIPTION = (
    "Search for more tools by what they should do. The tools found are loaded: you can call "
    "them from then on."
)
#: A bound on a search query, so that a small model writing it under the call grammar ends.
MAX_QUERY_CHARS = 100
#: The arguments of a tool search (a client-run one may define its own).
TOOL_SEARCH_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "query": {
            "type": "string",
            "description": "What the tools should do.",
            "maxLength": MAX_QUERY_CHARS,
        }
    },
    "required": ["query"],
    "additionalProperties": False,
}

ToolKind: TypeAlias = Literal["function", "custom", "tool_search"]
#: Compiles the call grammar of some tools; returns the compile error, None when it compiles.
GrammarCheck: TypeAlias = Callable[[tuple[ToolSpec, ...]], Awaitable[InvalidGrammar | None]]


@dataclass(frozen=True, slots=True)
class ToolTarget:
    """What a call of a client tool becomes: its item kind, the tool's name and namespace."""

    kind: ToolKind
    name: str
    namespace: str | None = None


@dataclass(frozen=True, slots=True)
class Entry:
    """One client tool definition as the model sees it, and where it came from."""

    spec: ToolSpec
    target: ToolTarget
    #: Only a tool search loads it.
    deferred: bool = False
    #: The request field of the definition (``tools[2].tools[0]``); None for earlier turns'.
    param: str | None = None
    #: The definition as the client gave it (namespaced tools: inside their namespace).
    source: LoadedTool | ToolSearchTool | None = None


@dataclass(frozen=True, slots=True)
class Offered:
    """The client tools one step shows the model, and what each one's calls become."""

    specs: tuple[ToolSpec, ...]
    targets: Mapping[str, ToolTarget]


def qualified(name: str, namespace: str | None) -> str:
    """A tool's name as the model writes it."""
    return f"{namespace}.{name}" if namespace else name


def entries(tools: Iterable[ClientTool], prefix: str | None) -> Iterator[Entry]:
    """The definitions ``tools`` hold, namespaces opened; ``prefix`` names their field."""
    for i, tool in enumerate(tools):
        param = f"{prefix}[{i}]" if prefix is not None else None
        match tool:
            case NamespaceTool():
                for j, member in enumerate(tool.tools):
                    inner = f"{param}.tools[{j}]" if param is not None else None
                    yield _entry(member, inner, tool)
            case FunctionTool() | CustomTool():
                yield _entry(tool, param, None)
            case ToolSearchTool():
                if tool.execution == "client":
                    yield _tool_search_entry(tool, param)


def _entry(
    tool: FunctionTool | CustomTool, param: str | None, space: NamespaceTool | None
) -> Entry:
    namespace = space.name if space is not None else None
    name = qualified(tool.name, namespace)
    description = tool.description
    if space is not None:
        where = f"(namespace {space.name}: {space.description})"
        description = f"{description} {where}" if description else where
    source: LoadedTool = (
        tool if space is None else NamespaceTool(space.name, space.description, [tool])
    )
    deferred = bool(tool.defer_loading)
    match tool:
        case FunctionTool():
            spec = ToolSpec(name, description, tool.parameters or _EMPTY, bool(tool.strict))
            return Entry(
                spec, ToolTarget("function", tool.name, namespace), deferred, param, source
            )
        case CustomTool():
            form = tool.format
            freeform = (
                FreeformInput(form.syntax, form.definition)
                if isinstance(form, CustomGrammar)
                else FreeformInput()
            )
            spec = ToolSpec(name, description, freeform=freeform)
            return Entry(spec, ToolTarget("custom", tool.name, namespace), deferred, param, source)


_EMPTY: dict[str, Any] = {"type": "object", "properties": {}}


def _tool_search_entry(tool: ToolSearchTool, param: str | None) -> Entry:
    spec = ToolSpec(
        TOOL_SEARCH,
        tool.description or TOOL_SEARCH_DESCRIPTION,
        tool.parameters or TOOL_SEARCH_PARAMETERS,
    )
    return Entry(spec, ToolTarget("tool_search", TOOL_SEARCH), param=param, source=tool)


def loaded_entries(items: Iterable[Item], prefix: str | None = "input") -> Iterator[Entry]:
    """The definitions of the conversation's ``additional_tools`` and ``tool_search_output``
    items; ``prefix`` names the item list (None for items of earlier turns)."""
    for k, item in enumerate(items):
        if isinstance(item, AdditionalTools | ToolSearchOutput):
            field = f"{prefix}[{k}].tools" if prefix is not None else None
            found = entries(item.tools, field)
            # A search's output loads its tools, deferred or not.
            yield from (
                replace(e, deferred=False) if isinstance(item, ToolSearchOutput) else e
                for e in found
            )


class ToolCatalog:
    """Every client tool definition one response may offer, checked, with what is guided."""

    def __init__(self, request: Sequence[Entry], unguided: frozenset[str] = frozenset()) -> None:
        self._request = tuple(request)
        self._unguided = unguided

    @classmethod
    async def build(
        cls,
        tools: Sequence[ClientTool],
        conversation: Sequence[Entry],
        check: GrammarCheck | None,
    ) -> ToolCatalog:
        """The catalog of a request's ``tools``, after checking them and the ``conversation``'s
        definitions with ``check`` (None: nothing is checked, e.g. ``tool_choice: none``).

        Raises :class:`InvalidGrammar` naming the field of a strict function or a custom tool
        whose grammar does not compile, and :class:`GrammarTooComplex` for grammars past the
        compile budget.
        """
        request = list(entries(tools, "tools"))
        unique = _checked(request, conversation)
        if check is None or not unique:
            return cls(request)
        together = await check(tuple(entry.spec for entry in unique.values()))
        if together is None:
            return cls(request)
        # One definition's error is its own: no need to compile it again.
        lone = len(unique) == 1
        unguided: set[str] = set()
        for key, entry in unique.items():
            error = together if lone else await check((entry.spec,))
            if error is not None:
                _refuse(entry, error)
                unguided.add(key)
        if isinstance(together, GrammarTooComplex):
            # Each compiles alone (or the request's deadline ends the search first).
            raise GrammarTooComplex(
                f"The tools are too complex to enforce together: {together.message}",
                param="tools",
            )
        if not unguided:
            raise InvalidGrammar(
                f"The tools cannot be enforced together: {together.message}", param="tools"
            )
        return cls(request, frozenset(unguided))

    @property
    def names(self) -> frozenset[str]:
        """The names the model knows the request's client tools by, deferred ones included."""
        return frozenset(entry.spec.name for entry in self._request)

    @property
    def deferred(self) -> tuple[Entry, ...]:
        """The request's deferred tools: what a server-side tool search looks through."""
        return tuple(entry for entry in self._request if entry.deferred)

    def offered(self, conversation: Iterable[Item]) -> Offered:
        """The tools shown at a step of ``conversation``: the request's own (deferred ones
        left out), then what its items add and load; a later definition of a name wins."""
        chosen: dict[str, Entry] = {}
        for entry in (*self._request, *loaded_entries(conversation, None)):
            if not entry.deferred:
                chosen[entry.spec.name] = entry
        specs = tuple(self._guided(entry.spec) for entry in chosen.values())
        return Offered(specs, {name: entry.target for name, entry in chosen.items()})

    def find(self, name: str) -> ToolSpec | None:
        """The request's tool the model knows as ``name``, deferred or not."""
        for entry in self._request:
            if entry.spec.name == name:
                return self._guided(entry.spec)
        return None

    def _guided(self, spec: ToolSpec) -> ToolSpec:
        if self._unguided and _key(spec) in self._unguided:
            return replace(spec, guided=False)
        return spec


def grammar_field(tools: Sequence[ClientTool], conversation: Sequence[Entry]) -> str:
    """The field a verdict on all the call grammars of a request's tools (and the
    ``conversation``'s) names: the definition's own when there is just one, else ``tools``."""
    unique = _checked(list(entries(tools, "tools")), conversation)
    if len(unique) == 1:
        (entry,) = unique.values()
        return _field(entry)
    return "tools"


def _checked(request: Sequence[Entry], conversation: Sequence[Entry]) -> dict[str, Entry]:
    """The distinct definitions whose call grammar a request checks."""
    unique: dict[str, Entry] = {}
    for entry in (*request, *conversation):
        unique.setdefault(_key(entry.spec), entry)
    return unique


def _field(entry: Entry) -> str:
    """The request field of the definition's grammar (``tools`` for earlier turns')."""
    field = "format.definition" if entry.spec.freeform is not None else "parameters"
    return f"{entry.param}.{field}" if entry.param else "tools"


def _refuse(entry: Entry, error: InvalidGrammar) -> None:
    """Raise the 400 for ``entry``, whose call grammar gave ``error`` compiled alone; return
    when it may still be offered unguided (a non-strict function)."""
    name, param = entry.spec.name, _field(entry)
    if isinstance(error, GrammarTooComplex):
        raise GrammarTooComplex(
            f"Tool '{name}' is too complex to enforce: {error.message}", param=param
        )
    if entry.spec.freeform is not None:
        raise InvalidGrammar(
            f"The grammar of custom tool '{name}' does not compile: {error.message}",
            param=param,
        )
    if entry.spec.strict:
        raise InvalidGrammar(
            f"The parameters of tool '{name}' cannot be enforced: {error.message}",
            param=param,
        )


def _key(spec: ToolSpec) -> str:
    """Identifies a definition for its grammar check (a name may be defined twice)."""
    return json.dumps(
        [spec.name, spec.parameters, spec.strict, spec.freeform and spec.freeform.definition],
        sort_keys=True,
    )


def describe_loaded(tools: Iterable[LoadedTool]) -> str:
    """The text a model reads after a tool search: the tools it may now call."""
    listed = [
        f"- {entry.spec.name}: {entry.spec.description}"
        if entry.spec.description
        else f"- {entry.spec.name}"
        for entry in entries(tools, None)
    ]
    if not listed:
        return "No tools matched; none were loaded."
    return "These tools are now loaded and can be called:\n" + "\n".join(listed)
