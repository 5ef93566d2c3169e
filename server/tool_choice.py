"""``tool_choice``, validated against the tools into a
:class:`~exloop.orchestrator.spec.ToolPolicy` and the value the response echoes.

Accepted, in the Responses' flat shapes and Chat's nested ones alike: ``none`` / ``auto`` /
``required``; a function (``{"type": "function", "name"}``, or Chat's ``function.name``; a
namespaced function as ``namespace.name`` or with ``namespace``); a custom tool (``{"type":
"custom", "name"}``, or Chat's ``custom.name``); ``allowed_tools`` (``mode`` and ``tools``,
flat or under Chat's ``allowed_tools``), whose entries name functions, custom tools,
namespaces, MCP servers, web search or the tool search; an MCP server's tool (``{"type":
"mcp", "server_label", "name"}``); and a forced web search, echoed as ``{"type":
"web_search_preview"}`` (what the ``openai`` SDK's ``ToolChoiceTypes`` accepts).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal, TypeAlias

import msgspec

from exloop.orchestrator.spec import McpChoice, ToolPolicy, WebSearchOptions
from exloop.orchestrator.tool_defs import (
    ToolChoice,
    ToolChoiceAllowed,
    ToolChoiceCustom,
    ToolChoiceFunction,
    ToolChoiceMcp,
    ToolChoiceWebSearch,
    ToolSearchTool,
)
from exloop.orchestrator.toolset import TOOL_SEARCH

from .errors import invalid_request
from .mcp_fields import ToolChoiceMcpField
from .tool_fields import ToolsField, WebSearchOptionsField, web_search_options

#: The built-in tools web search gives the model.
_WEB_TOOLS = frozenset({"web_search", "open_page"})
_WEB_TYPES = frozenset(
    {"web_search", "web_search_2025_08_26", "web_search_preview", "web_search_preview_2025_03_11"}
)


class NamedTool(msgspec.Struct, frozen=True):
    name: str


class ToolChoiceFunctionField(msgspec.Struct, tag="function", tag_field="type", frozen=True):
    """``{"type": "function", "name"}`` (Responses) or ``{..., "function": {"name"}}`` (Chat)."""

    name: str | None = None
    namespace: str | None = None
    function: NamedTool | None = None


class ToolChoiceCustomField(msgspec.Struct, tag="custom", tag_field="type", frozen=True):
    """``{"type": "custom", "name"}`` (Responses) or ``{..., "custom": {"name"}}`` (Chat)."""

    name: str | None = None
    namespace: str | None = None
    custom: NamedTool | None = None


class AllowedToolsBody(msgspec.Struct, frozen=True):
    tools: list[dict[str, Any]]
    mode: Literal["auto", "required"] = "auto"


class ToolChoiceAllowedField(msgspec.Struct, tag="allowed_tools", tag_field="type", frozen=True):
    """``{"type": "allowed_tools", "mode", "tools"}``, or Chat's under ``allowed_tools``."""

    mode: Literal["auto", "required"] | None = None
    tools: list[dict[str, Any]] | None = None
    allowed_tools: AllowedToolsBody | None = None


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
    | ToolChoiceMcpField
    | ToolChoiceFunctionField
    | ToolChoiceCustomField
    | ToolChoiceAllowedField
    | ToolChoiceWebSearchField
    | ToolChoiceWebSearchDated
    | ToolChoiceWebSearchPreview
    | ToolChoiceWebSearchPreviewDated
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
    web_search = web_search_options(options) if options is not None else tools.web_search
    policy = ToolPolicy(tools.tools, "auto", None, None, web_search, tools.mcp)
    match choice:
        case None | "auto" | "none":
            mode = choice or "auto"
            return replace(policy, mode=mode), mode
        case "required":
            # Whether any tool is offered (the server's own MCP tools count) is checked by
            # the orchestrator, which knows them.
            return replace(policy, mode="required"), "required"
        case ToolChoiceMcpField(server_label=label, name=tool_name):
            if label is None:
                raise invalid_request(
                    "tool_choice of type mcp needs a server_label.",
                    "tool_choice.server_label",
                    "missing_required_parameter",
                )
            if label not in {server.label for server in tools.mcp}:
                raise invalid_request(
                    f"tool_choice names the MCP server {label!r}, which is not among the tools.",
                    "tool_choice.server_label",
                )
            return (
                replace(policy, forced_mcp=McpChoice(label, tool_name)),
                ToolChoiceMcp(label, tool_name),
            )
        case ToolChoiceFunctionField():
            name = choice.function.name if choice.function is not None else choice.name
            forced = _named(name, choice.namespace, tools.functions, "function")
            return replace(policy, forced=forced), ToolChoiceFunction(name or forced)
        case ToolChoiceCustomField():
            name = choice.custom.name if choice.custom is not None else choice.name
            forced = _named(name, choice.namespace, tools.customs, "custom")
            return replace(policy, forced=forced), ToolChoiceCustom(name or forced)
        case ToolChoiceAllowedField():
            body = choice.allowed_tools
            allowed_mode = body.mode if body is not None else choice.mode or "auto"
            listed = body.tools if body is not None else choice.tools
            param = "tool_choice.allowed_tools.tools" if body is not None else "tool_choice.tools"
            if listed is None:
                raise invalid_request(
                    "tool_choice allowed_tools needs its tools.",
                    param,
                    "missing_required_parameter",
                )
            allowed = _allowed(listed, tools, web_search, param)
            return (
                replace(policy, mode=allowed_mode, allowed=allowed),
                ToolChoiceAllowed(allowed_mode, listed),
            )
        case ToolChoiceWebSearchField():
            if web_search is None:
                raise invalid_request(
                    "tool_choice web_search needs a web_search tool (or web_search_options).",
                    "tool_choice",
                )
            forced_search = replace(web_search, forced=True)
            return replace(policy, web_search=forced_search), ToolChoiceWebSearch()


def _named(
    name: str | None,
    namespace: str | None,
    known: frozenset[str],
    kind: Literal["function", "custom"],
    param: str = "tool_choice",
) -> str:
    """The name the model knows the tool ``tool_choice`` names by: ``namespace.name``, or a
    name that is unique among the namespaces' tools."""
    if name is None:
        raise invalid_request(
            f"tool_choice of type {kind} needs the tool's name.",
            param,
            "missing_required_parameter",
        )
    wanted = f"{namespace}.{name}" if namespace else name
    if wanted in known:
        return wanted
    inside = [k for k in known if k.rpartition(".")[2] == wanted]
    if len(inside) == 1:
        return inside[0]
    raise invalid_request(
        f"tool_choice names the {kind} tool {wanted!r}, which is not among the tools.", param
    )


def _allowed(
    listed: list[dict[str, Any]],
    tools: ToolsField,
    web_search: WebSearchOptions | None,
    param: str,
) -> frozenset[str]:
    """The names ``allowed_tools`` lets the model call (``"ns."`` for a whole namespace)."""
    if not listed or len(listed) > tools.max_tools:
        raise invalid_request(f"allowed_tools takes 1 to {tools.max_tools} tools.", param)
    allowed: set[str] = set()
    for i, entry in enumerate(listed):
        where = f"{param}[{i}]"
        kind = entry.get("type")
        if kind in ("function", "custom"):
            nested = entry.get(kind)
            name = nested.get("name") if isinstance(nested, dict) else entry.get("name")
            namespace = entry.get("namespace")
            if not isinstance(name, str) or not isinstance(namespace, str | None):
                raise invalid_request("An allowed tool needs a name.", f"{where}.name")
            known = tools.functions if kind == "function" else tools.customs
            allowed.add(_named(name, namespace, known, kind, where))
        elif kind == "namespace":
            name = entry.get("name")
            if name not in tools.namespaces:
                raise invalid_request(f"No namespace named {name!r}.", f"{where}.name")
            allowed.add(f"{name}.")
        elif kind in _WEB_TYPES:
            if web_search is None:
                raise invalid_request("Web search is not among the tools.", where)
            allowed |= _WEB_TOOLS
        elif kind == TOOL_SEARCH:
            if not any(isinstance(t, ToolSearchTool) for t in tools.tools):
                raise invalid_request("tool_search is not among the tools.", where)
            allowed.add(TOOL_SEARCH)
        elif kind == "mcp":
            label = entry.get("server_label")
            if label not in {server.label for server in tools.mcp}:
                raise invalid_request(f"No mcp tool with server_label {label!r}.", where)
            allowed.add(f"mcp:{label}")
        else:
            raise invalid_request(
                f"Tools of type {kind!r} cannot be allowed here.",
                f"{where}.type",
                "unsupported_value",
            )
    return frozenset(allowed)
