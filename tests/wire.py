"""Our JSON as clients and validators read it: each object must parse as the ``openai`` SDK's
type, as Open Responses' type (``openresponses-types``, for the Responses API) and validate
against OpenAI's published schema (:mod:`tests.openai_spec`).

Where OpenAI and Open Responses differ, we answer as OpenAI does and Open Responses' check is
left out: Open Responses defines no hosted tools (``web_search`` tools, ``web_search_call``
items and their events), no custom tools, namespaces or tool search (their tools, items and
events), and nests a stream ``error`` event's fields under ``error``, which the ``openai`` SDK
would raise as an exception instead of yielding the event.
"""

from __future__ import annotations

from typing import Any

import pydantic
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response as SdkResponse
from openai.types.responses import ResponseStreamEvent
from openresponses_types import types as open_responses

from .openai_spec import errors, event_errors, response_errors

_SDK_EVENT: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(ResponseStreamEvent)


def _open_responses_events() -> dict[str, type[pydantic.BaseModel]]:
    """Open Responses' streaming event models by the ``type`` they carry (an enum there)."""
    models = {}
    for name in dir(open_responses):
        model = getattr(open_responses, name)
        if name.endswith("StreamingEvent") and isinstance(model, type):
            kind = model.model_fields["type"].annotation
            models[next(iter(kind)).value] = model  # type: ignore[union-attr, call-overload]
    return models


#: Open Responses' streaming event models by ``type``.
OPEN_RESPONSES_EVENTS = _open_responses_events()


#: Types (of tools, items, events) that Open Responses does not define, by prefix.
_BEYOND_OPEN_RESPONSES = (
    "web_search",
    "web_search_preview",
    "web_search_call",
    "custom",
    "response.custom_tool_call",
    "namespace",
    "tool_search",
    "additional_tools",
)


def _hosted_tools_in(value: object) -> bool:
    """Whether ``value`` holds a tool Open Responses does not define, or an item or event of
    one."""
    if isinstance(value, dict):
        kind = value.get("type")
        if isinstance(kind, str) and kind.startswith(_BEYOND_OPEN_RESPONSES):
            return True
        return any(_hosted_tools_in(v) for v in value.values())
    if isinstance(value, list):
        return any(_hosted_tools_in(v) for v in value)
    return False


def check_response(response: dict[str, Any]) -> None:
    """A Responses ``response`` object."""
    SdkResponse.model_validate(response)
    if not _hosted_tools_in(response):
        open_responses.ResponseResource.model_validate(response)
    problems = response_errors(response)
    assert not problems, problems


def check_event(event: dict[str, Any]) -> None:
    """A Responses streaming event."""
    _SDK_EVENT.validate_python(event)
    model = OPEN_RESPONSES_EVENTS.get(str(event["type"]))
    if model is not None and event["type"] != "error" and not _hosted_tools_in(event):
        model.model_validate(event)
    problems = event_errors(event)
    if problems == [f"(root): OpenAI defines no streaming event {event['type']!r}"]:
        # Newer than the pinned document (e.g. response.compaction.compacting): the SDK's
        # own type, checked above, is the reference then.
        return
    assert not problems, (event["type"], problems)


def check_chat_completion(completion: dict[str, Any]) -> None:
    """A ``chat.completion``."""
    ChatCompletion.model_validate(completion)
    problems = errors("CreateChatCompletionResponse", completion)
    assert not problems, problems


def check_chat_chunk(chunk: dict[str, Any]) -> None:
    """A ``chat.completion.chunk`` (not a stream's error line)."""
    ChatCompletionChunk.model_validate(chunk)
    problems = errors("CreateChatCompletionStreamResponse", chunk)
    assert not problems, problems
