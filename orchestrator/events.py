"""Streaming events, one frozen type per event and named exactly as the API names them.

The orchestrator appends these to a response's event log; the server turns them into SSE
text (``event: <type>`` + ``data: <json>``) and nothing else creates them.
"""

from __future__ import annotations

from typing import TypeAlias

import msgspec

from .items import Logprob, OutputItem, OutputText, ReasoningText, UrlCitation
from .resource import Response


class _Event(msgspec.Struct, frozen=True, tag_field="type", kw_only=True):
    sequence_number: int


class _Lifecycle(_Event, frozen=True, kw_only=True):
    response: Response


class ResponseCreated(_Lifecycle, frozen=True, tag="response.created"):
    pass


class ResponseQueued(_Lifecycle, frozen=True, tag="response.queued"):
    pass


class ResponseInProgress(_Lifecycle, frozen=True, tag="response.in_progress"):
    pass


class ResponseCompleted(_Lifecycle, frozen=True, tag="response.completed"):
    pass


class ResponseIncomplete(_Lifecycle, frozen=True, tag="response.incomplete"):
    pass


class ResponseFailed(_Lifecycle, frozen=True, tag="response.failed"):
    pass


class ResponseCancelled(_Lifecycle, frozen=True, tag="response.cancelled"):
    pass


class OutputItemAdded(_Event, frozen=True, kw_only=True, tag="response.output_item.added"):
    output_index: int
    item: OutputItem


class OutputItemDone(_Event, frozen=True, kw_only=True, tag="response.output_item.done"):
    output_index: int
    item: OutputItem


class _ItemEvent(_Event, frozen=True, kw_only=True):
    item_id: str
    output_index: int


class _PartEvent(_ItemEvent, frozen=True, kw_only=True):
    content_index: int


class ContentPartAdded(_PartEvent, frozen=True, kw_only=True, tag="response.content_part.added"):
    part: OutputText | ReasoningText


class ContentPartDone(_PartEvent, frozen=True, kw_only=True, tag="response.content_part.done"):
    part: OutputText | ReasoningText


class OutputTextDelta(_PartEvent, frozen=True, kw_only=True, tag="response.output_text.delta"):
    delta: str
    logprobs: list[Logprob] = []


class OutputTextDone(_PartEvent, frozen=True, kw_only=True, tag="response.output_text.done"):
    text: str
    logprobs: list[Logprob] = []


class OutputTextAnnotationAdded(
    _PartEvent, frozen=True, kw_only=True, tag="response.output_text.annotation.added"
):
    annotation_index: int
    annotation: UrlCitation


class ReasoningTextDelta(
    _PartEvent, frozen=True, kw_only=True, tag="response.reasoning_text.delta"
):
    delta: str


class ReasoningTextDone(_PartEvent, frozen=True, kw_only=True, tag="response.reasoning_text.done"):
    text: str


class CompactionCompacting(
    _ItemEvent, frozen=True, kw_only=True, tag="response.compaction.compacting"
):
    """The model is writing the summary of a compaction item (which the event does not show)."""


class FunctionCallArgumentsDelta(
    _ItemEvent, frozen=True, kw_only=True, tag="response.function_call_arguments.delta"
):
    delta: str


class FunctionCallArgumentsDone(
    _ItemEvent, frozen=True, kw_only=True, tag="response.function_call_arguments.done"
):
    name: str
    arguments: str


class CustomToolCallInputDelta(
    _ItemEvent, frozen=True, kw_only=True, tag="response.custom_tool_call_input.delta"
):
    delta: str


class CustomToolCallInputDone(
    _ItemEvent, frozen=True, kw_only=True, tag="response.custom_tool_call_input.done"
):
    input: str


class WebSearchCallInProgress(
    _ItemEvent, frozen=True, kw_only=True, tag="response.web_search_call.in_progress"
):
    pass


class WebSearchCallSearching(
    _ItemEvent, frozen=True, kw_only=True, tag="response.web_search_call.searching"
):
    pass


class WebSearchCallCompleted(
    _ItemEvent, frozen=True, kw_only=True, tag="response.web_search_call.completed"
):
    pass


class McpListToolsInProgress(
    _ItemEvent, frozen=True, kw_only=True, tag="response.mcp_list_tools.in_progress"
):
    pass


class McpListToolsCompleted(
    _ItemEvent, frozen=True, kw_only=True, tag="response.mcp_list_tools.completed"
):
    pass


class McpListToolsFailed(
    _ItemEvent, frozen=True, kw_only=True, tag="response.mcp_list_tools.failed"
):
    pass


class McpCallInProgress(_ItemEvent, frozen=True, kw_only=True, tag="response.mcp_call.in_progress"):
    pass


class McpCallArgumentsDelta(
    _ItemEvent, frozen=True, kw_only=True, tag="response.mcp_call_arguments.delta"
):
    delta: str


class McpCallArgumentsDone(
    _ItemEvent, frozen=True, kw_only=True, tag="response.mcp_call_arguments.done"
):
    arguments: str


class McpCallCompleted(_ItemEvent, frozen=True, kw_only=True, tag="response.mcp_call.completed"):
    pass


class McpCallFailed(_ItemEvent, frozen=True, kw_only=True, tag="response.mcp_call.failed"):
    pass


class ErrorEvent(_Event, frozen=True, kw_only=True, tag="error"):
    """OpenAI's flat stream error shape (not nested under ``error``)."""

    code: str | None
    message: str
    param: str | None


LifecycleEvent: TypeAlias = (
    ResponseCreated
    | ResponseQueued
    | ResponseInProgress
    | ResponseCompleted
    | ResponseIncomplete
    | ResponseFailed
    | ResponseCancelled
)

StreamEvent: TypeAlias = (
    LifecycleEvent
    | OutputItemAdded
    | OutputItemDone
    | ContentPartAdded
    | ContentPartDone
    | OutputTextDelta
    | OutputTextDone
    | OutputTextAnnotationAdded
    | ReasoningTextDelta
    | ReasoningTextDone
    | CompactionCompacting
    | FunctionCallArgumentsDelta
    | FunctionCallArgumentsDone
    | CustomToolCallInputDelta
    | CustomToolCallInputDone
    | WebSearchCallInProgress
    | WebSearchCallSearching
    | WebSearchCallCompleted
    | McpListToolsInProgress
    | McpListToolsCompleted
    | McpListToolsFailed
    | McpCallInProgress
    | McpCallArgumentsDelta
    | McpCallArgumentsDone
    | McpCallCompleted
    | McpCallFailed
    | ErrorEvent
)

#: Events after which a stream ends.
TERMINAL_EVENTS: tuple[type[_Event], ...] = (
    ResponseCompleted,
    ResponseIncomplete,
    ResponseFailed,
    ResponseCancelled,
)
