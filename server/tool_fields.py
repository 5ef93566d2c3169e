"""Tool definitions (``tools``, and the tools of ``additional_tools`` / ``tool_search_output``
input items) and ``web_search_options``, decoded and validated.

Function tools come in the Responses' flat form and in Chat's (and the seed schema's) nested
``function`` form alike; each one's ``parameters`` must be a JSON Schema of an object. Custom
(freeform) tools likewise come flat or nested under ``custom`` (Chat), their grammar format flat
(``{"type": "grammar", "syntax", "definition"}``) or nested under ``grammar`` (Chat). A
``namespace`` groups function and custom tools (one level: it holds no namespace); a
``tool_search`` tool searches the tools marked ``defer_loading``. Web search comes as a
``web_search`` tool (the model decides when to search) or as ``web_search_options`` (every
request searches). Remote MCP servers come as ``mcp`` tools (Responses only; see
:mod:`.mcp_fields`).

Every field is bounded (:class:`~.limits.Limits`): at most ``max_tools`` tool definitions in
one request or item (a namespace's tools counted), schemas within the request's schema budget,
a grammar of at most ``max_grammar_chars`` characters (a regex's repetitions within
``max_pattern_repeat``), descriptions of at most ``max_description_chars`` (a namespace's is
repeated in each of its tools' descriptions), names as OpenAI allows them; what passes a bound
is a 400 naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeAlias

import msgspec

from exloop.orchestrator.spec import McpServerSpec, WebSearchOptions
from exloop.orchestrator.tool_defs import (
    ClientTool,
    CustomFormat,
    CustomGrammar,
    CustomText,
    CustomTool,
    FunctionTool,
    LoadedTool,
    NamespaceTool,
    SearchContentType,
    Tool,
    ToolSearchTool,
    UserLocation,
    WebSearchPreviewTool,
    WebSearchTool,
)

from .errors import excerpt, invalid_request
from .format_fields import check_json_schema
from .mcp_fields import MAX_MCP_SERVERS, McpToolField, mcp_tool
from .schema_bounds import SchemaBudget, check_pattern

ContextSize: TypeAlias = Literal["low", "medium", "high"]

#: OpenAI's rule for function (and custom tool, and namespace) names.
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class FunctionDef(msgspec.Struct, frozen=True):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    defer_loading: bool | None = None


class FunctionToolField(msgspec.Struct, tag="function", tag_field="type", frozen=True):
    """A function tool, flat (Responses) or with a nested ``function`` (Chat, seed schema)."""

    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    defer_loading: bool | None = None
    function: FunctionDef | None = None


class GrammarDef(msgspec.Struct, frozen=True):
    syntax: Literal["lark", "regex"]
    definition: str


class CustomFormatField(msgspec.Struct, frozen=True):
    """``{"type": "text"}``, or a grammar: flat (Responses) or under ``grammar`` (Chat)."""

    type: Literal["text", "grammar"]
    syntax: Literal["lark", "regex"] | None = None
    definition: str | None = None
    grammar: GrammarDef | None = None


class CustomDef(msgspec.Struct, frozen=True):
    name: str
    description: str | None = None
    format: CustomFormatField | None = None
    defer_loading: bool | None = None


class CustomToolField(msgspec.Struct, tag="custom", tag_field="type", frozen=True):
    """A custom tool, flat (Responses) or with a nested ``custom`` (Chat)."""

    name: str | None = None
    description: str | None = None
    format: CustomFormatField | None = None
    defer_loading: bool | None = None
    custom: CustomDef | None = None


class NamespaceToolField(msgspec.Struct, tag="namespace", tag_field="type", frozen=True):
    name: str
    description: str
    tools: list[FunctionToolField | CustomToolField]


class ToolSearchToolField(msgspec.Struct, tag="tool_search", tag_field="type", frozen=True):
    execution: Literal["server", "client"] | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Approximate(msgspec.Struct, frozen=True):
    city: str | None = None
    country: str | None = None
    region: str | None = None
    timezone: str | None = None


class UserLocationField(msgspec.Struct, frozen=True):
    """A user location, flat (Responses tools) or under ``approximate`` (Chat, seed)."""

    type: Literal["approximate"] = "approximate"
    approximate: Approximate | None = None
    city: str | None = None
    country: str | None = None
    region: str | None = None
    timezone: str | None = None

    def to_location(self) -> UserLocation:
        place = self.approximate or Approximate(self.city, self.country, self.region, self.timezone)
        return UserLocation(place.city, place.country, place.region, place.timezone)


class WebSearchToolField(msgspec.Struct, tag="web_search", tag_field="type", frozen=True):
    search_context_size: ContextSize = "medium"
    user_location: UserLocationField | None = None
    external_web_access: bool | None = None
    search_content_types: list[SearchContentType] | None = None


class WebSearchToolDated(WebSearchToolField, tag="web_search_2025_08_26", frozen=True):
    pass


class WebSearchPreviewField(WebSearchToolField, tag="web_search_preview", frozen=True):
    pass


class WebSearchPreviewDated(WebSearchToolField, tag="web_search_preview_2025_03_11", frozen=True):
    pass


ToolField: TypeAlias = (
    FunctionToolField
    | CustomToolField
    | NamespaceToolField
    | ToolSearchToolField
    | WebSearchToolField
    | WebSearchToolDated
    | WebSearchPreviewField
    | WebSearchPreviewDated
    | McpToolField
)


class WebSearchOptionsField(msgspec.Struct, frozen=True):
    """The seed schema's (and Chat's) ``web_search_options``: search on every request."""

    search_context_size: ContextSize = "medium"
    user_location: UserLocationField | None = None
    search_description: str | None = None
    extract_description: str | None = None


@dataclass(frozen=True, slots=True)
class ToolsField:
    """The validated tools: the client's definitions, the response's echo, built-in search,
    and the names the model knows the client's functions and custom tools by."""

    tools: tuple[ClientTool, ...]
    echo: tuple[Tool, ...]
    web_search: WebSearchOptions | None
    functions: frozenset[str] = frozenset()
    customs: frozenset[str] = frozenset()
    namespaces: frozenset[str] = frozenset()
    mcp: tuple[McpServerSpec, ...] = ()
    #: The ``max_tools`` limit, which also bounds ``allowed_tools``.
    max_tools: int = 128

    def with_loaded(self, loaded: Iterable[LoadedTool]) -> ToolsField:
        """These tools, knowing also the names of tools the input's items add or load (so
        that ``tool_choice`` may name them)."""
        functions, customs, namespaces = set(self.functions), set(self.customs), set()
        for tool in loaded:
            members = tool.tools if isinstance(tool, NamespaceTool) else [tool]
            prefix = f"{tool.name}." if isinstance(tool, NamespaceTool) else ""
            if isinstance(tool, NamespaceTool):
                namespaces.add(tool.name)
            for member in members:
                kind = functions if isinstance(member, FunctionTool) else customs
                kind.add(prefix + member.name)
        return replace(
            self,
            functions=frozenset(functions),
            customs=frozenset(customs),
            namespaces=self.namespaces | namespaces,
        )


def tools_field(tools: Sequence[ToolField] | None, budget: SchemaBudget) -> ToolsField:
    """The request's ``tools``, each checked (at most ``max_tools`` definitions, their schemas
    within the request's limits)."""
    fields = list(tools or ())
    names = _Names("tools", budget)
    defined: list[ClientTool] = []
    echo: list[Tool] = []
    web_search: WebSearchOptions | None = None
    mcp: list[McpServerSpec] = []
    for i, tool in enumerate(fields):
        param = f"tools[{i}]"
        match tool:
            case McpToolField():
                server, mcp_echo = mcp_tool(tool, param, {s.label for s in mcp})
                mcp.append(server)
                echo.append(mcp_echo)
            case WebSearchToolField():
                if web_search is not None:
                    raise invalid_request("Only one web_search tool may be given.", param)
                web_search, echoed = _web_search(tool)
                echo.append(echoed)
            case ToolSearchToolField():
                if any(isinstance(t, ToolSearchTool) for t in defined):
                    raise invalid_request("Only one tool_search tool may be given.", param)
                search = _tool_search(tool, param, budget)
                defined.append(search)
                echo.append(search)
            case _:
                client = _client_tool(tool, param, names)
                defined.append(client)
                echo.append(client)
    if len(mcp) > MAX_MCP_SERVERS:
        raise invalid_request(f"At most {MAX_MCP_SERVERS} mcp tools may be given.", "tools")
    return ToolsField(
        tuple(defined),
        tuple(echo),
        web_search,
        frozenset(names.functions),
        frozenset(names.customs),
        frozenset(names.namespaces),
        tuple(mcp),
        budget.limits.max_tools,
    )


def loaded_tools(
    fields: Sequence[ToolField], prefix: str, budget: SchemaBudget
) -> list[LoadedTool]:
    """The tools of an ``additional_tools`` or ``tool_search_output`` item (functions, custom
    tools and namespaces); ``prefix`` names the item's ``tools`` field."""
    names = _Names(prefix, budget)
    loaded: list[LoadedTool] = []
    for i, tool in enumerate(fields):
        param = f"{prefix}[{i}]"
        if not isinstance(tool, FunctionToolField | CustomToolField | NamespaceToolField):
            raise invalid_request(
                "Only function, custom and namespace tools can be loaded this way.",
                f"{param}.type",
                "unsupported_value",
            )
        loaded.append(_client_tool(tool, param, names))
    return loaded


class _Names:
    """The names defined so far, to refuse duplicates and count definitions; and the schema
    budget the definitions draw on."""

    def __init__(self, field: str, budget: SchemaBudget) -> None:
        self._field = field
        self.budget = budget
        self.functions: set[str] = set()
        self.customs: set[str] = set()
        self.namespaces: set[str] = set()

    def add(self, name: str, kind: Literal["function", "custom"], param: str) -> None:
        if name in self.functions or name in self.customs:
            raise invalid_request(f"Duplicate tool name {name!r}.", param)
        (self.functions if kind == "function" else self.customs).add(name)
        limit = self.budget.limits.max_tools
        if len(self.functions) + len(self.customs) > limit:
            raise invalid_request(
                f"{self._field} may hold at most {limit} tools (a namespace's tools count).",
                self._field,
                "too_many_tools",
            )


def _client_tool(
    tool: FunctionToolField | CustomToolField | NamespaceToolField, param: str, names: _Names
) -> LoadedTool:
    match tool:
        case FunctionToolField():
            function = _function_tool(tool, param, names.budget)
            names.add(function.name, "function", f"{param}.name")
            return function
        case CustomToolField():
            custom = _custom_tool(tool, param, names.budget)
            names.add(custom.name, "custom", f"{param}.name")
            return custom
        case NamespaceToolField():
            return _namespace(tool, param, names)


def _name(name: str, param: str) -> str:
    if not _NAME.match(name):
        raise invalid_request(
            f"Invalid name {excerpt(name)}: use 1 to 64 letters, digits, '_' or '-'.", param
        )
    return name


def _description(text: str | None, param: str, budget: SchemaBudget) -> None:
    """Refuse a description past ``max_description_chars``: it is prompt text, and a
    namespace's is repeated in the description of each of its tools."""
    limit = budget.limits.max_description_chars
    if text is not None and len(text) > limit:
        raise invalid_request(
            f"A description may hold at most {limit} characters, got {len(text)}.",
            param,
            "string_above_max_length",
        )


def _function_tool(tool: FunctionToolField, param: str, budget: SchemaBudget) -> FunctionTool:
    if tool.function is not None:
        prefix = f"{param}.function"
        name, description = tool.function.name, tool.function.description
        parameters, strict = tool.function.parameters, tool.function.strict
        defer = tool.function.defer_loading
    elif tool.name is not None:
        prefix = param
        name, description, parameters, strict = (
            tool.name,
            tool.description,
            tool.parameters,
            tool.strict,
        )
        defer = tool.defer_loading
    else:
        raise invalid_request(
            "A function tool needs a name.", f"{param}.name", "missing_required_parameter"
        )
    _name(name, f"{prefix}.name")
    _description(description, f"{prefix}.description", budget)
    if parameters is not None:
        _object_schema(parameters, f"{prefix}.parameters", f"function '{name}'", budget)
    return FunctionTool(name, parameters, strict, description, defer)


def _object_schema(schema: dict[str, Any], param: str, what: str, budget: SchemaBudget) -> None:
    check_json_schema(schema, param, what, budget, "invalid_function_parameters")
    if schema.get("type", "object") != "object":
        raise invalid_request(
            f"Invalid schema for {what}: the parameters must be a JSON Schema of type "
            f"'object', got {schema['type']!r}.",
            param,
            "invalid_function_parameters",
        )


def _custom_tool(tool: CustomToolField, param: str, budget: SchemaBudget) -> CustomTool:
    if tool.custom is not None:
        prefix = f"{param}.custom"
        definition = tool.custom
        name, description, form = definition.name, definition.description, definition.format
        defer = definition.defer_loading
    elif tool.name is not None:
        prefix = param
        name, description, form, defer = (
            tool.name,
            tool.description,
            tool.format,
            tool.defer_loading,
        )
    else:
        raise invalid_request(
            "A custom tool needs a name.", f"{param}.name", "missing_required_parameter"
        )
    _name(name, f"{prefix}.name")
    _description(description, f"{prefix}.description", budget)
    form_param = f"{prefix}.format"
    return CustomTool(name, description, _custom_format(form, form_param, budget), defer)


def _custom_format(
    form: CustomFormatField | None, param: str, budget: SchemaBudget
) -> CustomFormat | None:
    if form is None:
        return None
    if form.type == "text":
        return CustomText()
    grammar = form.grammar or GrammarDef(form.syntax or "lark", form.definition or "")
    where = f"{param}.grammar" if form.grammar is not None else param
    if form.grammar is None and (form.syntax is None or form.definition is None):
        missing = "syntax" if form.syntax is None else "definition"
        raise invalid_request(
            f"A grammar format needs a {missing}.",
            f"{param}.{missing}",
            "missing_required_parameter",
        )
    if not grammar.definition.strip():
        raise invalid_request("The grammar definition is empty.", f"{where}.definition")
    limit = budget.limits.max_grammar_chars
    if len(grammar.definition) > limit:
        raise invalid_request(
            f"A grammar definition may hold at most {limit} characters, got "
            f"{len(grammar.definition)}.",
            f"{where}.definition",
            "grammar_too_large",
        )
    if grammar.syntax == "regex":
        # As for a regex ``grammar``: a huge repetition count makes a huge automaton.
        check_pattern(grammar.definition, f"{where}.definition", budget.limits)
    return CustomGrammar(grammar.syntax, grammar.definition)


def _namespace(tool: NamespaceToolField, param: str, names: _Names) -> NamespaceTool:
    space = _name(tool.name, f"{param}.name")
    _description(tool.description, f"{param}.description", names.budget)
    if space in names.namespaces:
        raise invalid_request(f"Duplicate namespace {space!r}.", f"{param}.name")
    if not tool.tools:
        raise invalid_request("A namespace needs at least one tool.", f"{param}.tools")
    names.namespaces.add(space)
    members: list[FunctionTool | CustomTool] = []
    for j, member in enumerate(tool.tools):
        inner = f"{param}.tools[{j}]"
        match member:
            case FunctionToolField():
                function = _function_tool(member, inner, names.budget)
                names.add(f"{space}.{function.name}", "function", f"{inner}.name")
                members.append(function)
            case CustomToolField():
                custom = _custom_tool(member, inner, names.budget)
                names.add(f"{space}.{custom.name}", "custom", f"{inner}.name")
                members.append(custom)
    return NamespaceTool(space, tool.description, members)


def _tool_search(tool: ToolSearchToolField, param: str, budget: SchemaBudget) -> ToolSearchTool:
    _description(tool.description, f"{param}.description", budget)
    if tool.parameters is not None:
        _object_schema(tool.parameters, f"{param}.parameters", "the tool_search tool", budget)
    return ToolSearchTool(tool.execution, tool.description, tool.parameters)


def _web_search(tool: WebSearchToolField) -> tuple[WebSearchOptions, Tool]:
    location = tool.user_location.to_location() if tool.user_location else None
    options = WebSearchOptions(
        False, tool.search_context_size, location, live=tool.external_web_access is not False
    )
    preview = isinstance(tool, WebSearchPreviewField | WebSearchPreviewDated)
    kind = WebSearchPreviewTool if preview else WebSearchTool
    echoed = kind(
        tool.search_context_size, location, tool.external_web_access, tool.search_content_types
    )
    return options, echoed


def web_search_options(field: WebSearchOptionsField) -> WebSearchOptions:
    """``web_search_options``: the first step always searches."""
    location = field.user_location.to_location() if field.user_location else None
    return WebSearchOptions(
        True,
        field.search_context_size,
        location,
        field.search_description,
        field.extract_description,
    )
