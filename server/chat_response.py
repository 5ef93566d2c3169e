"""Chat Completions answers, built from a response run: ``chat.completion`` objects from the
final response, and ``chat.completion.chunk``\\ s from its events as they arrive.

Function calls are ``tool_calls`` entries of type ``function``; custom tool calls, of type
``custom`` with ``custom: {name, input}`` (OpenAI's ``ChatCompletionMessageCustomToolCall``),
streamed as ``custom.input`` pieces the way function arguments stream. A namespaced function
is named ``namespace.name`` (Chat has no namespaces).
"""

from __future__ import annotations

from typing import Literal, TypeAlias

import msgspec

from exloop.orchestrator import events as ev
from exloop.orchestrator.items import (
    CustomToolCall,
    FunctionCall,
    Logprob,
    Message,
    OutputText,
    Reasoning,
)
from exloop.orchestrator.resource import Response
from exloop.orchestrator.toolset import qualified

FinishReason: TypeAlias = Literal["stop", "length", "tool_calls", "content_filter"]


class CalledFunction(msgspec.Struct, frozen=True):
    name: str
    arguments: str


# Tagged by ``type``: the message's ``tool_calls`` mixes both, and its schema says which is which.
class ToolCall(msgspec.Struct, frozen=True, tag="function", tag_field="type"):
    id: str
    function: CalledFunction


class CalledCustom(msgspec.Struct, frozen=True):
    name: str
    input: str


class CustomCall(msgspec.Struct, frozen=True, tag="custom", tag_field="type"):
    id: str
    custom: CalledCustom


class UrlCitationBody(msgspec.Struct, frozen=True):
    url: str
    title: str
    start_index: int
    end_index: int


class Annotation(msgspec.Struct, frozen=True):
    url_citation: UrlCitationBody
    type: Literal["url_citation"] = "url_citation"


class ChoiceLogprobs(msgspec.Struct, frozen=True, omit_defaults=False):
    content: list[Logprob] | None
    refusal: None = None


class AssistantMessage(msgspec.Struct, frozen=True, omit_defaults=False):
    """The answer, as OpenAI writes it: ``refusal`` always there (null), ``annotations``
    always a list, ``tool_calls`` only when the model made calls."""

    content: str | None
    annotations: list[Annotation]
    tool_calls: list[ToolCall | CustomCall] | msgspec.UnsetType = msgspec.UNSET
    refusal: str | None = None
    role: Literal["assistant"] = "assistant"
    #: A thinking model's reasoning, as vLLM and llama-server name it (absent otherwise).
    reasoning_content: str | msgspec.UnsetType = msgspec.UNSET


class Choice(msgspec.Struct, frozen=True, omit_defaults=False):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: ChoiceLogprobs | None = None


class PromptTokensDetails(msgspec.Struct, frozen=True):
    cached_tokens: int = 0


class CompletionTokensDetails(msgspec.Struct, frozen=True):
    reasoning_tokens: int = 0


class CompletionUsage(msgspec.Struct, frozen=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails
    completion_tokens_details: CompletionTokensDetails


class ChatCompletion(msgspec.Struct, frozen=True, omit_defaults=False):
    id: str
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage | None
    system_fingerprint: str
    object: Literal["chat.completion"] = "chat.completion"
    service_tier: str = "default"


class ChunkFunction(msgspec.Struct, frozen=True, omit_defaults=True):
    name: str | None = None
    arguments: str | None = None


class ChunkCustom(msgspec.Struct, frozen=True, omit_defaults=True):
    name: str | None = None
    input: str | None = None


class ChunkToolCall(msgspec.Struct, frozen=True, omit_defaults=True):
    index: int
    id: str | None = None
    type: Literal["function", "custom"] | None = None
    function: ChunkFunction | None = None
    custom: ChunkCustom | None = None


class ChoiceDelta(msgspec.Struct, frozen=True, omit_defaults=True):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ChunkToolCall] | None = None


class ChunkChoice(msgspec.Struct, frozen=True, omit_defaults=False):
    index: int
    delta: ChoiceDelta
    finish_reason: FinishReason | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(msgspec.Struct, frozen=True, omit_defaults=False):
    id: str
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | None
    system_fingerprint: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    service_tier: str = "default"


class ChunkError(msgspec.Struct, frozen=True, omit_defaults=False):
    message: str
    type: str
    param: str | None
    code: str | None


class ChunkErrorEnvelope(msgspec.Struct, frozen=True):
    """A stream's error, as OpenAI's SDK reads it from a ``data:`` line."""

    error: ChunkError


def completion_id(response_id: str) -> str:
    return "chatcmpl-" + response_id.removeprefix("resp_")


def finish_reason(response: Response) -> FinishReason:
    """Chat's finish reason for a finished response."""
    if response.incomplete_details is not None:
        match response.incomplete_details.reason:
            case "max_output_tokens":
                return "length"
            case "content_filter":
                return "content_filter"
    if any(isinstance(item, FunctionCall | CustomToolCall) for item in response.output):
        return "tool_calls"
    return "stop"


def usage(response: Response) -> CompletionUsage | None:
    if response.usage is None:
        return None
    return CompletionUsage(
        prompt_tokens=response.usage.input_tokens,
        completion_tokens=response.usage.output_tokens,
        total_tokens=response.usage.total_tokens,
        prompt_tokens_details=PromptTokensDetails(
            response.usage.input_tokens_details.cached_tokens
        ),
        completion_tokens_details=CompletionTokensDetails(
            response.usage.output_tokens_details.reasoning_tokens
        ),
    )


def chat_completion(response: Response, *, logprobs: bool, fingerprint: str) -> ChatCompletion:
    """The ``chat.completion`` for a finished response: every text part of its output joined
    into one message (annotation offsets moved along), and its function calls.
    ``fingerprint`` is the server's ``system_fingerprint``."""
    content = ""
    annotations: list[Annotation] = []
    token_logprobs: list[Logprob] = []
    calls: list[ToolCall | CustomCall] = []
    thoughts: list[str] = []
    for item in response.output:
        if isinstance(item, Reasoning):
            thoughts.append(item.text)
        elif isinstance(item, Message):
            for part in item.content:
                if not isinstance(part, OutputText):
                    continue
                offset = len(content)
                content += part.text
                token_logprobs.extend(part.logprobs)
                annotations.extend(
                    Annotation(
                        UrlCitationBody(
                            a.url, a.title, a.start_index + offset, a.end_index + offset
                        )
                    )
                    for a in part.annotations
                )
        elif isinstance(item, FunctionCall):
            name = qualified(item.name, item.namespace)
            calls.append(ToolCall(item.call_id, CalledFunction(name, item.arguments)))
        elif isinstance(item, CustomToolCall):
            name = qualified(item.name, item.namespace)
            calls.append(CustomCall(item.call_id, CalledCustom(name, item.input)))
    message = AssistantMessage(
        content=content if content or not calls else None,
        annotations=annotations,
        tool_calls=calls or msgspec.UNSET,
        reasoning_content="\n\n".join(thoughts) if thoughts else msgspec.UNSET,
    )
    return ChatCompletion(
        id=completion_id(response.id),
        created=response.created_at,
        model=response.model,
        choices=[
            Choice(
                0,
                message,
                finish_reason(response),
                ChoiceLogprobs(token_logprobs) if logprobs else None,
            )
        ],
        usage=usage(response),
        system_fingerprint=fingerprint,
    )


class ChunkStream:
    """Turns one run's events into ``chat.completion.chunk``\\ s (or one stream error)."""

    def __init__(
        self,
        response_id: str,
        created: int,
        model: str,
        *,
        logprobs: bool,
        include_usage: bool,
        fingerprint: str,
    ) -> None:
        self._id = completion_id(response_id)
        self._created = created
        self._model = model
        self._logprobs = logprobs
        self._include_usage = include_usage
        self._fingerprint = fingerprint
        #: Tool call index of each function_call item, by item id.
        self._calls: dict[str, int] = {}
        #: A failed run logs an ``error`` event and ``response.failed``: one error is sent.
        self._failed = False

    def chunks(self, event: ev.StreamEvent) -> list[ChatCompletionChunk | ChunkErrorEnvelope]:
        """The chunks ``event`` makes (often none)."""
        match event:
            case ev.ResponseCreated():
                return [self._delta(ChoiceDelta(role="assistant", content=""))]
            case ev.OutputTextDelta(delta=delta, logprobs=logprobs):
                return [
                    self._delta(
                        ChoiceDelta(content=delta),
                        ChoiceLogprobs(logprobs) if self._logprobs else None,
                    )
                ]
            case ev.ReasoningTextDelta(delta=delta):
                return [self._delta(ChoiceDelta(reasoning_content=delta))]
            case ev.OutputItemAdded(item=FunctionCall() as call):
                index = self._calls.setdefault(call.id or call.call_id, len(self._calls))
                name = qualified(call.name, call.namespace)
                opened = ChunkToolCall(index, call.call_id, "function", ChunkFunction(name, ""))
                return [self._calls_delta(opened)]
            case ev.OutputItemAdded(item=CustomToolCall() as custom):
                index = self._calls.setdefault(custom.id or custom.call_id, len(self._calls))
                name = qualified(custom.name, custom.namespace)
                opened = ChunkToolCall(
                    index, custom.call_id, "custom", custom=ChunkCustom(name, "")
                )
                return [self._calls_delta(opened)]
            case ev.FunctionCallArgumentsDelta(item_id=item_id, delta=delta):
                more = ChunkToolCall(self._calls[item_id], function=ChunkFunction(arguments=delta))
                return [self._calls_delta(more)]
            case ev.CustomToolCallInputDelta(item_id=item_id, delta=delta):
                more = ChunkToolCall(self._calls[item_id], custom=ChunkCustom(input=delta))
                return [self._calls_delta(more)]
            case ev.ErrorEvent(message=message, param=param, code=code):
                return self._error(ChunkError(message, "server_error", param, code))
            case ev.ResponseFailed(response=Response(error=error)):
                message = error.message if error else "The response failed."
                code = error.code if error else "server_error"
                return self._error(ChunkError(message, "server_error", None, code))
            case ev.ResponseCompleted() | ev.ResponseIncomplete() | ev.ResponseCancelled():
                response = event.response
                final: list[ChatCompletionChunk | ChunkErrorEnvelope] = [
                    self._delta(ChoiceDelta(), finish=finish_reason(response))
                ]
                if self._include_usage:
                    final.append(self._chunk([], usage(response)))
                return final
            case _:
                return []

    def _calls_delta(self, call: ChunkToolCall) -> ChatCompletionChunk:
        return self._delta(ChoiceDelta(tool_calls=[call]))

    def _error(self, error: ChunkError) -> list[ChatCompletionChunk | ChunkErrorEnvelope]:
        if self._failed:
            return []
        self._failed = True
        return [ChunkErrorEnvelope(error)]

    def _delta(
        self,
        delta: ChoiceDelta,
        logprobs: ChoiceLogprobs | None = None,
        finish: FinishReason | None = None,
    ) -> ChatCompletionChunk:
        return self._chunk([ChunkChoice(0, delta, finish, logprobs)], None)

    def _chunk(
        self, choices: list[ChunkChoice], usage: CompletionUsage | None
    ) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            self._id, self._created, self._model, choices, usage, self._fingerprint
        )
