"""Tool definitions and ``tool_choice`` as the Responses API serializes them.

A request's ``tools`` hold these; a response echoes them; and conversation items carry client
tool definitions too (``additional_tools``, and the deferred tools a ``tool_search_output``
loads). Client tools are functions, custom (freeform) tools, namespaces grouping both, and the
``tool_search`` tool; web search is the server's own, and remote MCP servers (``mcp``) are
the server's to call.
"""

from __future__ import annotations

from typing import Any, Literal, TypeAlias

import msgspec

ToolSearchExecution: TypeAlias = Literal["server", "client"]


class FunctionTool(
    msgspec.Struct, tag="function", tag_field="type", frozen=True, omit_defaults=True
):
    """A client function tool, echoed with ``description`` and ``strict`` even when null."""

    name: str
    parameters: dict[str, Any] | None
    strict: bool | None
    description: str | None
    #: Left out of the prompt until a tool search loads it.
    defer_loading: bool | None = None


class CustomText(msgspec.Struct, tag="text", tag_field="type", frozen=True):
    """A custom tool's input is any text."""


class CustomGrammar(msgspec.Struct, tag="grammar", tag_field="type", frozen=True):
    """A custom tool's input is text a Lark grammar or a regular expression accepts."""

    syntax: Literal["lark", "regex"]
    definition: str


CustomFormat: TypeAlias = CustomText | CustomGrammar


class CustomTool(msgspec.Struct, tag="custom", tag_field="type", frozen=True, omit_defaults=True):
    """A custom (freeform) tool: the model writes raw text as its input, in ``format``."""

    name: str
    description: str | None = None
    format: CustomFormat | None = None
    defer_loading: bool | None = None


#: The tools a namespace groups.
NamespacedTool: TypeAlias = FunctionTool | CustomTool


class NamespaceTool(msgspec.Struct, tag="namespace", tag_field="type", frozen=True):
    """Function and custom tools under one name: the model calls ``namespace.tool``, and the
    calls carry ``namespace``."""

    name: str
    description: str
    tools: list[NamespacedTool]


class ToolSearchTool(
    msgspec.Struct, tag="tool_search", tag_field="type", frozen=True, omit_defaults=True
):
    """Searching the deferred tools: by the server (exloop ranks them), or by the client, which
    answers the ``tool_search_call`` with a ``tool_search_output``."""

    execution: ToolSearchExecution | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None


#: Tools the client defines (and runs, but for a server-side tool search).
ClientTool: TypeAlias = FunctionTool | CustomTool | NamespaceTool | ToolSearchTool
#: Tools a ``tool_search_output`` or an ``additional_tools`` item may carry.
LoadedTool: TypeAlias = FunctionTool | CustomTool | NamespaceTool


class UserLocation(msgspec.Struct, tag="approximate", tag_field="type", frozen=True):
    city: str | None = None
    country: str | None = None
    region: str | None = None
    timezone: str | None = None


ContextSize: TypeAlias = Literal["low", "medium", "high"]
SearchContentType: TypeAlias = Literal["text", "image"]


class WebSearchTool(
    msgspec.Struct, tag="web_search", tag_field="type", frozen=True, omit_defaults=True
):
    """The built-in web search as the response echoes it (the optional fields when given)."""

    search_context_size: ContextSize
    user_location: UserLocation | None
    #: False: search results only, no live page fetches.
    external_web_access: bool | None = None
    search_content_types: list[SearchContentType] | None = None


class WebSearchPreviewTool(WebSearchTool, tag="web_search_preview", frozen=True):
    """The same tool under its preview name, echoed as the request named it."""


class McpFilterEcho(msgspec.Struct, frozen=True):
    tool_names: list[str] | None = None
    read_only: bool | None = None


class McpApprovalFilterEcho(msgspec.Struct, frozen=True):
    always: McpFilterEcho | None = None
    never: McpFilterEcho | None = None


class McpTool(msgspec.Struct, tag="mcp", tag_field="type", frozen=True):
    """A remote MCP server as the response echoes it; ``headers`` and ``authorization`` are
    secrets and come back null."""

    server_label: str
    server_url: str
    allowed_tools: list[str] | McpFilterEcho | None = None
    require_approval: Literal["always", "never"] | McpApprovalFilterEcho = "always"
    server_description: str | None = None
    headers: None = None
    authorization: None = None


Tool: TypeAlias = (
    FunctionTool
    | CustomTool
    | NamespaceTool
    | ToolSearchTool
    | WebSearchTool
    | WebSearchPreviewTool
    | McpTool
)


class ToolChoiceFunction(msgspec.Struct, tag="function", tag_field="type", frozen=True):
    name: str


class ToolChoiceCustom(msgspec.Struct, tag="custom", tag_field="type", frozen=True):
    name: str


class ToolChoiceWebSearch(msgspec.Struct, tag="web_search_preview", tag_field="type", frozen=True):
    """A forced web search, echoed as the ``openai`` SDK's ``ToolChoiceTypes`` names it."""


class ToolChoiceMcp(msgspec.Struct, tag="mcp", tag_field="type", frozen=True):
    server_label: str
    name: str | None = None


class ToolChoiceAllowed(msgspec.Struct, tag="allowed_tools", tag_field="type", frozen=True):
    """The model may call only ``tools`` (all tools stay in the prompt)."""

    mode: Literal["auto", "required"]
    tools: list[dict[str, Any]]


ToolChoice: TypeAlias = (
    Literal["none", "auto", "required"]
    | ToolChoiceFunction
    | ToolChoiceCustom
    | ToolChoiceWebSearch
    | ToolChoiceMcp
    | ToolChoiceAllowed
)
