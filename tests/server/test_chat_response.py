"""Chat completion objects and chunks built from response events: no model needed."""

from __future__ import annotations

from typing import Any

import msgspec
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from exloop.orchestrator import events as ev
from exloop.orchestrator.items import (
    FunctionCall,
    Logprob,
    Message,
    OutputItem,
    OutputText,
    Reasoning,
    ReasoningText,
    TopLogprob,
    UrlCitation,
)
from exloop.orchestrator.resource import (
    IncompleteDetails,
    InputTokensDetails,
    OutputTokensDetails,
    Response,
    ResponseError,
    ResponseUsage,
    TextConfig,
)
from exloop.server.chat_response import ChunkErrorEnvelope, ChunkStream, chat_completion
from tests.openai_spec import errors

FINGERPRINT = "fp_0123456789"

USAGE = ResponseUsage(
    input_tokens=10,
    output_tokens=5,
    total_tokens=15,
    input_tokens_details=InputTokensDetails(cached_tokens=4),
    output_tokens_details=OutputTokensDetails(),
)
LOGPROB = Logprob("Hi", -0.1, [72, 105], [TopLogprob("Hi", -0.1, [72, 105])])


def response(**fields: Any) -> Response:
    base: dict[str, Any] = {
        "id": "resp_abc",
        "created_at": 1700000000,
        "status": "completed",
        "model": "asked",
        "output": [],
        "tools": [],
        "tool_choice": "auto",
        "text": TextConfig(),
        "parallel_tool_calls": True,
        "truncation": "disabled",
        "temperature": 1.0,
        "top_p": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "top_logprobs": 0,
        "store": False,
        "background": False,
        "metadata": {},
        "usage": USAGE,
    }
    return Response(**{**base, **fields})


def message(*parts: OutputText) -> Message:
    return Message(role="assistant", content=list(parts), id="msg_1", status="completed")


def roundtrip(obj: object, model: type[Any]) -> Any:
    """Parse our JSON with the OpenAI SDK's own types, as clients do."""
    return model.model_validate_json(msgspec.json.encode(obj))


def as_json(obj: object) -> Any:
    return msgspec.json.decode(msgspec.json.encode(obj))


def stream(*, logprobs: bool = False, include_usage: bool = False) -> ChunkStream:
    return ChunkStream(
        "resp_abc",
        1700000000,
        "asked",
        logprobs=logprobs,
        include_usage=include_usage,
        fingerprint=FINGERPRINT,
    )


def test_completion_joins_text_and_moves_citations() -> None:
    cite = UrlCitation("https://a.example", "A", 0, 5)
    final = response(
        output=[
            message(OutputText("First", [cite], [LOGPROB])),
            message(OutputText(" and second", [UrlCitation("https://b.example", "B", 5, 11)])),
        ]
    )
    completion = roundtrip(
        chat_completion(final, logprobs=True, fingerprint=FINGERPRINT), ChatCompletion
    )
    choice = completion.choices[0]
    assert completion.id == "chatcmpl-abc" and completion.model == "asked"
    assert completion.object == "chat.completion" and completion.created == 1700000000
    assert choice.message.content == "First and second"
    assert choice.finish_reason == "stop"
    spans = [
        (a.url_citation.url, a.url_citation.start_index, a.url_citation.end_index)
        for a in choice.message.annotations
    ]
    assert spans == [("https://a.example", 0, 5), ("https://b.example", 10, 16)]
    assert choice.logprobs.content[0].token == "Hi"
    assert completion.usage.prompt_tokens == 10 and completion.usage.completion_tokens == 5
    assert completion.usage.prompt_tokens_details.cached_tokens == 4


def test_completion_with_tool_calls() -> None:
    final = response(output=[FunctionCall("call_1", "weather", '{"city":"Oslo"}', id="fc_1")])
    completion = roundtrip(
        chat_completion(final, logprobs=False, fingerprint=FINGERPRINT), ChatCompletion
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None and choice.logprobs is None
    call = choice.message.tool_calls[0]
    assert (call.id, call.type, call.function.name, call.function.arguments) == (
        "call_1",
        "function",
        "weather",
        '{"city":"Oslo"}',
    )


def test_finish_reason_length() -> None:
    final = response(
        status="incomplete",
        output=[message(OutputText("cut"))],
        incomplete_details=IncompleteDetails("max_output_tokens"),
    )
    assert (
        chat_completion(final, logprobs=False, fingerprint=FINGERPRINT).choices[0].finish_reason
        == "length"
    )


def test_chunks_for_text_tool_calls_and_usage() -> None:
    chunker = stream(logprobs=True, include_usage=True)
    call = FunctionCall("call_9", "weather", "", id="fc_9", status="in_progress")
    final = response(
        output=[message(OutputText("Hi")), FunctionCall("call_9", "weather", "{}", id="fc_9")]
    )
    events: list[ev.StreamEvent] = [
        ev.ResponseCreated(sequence_number=0, response=response(status="in_progress", usage=None)),
        ev.ResponseInProgress(sequence_number=1, response=response(status="in_progress")),
        ev.OutputTextDelta(
            sequence_number=2,
            item_id="msg_1",
            output_index=0,
            content_index=0,
            delta="Hi",
            logprobs=[LOGPROB],
        ),
        ev.OutputItemAdded(sequence_number=3, output_index=1, item=call),
        ev.FunctionCallArgumentsDelta(
            sequence_number=4, item_id="fc_9", output_index=1, delta="{}"
        ),
        ev.ResponseCompleted(sequence_number=5, response=final),
    ]
    raw = [as_json(c) for e in events for c in chunker.chunks(e)]
    for chunk in raw:
        assert errors("CreateChatCompletionStreamResponse", chunk) == []
        assert chunk["system_fingerprint"] == FINGERPRINT
    chunks: list[Any] = [ChatCompletionChunk.model_validate(c) for c in raw]
    assert all(c.id == "chatcmpl-abc" and c.object == "chat.completion.chunk" for c in chunks)
    first, text, added, args, finish, usage = chunks
    assert first.choices[0].delta.role == "assistant"
    assert text.choices[0].delta.content == "Hi"
    assert text.choices[0].logprobs.content[0].logprob == -0.1
    tool = added.choices[0].delta.tool_calls[0]
    assert (tool.index, tool.id, tool.type, tool.function.name) == (
        0,
        "call_9",
        "function",
        "weather",
    )
    delta = args.choices[0].delta.tool_calls[0]
    assert delta.index == 0 and delta.id is None and delta.function.arguments == "{}"
    assert finish.choices[0].finish_reason == "tool_calls" and finish.usage is None
    assert usage.choices == [] and usage.usage.total_tokens == 15


def test_a_failed_run_is_one_stream_error() -> None:
    """A failed run logs OpenAI's ``error`` event and then ``response.failed``; Chat has one
    error for both (then the stream's ``[DONE]``)."""
    chunker = stream()
    failed = response(status="failed", error=ResponseError("server_error", "boom"))
    events: list[ev.StreamEvent] = [
        ev.ErrorEvent(sequence_number=2, code="server_error", message="boom", param=None),
        ev.ResponseFailed(sequence_number=3, response=failed),
    ]
    (chunk,) = [c for e in events for c in chunker.chunks(e)]
    assert isinstance(chunk, ChunkErrorEnvelope)
    assert as_json(chunk)["error"] == {
        "message": "boom",
        "type": "server_error",
        "param": None,
        "code": "server_error",
    }


def test_completions_match_openais_schema() -> None:
    """Every completion shape, as OpenAI's published schema and its SDK read it:
    ``annotations`` always a list, ``refusal`` present, ``tool_calls`` only when there are
    calls, ``system_fingerprint`` a string."""
    cite = UrlCitation("https://a.example", "A", 0, 5)
    shapes: dict[str, list[OutputItem]] = {
        "text": [message(OutputText("Hello"))],
        "cited": [message(OutputText("Cited", [cite], [LOGPROB]))],
        "calls": [FunctionCall("call_1", "weather", "{}", id="fc_1")],
        "text and calls": [
            message(OutputText("Let me look.")),
            FunctionCall("call_1", "weather", "{}", id="fc_1"),
        ],
        "empty": [],
    }
    for name, output in shapes.items():
        for logprobs in (False, True):
            body = as_json(
                chat_completion(response(output=output), logprobs=logprobs, fingerprint=FINGERPRINT)
            )
            assert errors("CreateChatCompletionResponse", body) == [], name
            ChatCompletion.model_validate(body)
            assert body["system_fingerprint"] == FINGERPRINT
            msg = body["choices"][0]["message"]
            assert isinstance(msg["annotations"], list), name
            assert "refusal" in msg and msg["refusal"] is None, name
            has_calls = any(isinstance(item, FunctionCall) for item in output)
            assert ("tool_calls" in msg) == has_calls, name
    cited = as_json(
        chat_completion(response(output=shapes["cited"]), logprobs=False, fingerprint=FINGERPRINT)
    )
    assert len(cited["choices"][0]["message"]["annotations"]) == 1


def test_reasoning_comes_back_as_reasoning_content() -> None:
    thought = Reasoning(id="rs_1", content=[ReasoningText("Think first.")], status="completed")
    done = response(output=[thought, message(OutputText("Hello."))])
    completion = roundtrip(
        chat_completion(done, logprobs=False, fingerprint=FINGERPRINT), ChatCompletion
    )
    assert completion.choices[0].message.content == "Hello."
    assert completion.choices[0].message.reasoning_content == "Think first."
    plain = msgspec.json.decode(
        msgspec.json.encode(
            chat_completion(
                response(output=[message(OutputText("Hi."))]),
                logprobs=False,
                fingerprint=FINGERPRINT,
            )
        )
    )
    assert "reasoning_content" not in plain["choices"][0]["message"]
    stream = ChunkStream(
        "resp_abc",
        1700000000,
        "asked",
        logprobs=False,
        include_usage=False,
        fingerprint=FINGERPRINT,
    )
    delta = ev.ReasoningTextDelta(
        sequence_number=3, item_id="rs_1", output_index=0, content_index=0, delta="Think"
    )
    [chunk] = stream.chunks(delta)
    parsed = roundtrip(chunk, ChatCompletionChunk)
    assert parsed.choices[0].delta.reasoning_content == "Think"
    assert parsed.choices[0].delta.content is None
