"""Tools, ``tool_choice`` and ``web_search_options``, validated into a
:class:`~exloop.orchestrator.spec.ToolPolicy`.

Function tools come in the Responses' flat form and in Chat's (and the seed schema's) nested
``function`` form alike; each one's ``parameters`` must be a JSON Schema of an object. Web
search comes as a ``web_search`` tool (the model decides when to search) or as
``web_search_options`` (every request searches).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import msgspec

from exloop.engine.protocol import ToolSpec
from exloop.orchestrator.resource import (
    FunctionTool,
    Tool,
    ToolChoice,
    ToolChoiceFunction,
    ToolChoiceWebSearch,
    UserLocation,
    WebSearchPreviewTool,
    WebSearchTool,
)
from exloop.orchestrator.spec import ToolPolicy, WebSearchOptions

from .errors import invalid_request
from .format_fields import check_json_schema

ContextSize: TypeAlias = Literal["low", "medium", "high"]

_FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class FunctionDef(msgspec.Struct, frozen=True):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionToolField(msgspec.Struct, tag="function", tag_field="type", frozen=True):
    """A function tool, flat (Responses) or with a nested ``function`` (Chat, seed schema)."""

    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    function: FunctionDef | None = None


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


class WebSearchToolDated(WebSearchToolField, tag="web_search_2025_08_26", frozen=True):
    pass


class WebSearchPreviewField(WebSearchToolField, tag="web_search_preview", frozen=True):
    pass


class WebSearchPreviewDated(WebSearchToolField, tag="web_search_preview_2025_03_11", frozen=True):
    pass


ToolField: TypeAlias = (
    FunctionToolField
    | WebSearchToolField
    | WebSearchToolDated
    | WebSearchPreviewField
    | WebSearchPreviewDated
)


class NamedFunction(msgspec.Struct, frozen=True):
    name: str


class ToolChoiceFunctionField(msgspec.Struct, tag="function", tag_field="type", frozen=True):
    """``{"type": "function", "name"}`` (Responses) or ``{..., "function": {"name"}}`` (Chat)."""

    name: str | None = None
    function: NamedFunction | None = None


class ToolChoiceWebSearchField(msgspec.Struct, tag="web_search", tag_field="type", frozen=True):
    pass


class ToolChoiceWebSearchDated(ToolChoiceWebSearchField, tag="web_search_2025_08_26", frozen=True):
    pass


class ToolChoiceWebSearchPreview(ToolChoiceWebSearchField, tag="web_search_preview", frozen=True):
    pass


class ToolChoiceWebSearchPreviewDated(
    ToolChoiceWebSearchField, tag="web_search_preview_2025_03_11", frozen=True
):
    pass


ToolChoiceField: TypeAlias = (
    Literal["none", "auto", "required"]
    | ToolChoiceFunctionField
    | ToolChoiceWebSearchField
    | ToolChoiceWebSearchDated
    | ToolChoiceWebSearchPreview
    | ToolChoiceWebSearchPreviewDated
)


class WebSearchOptionsField(msgspec.Struct, frozen=True):
    """The seed schema's (and Chat's) ``web_search_options``: search on every request."""

    search_context_size: ContextSize = "medium"
    user_location: UserLocationField | None = None
    search_description: str | None = None
    extract_description: str | None = None


@dataclass(frozen=True, slots=True)
class ToolsField:
    """The validated tools: for the model, for the response's echo, and built-in search."""

    functions: tuple[ToolSpec, ...]
    echo: tuple[Tool, ...]
    web_search: WebSearchOptions | None


def tools_field(tools: Sequence[ToolField] | None) -> ToolsField:
    functions: list[ToolSpec] = []
    echo: list[Tool] = []
    web_search: WebSearchOptions | None = None
    for i, tool in enumerate(tools or ()):
        match tool:
            case FunctionToolField():
                spec, echoed = _function_tool(tool, i, {f.name for f in functions})
                functions.append(spec)
                echo.append(echoed)
            case WebSearchToolField():
                if web_search is not None:
                    raise invalid_request("Only one web_search tool may be given.", f"tools[{i}]")
                location = tool.user_location.to_location() if tool.user_location else None
                web_search = WebSearchOptions(False, tool.search_context_size, location)
                preview = isinstance(tool, (WebSearchPreviewField, WebSearchPreviewDated))
                kind = WebSearchPreviewTool if preview else WebSearchTool
                echo.append(kind(tool.search_context_size, location))
    return ToolsField(tuple(functions), tuple(echo), web_search)


def _function_tool(
    tool: FunctionToolField, i: int, taken: set[str]
) -> tuple[ToolSpec, FunctionTool]:
    if tool.function is not None:
        prefix = f"tools[{i}].function"
        name, description = tool.function.name, tool.function.description
        parameters, strict = tool.function.parameters, tool.function.strict
    elif tool.name is not None:
        prefix = f"tools[{i}]"
        name, description, parameters, strict = (
            tool.name,
            tool.description,
            tool.parameters,
            tool.strict,
        )
    else:
        raise invalid_request(
            "A function tool needs a name.", f"tools[{i}].name", "missing_required_parameter"
        )
    if not _FUNCTION_NAME.match(name):
        raise invalid_request(
            f"Invalid function name {name!r}: use 1 to 64 letters, digits, '_' or '-'.",
            f"{prefix}.name",
        )
    if name in taken:
        raise invalid_request(f"Duplicate function name {name!r}.", f"{prefix}.name")
    if parameters is not None:
        what = f"function '{name}'"
        check_json_schema(parameters, f"{prefix}.parameters", what, "invalid_function_parameters")
        if parameters.get("type", "object") != "object":
            raise invalid_request(
                f"Invalid schema for {what}: the parameters must be a JSON Schema of type "
                f"'object', got {parameters['type']!r}.",
                f"{prefix}.parameters",
                "invalid_function_parameters",
            )
    schema = parameters if parameters is not None else {"type": "object", "properties": {}}
    return (
        ToolSpec(name, description, schema, bool(strict)),
        FunctionTool(name, parameters, strict, description),
    )


def tool_policy(
    tools: ToolsField,
    choice: ToolChoiceField | None,
    options: WebSearchOptionsField | None,
) -> tuple[ToolPolicy, ToolChoice]:
    """Which tools the model sees and must use, and ``tool_choice`` as the response echoes it."""
    web_search = tools.web_search
    if options is not None:
        location = options.user_location.to_location() if options.user_location else None
        web_search = WebSearchOptions(
            True,
            options.search_context_size,
            location,
            options.search_description,
            options.extract_description,
        )
    names = {f.name for f in tools.functions}
    match choice:
        case None | "auto" | "none":
            mode = choice or "auto"
            return ToolPolicy(tools.functions, mode, None, web_search), mode
        case "required":
            if not names and web_search is None:
                raise invalid_request(
                    "tool_choice 'required' needs at least one tool.", "tool_choice"
                )
            return ToolPolicy(tools.functions, "required", None, web_search), "required"
        case ToolChoiceFunctionField():
            name = choice.function.name if choice.function is not None else choice.name
            if name is None:
                raise invalid_request(
                    "tool_choice of type function needs the function's name.",
                    "tool_choice",
                    "missing_required_parameter",
                )
            if name not in names:
                raise invalid_request(
                    f"tool_choice names the function {name!r}, which is not among the tools.",
                    "tool_choice",
                )
            return (
                ToolPolicy(tools.functions, "auto", name, web_search),
                ToolChoiceFunction(name),
            )
        case ToolChoiceWebSearchField():
            if web_search is None:
                raise invalid_request(
                    "tool_choice web_search needs a web_search tool (or web_search_options).",
                    "tool_choice",
                )
            forced = WebSearchOptions(
                True,
                web_search.search_context_size,
                web_search.user_location,
                web_search.search_description,
                web_search.extract_description,
            )
            return ToolPolicy(tools.functions, "auto", None, forced), ToolChoiceWebSearch()
