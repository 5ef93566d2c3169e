"""Decoding and validating ``POST /v1/chat/completions`` bodies: no model needed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from exloop.engine.protocol import Grammar
from exloop.orchestrator.items import (
    FunctionCall,
    FunctionCallOutput,
    InputText,
    Message,
    OutputText,
    Refusal,
)
from exloop.server.chat_request import ChatCall, parse_chat_request
from exloop.server.errors import ApiError
from exloop.server.limits import Limits

TOOL = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def parse(body: dict[str, Any]) -> ChatCall:
    """Parse ``body``, naming a model unless it has ``model`` (Chat requires one)."""
    return parse_chat_request(json.dumps({"model": "m", **body}).encode(), limits=Limits())


def refused(body: dict[str, Any]) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse(body)
    assert info.value.status == 400
    return info.value


def test_messages_become_items() -> None:
    call = parse(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "sys"},
                {"role": "developer", "content": [{"type": "text", "text": "dev"}]},
                {"role": "user", "content": "hi", "name": "ann"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
                        },
                        {
                            "id": "call_2",
                            "type": "function",
                            "function": {"name": "weather", "arguments": "{}"},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                {
                    "role": "tool",
                    "tool_call_id": "call_2",
                    "content": [{"type": "text", "text": "rain"}],
                },
                {"role": "assistant", "content": "It is sunny.", "refusal": None},
                {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
            ],
            "tools": [TOOL],
        }
    )
    assert call.spec.input == (
        Message(role="system", content=[InputText("sys")]),
        Message(role="developer", content=[InputText("dev")]),
        Message(role="user", content=[InputText("hi")]),
        FunctionCall("call_1", "weather", '{"city":"Oslo"}'),
        FunctionCall("call_2", "weather", "{}"),
        FunctionCallOutput("call_1", "sunny"),
        FunctionCallOutput("call_2", "rain"),
        Message(role="assistant", content=[OutputText("It is sunny.")]),
        Message(role="assistant", content=[Refusal("no")]),
    )
    assert call.spec.store is False and call.spec.model == "m"
    assert call.spec.tools.tools[0].name == "weather"  # type: ignore[union-attr]
    assert not call.stream and not call.include_usage


def test_options() -> None:
    call = parse(
        {
            "messages": [{"role": "user", "content": "x"}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": 5,
            "logprobs": True,
            "top_logprobs": 2,
            "seed": 1,
            "stop": ["a", "b"],
            "top_k": 3,
            "min_p": 0.05,
            "response_format": {"type": "json_object"},
            "web_search_options": {},
            "tool_choice": "none",
            "n": 1,
        }
    )
    assert call.stream and call.include_usage and call.logprobs
    assert call.spec.model == "m"
    sampling = call.spec.sampling
    assert sampling.max_tokens == 5 and sampling.top_logprobs == 2 and sampling.logprobs
    assert sampling.stop == ("a", "b") and sampling.top_k == 3
    assert call.spec.constraint == Grammar("json_schema", {"type": "object"})
    assert call.constraint_param == "response_format"
    assert call.spec.tools.mode == "none"
    assert call.spec.tools.web_search is not None and call.spec.tools.web_search.forced
    assert (
        parse(
            {
                "messages": [{"role": "user", "content": "x"}],
                "max_tokens": 5,
                "max_completion_tokens": 7,
            }
        ).spec.sampling.max_tokens
        == 7
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content[0].type",
        ),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"n": 3}, "n"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"temperature": -1}, "temperature"),
        ({"max_tool_calls": -1}, "max_tool_calls"),
        ({"web_search_options": {}, "max_tool_calls": 0}, "max_tool_calls"),
        (
            {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
        ),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {
                                "type": "object",
                                "properties": {"a": {"minimum": "zero"}},
                            },
                        },
                    }
                ]
            },
            "tools[0].function.parameters",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format.json_schema.schema",
        ),
        ({"grammar": {"type": "regex"}}, "grammar.value"),
    ],
)
def test_each_bad_field_is_named(body: dict[str, Any], param: str) -> None:
    body = {"messages": [{"role": "user", "content": "x"}], **body}
    assert refused(body).param == param


def test_messages_are_required() -> None:
    error = refused({"model": "m"})
    assert error.param == "messages" and error.code == "missing_required_parameter"


@pytest.mark.parametrize("model", [None, ""])
def test_model_is_required(model: str | None) -> None:
    """Chat needs ``model``, as OpenAI answers (Responses keeps it optional)."""
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "x"}]}
    if model is not None:
        body["model"] = model
    with pytest.raises(ApiError) as info:
        parse_chat_request(json.dumps(body).encode(), limits=Limits())
    error = info.value
    assert (error.status, error.param, error.code) == (400, "model", "missing_required_parameter")
    assert error.type == "invalid_request_error"


def test_tool_call_limits() -> None:
    default = parse({"messages": [{"role": "user", "content": "x"}]}).spec.tools
    assert default.parallel_tool_calls is True and default.max_tool_calls is None
    limited = parse(
        {
            "messages": [{"role": "user", "content": "x"}],
            "tools": [TOOL],
            "parallel_tool_calls": False,
            "max_tool_calls": 2,
        }
    ).spec.tools
    assert limited.parallel_tool_calls is False and limited.max_tool_calls == 2
