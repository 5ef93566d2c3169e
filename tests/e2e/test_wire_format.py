"""What OpenAI-schema validators and real clients check, against the real server and model:
every object validated by OpenAI's published schema, its SDK and Open Responses; and the call
limits clients set (``parallel_tool_calls: false``, ``max_tool_calls``) through the SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.fixtures.web import WebFixture
from tests.wire import check_chat_chunk, check_chat_completion, check_event, check_response

from .conftest import REQUEST_TIMEOUT, ServerProcess, web_flags
from .test_responses import SHORT, sse_events
from .test_tools import QUESTION, TIME, TWO_TOOLS, WEATHER, calls_of, first_with_two_calls

HELLO = [{"role": "user", "content": "Say hello."}]
CHAT_WEATHER = {
    "type": "function",
    "function": {k: v for k, v in WEATHER.items() if k != "type"},
}
CHAT_TIME = {"type": "function", "function": {k: v for k, v in TIME.items() if k != "type"}}


def test_responses_validate_and_echo_verbosity(http: httpx.Client) -> None:
    plain = http.post("/v1/responses", json={"input": "Greet me.", **SHORT}).json()
    check_response(plain)
    assert plain["text"] == {"format": {"type": "text"}, "verbosity": "medium"}
    for verbosity in ("low", "medium", "high"):
        asked = {"input": "Greet me.", "text": {"verbosity": verbosity}, **SHORT}
        answer = http.post("/v1/responses", json=asked).json()
        check_response(answer)
        assert answer["text"]["verbosity"] == verbosity


def test_streamed_function_calls_validate(http: httpx.Client) -> None:
    body = {
        "input": QUESTION,
        "tools": [WEATHER],
        "tool_choice": "required",
        "max_output_tokens": 300,
        "seed": 1,
        "stream": True,
    }
    with http.stream("POST", "/v1/responses", json=body) as response:
        events, _ = sse_events(response)
    for event in events:
        check_event(event)
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert done and all(e["name"] == "get_weather" for e in done)


def test_chat_completions_validate(http: httpx.Client) -> None:
    request: dict[str, Any] = {"model": "m", "messages": HELLO, "max_tokens": 12}
    completion = http.post("/v1/chat/completions", json=request).json()
    check_chat_completion(completion)
    message = completion["choices"][0]["message"]
    assert message["annotations"] == [] and message["refusal"] is None
    assert "tool_calls" not in message
    fingerprint = completion["system_fingerprint"]
    assert fingerprint.startswith("fp_")
    # Stable for the server: the same in a stream and in the next completion.
    stream = {**request, "stream": True, "stream_options": {"include_usage": True}}
    with http.stream("POST", "/v1/chat/completions", json=stream) as response:
        lines = [line.removeprefix("data: ") for line in response.iter_lines() if line]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    for chunk in chunks:
        check_chat_chunk(chunk)
    assert {c["system_fingerprint"] for c in chunks} == {fingerprint}
    assert http.post("/v1/chat/completions", json=request).json()["system_fingerprint"] == (
        fingerprint
    )
    calls = {
        **request,
        "messages": [{"role": "user", "content": QUESTION}],
        "tools": [CHAT_WEATHER],
        "tool_choice": "required",
        "max_tokens": 300,
        "seed": 1,
    }
    with_calls = http.post("/v1/chat/completions", json=calls).json()
    check_chat_completion(with_calls)
    assert with_calls["choices"][0]["message"]["tool_calls"]


def test_parallel_tool_calls_false_makes_one_call_per_turn(
    client: openai.OpenAI, http: httpx.Client
) -> None:
    """A request on which the model makes several calls makes one with parallel calls off,
    on both APIs: the call grammar holds one call."""
    seed, several = first_with_two_calls(client)
    assert several.parallel_tool_calls is True and len(calls_of(several)) >= 2
    one = client.responses.create(
        model="default",
        input=TWO_TOOLS,
        tools=[WEATHER, TIME],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=1.0,
        max_output_tokens=200,
        extra_body={"seed": seed},
    )
    check_response(http.get(f"/v1/responses/{one.id}").json())
    assert one.parallel_tool_calls is False
    assert len(calls_of(one)) == 1
    completion = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": TWO_TOOLS}],
        tools=[CHAT_WEATHER, CHAT_TIME],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=1.0,
        max_tokens=200,
        seed=seed,
    )
    calls = completion.choices[0].message.tool_calls
    assert calls is not None and len(calls) == 1


@pytest.fixture(scope="module")
def web() -> Iterator[WebFixture]:
    with WebFixture() as fixture:
        yield fixture


@pytest.fixture(scope="module")
def searching(web: WebFixture) -> Iterator[openai.OpenAI]:
    """A server searching the loopback web, with the default --max-tool-rounds (8)."""
    with (
        ServerProcess(*web_flags(web)) as server,
        openai.OpenAI(
            base_url=f"{server.base_url}/v1",
            api_key="test",
            max_retries=0,
            timeout=REQUEST_TIMEOUT,
        ) as client,
    ):
        yield client


def test_max_tool_calls_caps_the_searches(searching: openai.OpenAI) -> None:
    # web_search_options: the first step searches, then the model may search again.
    response = searching.responses.create(
        model="default",
        input="What causes the ocean tides?",
        max_tool_calls=1,
        temperature=0,
        # Room for the search call's query too (the model writes it within this budget).
        max_output_tokens=120,
        extra_body={"web_search_options": {"search_context_size": "low"}},
    )
    check_response(searching.get(f"/responses/{response.id}", cast_to=httpx.Response).json())
    assert response.max_tool_calls == 1
    assert response.status in ("completed", "incomplete")  # the answer may be cut short
    kinds = [item.type for item in response.output]
    assert kinds == ["web_search_call", "message"]
