"""The newer ``/v1/responses`` fields, one by one, against their bounds: custom tools,
namespaces, tool search and deferred tools, ``context_management``, ``reasoning`` and
``include``. Through the HTTP app over a scripted engine, each bad value is a 400 in OpenAI's
error shape naming the field, whose message quotes little of what was sent; the bounds
themselves are accepted. (Compiling real grammars against the compile budget is in
``tests/e2e/test_hostile.py``.)"""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest

from exloop.engine.protocol import GenerationRequest
from exloop.server.limits import Limits
from exloop.server.responses_request import INCLUDABLE, parse_responses_request
from tests.orchestrator.scripted import ScriptedEngine, say

from .test_app import http_client

pytestmark = pytest.mark.anyio

LIMITS = Limits()
#: A value far past every bound; no error message may echo it.
LONG = "x" * 100_000
#: The longest error message any case may answer with.
MESSAGE_CHARS = 300
NAME_64 = "n" * 64


def custom(definition: str, syntax: str = "regex", name: str = "c") -> dict[str, Any]:
    format = {"type": "grammar", "syntax": syntax, "definition": definition}
    return {"type": "custom", "name": name, "format": format}


def function(name: str = "f", **fields: Any) -> dict[str, Any]:
    return {"type": "function", "name": name, **fields}


def namespace(*tools: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "type": "namespace",
        "name": "ns",
        "description": "Tools.",
        "tools": list(tools),
        **fields,
    }


def functions(count: int, **fields: Any) -> list[dict[str, Any]]:
    return [function(f"f{i}", **fields) for i in range(count)]


def nested(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"x": schema}}
    return schema


async def refused(
    body: dict[str, Any],
    *,
    path: str = "/v1/responses",
    limits: Limits | None = None,
    engine: ScriptedEngine | None = None,
    grammar_timeout: float | None = None,
) -> dict[str, Any]:
    """The error the app answers ``body`` with, checked: a 400 in OpenAI's shape whose
    message is short and quotes no long value."""
    async with http_client(limits=limits, engine=engine, grammar_timeout=grammar_timeout) as http:
        response = await http.post(path, json=body)
    assert response.status_code == 400, response.text[:MESSAGE_CHARS]
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert len(error["message"]) <= MESSAGE_CHARS and LONG[:100] not in error["message"], error
    return error


TOOLS: list[tuple[list[dict[str, Any]], str, str | None]] = [
    # -- custom tools
    (
        [custom("a" * (LIMITS.max_grammar_chars + 1))],
        "tools[0].format.definition",
        "grammar_too_large",
    ),
    ([custom("[0-9]{100000}")], "tools[0].format.definition", "pattern_too_large"),
    ([custom("a{1,1001}")], "tools[0].format.definition", "pattern_too_large"),
    ([custom(" ", "lark")], "tools[0].format.definition", None),
    (
        [custom("a") | {"format": {"type": "grammar", "syntax": "regex", "definition": 5}}],
        "tools[0].format.definition",
        "invalid_type",
    ),
    ([custom("a", LONG)], "tools[0].format.syntax", "invalid_value"),
    ([custom("a") | {"format": {"type": LONG}}], "tools[0].format.type", "invalid_value"),
    ([custom("a", name="n" * 65)], "tools[0].name", None),
    ([custom("a", name=LONG)], "tools[0].name", None),
    ([custom("a") | {"description": LONG}], "tools[0].description", "string_above_max_length"),
    ([custom("a") | {"defer_loading": "yes"}], "tools[0].defer_loading", "invalid_type"),
    ([{"type": LONG}], "tools[0].type", "invalid_value"),
    # -- namespaces
    ([namespace(namespace(function()))], "tools[0].tools[0].type", "invalid_value"),
    ([namespace(*functions(LIMITS.max_tools + 1))], "tools", "too_many_tools"),
    (
        [namespace(*functions(64)), namespace(*functions(65), name="other")],
        "tools",
        "too_many_tools",
    ),
    ([*functions(LIMITS.max_tools), namespace(function())], "tools", "too_many_tools"),
    ([namespace(function(), name="n" * 65)], "tools[0].name", None),
    ([namespace(function(), name=LONG)], "tools[0].name", None),
    ([namespace(function("n" * 65))], "tools[0].tools[0].name", None),
    ([namespace(function(), description=LONG)], "tools[0].description", "string_above_max_length"),
    (
        [namespace(function(), function("g", description=LONG))],
        "tools[0].tools[1].description",
        "string_above_max_length",
    ),
    (
        [namespace(custom("[0-9]{5000}"))],
        "tools[0].tools[0].format.definition",
        "pattern_too_large",
    ),
    ([namespace()], "tools[0].tools", None),
    ([namespace(function(), tools="f")], "tools[0].tools", "invalid_type"),
    # -- tool search and deferred tools
    (
        [{"type": "tool_search", "description": LONG}],
        "tools[0].description",
        "string_above_max_length",
    ),
    ([{"type": "tool_search", "execution": LONG}], "tools[0].execution", "invalid_value"),
    (
        [{"type": "tool_search", "parameters": nested(100)}],
        "tools[0].parameters",
        "schema_too_deep",
    ),
    (
        [{"type": "tool_search"}, *functions(LIMITS.max_tools + 1, defer_loading=True)],
        "tools",
        "too_many_tools",
    ),
    (
        [{"type": "tool_search"}, function(description=LONG, defer_loading=True)],
        "tools[1].description",
        "string_above_max_length",
    ),
    (
        [function(function={"name": "f", "description": LONG})],
        "tools[0].function.description",
        "string_above_max_length",
    ),
]


@pytest.mark.parametrize(("tools", "param", "code"), TOOLS)
async def test_tool_fields_past_their_bounds(
    tools: list[dict[str, Any]], param: str, code: str | None
) -> None:
    error = await refused({"input": "hi", "tools": tools})
    assert error["param"] == param and error["code"] == code, error


@pytest.mark.parametrize(
    ("item", "param", "code"),
    [
        (
            {"type": "tool_search_output", "tools": functions(LIMITS.max_tools + 1)},
            "input[0].tools",
            "too_many_tools",
        ),
        (
            {"type": "additional_tools", "role": "developer", "tools": [namespace(function())] * 2},
            "input[0].tools[1].name",
            None,
        ),
        (
            {"type": "additional_tools", "role": "developer", "tools": [custom("a{2000}")]},
            "input[0].tools[0].format.definition",
            "pattern_too_large",
        ),
        (
            {"type": "tool_search_output", "tools": [function(description=LONG)]},
            "input[0].tools[0].description",
            "string_above_max_length",
        ),
        ({"type": LONG}, "input[0].type", "unsupported_value"),
    ],
)
async def test_input_items_and_the_tools_they_load_past_their_bounds(
    item: dict[str, Any], param: str, code: str | None
) -> None:
    error = await refused({"input": [item]})
    assert error["param"] == param and error["code"] == code, error


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        # -- context_management
        (
            {"context_management": [{"type": LONG}]},
            "context_management[0].type",
            "unsupported_value",
        ),
        ({"context_management": [{}]}, "context_management[0].type", "missing_required_parameter"),
        ({"context_management": {"type": "compaction"}}, "context_management", "invalid_type"),
        (
            {"context_management": [{"type": "compaction"}, {"type": "compaction"}]},
            "context_management[1]",
            None,
        ),
        *(
            (
                {"context_management": [{"type": "compaction", "compact_threshold": value}]},
                "context_management[0].compact_threshold",
                code,
            )
            for value, code in [
                (255, "invalid_value"),
                (-1, "invalid_value"),
                ("1000", "invalid_type"),
                (1000.5, "invalid_type"),
                (True, "invalid_type"),
            ]
        ),
        # -- reasoning
        ({"reasoning": "high"}, "reasoning", "invalid_type"),
        ({"reasoning": {"effort": LONG}}, "reasoning.effort", "invalid_value"),
        ({"reasoning": {"effort": 3}}, "reasoning.effort", "invalid_type"),
        ({"reasoning": {"summary": "everything"}}, "reasoning.summary", "invalid_value"),
        ({"reasoning": {"generate_summary": LONG}}, "reasoning.generate_summary", "invalid_value"),
        ({"reasoning": {"context": "yesterday"}}, "reasoning.context", "invalid_value"),
        # -- include
        ({"include": [LONG]}, "include[0]", None),
        ({"include": ["reasoning.encrypted_content", "everything"]}, "include[1]", None),
        ({"include": "reasoning.encrypted_content"}, "include", "invalid_type"),
        ({"include": [1]}, "include[0]", "invalid_type"),
    ],
)
async def test_other_new_fields_past_their_bounds(
    fields: dict[str, Any], param: str, code: str | None
) -> None:
    error = await refused({"input": "hi", **fields})
    assert error["param"] == param and error["code"] == code, error


async def test_every_bound_itself_is_accepted() -> None:
    """Each field at its limit, all in one request: a response, not a refusal."""
    at_limit = "d" * LIMITS.max_description_chars
    members = [function(f"{i:03d}" + "n" * 61) for i in range(LIMITS.max_tools - 3)]
    tools = [
        custom("a{1000}" + "b" * (LIMITS.max_grammar_chars - 7), name=NAME_64)
        | {"description": at_limit},
        namespace(*members, name=NAME_64, description=at_limit),
        {"type": "tool_search", "description": at_limit},
        function("deferred", description=at_limit, defer_loading=True),
        function("last", defer_loading=True),
    ]
    body = {
        "input": "hi",
        "tools": tools,
        "context_management": [{"type": "compaction", "compact_threshold": 256}],
        "reasoning": {"effort": "max", "summary": "detailed", "context": "all_turns"},
        "include": sorted(INCLUDABLE),
    }
    engine = ScriptedEngine([say("Fine.")], context_length=1 << 20)
    async with http_client(engine=engine) as http:
        response = await http.post("/v1/responses", json=body)
    assert response.status_code == 200, response.text[:MESSAGE_CHARS]
    assert response.json()["status"] == "completed"


async def test_the_limits_are_the_servers_flags() -> None:
    small = Limits(max_description_chars=8, max_grammar_chars=8, max_pattern_repeat=3)
    cases = [
        ([function(description="123456789")], "tools[0].description"),
        ([custom("123456789")], "tools[0].format.definition"),
        ([custom("a{4}")], "tools[0].format.definition"),
        ([namespace(function(), description="123456789")], "tools[0].description"),
    ]
    for tools, param in cases:
        assert (await refused({"input": "hi", "tools": tools}, limits=small))["param"] == param
    fits = [function(description="12345678"), custom("a{3}bcde")]
    async with http_client(limits=small) as http:
        response = await http.post("/v1/responses", json={"input": "hi", "tools": fits})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("tool", "param"),
    [
        (
            {"type": "custom", "custom": {"name": "c", "description": LONG}},
            "tools[0].custom.description",
        ),
        (
            {
                "type": "custom",
                "custom": {
                    "name": "c",
                    "format": {
                        "type": "grammar",
                        "grammar": {"syntax": "regex", "definition": "[a-z]{9999}"},
                    },
                },
            },
            "tools[0].custom.format.grammar.definition",
        ),
        (
            {"type": "function", "function": {"name": "f", "description": LONG}},
            "tools[0].function.description",
        ),
        ({"type": "tool_search", "description": LONG}, "tools[0].description"),
    ],
)
async def test_chat_tools_past_their_bounds(tool: dict[str, Any], param: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [tool]}
    assert (await refused(body, path="/v1/chat/completions"))["param"] == param


class SlowToolGrammars(ScriptedEngine):
    """An engine on which any tool call grammar compiles past every deadline."""

    async def check(self, request: GenerationRequest) -> None:
        await super().check(request)
        if request.constraint is not None:
            await anyio.sleep_forever()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [custom("a+")]}, "tools[0].format.definition"),
        ({"tools": [function(parameters={"type": "object"})]}, "tools[0].parameters"),
        ({"tools": [namespace(custom("a+"))]}, "tools[0].tools[0].format.definition"),
        (
            {"input": [{"type": "additional_tools", "role": "developer", "tools": [custom("a")]}]},
            "input[0].tools[0].format.definition",
        ),
        # Several: which one is at fault is not known.
        ({"tools": [custom("a+"), custom("b+", name="d")]}, "tools"),
    ],
)
async def test_tool_grammars_past_the_deadline_name_their_field(
    body: dict[str, Any], param: str
) -> None:
    engine = SlowToolGrammars([say("never")])
    error = await refused({"input": "hi"} | body, engine=engine, grammar_timeout=0.05)
    assert error["param"] == param and "too complex" in error["message"], error
    assert engine.jobs == []


def test_include_keeps_each_value_once() -> None:
    body = {"input": "hi", "include": ["reasoning.encrypted_content"] * 10_000}
    call = parse_responses_request(json.dumps(body).encode(), served_model="m", limits=LIMITS)
    assert call.spec.echo.include == ("reasoning.encrypted_content",)
    assert call.spec.reasoning.encrypted
