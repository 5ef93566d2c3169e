"""Remote MCP servers in a request: ``mcp`` tools and ``tool_choice`` naming one, validated
(Responses only). Every field is bounded; what passes a bound is a 400 naming the field.
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec

from exloop.orchestrator.spec import (
    NO_APPROVAL,
    McpApproval,
    McpServerSpec,
    McpToolFilter,
)
from exloop.orchestrator.tool_defs import McpApprovalFilterEcho, McpFilterEcho, McpTool

from .errors import invalid_request

#: A server label: OpenAI's rule for function names.
_LABEL = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
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


class ToolChoiceMcpField(msgspec.Struct, tag="mcp", tag_field="type", frozen=True):
    server_label: str | None = None
    name: str | None = None


def mcp_tool(tool: McpToolField, prefix: str, taken: set[str]) -> tuple[McpServerSpec, McpTool]:
    """A validated ``mcp`` tool: the server to reach and its echo (``taken``: the labels so
    far)."""
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
    if not _LABEL.match(label):
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
