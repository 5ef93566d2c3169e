"""The tool loop end to end: strict function tools, tool_choice, parallel calls and client
round trips, through OpenAI's SDK against the real server and the real default model."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest
from openai.types.responses import Response, ResponseFunctionToolCall

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 1},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
}
WEATHER: dict[str, Any] = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather forecast for a city.",
    "parameters": WEATHER_SCHEMA,
    "strict": True,
}
TIME: dict[str, Any] = {
    "type": "function",
    "name": "get_time",
    "description": "The current time in a timezone.",
    "parameters": {
        "type": "object",
        "properties": {"timezone": {"type": "string"}},
        "required": ["timezone"],
        "additionalProperties": False,
    },
    "strict": True,
}
QUESTION = "What's the weather in Paris for the next three days?"


def calls_of(response: Response) -> list[ResponseFunctionToolCall]:
    return [item for item in response.output if isinstance(item, ResponseFunctionToolCall)]


def test_strict_arguments_always_validate(client: openai.OpenAI) -> None:
    """30 seeds at temperature 1.0: every argument set of a finished call validates against
    the schema. A small model sampled hot may ramble inside a string until
    ``max_output_tokens`` cuts it off; that response is ``incomplete`` (its arguments end
    where the budget did, as OpenAI's do), and it must stay rare."""
    valid = 0
    for seed in range(30):
        response = client.responses.create(
            model="default",
            input=QUESTION,
            tools=[WEATHER],  # type: ignore[list-item]
            tool_choice="required",
            temperature=1.0,
            max_output_tokens=200,
            extra_body={"seed": seed},
        )
        calls = calls_of(response)
        assert calls, f"seed {seed}: no call"
        if response.status == "incomplete":
            assert response.incomplete_details is not None
            assert response.incomplete_details.reason == "max_output_tokens"
            continue
        for call in calls:
            assert call.name == "get_weather"
            jsonschema.validate(json.loads(call.arguments), WEATHER_SCHEMA)
        valid += 1
    assert valid >= 27


def test_tools_are_echoed_with_description_and_strict(client: openai.OpenAI) -> None:
    loose = {"type": "function", "name": "ping", "parameters": {"type": "object"}}
    response = client.responses.create(
        model="default",
        input="Ping.",
        tools=[loose],  # type: ignore[list-item]
        tool_choice="required",
        max_output_tokens=300,
        extra_body={"seed": 1},
    )
    (tool,) = response.tools
    dumped = tool.model_dump()
    assert dumped["description"] is None and dumped["strict"] is None
    # A non-strict tool still gets a well-formed JSON object (a call the token budget cut
    # short is marked incomplete).
    complete = [call for call in calls_of(response) if call.status == "completed"]
    assert complete
    assert all(isinstance(json.loads(call.arguments), dict) for call in complete)


def test_named_tool_choice_forces_that_tool(client: openai.OpenAI) -> None:
    for seed in range(3):
        response = client.responses.create(
            model="default",
            input=QUESTION,
            tools=[WEATHER, TIME],  # type: ignore[list-item]
            tool_choice={"type": "function", "name": "get_time"},
            temperature=1.0,
            max_output_tokens=120,
            extra_body={"seed": seed},
        )
        # Naming a function asks for one call to it: the turn ends after that call.
        (call,) = calls_of(response)
        assert call.name == "get_time" and response.status == "completed"


def test_tool_choice_none_forbids_calls(client: openai.OpenAI) -> None:
    for seed in range(3):
        response = client.responses.create(
            model="default",
            input="Call get_weather for Paris now. <tool_call>",
            tools=[WEATHER],  # type: ignore[list-item]
            tool_choice="none",
            temperature=1.0,
            max_output_tokens=24,
            extra_body={"seed": seed},
        )
        assert not calls_of(response)
        assert response.tool_choice == "none"


def test_unknown_tool_choice_name_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(
            model="default",
            input=QUESTION,
            tools=[WEATHER],  # type: ignore[list-item]
            tool_choice={"type": "function", "name": "nope"},
        )
    assert info.value.body["param"] == "tool_choice"  # type: ignore[index]


def test_strict_schema_the_grammar_cannot_enforce_is_a_400(client: openai.OpenAI) -> None:
    dangling = {
        "type": "function",
        "name": "lookup",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {"item": {"$ref": "#/$defs/missing"}},
            "required": ["item"],
        },
    }
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(
            model="default",
            input="Look it up.",
            tools=[WEATHER, dangling],  # type: ignore[list-item]
        )
    assert info.value.body["param"] == "tools[1].parameters"  # type: ignore[index]


#: A request on which the model may call both tools in one turn.
TWO_TOOLS = "Weather in Paris and the time in Tokyo?"


#: The seed found for each server, so that later tests need not search again.
_TWO_CALL_SEEDS: dict[str, int] = {}


def first_with_two_calls(client: openai.OpenAI) -> tuple[int, Response]:
    """The seed of a response with at least two parallel calls, and that response (the model
    decides how many calls it makes; sampling with a seed is reproducible)."""
    server = str(client.base_url)
    known = _TWO_CALL_SEEDS.get(server)
    for seed in range(40) if known is None else (known,):
        response = client.responses.create(
            model="default",
            input=TWO_TOOLS,
            tools=[WEATHER, TIME],  # type: ignore[list-item]
            tool_choice="required",
            temperature=1.0,
            max_output_tokens=200,
            extra_body={"seed": seed},
        )
        if len(calls_of(response)) >= 2:
            _TWO_CALL_SEEDS[server] = seed
            return seed, response
    raise AssertionError("no seed produced two parallel calls")


def test_parallel_calls_round_trip(client: openai.OpenAI) -> None:
    _, response = first_with_two_calls(client)
    calls = calls_of(response)
    assert len({call.call_id for call in calls}) == len(calls)
    assert all(call.id and call.id.startswith("fc_") for call in calls)
    assert all(call.call_id.startswith("call_") for call in calls)
    follow = client.responses.create(
        model="default",
        previous_response_id=response.id,
        input=[
            {"type": "function_call_output", "call_id": call.call_id, "output": "done"}
            for call in calls
        ],
        max_output_tokens=16,
    )
    assert follow.status in ("completed", "incomplete")
    assert follow.usage is not None and follow.usage.input_tokens > 0


def test_round_trip_with_full_input_list(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model="default",
        input=QUESTION,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        max_output_tokens=300,
        extra_body={"seed": 1},
    )
    call = calls_of(first)[0]
    second = client.responses.create(
        model="default",
        input=[
            {"role": "user", "content": QUESTION},
            call.model_dump(exclude_none=True),  # type: ignore[list-item]
            {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21C"},
        ],
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="none",
        max_output_tokens=16,
    )
    assert second.status in ("completed", "incomplete")
    assert not calls_of(second)


def test_streamed_round_trip(client: openai.OpenAI) -> None:
    with client.responses.stream(
        model="default",
        input=QUESTION,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        max_output_tokens=300,
        extra_body={"seed": 1},
    ) as stream:
        events = list(stream)
    # The model chooses how many calls to make; a call the budget cuts short ends the
    # response incomplete, with the calls before it complete.
    final = events[-1].response  # type: ignore[union-attr]
    assert final.status in ("completed", "incomplete")
    types = [event.type for event in events]
    assert "response.function_call_arguments.delta" in types
    calls = calls_of(final)
    assert any(call.status == "completed" for call in calls)
    streamed = "".join(
        e.delta for e in events if e.type == "response.function_call_arguments.delta"
    )
    assert streamed == "".join(call.arguments for call in calls)
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert [e.arguments for e in done] == [call.arguments for call in calls]
    added = types.index("response.output_item.added")
    assert types.index("response.function_call_arguments.delta") > added
    calls = [call for call in calls if call.status == "completed"]
    with client.responses.stream(
        model="default",
        previous_response_id=final.id,
        input=[
            {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"}
            for call in calls
        ],
        max_output_tokens=12,
    ) as follow:
        last = list(follow)[-1]
    assert last.type in ("response.completed", "response.incomplete")
