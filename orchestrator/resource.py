"""The response object as clients read it: every field of OpenAI's ``Response`` and the Open
Responses ``ResponseResource``, null where unset and never missing."""

from __future__ import annotations

from typing import Any, Literal, TypeAlias

import msgspec

from .items import OutputItem

ResponseStatus: TypeAlias = Literal[
    "queued", "in_progress", "completed", "incomplete", "cancelled", "failed"
]


class InputTokensDetails(msgspec.Struct, frozen=True):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(msgspec.Struct, frozen=True):
    reasoning_tokens: int = 0


class ResponseUsage(msgspec.Struct, frozen=True):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens_details: OutputTokensDetails


class IncompleteDetails(msgspec.Struct, frozen=True):
    reason: Literal["max_output_tokens", "content_filter", "max_tool_rounds"]


class ResponseError(msgspec.Struct, frozen=True):
    code: str
    message: str


class FormatText(msgspec.Struct, tag="text", tag_field="type", frozen=True):
    pass


class FormatJsonObject(msgspec.Struct, tag="json_object", tag_field="type", frozen=True):
    pass


class FormatJsonSchema(msgspec.Struct, tag="json_schema", tag_field="type", frozen=True):
    name: str
    schema: dict[str, Any]
    description: str | None = None
    strict: bool | None = None


TextFormat: TypeAlias = FormatText | FormatJsonObject | FormatJsonSchema


Verbosity: TypeAlias = Literal["low", "medium", "high"]


class TextConfig(msgspec.Struct, frozen=True):
    """``text`` as the response echoes it: ``verbosity`` is ``medium`` unless asked (responses
    stored before exloop echoed it keep their ``null``)."""

    format: TextFormat = FormatText()
    verbosity: Verbosity | None = "medium"


ReasoningEffort: TypeAlias = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]
ReasoningContext: TypeAlias = Literal["auto", "current_turn", "all_turns"]
SummaryMode: TypeAlias = Literal["auto", "concise", "detailed"]


class ReasoningConfig(msgspec.Struct, frozen=True):
    """``reasoning`` as the client sent it (echoed on the response)."""

    effort: ReasoningEffort | None = None
    summary: SummaryMode | None = None
    context: ReasoningContext | None = None
    #: The deprecated spelling of ``summary``.
    generate_summary: SummaryMode | None = None


class FunctionTool(msgspec.Struct, tag="function", tag_field="type", frozen=True):
    """A client function tool, echoed with ``description`` and ``strict`` even when null."""

    name: str
    parameters: dict[str, Any] | None
    strict: bool | None
    description: str | None


class UserLocation(msgspec.Struct, tag="approximate", tag_field="type", frozen=True):
    city: str | None = None
    country: str | None = None
    region: str | None = None
    timezone: str | None = None


class WebSearchTool(msgspec.Struct, tag="web_search", tag_field="type", frozen=True):
    search_context_size: Literal["low", "medium", "high"] = "medium"
    user_location: UserLocation | None = None


class WebSearchPreviewTool(msgspec.Struct, tag="web_search_preview", tag_field="type", frozen=True):
    search_context_size: Literal["low", "medium", "high"] = "medium"
    user_location: UserLocation | None = None


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


Tool: TypeAlias = FunctionTool | WebSearchTool | WebSearchPreviewTool | McpTool


class ToolChoiceFunction(msgspec.Struct, tag="function", tag_field="type", frozen=True):
    name: str


class ToolChoiceWebSearch(msgspec.Struct, tag="web_search", tag_field="type", frozen=True):
    pass


class ToolChoiceMcp(msgspec.Struct, tag="mcp", tag_field="type", frozen=True):
    server_label: str
    name: str | None = None


ToolChoice: TypeAlias = (
    Literal["none", "auto", "required"] | ToolChoiceFunction | ToolChoiceWebSearch | ToolChoiceMcp
)


class Response(msgspec.Struct, frozen=True, omit_defaults=False):
    """A response as ``GET /v1/responses/{id}`` and the stream's lifecycle events carry it."""

    id: str
    created_at: int
    status: ResponseStatus
    model: str
    output: list[OutputItem]
    tools: list[Tool]
    tool_choice: ToolChoice
    text: TextConfig
    parallel_tool_calls: bool
    truncation: Literal["auto", "disabled"]
    temperature: float
    top_p: float
    presence_penalty: float
    frequency_penalty: float
    top_logprobs: int
    store: bool
    background: bool
    metadata: dict[str, str]
    object: Literal["response"] = "response"
    completed_at: int | None = None
    incomplete_details: IncompleteDetails | None = None
    error: ResponseError | None = None
    previous_response_id: str | None = None
    instructions: str | None = None
    reasoning: ReasoningConfig | None = None
    usage: ResponseUsage | None = None
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    service_tier: str = "default"
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    user: str | None = None
