"""Reasoning end to end: the default weights under a thinking chat template
(``--chat-template tests/fixtures/thinking.jinja``), their thinking forced by the server's test
regex so it is the same every run, through OpenAI's SDK and raw HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion
from openai.types.responses import Response as SdkResponse
from openai.types.responses import ResponseReasoningItem
from openresponses_types import types as open_responses

from tests.wire import OPEN_RESPONSES_EVENTS, check_event, check_response

from .conftest import REQUEST_TIMEOUT, ServerProcess
from .test_responses import sse_events

TEMPLATE = Path(__file__).parents[1] / "fixtures" / "thinking.jinja"
#: What the model thinks, forced: 40 sentences (about 160 tokens: over the ``minimal``
#: budget of 128, under ``low``'s 1,024), then the close tag.
SENTENCE = "Let me think. "
THOUGHT = (SENTENCE * 40).strip()
THINKING_REGEX = f"({SENTENCE.replace('.', '[.]')}){{40}}\\n</think>"
SECRET = "reasoning tests' secret, long enough to seal with"
#: The answer after the thinking, short and sure.
HELLO = {"grammar": {"type": "regex", "value": "(Hello|Hi)( there)?\\."}}


@pytest.fixture(scope="module")
def thinker() -> Iterator[ServerProcess]:
    with ServerProcess(
        "--chat-template",
        str(TEMPLATE),
        "--test-thinking-regex",
        THINKING_REGEX,
        "--encryption-key",
        SECRET,
    ) as process:
        yield process


@pytest.fixture
def client(thinker: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{thinker.base_url}/v1", api_key="t", max_retries=0, timeout=REQUEST_TIMEOUT
    ) as sdk:
        yield sdk


@pytest.fixture
def http(thinker: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=thinker.base_url, timeout=REQUEST_TIMEOUT) as raw:
        yield raw


def ask(http: httpx.Client, **body: Any) -> dict[str, Any]:
    answer = http.post("/v1/responses", json={"input": "Greet me.", **HELLO, **body})
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    if body.get("reasoning", {}).get("effort") == "minimal":
        # OpenAI's effort; Open Responses lists none, low, medium, high and xhigh.
        SdkResponse.model_validate(result)
    else:
        check_response(result)
    return result


def test_thinking_becomes_a_reasoning_item_with_its_tokens(http: httpx.Client) -> None:
    body = ask(http, reasoning={"effort": "low", "summary": "auto"})
    reasoning, message = body["output"]
    item = ResponseReasoningItem.model_validate(reasoning)
    open_responses.ReasoningBody.model_validate(reasoning)
    assert item.content is not None and [part.text for part in item.content] == [THOUGHT]
    assert item.summary == []  # summaries are not generated
    assert item.encrypted_content is None and item.status == "completed"
    assert message["content"][0]["text"] in {"Hello.", "Hi.", "Hello there.", "Hi there."}
    usage = body["usage"]
    reasoning_tokens = usage["output_tokens_details"]["reasoning_tokens"]
    assert 128 < reasoning_tokens < 1024
    assert usage["output_tokens"] > reasoning_tokens
    assert body["reasoning"] == {
        "effort": "low",
        "summary": "auto",
        "context": None,
        "generate_summary": None,
    }


def test_the_budget_closes_the_block(http: httpx.Client) -> None:
    body = ask(http, reasoning={"effort": "minimal"})
    reasoning, message = body["output"]
    text = reasoning["content"][0]["text"]
    assert THOUGHT.startswith(text) and len(text) < len(THOUGHT)
    assert body["usage"]["output_tokens_details"]["reasoning_tokens"] == 128
    assert message["type"] == "message" and body["status"] == "completed"


def test_effort_none_answers_without_thinking(http: httpx.Client) -> None:
    body = ask(http, reasoning={"effort": "none"})
    assert [item["type"] for item in body["output"]] == ["message"]
    assert body["usage"]["output_tokens_details"]["reasoning_tokens"] == 0


def test_stream_events_and_the_sdk_helper(client: openai.OpenAI, http: httpx.Client) -> None:
    with http.stream(
        "POST",
        "/v1/responses",
        json={"input": "Greet me.", "stream": True, "reasoning": {"effort": "low"}, **HELLO},
    ) as response:
        raw, _ = sse_events(response)
    events = cast(list[dict[str, Any]], raw)
    for event in events:
        check_event(event)
        if event["type"].startswith("response.reasoning_text."):
            # Open Responses names these response.reasoning.delta / .done; the fields agree.
            renamed = {**event, "type": event["type"].replace("reasoning_text", "reasoning")}
            OPEN_RESPONSES_EVENTS[renamed["type"]].model_validate(renamed)
    types = [event["type"] for event in events]
    assert types[2:5] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
    ]
    done = types.index("response.reasoning_text.done")
    assert types[done : done + 4] == [
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
    ]
    assert events[3]["part"] == {"type": "reasoning_text", "text": ""}
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.reasoning_text.delta")
    assert deltas == events[done]["text"] == THOUGHT
    # The SDK's helper, which checks the ordering rules, accepts the stream.
    with client.responses.stream(
        model="m", input="Greet me.", reasoning={"effort": "low"}, extra_body=HELLO
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    assert isinstance(final.output[0], ResponseReasoningItem)
    assert final.usage is not None and final.usage.output_tokens_details.reasoning_tokens > 128


def test_encrypted_reasoning_round_trip(http: httpx.Client) -> None:
    first = ask(
        http,
        store=False,
        include=["reasoning.encrypted_content"],
        reasoning={"effort": "low"},
    )
    reasoning, message = first["output"]
    sealed = reasoning["encrypted_content"]
    assert sealed and THOUGHT not in sealed
    # A stateless client (Codex) replays the turn with the reasoning it cannot read.
    replayed = {
        "type": "reasoning",
        "id": reasoning["id"],
        "summary": [],
        "encrypted_content": sealed,
    }
    turn = [{"role": "user", "content": "Greet me."}, replayed, message]
    follow_up = {"role": "user", "content": "Again."}
    off = {"reasoning": {"effort": "none"}}
    with_thought = ask(http, input=[*turn, follow_up], **off)
    without = ask(http, input=[turn[0], message, follow_up], **off)
    # The opened reasoning is in the prompt: about 160 more input tokens.
    grown = with_thought["usage"]["input_tokens"] - without["usage"]["input_tokens"]
    assert 128 < grown < 400

    tampered = {**replayed, "encrypted_content": sealed[:-6] + "AAAAAA"}
    answer = http.post(
        "/v1/responses", json={"input": [turn[0], tampered, message, follow_up], **HELLO}
    )
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"] == "input[1].encrypted_content"
    assert error["code"] == "invalid_encrypted_content"
    assert reasoning["id"] in error["message"]
    huge = {**replayed, "encrypted_content": "x" * (4 * 1024 * 1024 + 1)}
    too_big = http.post("/v1/responses", json={"input": [turn[0], huge], **HELLO})
    assert too_big.status_code == 400
    assert too_big.json()["error"]["param"] == "input[1].encrypted_content"


def test_previous_response_id_carries_the_reasoning(http: httpx.Client) -> None:
    first = ask(http, reasoning={"effort": "low"})
    off = {"reasoning": {"effort": "none", "context": "all_turns"}}
    chained = ask(http, input="Again.", previous_response_id=first["id"], **off)
    current_turn = {"reasoning": {"effort": "none", "context": "current_turn"}}
    current = ask(http, input="Again.", previous_response_id=first["id"], **current_turn)
    dropped = chained["usage"]["input_tokens"] - current["usage"]["input_tokens"]
    assert 128 < dropped < 400


def test_chat_completions_return_reasoning_content(client: openai.OpenAI) -> None:
    completion: ChatCompletion = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "Greet me."}],
        reasoning_effort="low",
        extra_body=HELLO,
    )
    message = completion.choices[0].message
    assert message.content in {"Hello.", "Hi.", "Hello there.", "Hi there."}
    assert getattr(message, "reasoning_content", None) == THOUGHT
    assert completion.usage is not None and completion.usage.completion_tokens_details is not None
    assert (completion.usage.completion_tokens_details.reasoning_tokens or 0) > 128
    stream = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "Greet me."}],
        reasoning_effort="low",
        stream=True,
        extra_body=HELLO,
    )
    thought = content = ""
    for chunk in stream:
        if chunk.choices:
            delta = chunk.choices[0].delta
            thought += getattr(delta, "reasoning_content", None) or ""
            content += delta.content or ""
    assert thought == THOUGHT and content == message.content
    # The reasoning of an earlier turn may come back in reasoning_content.
    earlier: Any = {"role": "assistant", "content": "Hello.", "reasoning_content": THOUGHT}
    again = client.chat.completions.create(
        model="m",
        messages=[
            {"role": "user", "content": "Greet me."},
            earlier,
            {"role": "user", "content": "Again."},
        ],
        reasoning_effort="none",
        extra_body=HELLO,
    )
    assert again.usage is not None and again.usage.prompt_tokens > 160
