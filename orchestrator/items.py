"""Conversation items, shaped and named exactly as the Responses API serializes them.

The same types are input (what a client sends or replays) and output (what a response
holds), so a client can send back any output item as input unchanged. The server decodes JSON
into these with :data:`Item` as a tagged union on ``type``.
"""

from __future__ import annotations

import secrets
from typing import Any, Literal, TypeAlias

import msgspec

from .tool_defs import LoadedTool, ToolSearchExecution

ItemStatus: TypeAlias = Literal["in_progress", "completed", "incomplete"]
MessageRole: TypeAlias = Literal["user", "assistant", "system", "developer"]


def new_id(prefix: str) -> str:
    """An OpenAI-style id such as ``msg_…`` or ``fc_…`` (unguessable, 48 hex digits)."""
    return f"{prefix}_{secrets.token_hex(24)}"


class TopLogprob(msgspec.Struct, frozen=True):
    token: str
    logprob: float
    bytes: list[int]


class Logprob(msgspec.Struct, frozen=True):
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprob]


class UrlCitation(msgspec.Struct, tag="url_citation", tag_field="type", frozen=True):
    """A source the answer cites: ``text[start_index:end_index]`` refers to ``url``."""

    url: str
    title: str
    start_index: int
    end_index: int


class InputText(msgspec.Struct, tag="input_text", tag_field="type", frozen=True):
    text: str


class OutputText(msgspec.Struct, tag="output_text", tag_field="type", frozen=True):
    text: str
    annotations: list[UrlCitation] = []
    logprobs: list[Logprob] = []


class Refusal(msgspec.Struct, tag="refusal", tag_field="type", frozen=True):
    refusal: str


ContentPart: TypeAlias = InputText | OutputText | Refusal


class Message(msgspec.Struct, tag="message", tag_field="type", frozen=True):
    role: MessageRole
    content: list[ContentPart]
    id: str | None = None
    status: ItemStatus | None = None

    @property
    def text(self) -> str:
        """The message's text parts joined (refusals read as their text)."""
        return "".join(
            part.refusal if isinstance(part, Refusal) else part.text for part in self.content
        )


class FunctionCall(
    msgspec.Struct, tag="function_call", tag_field="type", frozen=True, omit_defaults=True
):
    call_id: str
    name: str
    arguments: str
    id: str | None = None
    status: ItemStatus | None = None
    #: The namespace of a namespaced function (``name`` is then the function's own name).
    namespace: str | None = None


class FunctionCallOutput(msgspec.Struct, tag="function_call_output", tag_field="type", frozen=True):
    call_id: str
    output: str
    id: str | None = None
    status: ItemStatus | None = None


class CustomToolCall(
    msgspec.Struct, tag="custom_tool_call", tag_field="type", frozen=True, omit_defaults=True
):
    """A call of a custom (freeform) tool: ``input`` is the raw text the model wrote."""

    call_id: str
    name: str
    input: str
    id: str | None = None
    status: ItemStatus | None = None
    namespace: str | None = None


class CustomToolCallOutput(
    msgspec.Struct, tag="custom_tool_call_output", tag_field="type", frozen=True
):
    call_id: str
    output: str
    id: str | None = None
    status: ItemStatus | None = None


class ToolSearchCall(msgspec.Struct, tag="tool_search_call", tag_field="type", frozen=True):
    """The model searched the deferred tools, with ``arguments`` (``{"query": ...}`` unless a
    client-run search defines its own parameters)."""

    arguments: dict[str, Any]
    execution: ToolSearchExecution = "client"
    call_id: str | None = None
    id: str | None = None
    status: ItemStatus | None = None


class ToolSearchOutput(msgspec.Struct, tag="tool_search_output", tag_field="type", frozen=True):
    """The tools a search loaded: from here on the model sees and may call them."""

    tools: list[LoadedTool]
    execution: ToolSearchExecution = "client"
    call_id: str | None = None
    id: str | None = None
    status: ItemStatus | None = None


class AdditionalTools(msgspec.Struct, tag="additional_tools", tag_field="type", frozen=True):
    """Tools a developer makes available from this point of the conversation on."""

    tools: list[LoadedTool]
    role: Literal["developer"] = "developer"
    id: str | None = None


class SummaryText(msgspec.Struct, tag="summary_text", tag_field="type", frozen=True):
    text: str


class ReasoningText(msgspec.Struct, tag="reasoning_text", tag_field="type", frozen=True):
    text: str


class Reasoning(msgspec.Struct, tag="reasoning", tag_field="type", frozen=True):
    """A thinking model's reasoning before its answer or calls: the text in ``content``,
    sealed in ``encrypted_content`` when the request includes ``reasoning.encrypted_content``.
    Replayed as input, it is shown again to a model that thinks and to no other."""

    summary: list[SummaryText] = []
    id: str | None = None
    content: list[ReasoningText] | None = None
    encrypted_content: str | None = None
    status: ItemStatus | None = None

    @property
    def text(self) -> str:
        return "".join(part.text for part in self.content or ())


class Compaction(msgspec.Struct, tag="compaction", tag_field="type", frozen=True):
    """The conversation so far, summarized by the model and sealed: what
    ``/v1/responses/compact`` (or compaction inside a response) returns for the client to send
    back in place of the turns it replaces."""

    encrypted_content: str
    id: str | None = None
    #: Kept when a client sends it back; omitted otherwise (OpenAI's schema types it a string).
    created_by: str | msgspec.UnsetType = msgspec.UNSET


class SearchSource(msgspec.Struct, tag="url", tag_field="type", frozen=True):
    url: str


class SearchAction(msgspec.Struct, tag="search", tag_field="type", frozen=True):
    query: str
    sources: list[SearchSource] = []


class OpenPageAction(msgspec.Struct, tag="open_page", tag_field="type", frozen=True):
    url: str


WebSearchAction: TypeAlias = SearchAction | OpenPageAction
WebSearchStatus: TypeAlias = Literal[
    "in_progress", "searching", "completed", "failed", "incomplete"
]


class WebSearchCall(msgspec.Struct, tag="web_search_call", tag_field="type", frozen=True):
    """A built-in web search (or page open) the server ran during the response."""

    id: str
    status: WebSearchStatus
    action: WebSearchAction


class McpListToolsTool(msgspec.Struct, frozen=True):
    """One tool of an MCP server, as ``mcp_list_tools`` lists it."""

    name: str
    input_schema: dict[str, Any]
    description: str | None = None
    annotations: dict[str, Any] | None = None


class McpListTools(msgspec.Struct, tag="mcp_list_tools", tag_field="type", frozen=True):
    """The tools the server listed on an MCP server (``error`` set if it could not)."""

    id: str
    server_label: str
    tools: list[McpListToolsTool]
    error: str | None = None


class McpProtocolError(msgspec.Struct, tag="mcp_protocol_error", tag_field="type", frozen=True):
    code: int
    message: str


class McpToolExecutionError(
    msgspec.Struct, tag="mcp_tool_execution_error", tag_field="type", frozen=True
):
    """The tool reported an error; ``content`` holds its MCP content blocks."""

    content: list[dict[str, Any]]


class McpHttpError(msgspec.Struct, tag="http_error", tag_field="type", frozen=True):
    code: int
    message: str


McpCallError: TypeAlias = McpProtocolError | McpToolExecutionError | McpHttpError
McpCallStatus: TypeAlias = Literal["in_progress", "completed", "incomplete", "calling", "failed"]


class McpCall(msgspec.Struct, tag="mcp_call", tag_field="type", frozen=True):
    """A tool call on an MCP server, run by the server (``output`` or ``error``)."""

    id: str
    server_label: str
    name: str
    arguments: str
    output: str | None = None
    error: McpCallError | None = None
    status: McpCallStatus | None = None
    approval_request_id: str | None = None


class McpApprovalRequest(msgspec.Struct, tag="mcp_approval_request", tag_field="type", frozen=True):
    """A call the model made that waits for the client's approval."""

    id: str
    server_label: str
    name: str
    arguments: str


class McpApprovalResponse(
    msgspec.Struct, tag="mcp_approval_response", tag_field="type", frozen=True
):
    """The client's answer to an ``mcp_approval_request`` (an input item)."""

    approval_request_id: str
    approve: bool
    id: str | None = None
    reason: str | None = None


class ItemReference(msgspec.Struct, tag="item_reference", tag_field="type", frozen=True):
    """An input item that points at an item of a stored response by id."""

    id: str


#: Every item a response's input or output may hold.
Item: TypeAlias = (
    Message
    | FunctionCall
    | FunctionCallOutput
    | CustomToolCall
    | CustomToolCallOutput
    | ToolSearchCall
    | ToolSearchOutput
    | AdditionalTools
    | Reasoning
    | WebSearchCall
    | McpListTools
    | McpCall
    | McpApprovalRequest
    | McpApprovalResponse
    | Compaction
    | ItemReference
)
#: Items a response produces.
OutputItem: TypeAlias = (
    Message
    | FunctionCall
    | CustomToolCall
    | ToolSearchCall
    | ToolSearchOutput
    | WebSearchCall
    | McpListTools
    | McpCall
    | McpApprovalRequest
    | Reasoning
    | Compaction
)
