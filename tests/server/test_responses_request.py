"""Decoding and validating ``POST /v1/responses`` bodies: no model needed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from exloop.engine.protocol import Grammar
from exloop.orchestrator.items import (
    Compaction,
    FunctionCall,
    FunctionCallOutput,
    InputText,
    ItemReference,
    Message,
    OutputText,
    Reasoning,
    WebSearchCall,
)
from exloop.orchestrator.resource import FormatJsonSchema
from exloop.orchestrator.sealing import MAX_SEALED_CHARS
from exloop.orchestrator.spec import CompactionPolicy, ReasoningOptions
from exloop.orchestrator.tool_defs import (
    FunctionTool,
    ToolChoiceFunction,
    UserLocation,
    WebSearchPreviewTool,
    WebSearchTool,
)
from exloop.orchestrator.toolset import ToolCatalog, entries
from exloop.server.errors import ApiError
from exloop.server.limits import Limits
from exloop.server.responses_request import ResponsesCall, parse_responses_request

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def parse(body: dict[str, Any] | bytes) -> ResponsesCall:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_responses_request(raw, served_model="served", limits=Limits())


def refused(body: dict[str, Any] | bytes) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse(body)
    assert info.value.status == 400
    assert info.value.type == "invalid_request_error"
    return info.value


def test_string_input_is_one_user_message_with_defaults() -> None:
    call = parse({"input": "hello"})
    spec = call.spec
    assert spec.input == (Message(role="user", content=[InputText("hello")]),)
    assert spec.model == "served"
    assert spec.store is True and spec.background is False
    assert spec.truncation == "disabled"
    assert spec.sampling.temperature == 1.0 and spec.sampling.max_tokens is None
    assert spec.constraint is None and call.constraint_param is None
    assert spec.echo.tool_choice == "auto" and spec.echo.tools == ()
    assert call.stream is False


def test_model_reports_the_name_asked_for() -> None:
    assert parse({"input": "x", "model": "gpt-4o"}).spec.model == "gpt-4o"


def test_forgiving_input_items() -> None:
    call = parse(
        {
            "input": [
                {"role": "system", "content": "be brief"},
                {
                    "role": "user",
                    "content": [{"type": "input_text", "text": "a"}, {"type": "text", "text": "b"}],
                },
                {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": "hi", "annotations": []}],
                },
                {"role": "assistant", "content": "plain"},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {
                    "type": "function_call",
                    "id": "fc_1",
                    "call_id": "c1",
                    "name": "f",
                    "arguments": "{}",
                    "status": "completed",
                },
                {"type": "function_call_output", "call_id": "c1", "output": "42"},
                {
                    "type": "function_call_output",
                    "call_id": "c1",
                    "output": [
                        {"type": "input_text", "text": "4"},
                        {"type": "input_text", "text": "2"},
                    ],
                },
                {
                    "type": "web_search_call",
                    "id": "ws_1",
                    "status": "completed",
                    "action": {"type": "search", "query": "q"},
                },
                {"type": "item_reference", "id": "msg_0"},
                {"id": "msg_2"},
                {"role": "user", "content": "x", "unknown_field": 1},
            ]
        }
    )
    items = call.spec.input
    assert items[0] == Message(role="system", content=[InputText("be brief")])
    assert items[1] == Message(role="user", content=[InputText("a"), InputText("b")])
    assert items[2] == Message(
        role="assistant", content=[OutputText("hi")], id="msg_1", status="completed"
    )
    assert items[3] == Message(role="assistant", content=[OutputText("plain")])
    assert items[4] == Reasoning(id="rs_1")
    assert items[5] == FunctionCall("c1", "f", "{}", id="fc_1", status="completed")
    assert items[6] == FunctionCallOutput("c1", "42")
    assert items[7] == FunctionCallOutput("c1", "42")
    assert isinstance(items[8], WebSearchCall)
    assert items[9] == ItemReference("msg_0") and items[10] == ItemReference("msg_2")
    assert items[11] == Message(role="user", content=[InputText("x")])


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": [{"content": "x"}]}, "input[0].type"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_text", "text": 1}]}]},
            "input[0].content[0].text",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}]},
            "input[0].content[0]",
        ),
        ({"input": ["text"]}, "input[0]"),
        ({"input": [{"type": "computer_call", "id": "x"}]}, "input[0].type"),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f"}]}, "input[0].arguments"),
        ({"input": []}, "input"),
        ({}, "input"),
        ({"input": 3}, "input"),
    ],
)
def test_bad_input_names_the_item(body: dict[str, Any], param: str) -> None:
    assert refused(body).param == param


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"min_p": 2}, "min_p"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"frequency_penalty": 3}, "frequency_penalty"),
        ({"presence_penalty": -3}, "presence_penalty"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"max_output_tokens": 1.5}, "max_output_tokens"),
        ({"top_logprobs": 21}, "top_logprobs"),
        ({"logit_bias": {"x": 1}}, "logit_bias"),
        ({"logit_bias": {"5": 500}}, "logit_bias"),
        ({"stop": [""]}, "stop"),
        ({"stop": 3}, "stop"),
        ({"dry_multiplier": -1}, "dry_multiplier"),
        ({"dry_base": 0.5}, "dry_base"),
        ({"dry_allowed_length": 0}, "dry_allowed_length"),
        ({"truncation": "sometimes"}, "truncation"),
        ({"max_tool_calls": -1}, "max_tool_calls"),
        ({"max_tool_calls": 1.5}, "max_tool_calls"),
        (
            {
                "tools": [{"type": "web_search"}],
                "tool_choice": {"type": "web_search"},
                "max_tool_calls": 0,
            },
            "max_tool_calls",
        ),
        ({"text": {"verbosity": "loud"}}, "text.verbosity"),
        (
            {
                "tools": [{"type": "mcp", "server_label": "s", "server_url": "https://s.test/mcp"}],
                "tool_choice": {"type": "mcp", "server_label": "s"},
                "max_tool_calls": 0,
            },
            "max_tool_calls",
        ),
        ({"n": 2}, "n"),
        ({"background": True, "store": False}, "background"),
        ({"include": ["everything"]}, "include[0]"),
        ({"grammar": {"type": "peg", "value": "x"}}, "grammar.type"),
        ({"text": {"format": {"type": "json_schema", "schema": SCHEMA}}}, "text.format.name"),
        (
            {"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": 5}}}},
            "text.format.schema",
        ),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"reasoning": {"effort": "extreme"}}, "reasoning.effort"),
        ({"metadata": {"k": 1}}, "metadata"),
        (
            {"web_search_options": {"search_context_size": "huge"}},
            "web_search_options.search_context_size",
        ),
    ],
)
def test_each_bad_field_is_named(body: dict[str, Any], param: str) -> None:
    assert refused({"input": "x", **body}).param == param


def test_metadata_limits() -> None:
    parse({"input": "x", "metadata": {f"k{i}": "v" * 512 for i in range(16)}})
    assert refused({"input": "x", "metadata": {f"k{i}": "v" for i in range(17)}}).param == (
        "metadata"
    )
    assert refused({"input": "x", "metadata": {"k" * 65: "v"}}).param == "metadata"
    assert refused({"input": "x", "metadata": {"k": "v" * 513}}).param == "metadata"


def test_malformed_json_is_a_400_without_param() -> None:
    error = refused(b'{"input": "x",')
    assert error.param is None and error.code == "invalid_json"
    assert refused(b"").param is None
    assert refused(b"[1, 2]").code == "invalid_type"


def test_sampling_fields_map_onto_sampling_params() -> None:
    sampling = parse(
        {
            "input": "x",
            "temperature": 0,
            "top_p": 0.5,
            "top_k": 7,
            "min_p": 0.1,
            "repetition_penalty": 1.1,
            "frequency_penalty": 0.2,
            "presence_penalty": 0.3,
            "logit_bias": {"12": -5},
            "seed": 42,
            "stop": "END",
            "max_output_tokens": 9,
            "dry_multiplier": 0.8,
            "dry_base": 2,
            "dry_allowed_length": 3,
            "dry_sequence_breakers": ["\n"],
            "top_logprobs": 3,
            "include": ["message.output_text.logprobs"],
        }
    ).spec.sampling
    assert sampling.greedy and sampling.top_p == 0.5 and sampling.top_k == 7
    assert sampling.min_p == 0.1 and sampling.repetition_penalty == 1.1
    assert sampling.logit_bias == {12: -5} and sampling.seed == 42
    assert sampling.stop == ("END",) and sampling.max_tokens == 9
    assert sampling.dry.multiplier == 0.8 and sampling.dry.base == 2
    assert sampling.dry.allowed_length == 3 and sampling.dry.sequence_breakers == ("\n",)
    assert sampling.logprobs and sampling.top_logprobs == 3


def test_flat_and_nested_function_tools_echo_description_and_strict() -> None:
    call = parse(
        {
            "input": "x",
            "tools": [
                {"type": "function", "name": "weather", "parameters": SCHEMA, "strict": True},
                {"type": "function", "function": {"name": "time", "description": "now"}},
            ],
            "tool_choice": {"type": "function", "name": "time"},
        }
    )
    weather, time_ = ToolCatalog(list(entries(call.spec.tools.tools, "tools"))).offered(()).specs
    assert weather.name == "weather" and weather.strict and weather.parameters == SCHEMA
    assert time_.name == "time" and time_.description == "now" and not time_.strict
    assert time_.parameters == {"type": "object", "properties": {}}
    assert call.spec.tools.forced == "time"
    assert call.spec.echo.tools == (
        FunctionTool("weather", SCHEMA, True, None),
        FunctionTool("time", None, None, "now"),
    )
    assert call.spec.echo.tool_choice == ToolChoiceFunction("time")


@pytest.mark.parametrize(
    ("tools", "param"),
    [
        (
            [
                {
                    "type": "function",
                    "name": "f",
                    "parameters": {"type": "object", "properties": {"a": {"type": "nope"}}},
                }
            ],
            "tools[0].parameters",
        ),
        (
            [{"type": "function", "function": {"name": "f", "parameters": {"required": "a"}}}],
            "tools[0].function.parameters",
        ),
        (
            [{"type": "function", "name": "f", "parameters": {"type": "string"}}],
            "tools[0].parameters",
        ),
        ([{"type": "function", "name": "f"}, {"type": "function", "name": "f"}], "tools[1].name"),
        ([{"type": "function", "name": "bad name!"}], "tools[0].name"),
        ([{"type": "function"}], "tools[0].name"),
        ([{"type": "function", "function": {"description": "no name"}}], "tools[0].function.name"),
        ([{"type": "file_search"}], "tools[0].type"),
        ([{"type": "web_search"}, {"type": "web_search_preview"}], "tools[1]"),
    ],
)
def test_bad_tools_are_named(tools: list[dict[str, Any]], param: str) -> None:
    assert refused({"input": "x", "tools": tools}).param == param


@pytest.mark.parametrize(
    "choice",
    [
        {"type": "function", "name": "missing"},
        {"type": "function", "function": {"name": "missing"}},
        {"type": "web_search"},
        "whatever",
    ],
)
def test_tool_choice_must_match_the_tools(choice: object) -> None:
    body = {"input": "x", "tools": [{"type": "function", "name": "f"}], "tool_choice": choice}
    assert refused(body).param == "tool_choice"


def test_required_tool_choice_is_parsed() -> None:
    # Whether a tool is offered at all is the orchestrator's check (it knows the server's own
    # MCP tools): tests/orchestrator/test_mcp.py.
    call = parse(
        {"input": "x", "tool_choice": "required", "tools": [{"type": "function", "name": "f"}]}
    )
    assert call.spec.tools.mode == "required"


def test_web_search_tool_and_options() -> None:
    call = parse(
        {
            "input": "x",
            "tools": [
                {
                    "type": "web_search_preview",
                    "search_context_size": "high",
                    "user_location": {"type": "approximate", "city": "Oslo", "country": "NO"},
                }
            ],
        }
    )
    search = call.spec.tools.web_search
    assert search is not None and not search.forced
    assert search.search_context_size == "high"
    assert search.user_location == UserLocation(city="Oslo", country="NO")
    assert call.spec.echo.tools == (
        WebSearchPreviewTool("high", UserLocation(city="Oslo", country="NO")),
    )

    for choice in ("web_search", "web_search_preview", "web_search_preview_2025_03_11"):
        forced = parse(
            {"input": "x", "tools": [{"type": "web_search"}], "tool_choice": {"type": choice}}
        ).spec.tools.web_search
        assert forced is not None and forced.forced

    options = parse(
        {
            "input": "x",
            "web_search_options": {
                "search_context_size": "low",
                "user_location": {"type": "approximate", "approximate": {"city": "Lima"}},
                "search_description": "find",
                "extract_description": "read",
            },
        }
    ).spec.tools.web_search
    assert options is not None and options.forced
    assert options.user_location == UserLocation(city="Lima")
    assert options.search_description == "find" and options.extract_description == "read"
    assert parse({"input": "x", "tools": [{"type": "web_search_2025_08_26"}]}).spec.echo.tools == (
        WebSearchTool("medium", None),
    )


def test_output_formats_become_constraints() -> None:
    call = parse(
        {
            "input": "x",
            "text": {
                "format": {"type": "json_schema", "name": "city", "schema": SCHEMA, "strict": True}
            },
        }
    )
    assert call.spec.constraint == Grammar("json_schema", SCHEMA)
    assert call.constraint_param == "text.format"
    assert call.spec.echo.text.format == FormatJsonSchema("city", SCHEMA, None, True)

    seed = parse(
        {
            "input": "x",
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "city", "schema": SCHEMA},
            },
        }
    )
    assert seed.spec.constraint == Grammar("json_schema", SCHEMA)
    assert seed.constraint_param == "response_format"
    assert seed.spec.echo.text.format == FormatJsonSchema("city", SCHEMA)

    obj = parse({"input": "x", "text": {"format": {"type": "json_object"}}})
    assert obj.spec.constraint == Grammar("json_schema", {"type": "object"})

    grammar = parse({"input": "x", "grammar": {"type": "regex", "value": "[0-9]+"}})
    assert grammar.spec.constraint == Grammar("regex", "[0-9]+")
    assert grammar.constraint_param == "grammar"
    lark = parse({"input": "x", "grammar": {"type": "llguidance", "value": {"grammars": []}}})
    assert lark.spec.constraint == Grammar("llguidance", {"grammars": []})


def test_only_one_constraint() -> None:
    body = {
        "input": "x",
        "text": {"format": {"type": "json_object"}},
        "grammar": {"type": "regex", "value": "a"},
    }
    assert refused(body).param == "grammar"


def test_echo_and_options() -> None:
    call = parse(
        {
            "input": "x",
            "stream": True,
            "background": True,
            "truncation": "auto",
            "reasoning": {"effort": "low", "summary": "concise"},
            "metadata": {"k": "v"},
            "previous_response_id": "resp_1",
            "instructions": "be kind",
            "user": "u",
            "safety_identifier": "s",
            "prompt_cache_key": "p",
            "service_tier": "auto",
            "stream_options": {"include_usage": True},
            "parallel_tool_calls": True,
            "n": 1,
            "max_tool_calls": None,
        }
    )
    spec = call.spec
    assert call.stream and spec.background and spec.truncation == "auto"
    assert spec.metadata == {"k": "v"} and spec.previous_response_id == "resp_1"
    assert spec.instructions == "be kind"
    assert spec.echo.reasoning is not None and spec.echo.reasoning.effort == "low"
    assert (spec.echo.user, spec.echo.safety_identifier, spec.echo.prompt_cache_key) == (
        "u",
        "s",
        "p",
    )


@pytest.mark.parametrize(
    ("text", "echoed"),
    [
        (None, "medium"),
        ({"format": {"type": "text"}}, "medium"),
        ({"verbosity": None}, "medium"),
        ({"verbosity": "low"}, "low"),
        ({"verbosity": "medium"}, "medium"),
        ({"verbosity": "high"}, "high"),
    ],
)
def test_text_verbosity_is_echoed_medium_by_default(
    text: dict[str, Any] | None, echoed: str
) -> None:
    body: dict[str, Any] = {"input": "x"}
    if text is not None:
        body["text"] = text
    assert parse(body).spec.echo.text.verbosity == echoed
    # The seed's response_format keeps the verbosity asked for.
    with_format = {**body, "response_format": {"type": "json_object"}}
    assert parse(with_format).spec.echo.text.verbosity == echoed


def test_tool_call_limits() -> None:
    default = parse({"input": "x"}).spec.tools
    assert default.parallel_tool_calls is True and default.max_tool_calls is None
    limited = parse({"input": "x", "parallel_tool_calls": False, "max_tool_calls": 3}).spec.tools
    assert limited.parallel_tool_calls is False and limited.max_tool_calls == 3
    searching = parse(
        {"input": "x", "tools": [{"type": "web_search"}], "max_tool_calls": 0}
    ).spec.tools
    assert searching.max_tool_calls == 0  # the model may not search; nothing forces it to


def test_reasoning_include_and_context_management_become_options() -> None:
    spec = parse(
        {
            "input": "hi",
            "store": False,
            "reasoning": {"effort": "low", "summary": "auto", "context": "current_turn"},
            "include": ["reasoning.encrypted_content"],
            "context_management": [{"type": "compaction", "compact_threshold": 2000}],
            "client_metadata": {"session_id": "abc", "x-codex-turn-metadata": "{}" * 300},
            "prompt_cache_key": "abc",
            "text": {"verbosity": "low"},
        }
    ).spec
    assert spec.reasoning == ReasoningOptions(effort="low", context="current_turn", encrypted=True)
    assert spec.compaction == CompactionPolicy(2000)
    assert spec.echo.reasoning is not None and spec.echo.reasoning.summary == "auto"
    assert parse({"input": "hi"}).spec.reasoning == ReasoningOptions()
    assert parse({"input": "hi"}).spec.compaction is None
    default = parse({"input": "hi", "context_management": [{"type": "compaction"}]}).spec
    assert default.compaction == CompactionPolicy(None)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"reasoning": {"effort": "extreme"}}, "reasoning.effort"),
        ({"reasoning": {"context": "yesterday"}}, "reasoning.context"),
        ({"context_management": [{"type": "forget"}]}, "context_management[0].type"),
        (
            {"context_management": [{"type": "compaction", "compact_threshold": 10}]},
            "context_management[0].compact_threshold",
        ),
        (
            {"context_management": [{"type": "compaction"}, {"type": "compaction"}]},
            "context_management[1]",
        ),
        ({"client_metadata": {f"k{i}": "v" for i in range(33)}}, "client_metadata"),
        ({"client_metadata": {"k": "v" * 8193}}, "client_metadata"),
    ],
)
def test_new_fields_are_bounded(body: dict[str, Any], param: str) -> None:
    assert refused({"input": "hi", **body}).param == param


def test_sealed_items_are_read_and_bounded() -> None:
    items = parse(
        {
            "input": [
                {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "exl1.x"},
                {"type": "compaction", "id": "cmp_1", "encrypted_content": "exl1.y"},
                {"role": "user", "content": "go on"},
            ]
        }
    ).spec.input
    assert items[0] == Reasoning(id="rs_1", encrypted_content="exl1.x")
    assert items[1] == Compaction(id="cmp_1", encrypted_content="exl1.y")
    huge = {"type": "compaction", "encrypted_content": "x" * (MAX_SEALED_CHARS + 1)}
    assert refused({"input": [huge]}).param == "input[0].encrypted_content"
    missing = refused({"input": [{"type": "compaction"}]})
    assert missing.param == "input[0].encrypted_content"
