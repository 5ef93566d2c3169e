"""Chat Completions against the real server and model, through OpenAI's SDK."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import jsonschema
import openai

from tests.fixtures.web import WebFixture

from .conftest import ServerProcess, web_flags

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": WEATHER_SCHEMA,
        "strict": True,
    },
}
FORCE_WEATHER = {"type": "function", "function": {"name": "get_weather"}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
#: Under a forced tool_choice SmolLM2 may go on calling until max_tokens; with this seed
#: (sampling is reproducible) it makes one call and ends its turn.
CALL_SEED = 1
#: max_tokens covers the search call the model writes too: with too few, SmolLM2's query can
#: run out of tokens before the search happens.
SEARCH_BUDGET = 160


def test_create(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="any-name",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=16,
    )
    assert completion.id.startswith("chatcmpl-") and completion.object == "chat.completion"
    assert completion.model == "any-name"
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_stream_matches_the_greedy_answer(client: openai.OpenAI) -> None:
    request: dict[str, Any] = {
        "model": "m",
        "messages": [{"role": "user", "content": "Name three colours."}],
        "temperature": 0,
        "max_tokens": 24,
    }
    whole = client.chat.completions.create(**request)
    chunks = list(
        client.chat.completions.create(
            **request, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finish[-1] == whole.choices[0].finish_reason and not any(finish[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert whole.usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_max_tokens_gives_length(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "Tell me a long story."}],
        max_completion_tokens=3,
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 3


def test_tool_round_trip(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model="m",
        messages=ASK,
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice=FORCE_WEATHER,  # type: ignore[arg-type]
        max_tokens=300,
        seed=CALL_SEED,
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_SCHEMA)

    second = client.chat.completions.create(
        model="m",
        messages=[
            *ASK,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {
                            "name": call.function.name,
                            "arguments": call.function.arguments,
                        },
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 degrees."},
        ],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice="none",
        max_tokens=32,
    )
    answer = second.choices[0]
    assert answer.finish_reason in ("stop", "length")
    assert answer.message.content and not answer.message.tool_calls


def test_streamed_tool_call(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="m",
            messages=ASK,
            tools=[WEATHER_TOOL],  # type: ignore[list-item]
            tool_choice=FORCE_WEATHER,  # type: ignore[arg-type]
            max_tokens=300,
            seed=CALL_SEED,
            stream=True,
        )
    )
    deltas = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    head = deltas[0]
    assert head.index == 0 and head.id and head.type == "function"
    assert head.function is not None and head.function.name == "get_weather"
    assert all(d.index == 0 for d in deltas) and all(d.id is None for d in deltas[1:])
    arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
    jsonschema.validate(json.loads(arguments), WEATHER_SCHEMA)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_json_schema_response_format(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    completion = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "Invent a person."}],
        max_tokens=64,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": schema, "strict": True},
        },
    )
    assert completion.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(completion.choices[0].message.content or ""), schema)


def test_logprobs(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "Say yes."}],
        max_tokens=4,
        logprobs=True,
        top_logprobs=2,
        temperature=0,
    )
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None and logprobs.content
    assert len(logprobs.content) == completion.usage.completion_tokens  # type: ignore[union-attr]
    for token in logprobs.content:
        assert token.logprob <= 0 and len(token.top_logprobs) == 2
    assert "".join(t.token for t in logprobs.content) == completion.choices[0].message.content


def test_web_search_options_search_before_answering(
    start_server: Callable[..., ServerProcess], web: WebFixture
) -> None:
    server = start_server(*web_flags(web))
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="k", max_retries=0) as sdk:
        chunks = list(
            sdk.chat.completions.create(
                model="m",
                messages=[{"role": "user", "content": "How do honeybees share directions?"}],
                web_search_options={"search_context_size": "low"},
                temperature=0,
                max_tokens=SEARCH_BUDGET,
                stream=True,
            )
        )
        whole = sdk.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "How do honeybees share directions?"}],
            web_search_options={"search_context_size": "low"},
            temperature=0,
            max_tokens=SEARCH_BUDGET,
        )
    searches = [r for r in web.requests if r.path == "/searxng/search"]
    assert len(searches) == 2
    assert "honeybees" in searches[0].query["q"]
    assert any(r.path == "/articles/honeybees" for r in web.requests)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    message = whole.choices[0].message
    assert message.content and whole.choices[0].finish_reason in ("stop", "length")
    # The model may or may not cite; what it cites must be a page it read.
    read = {web.url(r.path) for r in web.requests}
    for annotation in message.annotations or []:
        assert annotation.type == "url_citation" and annotation.url_citation.url in read
