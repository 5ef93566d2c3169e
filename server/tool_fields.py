"""Tools, ``tool_choice`` and ``web_search_options``, validated into a
:class:`~exloop.orchestrator.spec.ToolPolicy`.

Function tools come in the Responses' flat form and in Chat's (and the seed schema's) nested
``function`` form alike; each one's ``parameters`` must be a JSON Schema of an object. Web
search comes as a ``web_search`` tool (the model decides when to search) or as
``web_search_options`` (every request searches). Remote MCP servers come as ``mcp`` tools
(Responses only), each field bounded.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeAlias

import msgspec

from exloop.engine.protocol import ToolSpec
from exloop.orchestrator.resource import (
    FunctionTool,
    McpApprovalFilterEcho,
    McpFilterEcho,
    McpTool,
    Tool,
    ToolChoice,
    ToolChoiceFunction,
    ToolChoiceMcp,
    ToolChoiceWebSearch,
    UserLocation,
    WebSearchPreviewTool,
    WebSearchTool,
)
from exloop.orchestrator.spec import (
    NO_APPROVAL,
    McpApproval,
    McpChoice,
    McpServerSpec,
    McpToolFilter,
    ToolPolicy,
    WebSearchOptions,
)

from .errors import invalid_request
from .format_fields import check_json_schema
from .schema_bounds import SchemaBudget

ContextSize: TypeAlias = Literal["low", "medium", "high"]

_FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: Header names: RFC 9110 tokens.
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$")
#: Bounds on an ``mcp`` tool's fields.
MAX_MCP_SERVERS = 16
MAX_URL_CHARS = 2048
MAX_HEADERS = 64
MAX_HEADER_CHARS = 8192
MAX_DESCRIPTION_CHARS = 8192
MAX_TOOL_NAMES = 256
MAX_TOOL_NAME_CHARS = 128


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


class McpFilterField(msgspec.Struct, frozen=True):
    tool_names: list[str] | None = None
    read_only: bool | None = None


class McpApprovalFilterField(msgspec.Struct, frozen=True):
    always: McpFilterField | None = None
    never: McpFilterField | None = None


class McpToolField(msgspec.Struct, tag="mcp", tag_field="type", frozen=True):
    """OpenAI's remote MCP tool."""

    server_label: str | None = None
    server_url: str | None = None
    connector_id: str | None = None
    tunnel_id: str | None = None
    headers: dict[str, str] | None = None
    authorization: str | None = None
    server_description: str | None = None
    allowed_tools: list[str] | McpFilterField | None = None
    require_approval: Literal["always", "never"] | McpApprovalFilterField | None = None
    defer_loading: bool | None = None
    allowed_callers: list[str] | None = None


ToolField: TypeAlias = (
    FunctionToolField
    | WebSearchToolField
    | WebSearchToolDated
    | WebSearchPreviewField
    | WebSearchPreviewDated
    | McpToolField
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


class ToolChoiceMcpField(msgspec.Struct, tag="mcp", tag_field="type", frozen=True):
    server_label: str | None = None
    name: str | None = None


ToolChoiceField: TypeAlias = (
    Literal["none", "auto", "required"]
    | ToolChoiceMcpField
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
    mcp: tuple[McpServerSpec, ...] = ()


def tools_field(tools: Sequence[ToolField] | None, budget: SchemaBudget) -> ToolsField:
    """The tools, each checked (at most ``max_tools`` of them, their schemas within the
    request's limits)."""
    limit = budget.limits.max_tools
    if tools is not None and len(tools) > limit:
        raise invalid_request(
            f"tools may hold at most {limit} tools, got {len(tools)}.", "tools", "too_many_tools"
        )
    functions: list[ToolSpec] = []
    echo: list[Tool] = []
    web_search: WebSearchOptions | None = None
    mcp: list[McpServerSpec] = []
    for i, tool in enumerate(tools or ()):
        match tool:
            case McpToolField():
                server, mcp_echo = _mcp_tool(tool, f"tools[{i}]", {s.label for s in mcp})
                mcp.append(server)
                echo.append(mcp_echo)
            case FunctionToolField():
                spec, echoed = _function_tool(tool, i, {f.name for f in functions}, budget)
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
    if len(mcp) > MAX_MCP_SERVERS:
        raise invalid_request(f"At most {MAX_MCP_SERVERS} mcp tools may be given.", "tools")
    return ToolsField(tuple(functions), tuple(echo), web_search, tuple(mcp))


def _mcp_tool(tool: McpToolField, prefix: str, taken: set[str]) -> tuple[McpServerSpec, McpTool]:
    for name in ("connector_id", "tunnel_id"):
        if getattr(tool, name) is not None:
            raise invalid_request(
                f"{name} is not supported: this self-hosted server has no service connectors "
                "or tunnels. Give the MCP server's server_url instead.",
                f"{prefix}.{name}",
                "unsupported_parameter",
            )
    if tool.defer_loading:
        raise invalid_request(
            "defer_loading is not supported on mcp tools; the server's tools are listed "
            "when the response starts.",
            f"{prefix}.defer_loading",
            "unsupported_value",
        )
    if tool.allowed_callers is not None and set(tool.allowed_callers) != {"direct"}:
        raise invalid_request(
            "Only allowed_callers ['direct'] is supported.",
            f"{prefix}.allowed_callers",
            "unsupported_value",
        )
    label = tool.server_label
    if label is None:
        raise invalid_request(
            "An mcp tool needs a server_label.",
            f"{prefix}.server_label",
            "missing_required_parameter",
        )
    if not _FUNCTION_NAME.match(label):
        raise invalid_request(
            f"Invalid server_label {label!r}: use 1 to 64 letters, digits, '_' or '-'.",
            f"{prefix}.server_label",
        )
    if label in taken:
        raise invalid_request(f"Duplicate server_label {label!r}.", f"{prefix}.server_label")
    url = tool.server_url
    if url is None:
        raise invalid_request(
            "An mcp tool needs a server_url.", f"{prefix}.server_url", "missing_required_parameter"
        )
    if len(url) > MAX_URL_CHARS or not re.match(r"^https?://[^/?#\s]+", url):
        raise invalid_request(
            f"server_url must be an absolute http or https URL of at most {MAX_URL_CHARS} "
            "characters.",
            f"{prefix}.server_url",
        )
    headers = dict(tool.headers or {})
    if len(headers) > MAX_HEADERS:
        raise invalid_request(f"At most {MAX_HEADERS} headers may be given.", f"{prefix}.headers")
    for name, value in headers.items():
        if not _HEADER_NAME.match(name) or len(value) > MAX_HEADER_CHARS or "\n" in value:
            raise invalid_request(f"Invalid header {name!r}.", f"{prefix}.headers")
    if tool.authorization is not None:
        if len(tool.authorization) > MAX_HEADER_CHARS or "\n" in tool.authorization:
            raise invalid_request("Invalid authorization token.", f"{prefix}.authorization")
        headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        headers["Authorization"] = f"Bearer {tool.authorization}"
    description = tool.server_description
    if description is not None and len(description) > MAX_DESCRIPTION_CHARS:
        raise invalid_request(
            f"server_description may hold at most {MAX_DESCRIPTION_CHARS} characters.",
            f"{prefix}.server_description",
        )
    allowed: McpToolFilter | None
    allowed_echo: list[str] | McpFilterEcho | None
    if isinstance(tool.allowed_tools, list):
        allowed = _mcp_filter(McpFilterField(tool.allowed_tools), f"{prefix}.allowed_tools")
        allowed_echo = list(tool.allowed_tools)
    elif tool.allowed_tools is not None:
        allowed = _mcp_filter(tool.allowed_tools, f"{prefix}.allowed_tools")
        allowed_echo = McpFilterEcho(tool.allowed_tools.tool_names, tool.allowed_tools.read_only)
    else:
        allowed, allowed_echo = None, None
    approval: McpApproval
    approval_echo: Literal["always", "never"] | McpApprovalFilterEcho
    match tool.require_approval:
        case None | "always":
            approval, approval_echo = McpApproval(), "always"
        case "never":
            approval, approval_echo = NO_APPROVAL, "never"
        case McpApprovalFilterField(always=always, never=never):
            where = f"{prefix}.require_approval"
            approval = McpApproval(
                never=_mcp_filter(never, f"{where}.never") if never else None,
                always=_mcp_filter(always, f"{where}.always") if always else None,
            )
            approval_echo = McpApprovalFilterEcho(
                McpFilterEcho(always.tool_names, always.read_only) if always else None,
                McpFilterEcho(never.tool_names, never.read_only) if never else None,
            )
    server = McpServerSpec(label, url, headers, description, allowed, approval)
    echoed = McpTool(label, url, allowed_echo, approval_echo, description)
    return server, echoed


def _mcp_filter(field: McpFilterField, param: str) -> McpToolFilter:
    names = field.tool_names
    if names is not None and (
        len(names) > MAX_TOOL_NAMES or any(len(n) > MAX_TOOL_NAME_CHARS for n in names)
    ):
        raise invalid_request(
            f"At most {MAX_TOOL_NAMES} tool names of at most {MAX_TOOL_NAME_CHARS} characters.",
            param,
        )
    return McpToolFilter(frozenset(names) if names is not None else None, field.read_only)


def _function_tool(
    tool: FunctionToolField, i: int, taken: set[str], budget: SchemaBudget
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
        check_json_schema(
            parameters, f"{prefix}.parameters", what, budget, "invalid_function_parameters"
        )
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
    *,
    parallel_tool_calls: bool | None = None,
    max_tool_calls: int | None = None,
) -> tuple[ToolPolicy, ToolChoice]:
    """Which tools the model sees and must use, how many calls it may make, and
    ``tool_choice`` as the response echoes it."""
    if max_tool_calls is not None and max_tool_calls < 0:
        raise invalid_request(
            f"max_tool_calls must be at least 0, got {max_tool_calls}.", "max_tool_calls"
        )
    policy, echoed = _choice_policy(tools, choice, options)
    forced_search = policy.web_search is not None and policy.web_search.forced
    if max_tool_calls == 0 and (forced_search or policy.forced_mcp is not None):
        raise invalid_request(
            "max_tool_calls is 0, but the request forces a built-in tool call (web_search_options, "
            "or a web_search or mcp tool_choice); allow at least one.",
            "max_tool_calls",
        )
    limits = replace(
        policy, parallel_tool_calls=parallel_tool_calls is not False, max_tool_calls=max_tool_calls
    )
    return limits, echoed


def _choice_policy(
    tools: ToolsField,
    choice: ToolChoiceField | None,
    options: WebSearchOptionsField | None,
) -> tuple[ToolPolicy, ToolChoice]:
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
    mcp = tools.mcp
    match choice:
        case None | "auto" | "none":
            mode = choice or "auto"
            return ToolPolicy(tools.functions, mode, None, web_search, mcp), mode
        case "required":
            # Whether any tool is offered (the server's own MCP tools count) is checked by
            # the orchestrator, which knows them.
            return ToolPolicy(tools.functions, "required", None, web_search, mcp), "required"
        case ToolChoiceMcpField(server_label=label, name=tool_name):
            if label is None:
                raise invalid_request(
                    "tool_choice of type mcp needs a server_label.",
                    "tool_choice.server_label",
                    "missing_required_parameter",
                )
            if label not in {server.label for server in mcp}:
                raise invalid_request(
                    f"tool_choice names the MCP server {label!r}, which is not among the tools.",
                    "tool_choice.server_label",
                )
            mcp_choice = McpChoice(label, tool_name)
            return (
                ToolPolicy(tools.functions, "auto", None, web_search, mcp, mcp_choice),
                ToolChoiceMcp(label, tool_name),
            )
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
                ToolPolicy(tools.functions, "auto", name, web_search, mcp),
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
            return ToolPolicy(tools.functions, "auto", None, forced, mcp), ToolChoiceWebSearch()
