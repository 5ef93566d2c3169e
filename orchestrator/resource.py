"""The response object as clients read it: every field of OpenAI's ``Response`` and the Open
Responses ``ResponseResource``, null where unset and never missing."""

from __future__ import annotations

from typing import Any, Literal, TypeAlias

import msgspec

from .items import OutputItem
from .tool_defs import Tool, ToolChoice

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
